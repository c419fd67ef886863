package regproxy

import (
	"crypto/rand"
	"encoding/json"
	"fmt"
	"math"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"
)

const (
	tokenPath    = "/token"
	tokenService = "regproxy"
	// tokenPrefix marks the proxy's own tokens, which it strips before
	// forwarding a request upstream.
	tokenPrefix = "regproxy-"
)

// tokens is a tiny bearer-token server after the distribution token spec:
// anyone may have a token (there are no users), every token grants
// everything, and tokens expire after their lifetime or all at once.
type tokens struct {
	mu       sync.Mutex
	required bool
	lifetime time.Duration
	issued   map[string]time.Time // token → expiry
	user     string               // if set, a token is only for user and password
	password string
}

// EnableTokenAuth makes the proxy demand "Authorization: Bearer <token>" on
// every /v2/ request, with a token from its own /token endpoint; requests
// without a valid one get a 401 Bearer challenge pointing there.
func (p *Proxy) EnableTokenAuth() {
	p.tokens.mu.Lock()
	defer p.tokens.mu.Unlock()
	p.tokens.required = true
}

// RequireCredentials makes the token endpoint issue tokens only to user
// with password, as a private registry's does: basic auth on GET, or the
// OAuth2 password grant on POST; others get 401.
func (p *Proxy) RequireCredentials(user, password string) {
	p.tokens.mu.Lock()
	defer p.tokens.mu.Unlock()
	p.tokens.user, p.tokens.password = user, password
}

// ExpireTokens invalidates every token issued so far, as a registry's token
// expiry would: a client's next request gets 401 and it must fetch anew.
func (p *Proxy) ExpireTokens() {
	p.tokens.mu.Lock()
	defer p.tokens.mu.Unlock()
	p.tokens.issued = nil
}

// issue makes a new token and says how long it is valid.
func (t *tokens) issue() (string, time.Duration) {
	tok := tokenPrefix + rand.Text()
	t.mu.Lock()
	defer t.mu.Unlock()
	now := time.Now()
	if t.issued == nil {
		t.issued = make(map[string]time.Time)
	}
	for k, exp := range t.issued { // keep the map small across long benchmarks
		if now.After(exp) {
			delete(t.issued, k)
		}
	}
	t.issued[tok] = now.Add(t.lifetime)
	return tok, t.lifetime
}

// check tells whether r may pass. When it may not, reason is "" for a
// request without a token and "invalid_token" for one with a bad or expired
// token, the error a challenge then carries.
func (t *tokens) check(r *http.Request) (ok bool, reason string) {
	if r.URL.Path != "/v2" && !strings.HasPrefix(r.URL.Path, "/v2/") {
		return true, ""
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if !t.required {
		return true, ""
	}
	tok, found := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if !found {
		return false, ""
	}
	exp, known := t.issued[strings.TrimSpace(tok)]
	if !known || time.Now().After(exp) {
		return false, "invalid_token"
	}
	return true, ""
}

// allowed tells whether a token request carries the credentials required
// (RequireCredentials), if any.
func (t *tokens) allowed(r *http.Request) bool {
	t.mu.Lock()
	user, password := t.user, t.password
	t.mu.Unlock()
	if user == "" {
		return true
	}
	if u, p, ok := r.BasicAuth(); ok {
		return u == user && p == password
	}
	if r.Method == http.MethodPost && r.ParseForm() == nil && r.PostForm.Get("grant_type") == "password" {
		return r.PostForm.Get("username") == user && r.PostForm.Get("password") == password
	}
	return false
}

func isOurToken(authorization string) bool {
	tok, found := strings.CutPrefix(authorization, "Bearer ")
	return found && strings.HasPrefix(strings.TrimSpace(tok), tokenPrefix)
}

// serveToken answers a token request (GET, or the OAuth POST form) with the
// JSON a registry's token server sends.
func (p *Proxy) serveToken(w http.ResponseWriter, r *http.Request) {
	if !p.tokens.allowed(r) {
		w.Header().Set("WWW-Authenticate", `Basic realm="regproxy"`)
		http.Error(w, `{"errors":[{"code":"UNAUTHORIZED","message":"wrong or no credentials"}]}`, http.StatusUnauthorized)
		return
	}
	tok, lifetime := p.tokens.issue()
	// Clients cache a token for expires_in seconds; 0 would mean forever.
	expiresIn := max(1, int(math.Ceil(lifetime.Seconds())))
	body, err := json.Marshal(map[string]any{
		"token":        tok,
		"access_token": tok,
		"expires_in":   expiresIn,
		"issued_at":    time.Now().UTC().Format(time.RFC3339),
	})
	if err != nil {
		http.Error(w, fmt.Sprintf("regproxy: token: %v", err), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(http.StatusOK)
	w.Write(body)
}

// challenge answers 401 with a Bearer challenge for r's repository that
// points at the proxy's token endpoint; errCode, if set, says why the
// presented token was refused.
func (p *Proxy) challenge(w http.ResponseWriter, r *http.Request, errCode string) {
	v := fmt.Sprintf(`Bearer realm=%q,service=%q`, p.URL()+tokenPath, tokenService)
	if repo := repository(r.URL.Path); repo != "" {
		action := "pull"
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			action = "pull,push"
		}
		v += fmt.Sprintf(`,scope="repository:%s:%s"`, repo, action)
	}
	if errCode != "" {
		v += fmt.Sprintf(`,error=%q`, errCode)
	}
	body := `{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}` + "\n"
	w.Header().Set("WWW-Authenticate", v)
	w.Header().Set("Docker-Distribution-Api-Version", "registry/2.0")
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(http.StatusUnauthorized)
	w.Write([]byte(body))
}

package regproxy

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/lazypull/lazypull/internal/testenv"
)

// shared is one docker-registry for the whole package, started by the first
// test that needs it; each test uses its own repositories.
var shared struct {
	once sync.Once
	dir  string
	reg  *testenv.Registry
	err  error
}

func TestMain(m *testing.M) {
	code := m.Run()
	if shared.reg != nil {
		if err := shared.reg.Stop(5 * time.Second); err != nil {
			fmt.Fprintln(os.Stderr, err)
		}
	}
	if shared.dir != "" {
		os.RemoveAll(shared.dir)
	}
	os.Exit(code)
}

// registry returns the host:port of the shared registry.
func registry(t *testing.T) string {
	t.Helper()
	testenv.NeedBinary(t, "docker-registry")
	shared.once.Do(func() {
		if shared.dir, shared.err = os.MkdirTemp("", "regproxy-test-"); shared.err != nil {
			return
		}
		shared.reg, shared.err = testenv.StartRegistry(shared.dir)
	})
	if shared.err != nil {
		t.Fatalf("start docker-registry: %v", shared.err)
	}
	return shared.reg.Host
}

// startProxy starts a proxy to the shared registry, closed when t ends.
func startProxy(t *testing.T, opts ...Option) *Proxy {
	t.Helper()
	return startProxyTo(t, registry(t), opts...)
}

func startProxyTo(t *testing.T, upstream string, opts ...Option) *Proxy {
	t.Helper()
	p, err := Start(upstream, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := p.Close(); err != nil {
			t.Error(err)
		}
	})
	return p
}

// newClient is a client with its own connections, closed when t ends.
func newClient(t *testing.T) *http.Client {
	tr := &http.Transport{DisableCompression: true}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr}
}

func randomBytes(n int) []byte {
	b := make([]byte, n)
	rand.Read(b)
	return b
}

func do(t *testing.T, c *http.Client, method, url string, body io.Reader, header ...string) *http.Response {
	t.Helper()
	req, err := http.NewRequest(method, url, body)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	return resp
}

// get fetches url and reads the whole body, which must arrive intact.
func get(t *testing.T, c *http.Client, url string, header ...string) (*http.Response, []byte) {
	t.Helper()
	resp := do(t, c, http.MethodGet, url, nil, header...)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("GET %s: reading body: %v", url, err)
	}
	return resp, b
}

func wantStatus(t *testing.T, resp *http.Response, want int) {
	t.Helper()
	if resp.StatusCode != want {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 1000))
		t.Fatalf("%s %s: got %s, want %d: %s", resp.Request.Method, resp.Request.URL, resp.Status, want, b)
	}
}

// pushBlob uploads data to repo through base with the distribution API's
// chunked upload: POST, a streamed PATCH, a sized PATCH, then PUT ?digest=.
// It returns the digest and every upload Location the registry answered.
func pushBlob(t *testing.T, c *http.Client, base, repo string, data []byte, header ...string) (digest.Digest, []string) {
	t.Helper()
	dgst := digest.FromBytes(data)
	var locations []string
	next := func(resp *http.Response, want int) string {
		t.Helper()
		defer resp.Body.Close()
		wantStatus(t, resp, want)
		loc := resp.Header.Get("Location")
		if loc == "" {
			t.Fatalf("%s %s: no Location", resp.Request.Method, resp.Request.URL)
		}
		locations = append(locations, loc)
		u, err := resp.Request.URL.Parse(loc)
		if err != nil {
			t.Fatal(err)
		}
		return u.String()
	}
	loc := next(do(t, c, http.MethodPost, base+"/v2/"+repo+"/blobs/uploads/", nil, header...), http.StatusAccepted)
	half := len(data) / 2
	// An io.MultiReader has no known length: the PATCH goes out chunked.
	loc = next(do(t, c, http.MethodPatch, loc, io.MultiReader(bytes.NewReader(data[:half])),
		append([]string{"Content-Type", "application/octet-stream"}, header...)...), http.StatusAccepted)
	loc = next(do(t, c, http.MethodPatch, loc, bytes.NewReader(data[half:]),
		append([]string{"Content-Type", "application/octet-stream", "Content-Range", fmt.Sprintf("%d-%d", half, len(data)-1)}, header...)...), http.StatusAccepted)
	u, _ := url.Parse(loc)
	q := u.Query()
	q.Set("digest", dgst.String())
	u.RawQuery = q.Encode()
	resp := do(t, c, http.MethodPut, u.String(), nil, header...)
	resp.Body.Close()
	wantStatus(t, resp, http.StatusCreated)
	return dgst, locations
}

func TestStartRefusesNonLoopbackUpstreams(t *testing.T) {
	for _, upstream := range []string{
		"http://10.0.0.1:5000",
		"http://192.168.1.1",
		"registry.example.com:5000",
		"http://[2001:db8::1]:5000",
		"https://127.0.0.1:5000",   // plain http only
		"http://127.0.0.1:5000/v2", // a base URL, not a path
		"ftp://127.0.0.1",
	} {
		if p, err := Start(upstream); err == nil {
			p.Close()
			t.Errorf("Start(%q) succeeded, want an error", upstream)
		} else {
			t.Logf("Start(%q): %v", upstream, err)
		}
	}
	for _, upstream := range []string{"http://127.0.0.1:5000", "127.0.0.1:5000", "http://localhost:5000/", "http://[::1]:5000"} {
		p, err := Start(upstream)
		if err != nil {
			t.Errorf("Start(%q): %v", upstream, err)
			continue
		}
		if !strings.HasPrefix(p.Addr(), "127.0.0.1:") || p.URL() != "http://"+p.Addr() {
			t.Errorf("Start(%q): Addr %q, URL %q", upstream, p.Addr(), p.URL())
		}
		if err := p.Close(); err != nil {
			t.Error(err)
		}
	}
}

func TestPassThrough(t *testing.T) {
	var mu sync.Mutex
	var records []RequestRecord
	p := startProxy(t, WithRequestHook(func(r RequestRecord) {
		mu.Lock()
		defer mu.Unlock()
		records = append(records, r)
	}))
	c := newClient(t)
	base := p.URL()

	resp, _ := get(t, c, base+"/v2/")
	wantStatus(t, resp, http.StatusOK)
	if v := resp.Header.Get("Docker-Distribution-Api-Version"); v != "registry/2.0" {
		t.Errorf("GET /v2/: Docker-Distribution-Api-Version %q, want registry/2.0", v)
	}

	data := randomBytes(300 << 10)
	dgst, locations := pushBlob(t, c, base, "regproxy/pass", data)
	for _, loc := range locations {
		u, err := url.Parse(loc)
		if err != nil || (u.Host != "" && u.Host != p.Addr()) {
			t.Errorf("upload Location %q does not point at the proxy %s", loc, p.Addr())
		}
	}
	blobURL := base + "/v2/regproxy/pass/blobs/" + dgst.String()

	resp = do(t, c, http.MethodHead, blobURL, nil)
	resp.Body.Close()
	wantStatus(t, resp, http.StatusOK)
	if resp.ContentLength != int64(len(data)) {
		t.Errorf("HEAD blob: Content-Length %d, want %d", resp.ContentLength, len(data))
	}

	resp, got := get(t, c, blobURL)
	wantStatus(t, resp, http.StatusOK)
	if !bytes.Equal(got, data) {
		t.Fatalf("GET blob: got %d bytes that differ from the %d pushed", len(got), len(data))
	}
	if resp.Header.Get("Docker-Content-Digest") != dgst.String() {
		t.Errorf("GET blob: Docker-Content-Digest %q, want %s", resp.Header.Get("Docker-Content-Digest"), dgst)
	}

	for _, r := range [][2]int{{100, 199}, {150, 299}, {len(data) - 10, len(data) - 1}} {
		resp, got := get(t, c, blobURL, "Range", fmt.Sprintf("bytes=%d-%d", r[0], r[1]))
		wantStatus(t, resp, http.StatusPartialContent)
		if !bytes.Equal(got, data[r[0]:r[1]+1]) {
			t.Errorf("GET blob bytes=%d-%d: wrong bytes", r[0], r[1])
		}
		if want := fmt.Sprintf("bytes %d-%d/%d", r[0], r[1], len(data)); resp.Header.Get("Content-Range") != want {
			t.Errorf("GET blob bytes=%d-%d: Content-Range %q, want %q", r[0], r[1], resp.Header.Get("Content-Range"), want)
		}
	}

	st := p.Stats()
	n := int64(len(data))
	wantKinds := map[PathKind]int64{Other: 1, Upload: 4, Blob: 2, BlobRange: 3}
	for k, want := range wantKinds {
		if st.ByKind[k] != want {
			t.Errorf("Stats().ByKind[%s] = %d, want %d (all: %v)", k, st.ByKind[k], want, st.ByKind)
		}
	}
	wantMethods := map[string]int64{"GET": 5, "HEAD": 1, "POST": 1, "PATCH": 2, "PUT": 1}
	for m, want := range wantMethods {
		if st.ByMethod[m] != want {
			t.Errorf("Stats().ByMethod[%s] = %d, want %d (all: %v)", m, st.ByMethod[m], want, st.ByMethod)
		}
	}
	if st.Requests != 10 {
		t.Errorf("Stats().Requests = %d, want 10", st.Requests)
	}
	if least := n + 100 + 150 + 10; st.BytesSent < least {
		t.Errorf("Stats().BytesSent = %d, want at least %d", st.BytesSent, least)
	}

	wantRanges := [][2]int64{{0, n - 1}, {100, 199}, {150, 299}, {n - 10, n - 1}}
	if got := p.Ranges(dgst); !slices.Equal(got, wantRanges) {
		t.Errorf("Ranges = %v, want %v", got, wantRanges)
	}
	wantRefetched := [][2]int64{{100, 299}, {n - 10, n - 1}}
	if got := p.Refetched()[dgst]; !slices.Equal(got, wantRefetched) {
		t.Errorf("Refetched()[blob] = %v, want %v", got, wantRefetched)
	}

	// The hook runs as a handler returns, which can be just after the
	// client has read the last byte: wait for the last record.
	var blobGets int
	for deadline := time.Now().Add(2 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		mu.Lock()
		n := len(records)
		mu.Unlock()
		if n >= 10 || time.Now().After(deadline) {
			break
		}
	}
	mu.Lock()
	for _, r := range records {
		if r.Method == http.MethodGet && r.Digest == dgst {
			blobGets++
			if (r.Status != http.StatusOK && r.Status != http.StatusPartialContent) || len(r.Ranges) != 1 || r.Bytes != r.Ranges[0][1]-r.Ranges[0][0]+1 {
				t.Errorf("hook record for a blob GET: %+v", r)
			}
		}
	}
	mu.Unlock()
	if blobGets != 4 {
		t.Errorf("hook saw %d blob GETs, want 4", blobGets)
	}

	resp = do(t, c, http.MethodDelete, blobURL, nil)
	resp.Body.Close()
	wantStatus(t, resp, http.StatusAccepted)
	resp = do(t, c, http.MethodHead, blobURL, nil)
	resp.Body.Close()
	wantStatus(t, resp, http.StatusNotFound)

	p.ResetStats()
	if st := p.Stats(); st.Requests != 0 || st.BytesSent != 0 || len(st.ByKind) != 0 || len(p.Ranges(dgst)) != 0 {
		t.Errorf("after ResetStats: %+v, ranges %v", st, p.Ranges(dgst))
	}
}

// TestHeadersAndRedirects checks, against a fake upstream, what a real
// registry does not show without extra setup: redirects to the upstream
// come back pointing at the proxy, others are left alone, challenges pass
// through, and the proxy's own tokens never reach the upstream.
func TestHeadersAndRedirects(t *testing.T) {
	var mu sync.Mutex
	var seenAuth []string
	var upstream *httptest.Server
	upstream = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		seenAuth = append(seenAuth, r.Header.Get("Authorization"))
		mu.Unlock()
		switch r.URL.Path {
		case "/v2/here":
			http.Redirect(w, r, upstream.URL+"/v2/there?x=1", http.StatusTemporaryRedirect)
		case "/v2/elsewhere":
			http.Redirect(w, r, "http://storage.example.com/blob", http.StatusTemporaryRedirect)
		case "/v2/auth":
			w.Header().Set("WWW-Authenticate", `Bearer realm="http://auth.example.com/token",service="upstream"`)
			w.WriteHeader(http.StatusUnauthorized)
		default:
			fmt.Fprint(w, "there")
		}
	}))
	defer upstream.Close()
	p := startProxyTo(t, upstream.URL)
	c := newClient(t)
	c.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }

	resp, _ := get(t, c, p.URL()+"/v2/here")
	wantStatus(t, resp, http.StatusTemporaryRedirect)
	if loc, want := resp.Header.Get("Location"), p.URL()+"/v2/there?x=1"; loc != want {
		t.Errorf("redirect to upstream: Location %q, want %q", loc, want)
	}
	resp, _ = get(t, c, p.URL()+"/v2/elsewhere")
	if loc, want := resp.Header.Get("Location"), "http://storage.example.com/blob"; loc != want {
		t.Errorf("redirect elsewhere: Location %q, want %q", loc, want)
	}
	resp, _ = get(t, c, p.URL()+"/v2/auth")
	wantStatus(t, resp, http.StatusUnauthorized)
	if v := resp.Header.Get("WWW-Authenticate"); !strings.Contains(v, "auth.example.com") {
		t.Errorf("upstream challenge not passed through: WWW-Authenticate %q", v)
	}

	get(t, c, p.URL()+"/v2/x", "Authorization", "Bearer "+tokenPrefix+"abc")
	get(t, c, p.URL()+"/v2/x", "Authorization", "Bearer upstream-token")
	mu.Lock()
	defer mu.Unlock()
	if got := seenAuth[len(seenAuth)-2:]; got[0] != "" || got[1] != "Bearer upstream-token" {
		t.Errorf("upstream saw Authorization %q, want our token stripped and theirs passed", got)
	}
}

func TestCloseEndsStalledRequests(t *testing.T) {
	upstream := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	defer upstream.Close()
	p, err := Start(upstream.URL)
	if err != nil {
		t.Fatal(err)
	}
	p.AddFault(Fault{Kind: Stall})
	c := newClient(t)
	errc := make(chan error, 1)
	go func() {
		resp, err := c.Get(p.URL() + "/v2/")
		if err == nil {
			resp.Body.Close()
		}
		errc <- err
	}()
	for p.Stats().Requests == 0 {
		time.Sleep(5 * time.Millisecond)
	}
	start := time.Now()
	if err := p.Close(); err != nil {
		t.Error(err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("Close took %v with a stalled request", d)
	}
	select {
	case err := <-errc:
		t.Logf("stalled request ended with: %v", err)
	case <-time.After(5 * time.Second):
		t.Fatal("stalled request still running after Close")
	}
}

// ctxTimeout is a context for one request that must not hang the test.
func ctxTimeout(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

package regproxy

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/url"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestFaults checks each fault kind as a client sees it, on a blob GET.
func TestFaults(t *testing.T) {
	p := startProxy(t)
	c := newClient(t)
	data := randomBytes(256 << 10)
	dgst, _ := pushBlob(t, c, p.URL(), "regproxy/faults", data)
	blobURL := p.URL() + "/v2/regproxy/faults/blobs/" + dgst.String()
	blobs := MatchKind(Blob, BlobRange)

	// whole checks that the blob can be fetched intact again: a fault must
	// not leave the proxy or its connections in a bad state.
	whole := func(t *testing.T) {
		t.Helper()
		resp, got := get(t, c, blobURL)
		wantStatus(t, resp, http.StatusOK)
		if !bytes.Equal(got, data) {
			t.Fatal("blob differs after the fault")
		}
	}
	// partial fetches the blob expecting the body to break off.
	partial := func(t *testing.T) ([]byte, error) {
		t.Helper()
		resp := do(t, c, http.MethodGet, blobURL, nil)
		defer resp.Body.Close()
		wantStatus(t, resp, http.StatusOK)
		if resp.ContentLength != int64(len(data)) {
			t.Errorf("Content-Length %d, want %d", resp.ContentLength, len(data))
		}
		got, err := io.ReadAll(resp.Body)
		if err == nil {
			t.Fatalf("read %d of %d bytes without an error", len(got), len(data))
		}
		if len(got) >= len(data) || !bytes.Equal(got, data[:len(got)]) {
			t.Errorf("read %d bytes of %d before the error, want a correct prefix", len(got), len(data))
		}
		return got, err
	}
	fired := func(t *testing.T, kind FaultKind, want int64) {
		t.Helper()
		if got := p.Stats().FaultsByKind[kind]; got != want {
			t.Errorf("Stats().FaultsByKind[%s] = %d, want %d", kind, got, want)
		}
	}

	t.Run("ResetMidBody", func(t *testing.T) {
		p.AddFault(Fault{Match: blobs, Kind: ResetMidBody, Count: 1})
		got, err := partial(t)
		if !errors.Is(err, syscall.ECONNRESET) {
			t.Errorf("got %v after %d bytes, want a connection reset", err, len(got))
		}
		fired(t, ResetMidBody, 1)
		whole(t)
	})

	t.Run("Truncate", func(t *testing.T) {
		p.AddFault(Fault{Match: blobs, Kind: Truncate, Count: 1, At: 1000})
		got, err := partial(t)
		if !errors.Is(err, io.ErrUnexpectedEOF) {
			t.Errorf("got %v, want an unexpected EOF", err)
		}
		if len(got) != 1000 {
			t.Errorf("got %d bytes, want the 1000 before At", len(got))
		}
		fired(t, Truncate, 1)
		whole(t)
	})

	t.Run("CorruptBody", func(t *testing.T) {
		p.AddFault(Fault{Match: blobs, Kind: CorruptBody, Count: 1})
		resp, got := get(t, c, blobURL)
		wantStatus(t, resp, http.StatusOK)
		if len(got) != len(data) || resp.ContentLength != int64(len(data)) {
			t.Fatalf("corrupt body: %d bytes, Content-Length %d, want both %d", len(got), resp.ContentLength, len(data))
		}
		if resp.Header.Get("Docker-Content-Digest") != dgst.String() {
			t.Errorf("corrupt body: headers changed: Docker-Content-Digest %q", resp.Header.Get("Docker-Content-Digest"))
		}
		var diff []int
		for i := range got {
			if got[i] != data[i] {
				diff = append(diff, i)
			}
		}
		if len(diff) != 1 || diff[0] != len(data)/2 {
			t.Errorf("corrupt body: bytes differ at %v, want only at the middle (%d)", diff, len(data)/2)
		}
		// At is an offset into the body, here a 100-byte range.
		p.AddFault(Fault{Match: blobs, Kind: CorruptBody, Count: 1, At: 7})
		resp, got = get(t, c, blobURL, "Range", "bytes=1000-1099")
		wantStatus(t, resp, http.StatusPartialContent)
		want := bytes.Clone(data[1000:1100])
		want[7] ^= 0xff
		if !bytes.Equal(got, want) {
			t.Error("corrupt range: want only byte 7 of the range inverted")
		}
		fired(t, CorruptBody, 2)
		whole(t)
	})

	t.Run("Status", func(t *testing.T) {
		p.AddFault(Fault{Match: blobs, Kind: Status503, Count: 2})
		p.AddFault(Fault{Match: blobs, Kind: StatusCode, Status: http.StatusTooManyRequests, Count: 1})
		for _, want := range []int{503, 503, 429} {
			resp, _ := get(t, c, blobURL)
			wantStatus(t, resp, want)
		}
		fired(t, Status503, 2)
		fired(t, StatusCode, 1)
		whole(t)
	})

	t.Run("Stall", func(t *testing.T) {
		p.AddFault(Fault{Match: blobs, Kind: Stall, Count: 1})
		req, _ := http.NewRequestWithContext(ctxTimeout(t, 200*time.Millisecond), http.MethodGet, blobURL, nil)
		resp, err := c.Do(req)
		if err == nil {
			resp.Body.Close()
			t.Fatalf("stalled GET answered %s, want a timeout", resp.Status)
		}
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("stalled GET: %v, want a deadline error", err)
		}
		// A timed stall delays the answer, then answers.
		p.AddFault(Fault{Match: blobs, Kind: Stall, Count: 1, Stall: 100 * time.Millisecond})
		start := time.Now()
		whole(t)
		if d := time.Since(start); d < 100*time.Millisecond {
			t.Errorf("GET stalled for 100ms answered after %v", d)
		}
		fired(t, Stall, 2)
	})

	t.Run("Unauthorized401", func(t *testing.T) {
		p.AddFault(Fault{Match: blobs, Kind: Unauthorized401, Count: 1})
		resp, _ := get(t, c, blobURL)
		wantStatus(t, resp, http.StatusUnauthorized)
		ch := parseChallenge(t, resp.Header.Get("WWW-Authenticate"))
		if ch["realm"] != p.URL()+"/token" || ch["error"] != "invalid_token" || ch["scope"] != "repository:regproxy/faults:pull" {
			t.Errorf("challenge %v: want realm at the proxy, error invalid_token, the repository's pull scope", ch)
		}
		tok := fetchToken(t, c, ch)
		resp, got := get(t, c, blobURL, "Authorization", "Bearer "+tok)
		wantStatus(t, resp, http.StatusOK)
		if !bytes.Equal(got, data) {
			t.Error("blob differs after re-authenticating")
		}
		fired(t, Unauthorized401, 1)
	})

	t.Run("MatchOrderAndClear", func(t *testing.T) {
		p.AddFault(Fault{Match: MatchKind(Manifest), Kind: StatusCode, Status: http.StatusNotImplemented})
		p.AddFault(Fault{Kind: StatusCode, Status: http.StatusBadGateway})
		resp, _ := get(t, c, p.URL()+"/v2/regproxy/faults/manifests/latest")
		wantStatus(t, resp, http.StatusNotImplemented)
		resp, _ = get(t, c, blobURL)
		wantStatus(t, resp, http.StatusBadGateway)
		resp, _ = get(t, c, blobURL) // Count 0: fires every time
		wantStatus(t, resp, http.StatusBadGateway)
		p.ClearFaults()
		whole(t)
	})

	if st := p.Stats(); st.FaultsFired != 1+1+2+3+2+1+3 {
		t.Errorf("Stats().FaultsFired = %d, want 13 (%v)", st.FaultsFired, st.FaultsByKind)
	}
}

func TestAddFaultRejectsMistakes(t *testing.T) {
	p := &Proxy{}
	for _, f := range []Fault{{Kind: "explode"}, {Kind: StatusCode}} {
		func() {
			defer func() {
				if recover() == nil {
					t.Errorf("AddFault(%+v) did not panic", f)
				}
			}()
			p.AddFault(f)
		}()
	}
}

// parseChallenge reads the parameters of a Bearer challenge.
func parseChallenge(t *testing.T, h string) map[string]string {
	t.Helper()
	rest, ok := strings.CutPrefix(h, "Bearer ")
	if !ok {
		t.Fatalf("WWW-Authenticate %q: not a Bearer challenge", h)
	}
	params := map[string]string{}
	for rest != "" {
		k, v, ok := strings.Cut(rest, `="`)
		if !ok {
			t.Fatalf("WWW-Authenticate %q: malformed", h)
		}
		v, rest, ok = strings.Cut(v, `"`)
		if !ok {
			t.Fatalf("WWW-Authenticate %q: malformed", h)
		}
		params[strings.TrimLeft(k, ", ")] = v
		rest = strings.TrimLeft(rest, ", ")
	}
	return params
}

// fetchToken follows a challenge to its token endpoint, as a client does.
func fetchToken(t *testing.T, c *http.Client, ch map[string]string) string {
	t.Helper()
	q := url.Values{"service": {ch["service"]}}
	if ch["scope"] != "" {
		q.Set("scope", ch["scope"])
	}
	resp, body := get(t, c, ch["realm"]+"?"+q.Encode())
	wantStatus(t, resp, http.StatusOK)
	var tr struct {
		Token     string `json:"token"`
		ExpiresIn int    `json:"expires_in"`
	}
	if err := json.Unmarshal(body, &tr); err != nil || tr.Token == "" || tr.ExpiresIn < 1 {
		t.Fatalf("token response %s: %v", body, err)
	}
	return tr.Token
}

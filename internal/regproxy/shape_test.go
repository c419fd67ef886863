package regproxy

import (
	"bytes"
	"net/http"
	"sync"
	"testing"
	"time"
)

// within checks a measured duration against want with a wide tolerance:
// these are sanity checks of the link model, not benchmarks.
func within(t *testing.T, what string, got, want time.Duration) {
	t.Helper()
	lo, hi := want*6/10, want*14/10
	if got < lo || got > hi {
		t.Errorf("%s took %v, want %v ±40%%", what, got.Round(time.Millisecond), want)
	} else {
		t.Logf("%s took %v (model: %v)", what, got.Round(time.Millisecond), want)
	}
}

func TestBandwidth(t *testing.T) {
	if testing.Short() {
		t.Skip("timing check; skipped with -short")
	}
	p := startProxy(t)
	c := newClient(t)
	data := randomBytes(5_000_000)
	dgst, _ := pushBlob(t, c, p.URL(), "regproxy/bandwidth", data)
	blobURL := p.URL() + "/v2/regproxy/bandwidth/blobs/" + dgst.String()
	get(t, c, p.URL()+"/v2/") // open the connection before timing

	p.SetLink(0, 40_000_000)
	if rtt, bw := p.Link(); rtt != 0 || bw != 40_000_000 {
		t.Errorf("Link() = %v, %d after SetLink(0, 40e6)", rtt, bw)
	}
	start := time.Now()
	resp, got := get(t, c, blobURL)
	wantStatus(t, resp, http.StatusOK)
	if !bytes.Equal(got, data) {
		t.Fatal("shaped blob differs")
	}
	within(t, "5 MB at 40 Mbit/s", time.Since(start), time.Second)

	// The cap is shared: two bodies at once take as long as both in a row.
	p.SetLink(0, 80_000_000)
	start = time.Now()
	var wg sync.WaitGroup
	for range 2 {
		wg.Go(func() {
			resp, got := get(t, newClient(t), blobURL)
			if resp.StatusCode != http.StatusOK || !bytes.Equal(got, data) {
				t.Errorf("concurrent shaped GET: %s, %d bytes", resp.Status, len(got))
			}
		})
	}
	wg.Wait()
	within(t, "2 × 5 MB at once at 80 Mbit/s", time.Since(start), time.Second)
}

func TestRTT(t *testing.T) {
	if testing.Short() {
		t.Skip("timing check; skipped with -short")
	}
	const rtt = 50 * time.Millisecond
	p := startProxy(t, WithRTT(rtt))
	c := newClient(t)

	start := time.Now()
	get(t, c, p.URL()+"/v2/")
	within(t, "first request on a new connection (handshake + request)", time.Since(start), 2*rtt)

	const n = 5
	start = time.Now()
	for range n {
		resp, _ := get(t, c, p.URL()+"/v2/")
		wantStatus(t, resp, http.StatusOK)
	}
	within(t, "a request on an open connection", time.Since(start)/n, rtt)

	p.SetLink(0, 0)
	start = time.Now()
	get(t, c, p.URL()+"/v2/")
	if d := time.Since(start); d > rtt/2 {
		t.Errorf("request after SetLink(0, 0) took %v", d)
	}
}

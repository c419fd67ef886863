package remote

import (
	"context"
	"io"
	"sync"
	"testing"

	"github.com/lazypull/lazypull/internal/regproxy"
)

// The requests of one pull share connections: resolving, fetching the
// manifest and the config, and the ranged reads of its layers open one
// connection to the registry between them, not one each (a TCP and TLS
// handshake, and a token, per request).
func TestRequestsShareConnections(t *testing.T) {
	ref, layer, _ := pushedLayer(t)
	var mu sync.Mutex
	var requests, newConns int
	p, err := regproxy.Start(hostOf(t, ref), regproxy.WithRequestHook(func(r regproxy.RequestRecord) {
		mu.Lock()
		defer mu.Unlock()
		requests++
		if r.NewConn {
			newConns++
		}
	}))
	if err != nil {
		t.Fatal(err)
	}
	closeProxy := sync.OnceValue(p.Close)
	defer closeProxy()
	ref = p.Addr() + ref[len(hostOf(t, ref)):]

	ctx := context.Background()
	opts := Options{PlainHTTP: true, HostsDir: t.TempDir()}
	for range 2 { // the snapshotter resolves again what the pull resolved
		resolver := NewResolver(ctx, opts)
		_, desc, err := resolver.Resolve(ctx, ref)
		if err != nil {
			t.Fatal(err)
		}
		fetcher, err := resolver.Fetcher(ctx, ref)
		if err != nil {
			t.Fatal(err)
		}
		rc, err := fetcher.Fetch(ctx, desc)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadAll(rc); err != nil {
			t.Fatal(err)
		}
		rc.Close()
	}
	for range 3 { // one blob per layer, each read in turn
		b, err := OpenBlob(ctx, ref, layer, opts, BlobOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if err := b.FetchAt(ctx, make([]byte, 100), 0); err != nil {
			t.Fatal(err)
		}
	}
	// The hook runs as a handler returns, which can be just after the
	// client read the last byte; closing waits for every handler.
	if err := closeProxy(); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if requests < 7 {
		t.Fatalf("%d requests reached the registry, want at least 7", requests)
	}
	if newConns != 1 {
		t.Errorf("%d requests opened %d connections, want 1", requests, newConns)
	}
}

func hostOf(t *testing.T, ref string) string {
	t.Helper()
	for i := range len(ref) {
		if ref[i] == '/' {
			return ref[:i]
		}
	}
	t.Fatalf("reference %s names no host", ref)
	return ""
}

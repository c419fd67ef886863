package service

import (
	"context"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"testing"

	"github.com/lazypull/lazypull/cache"
)

// getSocket returns the status and body of a GET of path from the server
// on the unix socket sock.
func getSocket(t *testing.T, sock, path string) (int, string) {
	t.Helper()
	client := &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", sock)
		},
	}}
	defer client.CloseIdleConnections()
	resp, err := client.Get("http://lazypull" + path)
	if err != nil {
		t.Fatalf("GET %s from %s: %v", path, sock, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}

// Metrics and profiles are served each on its own address: the cache's
// metrics on metrics_address, profiles on debug_address only.
func TestServeMetricsAndDebug(t *testing.T) {
	c, err := cache.New(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	dir := t.TempDir()
	cfg := DefaultConfig()
	cfg.MetricsAddress = filepath.Join(dir, "metrics.sock")
	if err := serveMetrics(ctx, cfg, c); err != nil {
		t.Fatal(err)
	}
	if code, body := getSocket(t, cfg.MetricsAddress, "/metrics"); code != http.StatusOK || !strings.Contains(body, "lazypull_cache_bytes") || !strings.Contains(body, "lazypull_early_held_bytes 0") {
		t.Errorf("/metrics: %d %q", code, body)
	}
	if code, _ := getSocket(t, cfg.MetricsAddress, "/debug/pprof/"); code != http.StatusNotFound {
		t.Errorf("the metrics address answers /debug/pprof/ with %d, want 404", code)
	}

	cfg.MetricsAddress = ""
	cfg.DebugAddress = filepath.Join(dir, "debug.sock")
	if err := serveMetrics(ctx, cfg, c); err != nil {
		t.Fatal(err)
	}
	if code, body := getSocket(t, cfg.DebugAddress, "/debug/pprof/"); code != http.StatusOK || !strings.Contains(body, "goroutine") {
		t.Errorf("/debug/pprof/ on debug_address: %d %q", code, body)
	}
}

package metrics

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// get returns the status and body of a GET of path from the server at
// addr (TCP or a unix socket).
func get(t *testing.T, addr net.Addr, path string) (int, string) {
	t.Helper()
	client := &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, addr.Network(), addr.String())
		},
	}}
	defer client.CloseIdleConnections()
	resp, err := client.Get("http://lazypull" + path)
	if err != nil {
		t.Fatalf("GET %s from %s: %v", path, addr, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("GET %s from %s: %v", path, addr, err)
	}
	return resp.StatusCode, string(body)
}

func TestMetricsServesNoProfiles(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	addr, err := Serve(ctx, "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	if code, body := get(t, addr, "/metrics"); code != http.StatusOK || !strings.Contains(body, "lazypull_mounted_layers") {
		t.Errorf("/metrics: %d %q", code, body)
	}
	for _, p := range []string{"/debug/pprof/", "/debug/pprof/profile?seconds=1", "/debug/pprof/trace", "/debug/pprof/heap"} {
		if code, _ := get(t, addr, p); code != http.StatusNotFound {
			t.Errorf("the metrics address answers %s with %d, want 404", p, code)
		}
	}
}

func TestDebugServesProfiles(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	addr, err := ServeDebug(ctx, "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	if code, body := get(t, addr, "/debug/pprof/"); code != http.StatusOK || !strings.Contains(body, "goroutine") {
		t.Errorf("/debug/pprof/: %d %q", code, body)
	}
	if code, body := get(t, addr, "/debug/pprof/profile?seconds=1"); code != http.StatusOK || len(body) == 0 {
		t.Errorf("a one-second CPU profile: %d, %d bytes", code, len(body))
	}
	if code, _ := get(t, addr, "/metrics"); code != http.StatusNotFound {
		t.Errorf("the debug address answers /metrics with %d, want 404", code)
	}
}

func TestCheckLocal(t *testing.T) {
	for _, addr := range []string{"127.0.0.1:9110", "127.1.2.3:1", "[::1]:9110", "localhost:9110", "/run/lazypull/metrics.sock"} {
		if err := CheckLocal(addr); err != nil {
			t.Errorf("CheckLocal(%q): %v", addr, err)
		}
	}
	for _, addr := range []string{":9110", "0.0.0.0:9110", "[::]:9110", "10.1.2.3:9110", "metrics.example:9110"} {
		if err := CheckLocal(addr); !errors.Is(err, ErrRemote) {
			t.Errorf("CheckLocal(%q) = %v, want ErrRemote", addr, err)
		}
	}
	for _, addr := range []string{"127.0.0.1", "metrics.sock"} {
		if err := CheckLocal(addr); err == nil || errors.Is(err, ErrRemote) {
			t.Errorf("CheckLocal(%q) = %v, want a malformed-address error", addr, err)
		}
	}
}

func TestRemoteRefusedUnlessAllowed(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	for _, addr := range []string{"0.0.0.0:0", ":0"} {
		if _, err := Serve(ctx, addr); !errors.Is(err, ErrRemote) {
			t.Errorf("Serve(%q) = %v, want ErrRemote", addr, err)
		}
		if _, err := ServeDebug(ctx, addr); !errors.Is(err, ErrRemote) {
			t.Errorf("ServeDebug(%q) = %v, want ErrRemote", addr, err)
		}
	}
	addr, err := Serve(ctx, "0.0.0.0:0", AllowRemote())
	if err != nil {
		t.Fatalf("Serve with AllowRemote: %v", err)
	}
	if code, _ := get(t, addr, "/metrics"); code != http.StatusOK {
		t.Errorf("/metrics on all interfaces: %d", code)
	}
}

func TestUnixSocketIsPrivate(t *testing.T) {
	old := syscall.Umask(0)
	defer syscall.Umask(old)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	dir := t.TempDir()
	path := filepath.Join(dir, "metrics.sock")
	addr, err := Serve(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	if addr.String() != path {
		t.Errorf("Serve listens on %s, want %s", addr, path)
	}
	fi, err := os.Lstat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Type() != os.ModeSocket || fi.Mode().Perm() != 0o600 {
		t.Errorf("socket %s has mode %v, want a socket with 0600", path, fi.Mode())
	}
	if code, _ := get(t, addr, "/metrics"); code != http.StatusOK {
		t.Errorf("/metrics on the socket: %d", code)
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 {
		t.Errorf("%s holds %d entries, want the socket alone", dir, len(entries))
	}
}

// A client that never finishes its request headers is disconnected: it
// cannot hold a connection of the process that serves every layer.
func TestSlowClientDisconnected(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	addr, err := Serve(ctx, "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	conn, err := net.Dial("tcp", addr.String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := conn.Write([]byte("GET /metrics HTTP/1.1\r\nHost: lazypull\r\n")); err != nil {
		t.Fatal(err)
	}
	// Bounds the test if the server never hangs up, far beyond the timeout.
	conn.SetReadDeadline(time.Now().Add(10 * readHeaderTimeout))
	if _, err := io.ReadAll(conn); err != nil {
		t.Errorf("the server kept a connection with unfinished headers open: %v", err)
	}
}

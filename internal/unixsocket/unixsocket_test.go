package unixsocket

import (
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// accepts tells whether lis accepts a connection made to path.
func accepts(t *testing.T, lis net.Listener, path string) bool {
	t.Helper()
	conn, err := net.Dial("unix", path)
	if err != nil {
		t.Logf("dial %s: %v", path, err)
		return false
	}
	defer conn.Close()
	got, err := lis.Accept()
	if err != nil {
		t.Logf("accept on %s: %v", path, err)
		return false
	}
	got.Close()
	return true
}

func TestPrivateWhateverTheUmask(t *testing.T) {
	old := syscall.Umask(0)
	defer syscall.Umask(old)
	dir := t.TempDir()
	path := filepath.Join(dir, "sub", "s.sock")
	lis, err := Listen(path)
	if err != nil {
		t.Fatal(err)
	}
	defer lis.Close()
	fi, err := os.Lstat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Type() != os.ModeSocket || fi.Mode().Perm() != 0o600 {
		t.Errorf("socket %s has mode %v, want a socket with 0600", path, fi.Mode())
	}
	if lis.Addr().String() != path {
		t.Errorf("listener's address %s, want %s", lis.Addr(), path)
	}
	if !accepts(t, lis, path) {
		t.Errorf("no connection through %s", path)
	}
	if entries, _ := os.ReadDir(filepath.Dir(path)); len(entries) != 1 {
		t.Errorf("%s holds %d entries, want the socket alone", filepath.Dir(path), len(entries))
	}
	if fi, err := os.Stat(filepath.Dir(path)); err != nil || fi.Mode().Perm() != 0o700 {
		t.Errorf("the directory made for the socket: %v, %v; want mode 0700", fi.Mode(), err)
	}
}

func TestStaleSocketReplaced(t *testing.T) {
	path := filepath.Join(t.TempDir(), "s.sock")
	// A process that died leaves its socket behind.
	dead, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	dead.SetUnlinkOnClose(false)
	dead.Close()
	if _, err := os.Lstat(path); err != nil {
		t.Fatalf("no stale socket to test with: %v", err)
	}
	lis, err := Listen(path)
	if err != nil {
		t.Fatalf("Listen over a stale socket: %v", err)
	}
	defer lis.Close()
	if !accepts(t, lis, path) {
		t.Errorf("no connection through %s", path)
	}
}

func TestLiveSocketOrFileKept(t *testing.T) {
	path := filepath.Join(t.TempDir(), "s.sock")
	live, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer live.Close()
	before, _ := os.Lstat(path)
	if lis, err := Listen(path); err == nil || !strings.Contains(err.Error(), "another process serves on it") {
		t.Errorf("Listen over a live socket: %v, want a refusal", err)
		if lis != nil {
			lis.Close()
		}
	}
	if after, err := os.Lstat(path); err != nil || !os.SameFile(before, after) {
		t.Errorf("the live socket was replaced or removed (%v)", err)
	}
	if !accepts(t, live, path) {
		t.Errorf("the live socket no longer accepts")
	}

	file := filepath.Join(t.TempDir(), "notes")
	os.WriteFile(file, []byte("keep me"), 0o644)
	if _, err := Listen(file); err == nil || !strings.Contains(err.Error(), "not a socket") {
		t.Errorf("Listen over a regular file: %v, want a refusal", err)
	}
	if b, _ := os.ReadFile(file); string(b) != "keep me" {
		t.Errorf("the regular file was changed: %q", b)
	}
}

func TestCloseRemovesOnlyItsOwnSocket(t *testing.T) {
	path := filepath.Join(t.TempDir(), "s.sock")
	lis, err := Listen(path)
	if err != nil {
		t.Fatal(err)
	}
	lis.Close()
	if _, err := os.Lstat(path); !os.IsNotExist(err) {
		t.Errorf("the socket is still there after Close: %v", err)
	}

	first, err := Listen(path)
	if err != nil {
		t.Fatal(err)
	}
	// A successor takes the path (as after removing a socket it thought
	// stale); the first listener's Close must leave it.
	os.Remove(path)
	second, err := Listen(path)
	if err != nil {
		t.Fatal(err)
	}
	defer second.Close()
	first.Close()
	if !accepts(t, second, path) {
		t.Errorf("closing the first listener removed its successor's socket")
	}
}

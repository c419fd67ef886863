package e2e

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/lazypull/lazypull/fusemanager"
	"github.com/lazypull/lazypull/internal/testenv"
)

// daemon runs the built lazypull-snapshotter with args and returns its
// exit code and standard error.
func daemon(t *testing.T, bin string, args ...string) (int, string) {
	t.Helper()
	cmd := exec.Command(filepath.Join(bin, "lazypull-snapshotter"), args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	err := cmd.Run()
	if exit, ok := err.(*exec.ExitError); ok {
		return exit.ExitCode(), stderr.String()
	}
	if err != nil {
		t.Fatal(err)
	}
	return 0, stderr.String()
}

func buildCommands(t *testing.T) string {
	t.Helper()
	bin := t.TempDir()
	if err := testenv.BuildCommands(bin); err != nil {
		t.Fatal(err)
	}
	return bin
}

func TestDaemonRefusesBadConfig(t *testing.T) {
	bin := buildCommands(t)
	dir := t.TempDir()
	config := filepath.Join(dir, "config.toml")
	os.WriteFile(config, []byte("[snapshotter]\nasync_removal = true\n"), 0o600)
	code, stderr := daemon(t, bin, "--config", config, "--root", filepath.Join(dir, "root"), "--address", filepath.Join(dir, "s.sock"))
	if code == 0 || !strings.Contains(stderr, `unknown key "snapshotter.async_removal"`) || !strings.Contains(stderr, config) {
		t.Errorf("unknown key: exit %d, stderr %q; want a failure naming the key and the file", code, stderr)
	}
	code, stderr = daemon(t, bin, "--config", config+".absent", "--log-level", "chatty", "--root", filepath.Join(dir, "root"))
	if code == 0 || !strings.Contains(stderr, `log_level "chatty"`) {
		t.Errorf("bad --log-level: exit %d, stderr %q", code, stderr)
	}
	if _, err := os.Stat(filepath.Join(dir, "root")); !os.IsNotExist(err) {
		t.Errorf("a daemon that refused its configuration created its root: %v", err)
	}
}

// TestDaemonLifecycle checks the daemon as an operator meets it: a second
// instance on the same root is refused by name, SIGTERM shuts down cleanly,
// and a socket left by a SIGKILLed daemon does not stop the next one.
func TestDaemonLifecycle(t *testing.T) {
	bin := buildCommands(t)
	dir := t.TempDir()
	root, sock := filepath.Join(dir, "root"), filepath.Join(dir, "lazypull.sock")
	args := []string{"--config", filepath.Join(dir, "absent.toml"), "--root", root, "--address", sock}
	// The daemon starts a FUSE manager that outlives it, by design.
	t.Cleanup(func() {
		if err := fusemanager.Stop(root, 10*time.Second); err != nil {
			t.Error(err)
		}
	})

	first := startDaemon(t, bin, sock, args...)
	code, stderr := daemon(t, bin, append(args[:len(args):len(args)], "--address", filepath.Join(dir, "other.sock"))...)
	want := fmt.Sprintf("root %s is in use by another lazypull-snapshotter (pid %d)", root, first.Process.Pid)
	if code == 0 || !strings.Contains(stderr, want) {
		t.Errorf("second instance: exit %d, stderr %q; want %q", code, stderr, want)
	}

	first.Process.Signal(syscall.SIGTERM)
	if err := waitExit(first, 10*time.Second); err != nil {
		t.Errorf("after SIGTERM: %v", err)
	}
	if _, err := os.Stat(sock); !os.IsNotExist(err) {
		t.Errorf("socket left after SIGTERM: %v", err)
	}

	second := startDaemon(t, bin, sock, args...)
	second.Process.Kill()
	waitExit(second, 10*time.Second)
	if _, err := os.Stat(sock); err != nil {
		t.Fatalf("a killed daemon should leave its socket for this test: %v", err)
	}
	third := startDaemon(t, bin, sock, args...)
	third.Process.Signal(syscall.SIGTERM)
	if err := waitExit(third, 10*time.Second); err != nil {
		t.Errorf("daemon started over a stale socket: %v", err)
	}
}

func startDaemon(t *testing.T, bin, sock string, args ...string) *exec.Cmd {
	t.Helper()
	cmd := exec.Command(filepath.Join(bin, "lazypull-snapshotter"), args...)
	stderr := &lockedBuffer{}
	cmd.Stderr = stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if strings.Contains(stderr.String(), "is serving") {
			return cmd
		}
		if time.Now().After(deadline) {
			t.Fatalf("daemon did not start; stderr:\n%s", stderr.String())
		}
	}
}

func waitExit(cmd *exec.Cmd, timeout time.Duration) error {
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil && !strings.Contains(err.Error(), "killed") {
			return fmt.Errorf("exited with %v", err)
		}
		return nil
	case <-time.After(timeout):
		return fmt.Errorf("still running after %v", timeout)
	}
}

// lockedBuffer is a bytes.Buffer that a running command may write while
// the test reads it.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

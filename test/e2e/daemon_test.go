package e2e

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
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

	// Another root on the same socket: refused once its manager is up,
	// which it then stops.
	other := filepath.Join(dir, "other")
	code, stderr = daemon(t, bin, "--config", args[1], "--root", other, "--address", sock)
	if code == 0 || !strings.Contains(stderr, sock) {
		t.Errorf("a second daemon on a socket in use: exit %d, stderr %q", code, stderr)
	}
	if pid := managerRunning(other); pid != 0 {
		t.Errorf("the refused daemon left its FUSE manager running (pid %d)", pid)
		syscall.Kill(pid, syscall.SIGKILL)
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

	// The manager outlived the three daemons; --stop-fuse-manager (the
	// systemd unit's ExecStop) stops it and waits, and with none running
	// has nothing to do.
	if managerRunning(root) == 0 {
		t.Fatal("no FUSE manager runs after the daemons stopped")
	}
	for range 2 {
		if code, stderr := daemon(t, bin, "--stop-fuse-manager", "--root", root, "--config", args[1]); code != 0 {
			t.Errorf("--stop-fuse-manager: exit %d, stderr %q", code, stderr)
		}
		if pid := managerRunning(root); pid != 0 {
			t.Errorf("the FUSE manager (pid %d) runs after --stop-fuse-manager returned", pid)
		}
	}
}

// managerRunning is the pid of the FUSE manager serving root, or 0 if none
// runs (a zombie's cmdline is empty).
func managerRunning(root string) int {
	b, err := os.ReadFile(fusemanager.PIDPath(root))
	if err != nil {
		return 0
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if pid == 0 || !bytes.Contains(cmdline, []byte(fusemanager.Subcommand)) {
		return 0
	}
	return pid
}

// TestSystemdUnits checks the units under deploy/systemd with systemd's
// own checker (keys, values, executables), pointed at the built binaries.
func TestSystemdUnits(t *testing.T) {
	analyze := testenv.NeedBinary(t, "systemd-analyze")
	bin := buildCommands(t)
	units, err := filepath.Glob("../../deploy/systemd/*.service")
	if err != nil || len(units) != 2 {
		t.Fatalf("units under deploy/systemd: %v %v", units, err)
	}
	dir := t.TempDir()
	var paths []string
	for _, u := range units {
		b, err := os.ReadFile(u)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Contains(b, []byte("/usr/local/bin/lazypull-snapshotter")) {
			t.Errorf("%s does not run /usr/local/bin/lazypull-snapshotter", u)
		}
		path := filepath.Join(dir, filepath.Base(u))
		paths = append(paths, path)
		os.WriteFile(path, bytes.ReplaceAll(b, []byte("/usr/local/bin/"), []byte(bin+"/")), 0o644)
	}
	// It warns about what it ignores (a misspelt key or value) and still
	// exits 0: any output is a failure.
	out, err := exec.Command(analyze, append([]string{"verify"}, paths...)...).CombinedOutput()
	if err != nil || len(out) > 0 {
		t.Errorf("systemd-analyze verify: %v\n%s", err, out)
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

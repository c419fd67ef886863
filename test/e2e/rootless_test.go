package e2e

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/lazypull/lazypull/internal/testenv"
)

// TestRootless: containerd and lazypull run as an unprivileged user, in
// the user and mount namespaces of containerd's rootless recipe
// (rootlesskit; our daemon joins them with nsenter). An eStargz image
// mounts lazily there (FUSE in the user namespace, overlay with
// userxattr) and its container prints what it should; passthrough is off,
// and lazypull status says why.
func TestRootless(t *testing.T) { testenv.ForEachContainerd(t, testRootless) }

func testRootless(t *testing.T, containerd testenv.Option) {
	env := testenv.New(t, containerd, testenv.WithRootless())
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	plain, err := env.PushHello(ctx)
	if err != nil {
		t.Fatal(err)
	}
	ref := env.Registry.Host + "/hello:rootless"
	if _, err := lazypull(t, env.BinDir, "convert", "-q", "docker://"+plain, "docker://"+ref); err != nil {
		t.Fatal(err)
	}
	out, err := pullLazy(t, env, ref)
	if err != nil {
		t.Fatal(err)
	}
	defer env.Containerd.Ctr(context.Background(), "images", "rm", "--sync", ref)
	if n := strings.Count(out, "mounted lazily"); n != 2 {
		t.Errorf("rootless, %d of 2 layers mounted lazily:\n%s\nthe daemon's log:\n%s", n, out, grepLog(t, env.Daemon.Log, "not mounted remotely"))
	}
	// No cgroup: the user has none delegated to it (cgroup v1 here).
	got, err := env.Containerd.Ctr(ctx, "run", "--rm", "--cgroup", "", "--cpu-shares", "0", "--snapshotter", "lazypull", ref, ctrID(env, "rootless"))
	if err != nil {
		t.Fatal(err)
	}
	if got != testenv.HelloOutput {
		t.Errorf("the rootless container printed:\n%s\nwant:\n%s", got, testenv.HelloOutput)
	}
	status, err := lazypull(t, env.BinDir, "status", "--root", env.DaemonRoot, "--address", env.DaemonSocket)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(status, "FUSE passthrough: off: in a user namespace") || !strings.Contains(status, "2 layers mounted") {
		t.Errorf("lazypull status of the rootless daemon:\n%s", status)
	}

	// The composefs modes need metacopy, which overlayfs refuses with
	// userxattr: a daemon configured for them says so and exits.
	dir := filepath.Join(env.Dir, "composefs")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	os.Chown(dir, env.Rootless.UID, env.Rootless.GID)
	config := filepath.Join(dir, "config.toml")
	os.WriteFile(config, []byte("[composefs]\nenable = true\n"), 0o644)
	// One that started instead would serve until this ends.
	refuse, stop := context.WithTimeout(ctx, 30*time.Second)
	defer stop()
	cmd, err := env.Rootless.Command(refuse, filepath.Join(env.BinDir, "lazypull-snapshotter"),
		"--config", config, "--root", filepath.Join(dir, "root"), "--address", filepath.Join(dir, "lazypull.sock"))
	if err != nil {
		t.Fatal(err)
	}
	b, err := cmd.CombinedOutput()
	if err == nil || !strings.Contains(string(b), "the composefs mode needs real root") {
		t.Errorf("a rootless daemon with composefs enabled: %v\n%s", err, b)
	}
	if pid := managerRunning(filepath.Join(dir, "root")); pid != 0 {
		t.Errorf("the refused daemon left its FUSE manager running (pid %d)", pid)
		syscall.Kill(pid, syscall.SIGKILL)
	}
}

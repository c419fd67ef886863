package e2e

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/lazypull/lazypull/internal/testenv"
)

// TestContainerSurvivesDaemonKill runs a container that keeps reading its
// lazily mounted files, SIGKILLs the daemon and starts it again meanwhile:
// the container must keep reading the right bytes (including files first
// read after the kill), and a new container must start afterwards.
func TestContainerSurvivesDaemonKill(t *testing.T) {
	testenv.ForEachContainerd(t, testContainerSurvivesDaemonKill)
}

func testContainerSurvivesDaemonKill(t *testing.T, containerd testenv.Option) {
	env := testenv.New(t, containerd, testenv.WithDaemonConfig("[fetch]\nbackground = false\n"))
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	lazy := pushLazyHello(t, ctx, env)
	if out, err := lazypull(t, env.BinDir, "pull", "--address", env.Containerd.Address, "--namespace", testenv.Namespace, lazy); err != nil || strings.Count(out, "mounted lazily") != 2 {
		t.Fatalf("pull: %v\n%s", err, out)
	}

	type result struct {
		out string
		err error
	}
	done := make(chan result, 1)
	go func() {
		// /data first, then /opt: /opt/unused.bin is first read well
		// after the kill below.
		out, err := env.Containerd.Ctr(ctx, "run", "--rm", "--snapshotter", "lazypull", lazy, "reader",
			"/hello", "--for", "4s", "/data", "/opt")
		done <- result{out, err}
	}()
	time.Sleep(time.Second)
	env.KillDaemon()
	time.Sleep(500 * time.Millisecond)
	if err := env.StartDaemon(); err != nil {
		t.Fatal(err)
	}
	r := <-done
	if r.err != nil || !strings.HasPrefix(r.out, "stable over") {
		t.Fatalf("the container across a daemon kill: %v\n%s", r.err, r.out)
	}
	out, err := env.Containerd.Ctr(ctx, "run", "--rm", "--snapshotter", "lazypull", lazy, "after")
	if err != nil || out != testenv.HelloOutput {
		t.Errorf("a new container after the restart: %v\n%s", err, out)
	}
}

// TestRegistryGone: after the registry stops, files a container already
// read stay readable; a file never read fails with an I/O error (never
// wrong or empty bytes), and the layer's state file says why.
func TestRegistryGone(t *testing.T) { testenv.ForEachContainerd(t, testRegistryGone) }

func testRegistryGone(t *testing.T, containerd testenv.Option) {
	env := testenv.New(t, containerd, testenv.WithDaemonConfig("[fetch]\nbackground = false\nmax_retries = 1\nrequest_timeout = \"5s\"\n"))
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	lazy := pushLazyHello(t, ctx, env)
	if _, err := lazypull(t, env.BinDir, "pull", "--address", env.Containerd.Address, "--namespace", testenv.Namespace, lazy); err != nil {
		t.Fatal(err)
	}
	if out, err := env.Containerd.Ctr(ctx, "run", "--rm", "--snapshotter", "lazypull", lazy, "first"); err != nil || out != testenv.HelloOutput {
		t.Fatalf("first run: %v\n%s", err, out)
	}
	if err := env.Registry.Stop(5 * time.Second); err != nil {
		t.Fatal(err)
	}
	if out, err := env.Containerd.Ctr(ctx, "run", "--rm", "--snapshotter", "lazypull", lazy, "cached"); err != nil || out != testenv.HelloOutput {
		t.Errorf("what was read before runs without the registry: %v\n%s", err, out)
	}
	out, err := env.Containerd.Ctr(ctx, "run", "--rm", "--snapshotter", "lazypull", lazy, "uncached", "/hello", "--for", "0s", "/opt")
	if err == nil || !strings.Contains(out, "input/output error") {
		t.Errorf("reading a never-fetched file without the registry: %v\n%s", err, out)
	}
	status, err := lazypull(t, env.BinDir, "status", "--root", env.DaemonRoot)
	if err != nil || !strings.Contains(status, "last error") {
		t.Errorf("status does not report the fetch error: %v\n%s", err, status)
	}
}

// pushLazyHello pushes the test image and its eStargz conversion, and
// returns the converted image's reference.
func pushLazyHello(t *testing.T, ctx context.Context, env *testenv.Env) string {
	t.Helper()
	ref, err := env.PushHello(ctx)
	if err != nil {
		t.Fatal(err)
	}
	lazy := env.Registry.Host + "/hello:esgz"
	if _, err := lazypull(t, env.BinDir, "convert", "-q", "docker://"+ref, "docker://"+lazy); err != nil {
		t.Fatal(err)
	}
	return lazy
}

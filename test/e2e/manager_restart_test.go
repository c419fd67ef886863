package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/lazypull/lazypull/fusemanager"
	"github.com/lazypull/lazypull/internal/testenv"
)

// TestDaemonRestartsKilledManager SIGKILLs the FUSE manager, as the OOM
// killer would, while a container reads its lazily mounted layers. The
// daemon must start a new manager that mounts the image's layers again,
// so that a new container of the image starts and reads the right bytes.
//
// The running container's lazy layers die with the manager: its FUSE
// sessions were held by the killed process, so its next read fails with
// ENOTCONN. (Keeping them would take the /dev/fuse descriptors held
// outside the manager and a successor that serves the kernel's existing
// node ids; that is not built.)
func TestDaemonRestartsKilledManager(t *testing.T) {
	testenv.ForEachContainerd(t, testDaemonRestartsKilledManager)
}

func testDaemonRestartsKilledManager(t *testing.T, containerd testenv.Option) {
	env := testenv.New(t, containerd, testenv.WithDaemonConfig("[fetch]\nbackground = false\n"))
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	lazy := pushLazyHello(t, ctx, env)
	if out, err := pullLazy(t, env, lazy); err != nil || strings.Count(out, "mounted lazily") != 2 {
		t.Fatalf("pull: %v\n%s", err, out)
	}
	before := managerStatus(t, env)
	if len(before.Layers) != 2 {
		t.Fatalf("the manager serves %d layers after the pull, want 2", len(before.Layers))
	}

	type result struct {
		out string
		err error
	}
	done := make(chan result, 1)
	go func() {
		out, err := env.Containerd.Ctr(ctx, "run", "--rm", "--snapshotter", "lazypull", lazy, "reader",
			"/hello", "--for", "60s", "/data", "/opt")
		done <- result{out, err}
	}()
	// Once its program runs (from the lazy layer), it reads there.
	waitUntil(t, ctx, "the reader container runs its program", func() error {
		out, err := env.Containerd.Ctr(ctx, "task", "ls")
		if err != nil {
			return err
		}
		for _, line := range strings.Split(out, "\n") {
			if f := strings.Fields(line); len(f) == 3 && f[0] == "reader" && f[2] == "RUNNING" {
				cmdline, err := os.ReadFile("/proc/" + f[1] + "/cmdline")
				if err != nil || !bytes.HasPrefix(cmdline, []byte("/hello\x00--for")) {
					return fmt.Errorf("task pid %s runs %q (%v)", f[1], cmdline, err)
				}
				return nil
			}
		}
		return fmt.Errorf("no running reader task:\n%s", out)
	})

	pid := lockedPID(t, env.DaemonRoot)
	if pid != before.PID {
		t.Fatalf("lock file holds pid %d, status says %d", pid, before.PID)
	}
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatalf("kill the fuse manager (pid %d): %v", pid, err)
	}

	// A new manager, serving both layers again.
	var after fusemanager.StatusReply
	waitUntil(t, ctx, "a new fuse manager serves the image's layers", func() error {
		st, err := statusOf(t, env)
		if err != nil {
			return err
		}
		if st.PID == pid || len(st.Layers) != 2 {
			return fmt.Errorf("manager pid %d serves %d layers", st.PID, len(st.Layers))
		}
		after = st
		return nil
	})
	if got := lockedPID(t, env.DaemonRoot); got != after.PID {
		t.Errorf("lock file holds pid %d, the new manager is %d", got, after.PID)
	}
	for i, l := range after.Layers {
		if l.Mountpoint != before.Layers[i].Mountpoint || l.Digest != before.Layers[i].Digest {
			t.Errorf("layer %d after the restart: %s at %s, want %s at %s", i, l.Digest, l.Mountpoint, before.Layers[i].Digest, before.Layers[i].Mountpoint)
		}
	}
	if exited, err := env.Daemon.Exited(); exited {
		t.Fatalf("the daemon exited: %v", err)
	}
	daemonLog := env.Daemon.LogTail()
	if !strings.Contains(daemonLog, "fuse manager died") || !strings.Contains(daemonLog, "signal: killed") {
		t.Errorf("the daemon's log does not say the manager was killed:\n%s", daemonLog)
	}

	// What was running lost its lazy layers.
	r := <-done
	// ENOTCONN; ECONNABORTED for a request the dead manager had taken;
	// SIGBUS (exit status 135) when a page of the program itself, which
	// runs from the lazy layer, could not be read.
	lost := strings.Contains(r.out, "transport endpoint is not connected") ||
		strings.Contains(r.out, "software caused connection abort") ||
		(r.err != nil && strings.Contains(r.err.Error(), "exit status 135"))
	if r.err == nil || !lost {
		t.Errorf("the container running across the manager's death: %v\n%s\n(want ENOTCONN: its FUSE sessions died with the manager; if it now survives, say so in this test)", r.err, r.out)
	}

	// New containers of the image start and read the right bytes.
	out, err := env.Containerd.Ctr(ctx, "run", "--rm", "--snapshotter", "lazypull", lazy, "after")
	if err != nil || out != testenv.HelloOutput {
		t.Errorf("a new container after the restart: %v\n%s", err, out)
	}
	out, err = env.Containerd.Ctr(ctx, "run", "--rm", "--snapshotter", "lazypull", lazy, "after-opt", "/hello", "--for", "0s", "/opt")
	if err != nil || !strings.HasPrefix(out, "stable over 1 rounds of 1 files") {
		t.Errorf("reading a file first read after the restart: %v\n%s", err, out)
	}
}

// statusOf asks the FUSE manager for its layers, through `lazypull status`.
func statusOf(t *testing.T, env *testenv.Env) (fusemanager.StatusReply, error) {
	t.Helper()
	var st fusemanager.StatusReply
	out, err := lazypull(t, env.BinDir, "status", "--root", env.DaemonRoot, "--json")
	if err != nil {
		return st, err
	}
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		return st, fmt.Errorf("lazypull status --json: %w\n%s", err, out)
	}
	return st, nil
}

func managerStatus(t *testing.T, env *testenv.Env) fusemanager.StatusReply {
	t.Helper()
	st, err := statusOf(t, env)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// lockedPID reads the pid of the manager from its lock file.
func lockedPID(t *testing.T, root string) int {
	t.Helper()
	b, err := os.ReadFile(fusemanager.PIDPath(root))
	if err != nil {
		t.Fatal(err)
	}
	pid, err := strconv.Atoi(string(bytes.TrimSpace(b)))
	if err != nil {
		t.Fatalf("lock file %s: %v", fusemanager.PIDPath(root), err)
	}
	return pid
}

// waitUntil polls cond until it holds; it fails the test with cond's last
// error when ctx ends first.
func waitUntil(t *testing.T, ctx context.Context, what string, cond func() error) {
	t.Helper()
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		err := cond()
		if err == nil {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("waiting until %s: %v (last: %v)", what, ctx.Err(), err)
		case <-tick.C:
		}
	}
}

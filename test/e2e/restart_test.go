package e2e

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/lazypull/lazypull/internal/testenv"
)

// TestContainerSurvivesDaemonKill SIGKILLs the daemon while a container
// reads its lazily mounted files, and starts it again. The order is read
// from events, not assumed from sleeps: the container has finished a round
// of reads (each one asking the FUSE manager again) before the kill; the
// daemon is gone (reaped, its pid free) before the test looks further;
// the container then finishes whole rounds begun after the kill, all with
// the right bytes, and a file nobody had read yet is read through the
// container's own root while the daemon is dead. A new container starts
// once the daemon is back.
func TestContainerSurvivesDaemonKill(t *testing.T) {
	testenv.ForEachContainerd(t, func(t *testing.T, containerd testenv.Option) {
		testContainerSurvivesDaemonKill(t, containerd, "")
	})
}

// TestLazyComposefsContainerSurvivesDaemonKill is the same in the lazy
// composefs mode: the container's files come through the object
// filesystem, which the FUSE manager serves on while the daemon is dead.
// Against containerd 2.x alone: the mode's difference is the daemon's.
func TestLazyComposefsContainerSurvivesDaemonKill(t *testing.T) {
	testenv.Need(t, "containerd "+testenv.Containerd2.Name, testenv.Containerd2.Installed())
	testContainerSurvivesDaemonKill(t, testenv.WithContainerd(testenv.Containerd2), "[composefs]\nenable = true\nlazy = true\n")
}

func testContainerSurvivesDaemonKill(t *testing.T, containerd testenv.Option, config string) {
	env := testenv.New(t, containerd, testenv.WithDaemonConfig(config+"[fetch]\nbackground = false\n"))
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	lazy := pushLazyHello(t, ctx, env)
	if out, err := pullLazy(t, env, lazy); err != nil || strings.Count(out, "mounted lazily") != 2 {
		t.Fatalf("pull: %v\n%s", err, out)
	}
	files := helloFiles(t, env)
	var watch []string
	for _, name := range []string{"hello", "data/keep.txt", "data/added.txt"} {
		watch = append(watch, fmt.Sprintf("/%s=%x", name, sha256.Sum256(files[name])))
	}
	// The hard link reads its target's bytes.
	watch = append(watch, fmt.Sprintf("/data/hard.txt=%x", sha256.Sum256(files["data/added.txt"])))
	v := startVictim(t, ctx, env, lazy, watch)
	v.waitRounds(t, ctx, 1)

	pid := env.Daemon.PID()
	env.KillDaemon() // SIGKILL; returns once the daemon has been reaped
	if err := syscall.Kill(pid, 0); !errors.Is(err, syscall.ESRCH) {
		t.Fatalf("the daemon (pid %d) is still there after SIGKILL: %v", pid, err)
	}
	// The round under way at the kill may have begun before it: the one
	// after it began with the daemon dead.
	v.waitRounds(t, ctx, v.rounds(t)+2)

	// Without the background fetch, nothing has read /opt/unused.bin: its
	// first read, through the running container's root, is fetched by the
	// FUSE manager alone.
	root := fmt.Sprintf("/proc/%d/root", taskPID(t, ctx, env, ctrID(env, "victim")))
	got, err := os.ReadFile(filepath.Join(root, "opt/unused.bin"))
	if err != nil || !bytes.Equal(got, files["opt/unused.bin"]) {
		t.Errorf("a file first read after the daemon's death: %d bytes, want %d (%v)", len(got), len(files["opt/unused.bin"]), err)
	}

	if err := env.StartDaemon(); err != nil {
		t.Fatal(err)
	}
	// containerd's connection to the killed daemon is broken: until it
	// has connected again (after its own backoff), its calls fail with
	// "connection closed: unavailable".
	waitUntil(t, ctx, "containerd reaches the restarted daemon", func() error {
		_, err := env.Containerd.Ctr(ctx, "snapshots", "--snapshotter", "lazypull", "ls")
		return err
	})
	v.waitRounds(t, ctx, v.rounds(t)+2)
	// The exit status says whether every read was right; what it printed
	// is for the message.
	if out, err := v.stop(t); err != nil {
		t.Errorf("the container reading across the daemon's death: %v\n%s", err, out)
	}
	if out, err := runHello(t, ctx, env, lazy, "after"); err != nil || out != testenv.HelloOutput {
		t.Errorf("a new container after the restart: %v\n%s", err, out)
	}
	// The composefs mode's image mounts outlive the daemon: the image's
	// removal takes them.
	if out, err := env.Containerd.Ctr(ctx, "images", "rm", "--sync", lazy); err != nil {
		t.Errorf("remove %s: %v\n%s", lazy, err, out)
	}
}

// helloFiles is the content of each regular file of the image pushLazyHello
// pushed, by path, from the image's definition.
func helloFiles(t *testing.T, env *testenv.Env) map[string][]byte {
	t.Helper()
	// PushHello built the program there.
	img, err := testenv.HelloImage(filepath.Join(env.Dir, "hello-image", "hello"))
	if err != nil {
		t.Fatal(err)
	}
	files := map[string][]byte{}
	for _, layer := range img.Layers {
		for _, e := range layer {
			if e.Type == tar.TypeReg {
				files[e.Path] = e.Data
			}
		}
	}
	return files
}

// taskPID is the host pid of a running container's process.
func taskPID(t *testing.T, ctx context.Context, env *testenv.Env, id string) int {
	t.Helper()
	out, err := env.Containerd.Ctr(ctx, "task", "ls")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(out, "\n") {
		if f := strings.Fields(line); len(f) == 3 && f[0] == id && f[2] == "RUNNING" {
			pid, err := strconv.Atoi(f[1])
			if err != nil {
				t.Fatalf("ctr task ls: pid %q of %s: %v", f[1], id, err)
			}
			return pid
		}
	}
	t.Fatalf("no running task %s:\n%s", id, out)
	return 0
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
	if _, err := pullLazy(t, env, lazy); err != nil {
		t.Fatal(err)
	}
	if out, err := runHello(t, ctx, env, lazy, "first"); err != nil || out != testenv.HelloOutput {
		t.Fatalf("first run: %v\n%s", err, out)
	}
	if err := env.Registry.Stop(5 * time.Second); err != nil {
		t.Fatal(err)
	}
	if out, err := runHello(t, ctx, env, lazy, "cached"); err != nil || out != testenv.HelloOutput {
		t.Errorf("what was read before runs without the registry: %v\n%s", err, out)
	}
	out, err := runHello(t, ctx, env, lazy, "uncached", "--for", "0s", "/opt")
	if err == nil || !strings.Contains(out, "input/output error") {
		t.Errorf("reading a never-fetched file without the registry: %v\n%s", err, out)
	}
	status, err := lazypull(t, env.BinDir, "status", "--root", env.DaemonRoot)
	if err != nil || !strings.Contains(status, "last error") {
		t.Errorf("status does not report the fetch error: %v\n%s", err, status)
	}
}

// runHello runs the test image's hello with args (the image's own, /data,
// when none) in a new container on ref's lazy layers, and returns what it
// said. hello writes that to a bind-mounted file itself (--out) rather than
// to its standard output: Debian's ctr 1.6.20 closes its end of the output
// FIFO as soon as it learns that the task exited, before it has drained
// it, so the lines a container printed just before exiting can be lost
// while ctr still exits 0 (containerd 1.6.22 and 2.x wait for the output).
func runHello(t *testing.T, ctx context.Context, env *testenv.Env, ref, id string, args ...string) (string, error) {
	t.Helper()
	dir := filepath.Join(env.Dir, "hello-out-"+id)
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if len(args) == 0 {
		args = []string{"/data"}
	}
	_, err := env.Containerd.Ctr(ctx, append([]string{"run", "--rm", "--snapshotter", "lazypull",
		"--mount", "type=bind,src=" + dir + ",dst=/out,options=rbind:rw",
		ref, ctrID(env, id), "/hello", "--out", "/out/said"}, args...)...)
	said, rerr := os.ReadFile(filepath.Join(dir, "said"))
	return string(said), errors.Join(err, rerr)
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

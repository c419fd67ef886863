package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/lazypull/lazypull/fusefs"
	"github.com/lazypull/lazypull/internal/testenv"
)

// TestLazyRun converts the test image, pulls it with `lazypull pull` and
// runs it: the layers are mounted from the registry, the container prints
// what the image holds, and far fewer bytes than the image's are fetched.
func TestLazyRun(t *testing.T) { testenv.ForEachContainerd(t, testLazyRun) }

func testLazyRun(t *testing.T, containerd testenv.Option) {
	// Without the background fetch, what was fetched is what was needed.
	metricsAddr := freeAddr(t)
	env := testenv.New(t, containerd, testenv.WithDaemonConfig(fmt.Sprintf("metrics_address = %q\n[fetch]\nbackground = false\n", metricsAddr)))
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	ref, err := env.PushHello(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// An ordinary image falls back to download and unpack, and says why.
	out, err := pullLazy(t, env, ref)
	if err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(out, "downloaded: "); n != 2 {
		t.Errorf("an ordinary image: %d layers downloaded with a reason, want 2:\n%s", n, out)
	}
	if run, err := env.Containerd.Ctr(ctx, "run", "--rm", "--snapshotter", "lazypull", ref, "plain"); err != nil || run != testenv.HelloOutput {
		t.Errorf("the ordinary image through lazypull: %v\n%s", err, run)
	}
	// zstd:chunked keeps the layers' diff IDs, so containerd would take
	// these unpacked snapshots for the converted image's: remove them.
	if _, err := env.Containerd.Ctr(ctx, "images", "rm", "--sync", ref); err != nil {
		t.Fatal(err)
	}

	for _, format := range []string{"estargz", "zstdchunked"} {
		t.Run(format, func(t *testing.T) {
			lazy := env.Registry.Host + "/hello:" + format
			if _, err := lazypull(t, env.BinDir, "convert", "-q", "--format", format, "docker://"+ref, "docker://"+lazy); err != nil {
				t.Fatal(err)
			}
			out, err := pullLazy(t, env, lazy)
			if err != nil {
				t.Fatal(err)
			}
			if n := strings.Count(out, "mounted lazily"); n != 2 {
				t.Errorf("lazypull pull mounted %d of 2 layers lazily:\n%s", n, out)
			}
			// containerd had the manifest and config: the mounter took
			// them from its content store, not from the registry again.
			if !strings.Contains(grepLog(t, filepath.Join(env.DaemonRoot, "fusemanager.log"), "taken from containerd's content store"), lazy) {
				t.Errorf("the FUSE manager did not take %s's manifest and config from containerd's content store; the daemon says:\n%s", lazy, grepLog(t, env.Daemon.Log, "content store"))
			}
			run, err := env.Containerd.Ctr(ctx, "run", "--rm", "--snapshotter", "lazypull", lazy, "lazy-"+format)
			if err != nil {
				t.Fatal(err)
			}
			if run != testenv.HelloOutput {
				t.Errorf("the lazily pulled container printed:\n%s", run)
			}
			status, err := lazypull(t, env.BinDir, "status", "--root", env.DaemonRoot)
			if err != nil || strings.Count(status, "sha256:") != 2 {
				t.Errorf("lazypull status: %v\n%s", err, status)
			}
			checkMetrics(t, metricsAddr)
			fetched, size := layerStates(t, env)
			t.Logf("%s: fetched %d bytes of %d in its layers (%.0f%%)", format, fetched, size, float64(fetched)*100/float64(size))
			if fetched*2 > size {
				t.Errorf("fetched %d bytes of a %d-byte image: lazy pulling fetched more than half", fetched, size)
			}
			if _, err := env.Containerd.Ctr(ctx, "images", "rm", "--sync", lazy); err != nil {
				t.Fatal(err)
			}
			if m := testenv.MountsUnder(filepath.Join(env.DaemonRoot, "snapshots")); len(m) > 0 {
				t.Errorf("layers still mounted after the image was removed: %v", m)
			}
		})
	}

}

// grepLog returns the lines of the log at path that hold word.
func grepLog(t *testing.T, path, word string) string {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, line := range strings.Split(string(data), "\n") {
		if strings.Contains(line, word) {
			out = append(out, line)
		}
	}
	return strings.Join(out, "\n")
}

// layerStates adds up the state files of every mounted layer.
func layerStates(t *testing.T, env *testenv.Env) (fetched, size int64) {
	t.Helper()
	for _, path := range stateFiles(env) {
		data, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		var st fusefs.State
		if err := json.Unmarshal(data, &st); err != nil {
			t.Fatal(err)
		}
		fetched += st.FetchedBytes
		size += st.Size
	}
	if size == 0 {
		t.Fatal("no mounted layer has a state file")
	}
	return fetched, size
}

// stateFiles lists the state files of the lazily mounted layers, one each.
func stateFiles(env *testenv.Env) []string {
	var paths []string
	snaps, _ := filepath.Glob(filepath.Join(env.DaemonRoot, "snapshots", "*"))
	for _, snap := range snaps {
		// The state directory is hidden from listings: name it.
		dir := filepath.Join(snap, "fs", fusefs.StateDirName)
		files, err := os.ReadDir(dir)
		if err != nil {
			continue // not a lazily mounted layer
		}
		for _, f := range files {
			paths = append(paths, filepath.Join(dir, f.Name()))
		}
	}
	return paths
}

func freeAddr(t *testing.T) string {
	t.Helper()
	addr, err := testenv.FreeLoopbackAddr()
	if err != nil {
		t.Fatal(err)
	}
	return addr
}

// checkMetrics scrapes the FUSE manager's Prometheus endpoint.
func checkMetrics(t *testing.T, addr string) {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Errorf("scrape metrics: %v", err)
		return
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	for _, want := range []string{
		"lazypull_mounted_layers 2",
		"lazypull_registry_fetched_bytes_total{registry=",
		`lazypull_fuse_operation_seconds_count{operation="read"}`,
		`lazypull_cache_hits_total{from="disk"}`,
	} {
		if !strings.Contains(string(body), want) {
			t.Errorf("metrics lack %q", want)
		}
	}
}

// TestCtrPull pulls the eStargz image with ctr's own pull. containerd 2.x
// pulls through its transfer service, which passes the CRI labels (image,
// layer, manifest) to a proxy snapshotter that exports
// enable_remote_snapshot_annotations, as testenv's configuration does: the
// layers are mounted lazily. 1.6's ctr passes none: they are downloaded
// and unpacked. Either way the container runs.
func TestCtrPull(t *testing.T) { testenv.ForEachContainerd(t, testCtrPull) }

func testCtrPull(t *testing.T, containerd testenv.Option) {
	env := testenv.New(t, containerd, testenv.WithDaemonConfig("[fetch]\nbackground = false\n"))
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	lazy := pushLazyHello(t, ctx, env)
	if _, err := env.Containerd.Ctr(ctx, "images", "pull", "--plain-http", "--snapshotter", "lazypull", lazy); err != nil {
		t.Fatal(err)
	}
	status, err := lazypull(t, env.BinDir, "status", "--root", env.DaemonRoot)
	if err != nil {
		t.Fatal(err)
	}
	mounted, want := strings.Count(status, "sha256:"), 0
	if env.Containerd.Release.Major >= 2 {
		want = 2
	}
	if mounted != want {
		t.Errorf("ctr images pull with containerd %s: %d of 2 layers mounted lazily, want %d:\n%s", env.Containerd.Version, mounted, want, status)
	}
	if out, err := env.Containerd.Ctr(ctx, "run", "--rm", "--snapshotter", "lazypull", lazy, "ctr-pulled"); err != nil || out != testenv.HelloOutput {
		t.Errorf("the container: %v\n%s", err, out)
	}
}

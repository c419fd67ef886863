package runner

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/lazypull/lazypull/internal/testenv"
)

// TestRunEndToEnd runs one cold run of each built-in scenario, and of a
// scenario file (lazypull again, as another snapshotter), on the small
// hello image through the whole stack: registry, shaping proxy, each
// containerd release, the daemons, the background fetch and a warm start.
func TestRunEndToEnd(t *testing.T) {
	testenv.NeedRoot(t)
	for _, prog := range []string{"runc", "docker-registry", "skopeo"} {
		testenv.NeedBinary(t, prog)
	}
	testenv.NeedFUSE(t)
	again, err := LoadScenario("testdata/lazypull-again.toml")
	if err != nil {
		t.Fatal(err)
	}
	work := t.TempDir()
	hello, err := testenv.BuildHello(work)
	if err != nil {
		t.Fatal(err)
	}
	img, err := testenv.HelloImage(hello)
	if err != nil {
		t.Fatal(err)
	}
	layout := filepath.Join(work, "oci")
	if _, err := img.WriteOCILayout(layout, "v1"); err != nil {
		t.Fatal(err)
	}
	for _, containerd := range testenv.ContainerdReleases {
		t.Run("containerd-"+containerd.Name, func(t *testing.T) {
			testenv.Need(t, "containerd "+containerd.Name, containerd.Installed())
			var progress strings.Builder
			// The footprint does not depend on containerd's release:
			// measured against the one users run, it keeps the test short.
			footprint := containerd.Name == testenv.Containerd2.Name
			cfg := Config{Runs: 1, RTT: 5 * time.Millisecond, Bandwidth: 100e6, Progress: &progress,
				Scenarios: append(Scenarios(), again), Containerd: containerd, Footprint: footprint}
			rep, err := Run(context.Background(), cfg, []Image{{Name: "hello", Layout: layout, Tag: "v1", Ready: "hello from lazypull"}})
			t.Log(progress.String())
			if err != nil {
				t.Fatal(err)
			}
			if !strings.HasPrefix(rep.Containerd, containerd.Name) {
				t.Errorf("the report says containerd %q, but the run asked for %s", rep.Containerd, containerd.Name)
			}
			checkReport(t, rep, again, footprint)
		})
	}
}

// checkReport checks that every scenario of the run measured something
// true, and that the report writes.
func checkReport(t *testing.T, rep *Report, again Scenario, footprint bool) {
	t.Helper()
	if want := len(Scenarios()) + 1; len(rep.Results) != want {
		t.Fatalf("got %d results, want one per scenario: %+v", len(rep.Results), rep.Results)
	}
	for _, r := range rep.Results {
		if r.Total <= 0 || r.Requests == 0 || r.Bytes == 0 || r.Warm <= 0 || r.ImageBytes == 0 {
			t.Errorf("%s: nothing measured: %+v", r.Scenario, r)
		}
		// Once settled, every scenario has fetched the image: the lazy
		// ones in the background, each byte once.
		if r.SettledBytes < r.ImageBytes*95/100 || r.SettledBytes > r.ImageBytes*105/100 {
			t.Errorf("%s: settled after %d bytes; the image has %d", r.Scenario, r.SettledBytes, r.ImageBytes)
		}
		switch r.Scenario {
		case LazypullEStargz.Name, LazypullZstd.Name, LazypullComposefs.Name, LazypullComposefsZstd.Name, LazypullLazyComposefs.Name, LazypullEStargzProfiled.Name:
			if r.DaemonPeak == 0 || r.ManagerPeak == 0 {
				t.Errorf("%s: no peak memory: %+v", r.Scenario, r)
			}
		}
		switch r.Scenario {
		case LazypullEStargzProfiled.Name:
			// What the recorded workload read, not the 8 MiB it never
			// reads.
			if r.Bytes >= r.ImageBytes/2 {
				t.Errorf("%s: fetched %d bytes of %d before the first output: the profile fetched what the workload does not read", r.Scenario, r.Bytes, r.ImageBytes)
			}
		}
		switch r.Scenario {
		case LazypullEStargz.Name, LazypullZstd.Name, LazypullEStargzProfiled.Name:
			// The FUSE mode's lookups at least reach the manager.
			if r.FUSEOps <= 0 || r.WarmFUSEOps < 0 {
				t.Errorf("%s: FUSE operations not counted: %+v", r.Scenario, r)
			}
		case LazypullLazyComposefs.Name:
			// Settled, the stack has no FUSE in its path.
			if r.FUSEOps < 0 || r.WarmFUSEOps != 0 {
				t.Errorf("%s: %d FUSE operations in a warm start of settled layers, want 0: %+v", r.Scenario, r.WarmFUSEOps, r)
			}
		case Overlayfs.Name:
			if r.FUSEOps != -1 || r.WarmFUSEOps != -1 {
				t.Errorf("%s: FUSE operations counted for overlayfs: %+v", r.Scenario, r)
			}
		case again.Name:
			if r.DaemonPeak == 0 || r.Bytes >= r.ImageBytes {
				t.Errorf("%s: no peak memory, or not lazy: %+v", r.Scenario, r)
			}
		}
	}
	// The footprint: the built-in scenarios, the image's files on disk in
	// containerd's directories, lazypull's cache or the object store
	// (which shows the composefs mode was on).
	want := 0
	if footprint {
		want = len(Scenarios())
	}
	if len(rep.Footprints) != want {
		t.Fatalf("footprints %+v: want %d, one per built-in scenario if asked", rep.Footprints, want)
	}
	for _, fp := range rep.Footprints {
		if fp.DiskBytes == 0 || fp.Files == 0 {
			t.Errorf("%s footprint: nothing measured: %+v", fp.Scenario, fp)
		}
		// The FUSE mode's pages of what it served are its mount's, not
		// its cache files', unless passed through.
		full := fp.Scenario == Overlayfs.Name || fp.Scenario == LazypullComposefs.Name || fp.Scenario == LazypullComposefsZstd.Name
		if full && fp.PageCacheBytes == 0 {
			t.Errorf("%s footprint: no page cache after the workload ran: %+v", fp.Scenario, fp)
		}
		// A lazy composefs layer's objects go to the store once it
		// settles, its cached copies away (a local copy, done by the
		// time the footprint is measured: the link quiet for seconds).
		composefs := full && fp.Scenario != Overlayfs.Name || fp.Scenario == LazypullLazyComposefs.Name
		if objects := fp.ObjectBytes > 0; objects != composefs {
			t.Errorf("%s footprint: %d bytes in the object store", fp.Scenario, fp.ObjectBytes)
		}
		if fp.Scenario == LazypullLazyComposefs.Name && fp.DiskBytes > fp.ObjectBytes*11/10 {
			t.Errorf("%s footprint: %d bytes on disk for %d in the object store: its cache keeps a second copy", fp.Scenario, fp.DiskBytes, fp.ObjectBytes)
		}
	}
	dir := t.TempDir()
	if err := rep.Write(dir); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"results.json", "results.md", "totals.png"} {
		if _, err := os.Stat(filepath.Join(dir, f)); err != nil {
			t.Error(err)
		}
	}
}

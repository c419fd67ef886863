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

// TestRunEndToEnd runs one cold run of each scenario on the small hello
// image through the whole stack. It takes a while and needs root and the
// Debian packages, so it runs only with LAZYPULL_BENCH_E2E=1.
func TestRunEndToEnd(t *testing.T) {
	if os.Getenv("LAZYPULL_BENCH_E2E") != "1" {
		t.Skip("set LAZYPULL_BENCH_E2E=1 to run the benchmark end to end")
	}
	testenv.NeedRoot(t)
	for _, prog := range []string{"containerd", "ctr", "runc", "docker-registry", "skopeo"} {
		testenv.NeedBinary(t, prog)
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
	var progress strings.Builder
	cfg := Config{Runs: 1, RTT: 5 * time.Millisecond, Bandwidth: 100e6, Progress: &progress}
	rep, err := Run(context.Background(), cfg, []Image{{Name: "hello", Layout: layout, Tag: "v1", Ready: "hello from lazypull"}})
	t.Log(progress.String())
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Results) != 3 {
		t.Fatalf("got %d results, want one per scenario: %+v", len(rep.Results), rep.Results)
	}
	for _, r := range rep.Results {
		if r.Total <= 0 || r.Requests == 0 || r.Bytes == 0 {
			t.Errorf("%s: nothing measured: %+v", r.Scenario, r)
		}
		if lazy := r.Scenario != Overlayfs.Name; lazy && (r.DaemonPeak == 0 || r.ManagerPeak == 0) {
			t.Errorf("%s: no peak memory: %+v", r.Scenario, r)
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

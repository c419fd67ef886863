// Package e2e runs lazypull end to end against the real components:
// containerd (Debian's 1.6 and a 2.x release: testenv.ForEachContainerd runs
// each test against both), runc, docker-registry, and our daemon built from
// this tree.
package e2e

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/lazypull/lazypull/internal/testenv"
)

// TestRunContainer pulls an ordinary image through our snapshotter and runs
// it with runc: whiteouts, opaque directories and links must come out as
// the image says, and nothing may stay mounted afterwards.
func TestRunContainer(t *testing.T) { testenv.ForEachContainerd(t, testRunContainer) }

func testRunContainer(t *testing.T, containerd testenv.Option) {
	env := testenv.New(t, containerd)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	ref, err := env.PushHello(ctx)
	if err != nil {
		t.Fatal(err)
	}
	ctr := env.Containerd.Ctr
	if _, err := ctr(ctx, "images", "pull", "--plain-http", "--snapshotter", "lazypull", ref); err != nil {
		t.Fatal(err)
	}

	out, err := ctr(ctx, "run", "--rm", "--snapshotter", "lazypull", ref, "hello-1")
	if err != nil {
		t.Fatalf("run: %v\noutput:\n%s", err, out)
	}
	if out != testenv.HelloOutput {
		t.Errorf("container printed:\n%s\nwant:\n%s", out, testenv.HelloOutput)
	}

	// The layers are ours: containerd lists them under our snapshotter.
	list, err := ctr(ctx, "snapshots", "--snapshotter", "lazypull", "ls")
	if err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(list, "Committed"); n != 2 {
		t.Errorf("lazypull has %d committed snapshots, want the image's 2:\n%s", n, list)
	}
	if m := testenv.MountsUnder(env.Dir); len(m) > 0 {
		t.Errorf("mounts left after the container ended: %v", m)
	}

	// Removing the image lets containerd's garbage collector remove the
	// snapshots, and our daemon their directories.
	if _, err := ctr(ctx, "images", "rm", "--sync", ref); err != nil {
		t.Fatal(err)
	}
	if list, _ := ctr(ctx, "snapshots", "--snapshotter", "lazypull", "ls"); strings.Contains(list, "Committed") {
		t.Errorf("snapshots left after the image was removed:\n%s", list)
	}
	if dirs := snapshotDirs(t, env); len(dirs) != 0 {
		t.Errorf("snapshot directories left after the image was removed: %v", dirs)
	}
}

func snapshotDirs(t *testing.T, env *testenv.Env) []string {
	t.Helper()
	entries, err := os.ReadDir(filepath.Join(env.DaemonRoot, "snapshots"))
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	return names
}

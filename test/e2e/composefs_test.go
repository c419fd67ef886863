package e2e

import (
	"context"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/lazypull/lazypull/internal/testenv"
)

// TestComposefsRun pulls an ordinary image with the composefs mode on: each
// layer becomes a metadata image over the object store, the container reads
// what the image holds (whiteouts, opaque directories and links included),
// the layers survive a daemon restart, and removing the image removes its
// objects.
func TestComposefsRun(t *testing.T) { testenv.ForEachContainerd(t, testComposefsRun) }

func testComposefsRun(t *testing.T, containerd testenv.Option) {
	env := testenv.New(t, containerd, testenv.WithDaemonConfig("[composefs]\nenable = true\n"))
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
	run := func(name string) {
		t.Helper()
		out, err := ctr(ctx, "run", "--rm", "--snapshotter", "lazypull", ref, name)
		if err != nil {
			t.Fatalf("run: %v\noutput:\n%s", err, out)
		}
		if out != testenv.HelloOutput {
			t.Errorf("container printed:\n%s\nwant:\n%s", out, testenv.HelloOutput)
		}
	}
	run("hello-1")

	// Both layers are metadata images, mounted on their directories.
	dirs := snapshotDirs(t, env)
	images := 0
	for _, id := range dirs {
		dir := filepath.Join(env.DaemonRoot, "snapshots", id)
		if _, err := os.Stat(filepath.Join(dir, "layer.erofs")); err != nil {
			continue
		}
		images++
		var st unix.Statfs_t
		if err := unix.Statfs(filepath.Join(dir, "fs"), &st); err != nil || st.Type != unix.EROFS_SUPER_MAGIC_V1 {
			t.Errorf("snapshot %s: fs is not its EROFS image mounted (%#x, %v)", id, st.Type, err)
		}
	}
	if images != 2 {
		t.Errorf("%d of the image's 2 layers are metadata images (snapshot directories %v)", images, dirs)
	}
	if n := countObjects(t, env); n == 0 {
		t.Error("no objects in the store after pulling an image")
	}

	// The kernel keeps the images mounted across a daemon restart.
	if err := env.RestartDaemon(); err != nil {
		t.Fatal(err)
	}
	run("hello-2")

	if _, err := ctr(ctx, "images", "rm", "--sync", ref); err != nil {
		t.Fatal(err)
	}
	if dirs := snapshotDirs(t, env); len(dirs) != 0 {
		t.Errorf("snapshot directories left after the image was removed: %v", dirs)
	}
	if n := countObjects(t, env); n != 0 {
		t.Errorf("%d objects left after the only image was removed", n)
	}
	if m := testenv.MountsUnder(env.Dir); len(m) > 0 {
		t.Errorf("mounts left after the image was removed: %v", m)
	}
}

// countObjects counts the files in the composefs object store.
func countObjects(t *testing.T, env *testenv.Env) int {
	t.Helper()
	n := 0
	err := filepath.WalkDir(filepath.Join(env.DaemonRoot, "composefs", "objects"), func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.Type().IsRegular() && !strings.HasPrefix(d.Name(), ".") {
			n++
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return n
}

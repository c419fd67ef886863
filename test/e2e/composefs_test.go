package e2e

import (
	"archive/tar"
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
	if images, dirs := metadataImages(t, env); images != 2 {
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

// metadataImages counts the snapshots that are metadata images, checking
// each is mounted on its fs directory, and lists the snapshot directories.
func metadataImages(t *testing.T, env *testenv.Env) (int, []string) {
	t.Helper()
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
	return images, dirs
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

// TestComposefsImpliedDirs: an image whose upper layer creates files in
// directories its tar leaves out (nested, some present in the layer below,
// some not, some named as directories of the host) gets those directories
// in the composefs mode as containerd's overlayfs snapshotter gives them:
// the lower layer's where it has them, 0755 where not, never the host's.
func TestComposefsImpliedDirs(t *testing.T) { testenv.ForEachContainerd(t, testComposefsImpliedDirs) }

func testComposefsImpliedDirs(t *testing.T, containerd testenv.Option) {
	env := testenv.New(t, containerd, testenv.WithDaemonConfig("[composefs]\nenable = true\n"))
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()

	hello, err := testenv.BuildHello(filepath.Join(env.Dir, "implied-image"))
	if err != nil {
		t.Fatal(err)
	}
	helloData, err := os.ReadFile(hello)
	if err != nil {
		t.Fatal(err)
	}
	img := testenv.Image{
		Layers: [][]testenv.Entry{{
			{Path: "hello", Type: tar.TypeReg, Mode: 0o755, Data: helloData},
			{Path: "a", Type: tar.TypeDir, Mode: 0o750},
			testenv.File("a/kept", "from the base layer"),
			{Path: "srv", Type: tar.TypeDir, Mode: 0o711},
			{Path: "srv/deep", Type: tar.TypeDir, Mode: 0o700},
		}, {
			// No directory entries: every directory here is implied.
			testenv.File("a/b/c/file", "implied"),
			testenv.File("srv/deep/d/file", "implied"),
			testenv.File("tmp/x/file", "implied"),  // /tmp is 1777 on the host
			testenv.File("root/x/file", "implied"), // /root is 0700
			testenv.File("usr/local/x/file", "implied"),
		}},
	}
	layout := filepath.Join(env.Dir, "implied-image", "oci")
	if _, err := img.WriteOCILayout(layout, "v1"); err != nil {
		t.Fatal(err)
	}
	ref := env.Registry.Host + "/implied:v1"
	if err := testenv.Push(ctx, layout, "v1", ref); err != nil {
		t.Fatal(err)
	}

	dirs := []string{"/a", "/a/b", "/a/b/c", "/srv", "/srv/deep", "/srv/deep/d",
		"/tmp", "/tmp/x", "/root", "/root/x", "/usr", "/usr/local", "/usr/local/x"}
	ctr := env.Containerd.Ctr
	modes := func(snapshotter string) string {
		t.Helper()
		if out, err := ctr(ctx, "images", "pull", "--plain-http", "--snapshotter", snapshotter, ref); err != nil {
			t.Fatalf("pull with %s: %v\n%s", snapshotter, err, out)
		}
		args := append([]string{"run", "--rm", "--snapshotter", snapshotter, ref, "modes-" + snapshotter, "/hello", "--modes"}, dirs...)
		out, err := ctr(ctx, args...)
		if err != nil {
			t.Fatalf("run with %s: %v\noutput:\n%s", snapshotter, err, out)
		}
		return out
	}
	want := `750 /a
755 /a/b
755 /a/b/c
711 /srv
700 /srv/deep
755 /srv/deep/d
755 /tmp
755 /tmp/x
755 /root
755 /root/x
755 /usr
755 /usr/local
755 /usr/local/x
`
	if got := modes("overlayfs"); got != want {
		t.Fatalf("overlayfs snapshotter's modes:\n%s\nwant:\n%s", got, want)
	}
	if got := modes("lazypull"); got != want {
		t.Errorf("composefs modes:\n%s\nwant, as with the overlayfs snapshotter:\n%s", got, want)
	}

	// Both layers are metadata images.
	images := 0
	for _, id := range snapshotDirs(t, env) {
		if _, err := os.Stat(filepath.Join(env.DaemonRoot, "snapshots", id, "layer.erofs")); err == nil {
			images++
		}
	}
	if images != 2 {
		t.Errorf("%d of the image's 2 layers are metadata images", images)
	}
	for _, m := range testenv.MountsUnder(env.DaemonRoot) {
		if strings.HasSuffix(m, "/merged") {
			t.Errorf("an unpack's overlay is still mounted: %s", m)
		}
	}
	if _, err := ctr(ctx, "images", "rm", "--sync", ref); err != nil {
		t.Fatal(err)
	}
	if m := testenv.MountsUnder(env.DaemonRoot); len(m) > 0 {
		t.Errorf("mounts left after the image was removed: %v", m)
	}
}

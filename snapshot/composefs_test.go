package snapshot

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/containerd/v2/core/snapshots"
	"golang.org/x/sys/unix"

	"github.com/lazypull/lazypull/composefs"
	"github.com/lazypull/lazypull/internal/testenv"
)

// newComposefsSnapshotter is a snapshotter in the composefs mode (and
// opts) whose mounts are all gone when the test ends.
func newComposefsSnapshotter(t *testing.T, root string, opts ...Opt) (*Snapshotter, *composefs.Layers, context.Context) {
	t.Helper()
	testenv.NeedRoot(t)
	ctx := context.Background()
	layers, err := composefs.OpenLayers(ctx, filepath.Join(root, "composefs"))
	if err != nil {
		t.Fatal(err)
	}
	s, ctx := newTestSnapshotterAt(t, root, append([]Opt{WithComposefs(layers)}, opts...)...)
	t.Cleanup(func() {
		if err := testenv.UnmountAll(testenv.MountsUnder(root)); err != nil {
			t.Error(err)
		}
		layers.Close()
	})
	return s, layers, ctx
}

// writeThrough mounts key's mounts, runs fn on the mounted tree and
// unmounts: what containerd's differ does to unpack a layer.
func writeThrough(t *testing.T, s *Snapshotter, ctx context.Context, key string, fn func(dir string)) {
	t.Helper()
	ms, err := s.Mounts(ctx, key)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := mount.All(ms, dir); err != nil {
		t.Fatalf("mount %s: %v (%+v)", key, err, ms)
	}
	defer func() {
		if err := mount.UnmountAll(dir, 0); err != nil {
			t.Fatal(err)
		}
	}()
	fn(dir)
}

// unpackOf labels a Prepare as containerd's unpacker does.
func unpackOf(chainID string) snapshots.Opt {
	return snapshots.WithLabels(map[string]string{snapshots.LabelSnapshotRef: chainID})
}

func mustWrite(t *testing.T, p, data string) {
	t.Helper()
	os.MkdirAll(filepath.Dir(p), 0o755)
	if err := os.WriteFile(p, []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestComposefsLayers: layers committed in the composefs mode are metadata
// images over one object store, stack as overlay layers do (a deletion in
// an upper layer hides the lower file), share identical files, and leave
// nothing behind once removed.
func TestComposefsLayers(t *testing.T) {
	root := t.TempDir()
	s, layers, ctx := newComposefsSnapshotter(t, root)
	big := strings.Repeat("the same file in both layers\n", 1000)

	if _, err := s.Prepare(ctx, "unpack-1", "", unpackOf("layer-1")); err != nil {
		t.Fatal(err)
	}
	writeThrough(t, s, ctx, "unpack-1", func(dir string) {
		mustWrite(t, filepath.Join(dir, "etc/hostname"), "base\n")
		mustWrite(t, filepath.Join(dir, "usr/share/big"), big)
		mustWrite(t, filepath.Join(dir, "doomed"), "deleted by the next layer\n")
		if err := os.Symlink("/etc/hostname", filepath.Join(dir, "link")); err != nil {
			t.Fatal(err)
		}
	})
	if err := s.Commit(ctx, "layer-1", "unpack-1"); err != nil {
		t.Fatal(err)
	}
	info, err := s.Stat(ctx, "layer-1")
	if err != nil || info.Labels[LabelComposefs] == "" {
		t.Fatalf("layer-1: %+v, %v; want it labelled %s", info.Labels, err, LabelComposefs)
	}
	id1, _, _, _ := s.idOf(ctx, "layer-1")
	var st unix.Statfs_t
	if err := unix.Statfs(s.upperPath(id1), &st); err != nil || st.Type != unix.EROFS_SUPER_MAGIC_V1 {
		t.Fatalf("layer-1's directory: filesystem %#x, %v; want its EROFS image mounted", st.Type, err)
	}

	if _, err := s.Prepare(ctx, "unpack-2", "layer-1", unpackOf("layer-2")); err != nil {
		t.Fatal(err)
	}
	writeThrough(t, s, ctx, "unpack-2", func(dir string) {
		if got, err := os.ReadFile(filepath.Join(dir, "usr/share/big")); err != nil || string(got) != big {
			t.Errorf("layer-1's file through the unpack mount: %v", err)
		}
		if err := os.Remove(filepath.Join(dir, "doomed")); err != nil {
			t.Fatal(err)
		}
		mustWrite(t, filepath.Join(dir, "etc/hostname"), "top\n")
		mustWrite(t, filepath.Join(dir, "opt/big-again"), big) // the same content: one object
	})
	if err := s.Commit(ctx, "layer-2", "unpack-2"); err != nil {
		t.Fatal(err)
	}

	// A view of one composefs layer needs the overlay too (its directory
	// holds metadata only).
	for _, v := range []struct{ key, parent string }{{"view-1", "layer-1"}, {"view-2", "layer-2"}} {
		if _, err := s.View(ctx, v.key, v.parent); err != nil {
			t.Fatal(err)
		}
	}
	writeThrough(t, s, ctx, "view-1", func(dir string) {
		for p, want := range map[string]string{"etc/hostname": "base\n", "usr/share/big": big, "doomed": "deleted by the next layer\n"} {
			if got, err := os.ReadFile(filepath.Join(dir, p)); err != nil || string(got) != want {
				t.Errorf("view-1 %s: %q, %v", p, truncate(string(got), 40), err)
			}
		}
		if target, err := os.Readlink(filepath.Join(dir, "link")); err != nil || target != "/etc/hostname" {
			t.Errorf("view-1 link: %q, %v", target, err)
		}
	})
	writeThrough(t, s, ctx, "view-2", func(dir string) {
		for p, want := range map[string]string{"etc/hostname": "top\n", "usr/share/big": big, "opt/big-again": big} {
			if got, err := os.ReadFile(filepath.Join(dir, p)); err != nil || !bytes.Equal(got, []byte(want)) {
				t.Errorf("view-2 %s: %q, %v", p, truncate(string(got), 40), err)
			}
		}
		if _, err := os.Lstat(filepath.Join(dir, "doomed")); !os.IsNotExist(err) {
			t.Errorf("view-2: the file layer-2 deleted is there (%v)", err)
		}
	})

	objects := func() (n int) {
		filepath.WalkDir(layers.Objects(), func(p string, d os.DirEntry, err error) error {
			if err == nil && d.Type().IsRegular() {
				n++
			}
			return nil
		})
		return n
	}
	// The small files live in the images (composefs.InlineMax); the big
	// one, in three places across two layers, is one object.
	if n := objects(); n != 1 {
		t.Errorf("%d objects, want 1: the one large content, stored once", n)
	}

	// A container's changes, written through the overlay (a metadata-only
	// copy-up included), stay a plain layer when committed, and read
	// back right stacked on the composefs layers.
	if _, err := s.Prepare(ctx, "container", "layer-2"); err != nil {
		t.Fatal(err)
	}
	writeThrough(t, s, ctx, "container", func(dir string) {
		if err := os.Chown(filepath.Join(dir, "usr/share/big"), 1000, 1000); err != nil {
			t.Fatal(err)
		}
		mustWrite(t, filepath.Join(dir, "etc/container"), "written by a container\n")
	})
	if err := s.Commit(ctx, "committed-container", "container"); err != nil {
		t.Fatal(err)
	}
	if info, _ := s.Stat(ctx, "committed-container"); info.Labels[LabelComposefs] != "" {
		t.Errorf("a container's committed changes were converted: %v", info.Labels)
	}
	if _, err := s.View(ctx, "view-3", "committed-container"); err != nil {
		t.Fatal(err)
	}
	writeThrough(t, s, ctx, "view-3", func(dir string) {
		var st unix.Stat_t
		if err := unix.Stat(filepath.Join(dir, "usr/share/big"), &st); err != nil || st.Uid != 1000 {
			t.Errorf("chowned file: uid %d, %v", st.Uid, err)
		}
		if got, err := os.ReadFile(filepath.Join(dir, "usr/share/big")); err != nil || string(got) != big {
			t.Errorf("chowned file's content: %v", err)
		}
	})

	for _, k := range []string{"view-3", "committed-container", "view-1", "view-2", "layer-2", "layer-1"} {
		if err := s.Remove(ctx, k); err != nil {
			t.Fatalf("remove %s: %v", k, err)
		}
	}
	if n := objects(); n != 0 {
		t.Errorf("%d objects left after every layer was removed", n)
	}
	if m := testenv.MountsUnder(root); len(m) != 0 {
		t.Errorf("mounts left after every layer was removed: %v", m)
	}
}

// TestComposefsRestore: after a reboot (the images' mounts gone), Restore
// mounts them again.
func TestComposefsRestore(t *testing.T) {
	root := t.TempDir()
	s, _, ctx := newComposefsSnapshotter(t, root)
	// As containerd 1.6 unpacks: no label, a key of its unpack format as
	// a proxy snapshotter receives it.
	const key = "default/3/extract-123456-AbCd sha256:0123"
	if _, err := s.Prepare(ctx, key, ""); err != nil {
		t.Fatal(err)
	}
	writeThrough(t, s, ctx, key, func(dir string) { mustWrite(t, filepath.Join(dir, "f"), "kept\n") })
	if err := s.Commit(ctx, "layer", key); err != nil {
		t.Fatal(err)
	}
	if info, _ := s.Stat(ctx, "layer"); info.Labels[LabelComposefs] == "" {
		t.Fatalf("an unpack without the label was not converted: %v", info.Labels)
	}
	id, _, _, _ := s.idOf(ctx, "layer")
	if err := unix.Unmount(s.upperPath(id), 0); err != nil {
		t.Fatal(err)
	}
	if err := s.Restore(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := s.View(ctx, "view", "layer"); err != nil {
		t.Fatal(err)
	}
	writeThrough(t, s, ctx, "view", func(dir string) {
		if got, err := os.ReadFile(filepath.Join(dir, "f")); err != nil || string(got) != "kept\n" {
			t.Errorf("after Restore: %q, %v", got, err)
		}
	})
}

// TestComposefsMountOptions: a container's stack on composefs layers is
// the overlay composefs.Overlay builds (index=off once, verity last), and
// an unpack onto them a bind mount of the stack mounted by the snapshotter.
func TestComposefsMountOptions(t *testing.T) {
	root := t.TempDir()
	s, layers, ctx := newComposefsSnapshotter(t, root)
	if _, err := s.Prepare(ctx, "unpack-1", "", unpackOf("layer-1")); err != nil {
		t.Fatal(err)
	}
	writeThrough(t, s, ctx, "unpack-1", func(dir string) { mustWrite(t, filepath.Join(dir, "f"), "f\n") })
	if err := s.Commit(ctx, "layer-1", "unpack-1"); err != nil {
		t.Fatal(err)
	}
	id1, _, _, _ := s.idOf(ctx, "layer-1")

	ms, err := s.Prepare(ctx, "container", "layer-1")
	if err != nil {
		t.Fatal(err)
	}
	id, _, _, _ := s.idOf(ctx, "container")
	want, err := composefs.Overlay{
		Layers: []string{s.upperPath(id1)}, Objects: layers.Objects(), Verity: composefs.VerityOff,
		Upper: s.upperPath(id), Work: s.workPath(id),
	}.Options()
	if err != nil {
		t.Fatal(err)
	}
	if len(ms) != 1 || ms[0].Type != "overlay" || len(ms[0].Options) < len(want) ||
		!slices.Equal(ms[0].Options[len(ms[0].Options)-len(want):], want) {
		t.Errorf("container's mounts: %+v; want an overlay ending with %v", ms, want)
	}
	if n := slices.IndexFunc(ms[0].Options, func(o string) bool { return strings.HasPrefix(o, "index=") }); n < 0 ||
		slices.ContainsFunc(ms[0].Options[n+1:], func(o string) bool { return strings.HasPrefix(o, "index=") }) {
		t.Errorf("container's mount options %v: want index= once", ms[0].Options)
	}

	ms, err = s.Prepare(ctx, "unpack-2", "layer-1", unpackOf("layer-2"))
	if err != nil {
		t.Fatal(err)
	}
	id2, _, _, _ := s.idOf(ctx, "unpack-2")
	if len(ms) != 1 || ms[0].Type != "bind" || ms[0].Source != s.mergedPath(id2) || !hasOption(ms[0].Options, "rw") {
		t.Errorf("unpack's mounts: %+v; want a rw bind mount of %s", ms, s.mergedPath(id2))
	}
	if err := s.Remove(ctx, "unpack-2"); err != nil {
		t.Fatal(err)
	}
	if m := testenv.MountsUnder(filepath.Join(root, "snapshots", id2)); len(m) != 0 {
		t.Errorf("mounts left after removing the unpack: %v", m)
	}
}

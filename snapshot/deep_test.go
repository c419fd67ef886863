package snapshot

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containerd/containerd/v2/core/mount"
	"golang.org/x/sys/unix"

	"github.com/lazypull/lazypull/internal/testenv"
)

// TestComposefsDeepStack: a stack of 130 composefs layers, whose overlay
// options are longer than the page mount(2) takes, is mounted by the
// snapshotter and handed to containerd as a bind mount: once however often
// Mounts is called, and again after a reboot; a container's writes land in
// its upper directory, a view is read-only, and Remove leaves no mount.
func TestComposefsDeepStack(t *testing.T) {
	const depth = 130
	root := t.TempDir()
	s, layers, ctx := newComposefsSnapshotter(t, root)

	parent := ""
	for i := 1; i <= depth; i++ {
		key, name := fmt.Sprintf("unpack-%d", i), fmt.Sprintf("layer-%d", i)
		if _, err := s.Prepare(ctx, key, parent, unpackOf(name)); err != nil {
			t.Fatalf("prepare %s: %v", key, err)
		}
		writeThrough(t, s, ctx, key, func(dir string) {
			mustWrite(t, filepath.Join(dir, "layers", name), name+"\n")
			mustWrite(t, filepath.Join(dir, "top"), name+"\n")
		})
		if err := s.Commit(ctx, name, key); err != nil {
			t.Fatalf("commit %s: %v", key, err)
		}
		parent = name
	}
	if info, _ := s.Stat(ctx, parent); info.Labels[LabelComposefs] == "" {
		t.Fatalf("%s was not converted: %v", parent, info.Labels)
	}

	active, err := s.Prepare(ctx, "container", parent)
	if err != nil {
		t.Fatal(err)
	}
	view, err := s.View(ctx, "view", parent)
	if err != nil {
		t.Fatal(err)
	}
	activeID, _, _, _ := s.idOf(ctx, "container")
	viewID, _, _, _ := s.idOf(ctx, "view")
	for _, c := range []struct {
		name, id, access string
		ms               []mount.Mount
	}{{"container", activeID, "rw", active}, {"view", viewID, "ro", view}} {
		if len(c.ms) != 1 || c.ms[0].Type != "bind" || c.ms[0].Source != s.mergedPath(c.id) || !hasOption(c.ms[0].Options, c.access) {
			t.Fatalf("%s's mounts: %+v; want a %s bind mount of %s", c.name, c.ms, c.access, s.mergedPath(c.id))
		}
	}

	// What a container sees, through containerd's own mount code.
	check := func(key string, write bool) {
		t.Helper()
		writeThrough(t, s, ctx, key, func(dir string) {
			for _, i := range []int{1, depth / 2, depth} {
				p := filepath.Join(dir, "layers", fmt.Sprintf("layer-%d", i))
				if got, err := os.ReadFile(p); err != nil || string(got) != fmt.Sprintf("layer-%d\n", i) {
					t.Errorf("%s: %s: %q, %v", key, p, got, err)
				}
			}
			if got, err := os.ReadFile(filepath.Join(dir, "top")); err != nil || string(got) != parent+"\n" {
				t.Errorf("%s: top: %q, %v; want the top layer's", key, got, err)
			}
			err := os.WriteFile(filepath.Join(dir, "written"), []byte("by the container\n"), 0o644)
			if write && err != nil {
				t.Errorf("%s: write: %v", key, err)
			}
			if !write && !errors.Is(err, unix.EROFS) {
				t.Errorf("%s: write to a view: %v, want EROFS", key, err)
			}
		})
	}
	check("container", true)
	check("view", false)
	if got, err := os.ReadFile(filepath.Join(s.upperPath(activeID), "written")); err != nil || string(got) != "by the container\n" {
		t.Errorf("the container's write in its upper directory: %q, %v", got, err)
	}

	// Mounts again, as containerd calls it: the stack stays mounted once.
	mountsAt := func(id string) int {
		n := 0
		for _, m := range testenv.MountsUnder(s.mergedPath(id)) {
			if m == s.mergedPath(id) {
				n++
			}
		}
		return n
	}
	for range 3 {
		if _, err := s.Mounts(ctx, "container"); err != nil {
			t.Fatal(err)
		}
	}
	if n := mountsAt(activeID); n != 1 {
		t.Errorf("after Mounts thrice: %d mounts at %s, want 1", n, s.mergedPath(activeID))
	}

	// A restart (the mounts outlive the daemon) mounts nothing twice.
	s.Close()
	s, ctx = newTestSnapshotterAt(t, root, WithComposefs(layers))
	if err := s.Restore(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Mounts(ctx, "container"); err != nil {
		t.Fatal(err)
	}
	if n := mountsAt(activeID); n != 1 {
		t.Errorf("after a restart: %d mounts at %s, want 1", n, s.mergedPath(activeID))
	}

	// A reboot takes every mount: Restore mounts the layers again, and
	// Mounts the stack.
	if err := testenv.UnmountAll(testenv.MountsUnder(root)); err != nil {
		t.Fatal(err)
	}
	if err := s.Restore(ctx); err != nil {
		t.Fatal(err)
	}
	check("container", true)
	check("view", false)

	for _, k := range []string{"container", "view"} {
		if err := s.Remove(ctx, k); err != nil {
			t.Fatal(err)
		}
	}
	for _, id := range []string{activeID, viewID} {
		dir := filepath.Join(root, "snapshots", id)
		if m := testenv.MountsUnder(dir); len(m) != 0 {
			t.Errorf("mounts left after Remove: %v", m)
		}
		if _, err := os.Lstat(dir); !os.IsNotExist(err) {
			t.Errorf("%s after Remove: %v", dir, err)
		}
	}
	for _, m := range testenv.MountsUnder(root) {
		if strings.HasSuffix(m, "/merged") {
			t.Errorf("a deep stack is still mounted: %s", m)
		}
	}
}

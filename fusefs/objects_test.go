package fusefs

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/lazypull/lazypull/cache"
	"github.com/lazypull/lazypull/composefs"
	"github.com/lazypull/lazypull/composefs/objects"
	"github.com/lazypull/lazypull/composefs/tocimage"
	"github.com/lazypull/lazypull/internal/testenv"
)

// lazyComposefs stacks the metadata image of a lazily fetched layer of
// entries over the object filesystem, as the lazy composefs mode does, and
// returns the overlay's directory, the object filesystem and its store.
func lazyComposefs(t *testing.T, entries []entry, opts Options) (string, *MountedObjects, *objects.Store) {
	t.Helper()
	testenv.NeedRoot(t)
	testenv.NeedFUSE(t)
	dir := t.TempDir()
	c, err := cache.New(filepath.Join(dir, "cache"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	store, err := objects.Open(context.Background(), filepath.Join(dir, "store"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { store.Close() })
	l := openLayer(t, entries, c)

	objfs := filepath.Join(dir, "objfs")
	os.Mkdir(objfs, 0o755)
	m, err := MountObjects(objfs, store, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := m.Unmount(); err != nil {
			t.Error(err)
		}
	})
	m.Add("layer", l)

	image, meta, merged := filepath.Join(dir, "layer.erofs"), filepath.Join(dir, "meta"), filepath.Join(dir, "merged")
	os.Mkdir(meta, 0o755)
	os.Mkdir(merged, 0o755)
	if _, err := tocimage.Write(context.Background(), l.TOC(), image, tocimage.Options{}); err != nil {
		t.Fatal(err)
	}
	if err := composefs.MountImage(image, meta); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { composefs.Unmount(meta) })
	o := composefs.Overlay{Layers: []string{meta}, Objects: objfs, Verity: composefs.VerityOff}
	if err := o.MountAt(merged); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := syscall.Unmount(merged, 0); err != nil {
			t.Error(err)
		}
	})
	return merged, m, store
}

// TestObjectsUnderOverlay: a layer's metadata image stacked over the object
// filesystem shows the layer's files with their bytes, fetched through the
// layer on first read; once the store holds an object, it is served from
// there through passthrough, with no FUSE READ.
func TestObjectsUnderOverlay(t *testing.T) {
	entries := lowerLayer()
	merged, m, store := lazyComposefs(t, entries, Options{Passthrough: true})
	for _, e := range entries {
		if e.hdr.Typeflag != '0' {
			continue
		}
		got, err := os.ReadFile(filepath.Join(merged, e.hdr.Name))
		if err != nil {
			t.Fatalf("%s: %v", e.hdr.Name, err)
		}
		if !bytes.Equal(got, e.data) {
			t.Errorf("%s: read %d bytes that differ from the layer's %d", e.hdr.Name, len(got), len(e.data))
		}
	}
	// A hard link reads its target's object.
	if got, err := os.ReadFile(filepath.Join(merged, "bin/ping6")); err != nil || string(got) != "ping" {
		t.Errorf("bin/ping6: %q, %v", got, err)
	}

	// Stored now: the next open is the store's, read by the kernel.
	big := entries[4]
	if big.hdr.Name != "data/big" {
		t.Fatalf("entries[4] is %s", big.hdr.Name)
	}
	b, err := store.Lease(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.Put(bytes.NewReader(big.data), digest.FromBytes(big.data)); err != nil {
		t.Fatal(err)
	}
	if err := b.Commit(); err != nil {
		t.Fatal(err)
	}
	opens, _ := m.Opens()
	before := fuseReads(t)
	// A new name for the same inode is not needed: the overlay opens the
	// object again at each open of the file.
	got, err := os.ReadFile(filepath.Join(merged, "data/big"))
	if err != nil || !bytes.Equal(got, big.data) {
		t.Fatalf("data/big from the store: %d bytes, %v", len(got), err)
	}
	n, fallbacks := m.Opens()
	if n != opens+1 {
		t.Errorf("opens of the object filesystem: %d, want %d", n, opens+1)
	}
	if reads := fuseReads(t) - before; reads != 0 || fallbacks != 0 {
		t.Errorf("%d FUSE READs of a stored object reached the daemon (%d fell back from passthrough), want 0", reads, fallbacks)
	}
}

// TestObjectsGoneWithTheirLayer: an object no layer names and the store
// lacks is not there; a name that is no digest never is.
func TestObjectsGoneWithTheirLayer(t *testing.T) {
	merged, m, _ := lazyComposefs(t, lowerLayer(), Options{})
	objfs := m.Mountpoint()
	d := digest.FromBytes([]byte("lazypull\n"))
	p := filepath.Join(objfs, d.Encoded()[:2], d.Encoded()[2:])
	if _, err := os.Stat(p); err != nil {
		t.Fatalf("object of etc/hostname: %v", err)
	}
	for _, name := range []string{"zz", "AB", "abc", d.Encoded()[:2] + "/" + d.Encoded()[2:10], d.Encoded()[:2] + "/" + d.Encoded()[2:] + "0"} {
		if _, err := os.Stat(filepath.Join(objfs, name)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s: %v, want ENOENT", name, err)
		}
	}
	m.Remove("layer")
	if m.Layers() != 0 {
		t.Fatalf("%d layers served after Remove", m.Layers())
	}
	other := digest.FromBytes([]byte("deleted above"))
	if _, err := os.Stat(filepath.Join(objfs, other.Encoded()[:2], other.Encoded()[2:])); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("object of a removed layer: %v, want ENOENT", err)
	}
	if _, err := os.ReadFile(filepath.Join(merged, "etc/removed")); err == nil {
		t.Errorf("a file whose object is nowhere was read")
	}
}

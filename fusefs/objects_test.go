package fusefs

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/opencontainers/go-digest"
	"golang.org/x/sys/unix"

	"github.com/lazypull/lazypull/cache"
	"github.com/lazypull/lazypull/composefs"
	"github.com/lazypull/lazypull/composefs/objects"
	"github.com/lazypull/lazypull/composefs/tocimage"
	"github.com/lazypull/lazypull/format/toc"
	"github.com/lazypull/lazypull/internal/testenv"
	"github.com/lazypull/lazypull/layer"
)

// lazyStack is a lazily fetched layer stacked as the lazy composefs mode
// stacks it (lazyComposefs).
type lazyStack struct {
	merged  string // the overlay's directory
	objects *MountedObjects
	store   *objects.Store
	layer   *layer.Layer
	blob    string // the file the layer's blob is read from
}

// lazyComposefs stacks the metadata image of a lazily fetched layer of
// entries over the object filesystem, as the lazy composefs mode does.
func lazyComposefs(t *testing.T, entries []entry, opts Options) lazyStack {
	t.Helper()
	n := newObjectNode(t, opts)
	return n.stack(t, "layer", entries)
}

// objectNode is what the lazy composefs mode shares on a node: a cache,
// an object store and the object filesystem.
type objectNode struct {
	dir   string
	cache *cache.Cache
	store *objects.Store
	objfs *MountedObjects
}

func newObjectNode(t *testing.T, opts Options) *objectNode {
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
	return &objectNode{dir: dir, cache: c, store: store, objfs: m}
}

// stack opens a layer of entries, serves it under name and stacks its
// metadata image over the object filesystem.
func (n *objectNode) stack(t *testing.T, name string, entries []entry) lazyStack {
	t.Helper()
	l, blob := openLayerBlob(t, entries, n.cache)
	return n.stackLayer(t, name, l, blob)
}

// stackBlob is stack for a layer made elsewhere (forged, say).
func (n *objectNode) stackBlob(t *testing.T, name string, tl testenv.Layer) lazyStack {
	t.Helper()
	path := filepath.Join(n.dir, name+".blob")
	if err := os.WriteFile(path, tl.Blob, 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return n.stackLayer(t, name, openBlob(t, f, tl.Desc, n.cache), path)
}

func (n *objectNode) stackLayer(t *testing.T, name string, l *layer.Layer, blob string) lazyStack {
	t.Helper()
	m, store := n.objfs, n.store
	m.Add(name, l)

	dir := filepath.Join(n.dir, name)
	os.Mkdir(dir, 0o755)
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
	o := composefs.Overlay{Layers: []string{meta}, Objects: m.Mountpoint(), Verity: composefs.VerityOff}
	if err := o.MountAt(merged); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := syscall.Unmount(merged, 0); err != nil {
			t.Error(err)
		}
	})
	return lazyStack{merged: merged, objects: m, store: store, layer: l, blob: blob}
}

// TestObjectsUnderOverlay: a layer's metadata image stacked over the object
// filesystem shows the layer's files with their bytes, fetched through the
// layer on first read; once the store holds an object, it is served from
// there through passthrough, with no FUSE READ.
func TestObjectsUnderOverlay(t *testing.T) {
	entries := lowerLayer()
	st := lazyComposefs(t, entries, Options{Passthrough: true})
	merged, m, store := st.merged, st.objects, st.store
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
	storeObject(t, store, big.data)
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
	st := lazyComposefs(t, lowerLayer(), Options{})
	merged, m := st.merged, st.objects
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

// TestObjectsNeverWrongBytes: a chunk of the blob that does not match its
// TOC digest gives the reader EIO through the overlay, never its bytes;
// the other chunks of the file read right.
func TestObjectsNeverWrongBytes(t *testing.T) {
	entries := lowerLayer()
	st := lazyComposefs(t, entries, Options{Passthrough: true})
	big := entries[4]
	e, ok := st.layer.TOC().Lookup(big.hdr.Name)
	if !ok || len(e.Chunks()) < 3 {
		t.Fatalf("%s: %v, %d chunks", big.hdr.Name, ok, len(e.Chunks()))
	}
	// Garble the second chunk's compressed bytes in the blob.
	c := e.Chunks()[1]
	f, err := os.OpenFile(st.blob, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	garbage := bytes.Repeat([]byte{0x5a}, int(c.EndOffset-c.Offset))
	if _, err := f.WriteAt(garbage, c.Offset); err != nil {
		t.Fatal(err)
	}
	f.Close()

	file, err := os.Open(filepath.Join(st.merged, big.hdr.Name))
	if err != nil {
		t.Fatal(err)
	}
	defer file.Close()
	first := make([]byte, c.FileOffset)
	if _, err := file.ReadAt(first, 0); err != nil || !bytes.Equal(first, big.data[:c.FileOffset]) {
		t.Errorf("the first chunk: %v, or other bytes", err)
	}
	buf := make([]byte, c.Size)
	n, err := file.ReadAt(buf, c.FileOffset)
	if !errors.Is(err, syscall.EIO) {
		t.Errorf("the garbled chunk read %d bytes, %v; want EIO", n, err)
	}
	if n > 0 && !bytes.Equal(buf[:n], big.data[c.FileOffset:c.FileOffset+int64(n)]) {
		t.Errorf("the garbled chunk gave %d wrong bytes", n)
	}
}

// TestObjectsSharedAcrossImages: two images whose layers hold the same file
// (each its own layer, its own metadata image) fetch it once: the second
// image's container reads it with no fetch.
func TestObjectsSharedAcrossImages(t *testing.T) {
	n := newObjectNode(t, Options{Passthrough: true})
	shared := random(3<<20 + 5)
	a := n.stack(t, "a", []entry{dir("usr/", 0o755), reg("usr/lib.so", shared, 0o755), reg("usr/a", []byte("a"), 0o644)})
	b := n.stack(t, "b", []entry{dir("opt/", 0o755), reg("opt/same.so", shared, 0o644), reg("opt/b", []byte("b"), 0o644)})

	before := blobReads.Load()
	if got, err := os.ReadFile(filepath.Join(a.merged, "usr/lib.so")); err != nil || !bytes.Equal(got, shared) {
		t.Fatalf("image a's file: %d bytes, %v", len(got), err)
	}
	if blobReads.Load() == before {
		t.Fatal("the first read of the file fetched nothing")
	}
	before = blobReads.Load()
	if got, err := os.ReadFile(filepath.Join(b.merged, "opt/same.so")); err != nil || !bytes.Equal(got, shared) {
		t.Fatalf("image b's file: %d bytes, %v", len(got), err)
	}
	if n := blobReads.Load() - before; n != 0 {
		t.Errorf("image b's copy of a file image a read fetched %d times, want 0", n)
	}
}

// TestObjectsLyingLayer: a layer whose TOC names its own file (of several
// chunks: a one-chunk file's digest must be its chunk's) by the digest
// of another image's file (its chunks' digests its own, so each chunk it
// reads checks out) never serves its bytes to that image: with two
// unverified layers naming an object, the object is read whole, checked
// against its digest, and stored, whichever layer is tried first.
func TestObjectsLyingLayer(t *testing.T) {
	secret := random(2<<20 + 11)
	d := digest.FromBytes(secret)
	for round := range 4 {
		n := newObjectNode(t, Options{Passthrough: true})
		honest, err := testenv.EStargzLayer([]testenv.Entry{testenv.File("lib/real.so", string(secret))})
		if err != nil {
			t.Fatal(err)
		}
		junk, err := testenv.EStargzLayer([]testenv.Entry{testenv.File("lib/junk.so", strings.Repeat("junk", 9<<18))})
		if err != nil {
			t.Fatal(err)
		}
		lying, err := testenv.ForgeTOC(junk, func(doc *toc.JSON) {
			for i := range doc.Entries {
				if doc.Entries[i].Name == "lib/junk.so" {
					doc.Entries[i].Digest = d.String()
				}
			}
		})
		if err != nil {
			t.Fatal(err)
		}
		// Either may be added first; the map's order is random anyway.
		var victim lazyStack
		if round%2 == 0 {
			n.stackBlob(t, "lying", lying)
			victim = n.stackBlob(t, "honest", honest)
		} else {
			victim = n.stackBlob(t, "honest", honest)
			n.stackBlob(t, "lying", lying)
		}
		got, err := os.ReadFile(filepath.Join(victim.merged, "lib/real.so"))
		if err != nil || !bytes.Equal(got, secret) {
			t.Fatalf("round %d: the honest image read %d bytes (%v), not its own %d", round, len(got), err, len(secret))
		}
		if has, err := n.store.Has(d); !has || err != nil {
			t.Errorf("round %d: the object read whole is not in the store (%v)", round, err)
		}
	}
}

// TestObjectsOutliveTheirLayer: a file opened while its object came
// through its layer (the page cache holds what was read) keeps reading
// right after the layer settled: its object went into the store and the
// layer was released. A mapped executable whose page faults failed then
// would die of SIGBUS.
func TestObjectsOutliveTheirLayer(t *testing.T) {
	entries := lowerLayer()
	st := lazyComposefs(t, entries, Options{Passthrough: true})
	big := entries[4]
	f, err := os.Open(filepath.Join(st.merged, big.hdr.Name))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	head := make([]byte, 4096)
	if _, err := f.ReadAt(head, 0); err != nil || !bytes.Equal(head, big.data[:len(head)]) {
		t.Fatalf("the first page through the layer: %v, or other bytes", err)
	}

	// Settle, as the mounter does: the object goes into the store, the
	// layer stops being served and is closed.
	storeObject(t, st.store, big.data)
	st.objects.Remove("layer")
	st.layer.Close()

	// What the page cache held goes, as under memory pressure.
	if err := unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(big.data))
	if n, err := f.ReadAt(got, 0); n != len(got) || !bytes.Equal(got, big.data) {
		t.Errorf("the open file after its layer settled: %d of %d bytes, %v, or other bytes", n, len(got), err)
	}
	if n := st.objects.fsys.readErrors.Load(); n != 0 {
		t.Errorf("%d reads failed, want 0: the store served them", n)
	}
}

// storeObject puts data into store, as settling does.
func storeObject(t *testing.T, store *objects.Store, data []byte) {
	t.Helper()
	b, err := store.Lease(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.Put(bytes.NewReader(data), digest.FromBytes(data)); err != nil {
		t.Fatal(err)
	}
	if err := b.Commit(); err != nil {
		t.Fatal(err)
	}
}

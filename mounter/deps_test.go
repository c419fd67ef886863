package mounter

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/lazypull/lazypull/labels"

	"github.com/lazypull/lazypull/cache"
	"github.com/lazypull/lazypull/internal/testenv"
)

// TestReadingAProgramFetchesItsLibraries: the first read of a dynamically
// linked program fetches the loader and the libraries it needs from the
// layer below, through a merged-/usr symlink, before anything reads them;
// a library the program does not need stays unfetched.
func TestReadingAProgramFetchesItsLibraries(t *testing.T) {
	testenv.NeedFUSE(t)
	ctx := context.Background()
	dir := t.TempDir()
	reg := testenv.NewRegistry(t)

	program, err := os.ReadFile("../elfdeps/testdata/true.elf") // needs /lib64/ld-linux-x86-64.so.2, libc.so.6
	if err != nil {
		t.Fatal(err)
	}
	lib := func(p string) testenv.Entry { return testenv.File(p, "library "+p) }
	img := testenv.Image{Layers: [][]testenv.Entry{
		{
			testenv.Dir("usr"), testenv.Dir("usr/lib"), testenv.Dir("usr/lib/x86_64-linux-gnu"), testenv.Dir("usr/lib64"),
			testenv.Symlink("lib", "usr/lib"), testenv.Symlink("lib64", "usr/lib64"),
			testenv.Symlink("usr/lib64/ld-linux-x86-64.so.2", "../lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"),
			lib("usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"),
			lib("usr/lib/x86_64-linux-gnu/libc.so.6"),
			lib("usr/lib/x86_64-linux-gnu/libunused.so.1"),
		},
		{testenv.Dir("bin"), {Path: "bin/true", Type: '0', Mode: 0o755, Data: program}},
	}, Cmd: []string{"/bin/true"}}
	layout := filepath.Join(dir, "oci")
	if _, err := img.WriteOCILayout(layout, "v1"); err != nil {
		t.Fatal(err)
	}
	ref := reg.Host + "/deps:esgz"
	layers, _ := convertTo(t, layout, ref)

	c, err := cache.New(filepath.Join(dir, "cache"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	m := New(c, Options{NoBackground: true, NoPrefetch: true})
	defer m.Close()
	var points []string
	for i, l := range layers {
		mp := filepath.Join(dir, "mnt", l.Digest.Encoded()[:12])
		os.MkdirAll(mp, 0o755)
		labels := map[string]string{labels.CRIImageRef: ref, labels.CRIDigest: l.Digest.String()}
		if err := m.Mount(ctx, mp, labels); err != nil {
			t.Fatalf("mount layer %d: %v", i, err)
		}
		points = append(points, mp)
	}
	lower := m.mountedLayer(layers[0].Digest)
	before := lower.Stats().ChunksFetched

	if b, err := os.ReadFile(filepath.Join(points[1], "bin/true")); err != nil || len(b) != len(program) {
		t.Fatalf("read the program: %v", err)
	}
	// The libraries arrive without anyone reading them: wait for them.
	cached := func(name string) bool {
		e, ok := lower.TOC().Lookup(name)
		if !ok {
			t.Fatalf("%s not in the lower layer", name)
		}
		f, ok := lower.CachedFile(e)
		if ok {
			f.Close()
		}
		return ok
	}
	// A chunk streamed to the cache is counted after it is in, so the count
	// may lag the files by a moment: wait for both.
	deadline := time.Now().Add(10 * time.Second)
	for !(cached("usr/lib/x86_64-linux-gnu/libc.so.6") && cached("usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2") &&
		lower.Stats().ChunksFetched-before >= 2) {
		if time.Now().After(deadline) {
			t.Fatalf("the program's loader and libc were not fetched: %d chunks of the lower layer (%+v)", lower.Stats().ChunksFetched-before, lower.Stats())
		}
		time.Sleep(20 * time.Millisecond)
	}
	if cached("usr/lib/x86_64-linux-gnu/libunused.so.1") {
		t.Errorf("a library nothing needs was fetched")
	}
}

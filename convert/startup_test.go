package convert_test

import (
	"archive/tar"
	"context"
	"os"
	"path/filepath"
	"testing"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/lazypull/lazypull/convert"
	"github.com/lazypull/lazypull/format/estargz"
	"github.com/lazypull/lazypull/internal/testenv"
	"github.com/lazypull/lazypull/remote"
	"github.com/lazypull/lazypull/transport"
)

// An image converted with PrioritizeStartup has, before each layer's
// prefetch landmark, the files its program loads before it runs: a script
// found on PATH, its interpreter (a real dynamically linked program of this
// machine), that program's ELF interpreter and libraries, through the
// image's symbolic links; and nothing else.
func TestPrioritizeStartup(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	host := func(p string) []byte {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Skipf("this machine lacks %s: %v", p, err)
		}
		return b
	}
	exe := func(p string, data []byte) testenv.Entry {
		return testenv.Entry{Path: p, Type: tar.TypeReg, Mode: 0o755, Data: data}
	}
	base := []testenv.Entry{
		testenv.Dir("usr"), testenv.Dir("usr/lib"), testenv.Dir("usr/lib/x86_64-linux-gnu"), testenv.Dir("usr/bin"),
		testenv.Symlink("lib", "usr/lib"), testenv.Symlink("bin", "usr/bin"), testenv.Dir("lib64"),
		testenv.Symlink("lib64/ld-linux-x86-64.so.2", "/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"),
		exe("usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2", host("/lib64/ld-linux-x86-64.so.2")),
		exe("usr/lib/x86_64-linux-gnu/libc.so.6", host("/lib/x86_64-linux-gnu/libc.so.6")),
		testenv.File("usr/lib/x86_64-linux-gnu/libunused.so", "not loaded"),
		testenv.File("usr/bin/true", "an older version, replaced above"),
	}
	upper := []testenv.Entry{
		testenv.Dir("usr"), testenv.Dir("usr/bin"), testenv.Dir("usr/local"), testenv.Dir("usr/local/bin"),
		exe("usr/bin/true", host("/usr/bin/true")),
		exe("usr/local/bin/start", []byte("#!/bin/true\n")),
		testenv.File("usr/local/bin/other", "not the program"),
		testenv.Whiteout("usr/lib/x86_64-linux-gnu/libunused.so"),
	}
	img := testenv.Image{Layers: [][]testenv.Entry{base, upper}, Cmd: []string{"start", "--now"}}
	layout := filepath.Join(dir, "src")
	if _, err := img.WriteOCILayout(layout, "v1"); err != nil {
		t.Fatal(err)
	}
	src, _ := transport.Open(ctx, transport.Ref{Transport: transport.OCI, Name: layout, Tag: "v1"}, remote.Options{})
	out := filepath.Join(dir, "out")
	dst, _ := transport.Open(ctx, transport.Ref{Transport: transport.OCI, Name: out, Tag: "v1"}, remote.Options{})
	root, err := convert.Image(ctx, src, dst, convert.Options{Format: convert.EStargz, PrioritizeStartup: true})
	if err != nil {
		t.Fatal(err)
	}
	var m ocispec.Manifest
	if _, err := transport.FetchJSON(ctx, dst, root, &m); err != nil {
		t.Fatal(err)
	}

	// Per layer, what must come before its landmark and what after.
	want := []map[string]bool{
		{
			"lib64/ld-linux-x86-64.so.2":                    true,
			"usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2": true,
			"usr/lib/x86_64-linux-gnu/libc.so.6":            true,
			"usr/lib/x86_64-linux-gnu/libunused.so":         false,
		},
		{
			"usr/local/bin/start": true,
			"usr/bin/true":        true,
			"usr/local/bin/other": false,
		},
	}
	for i, l := range m.Layers {
		ra, err := dst.ReaderAt(ctx, l)
		if err != nil {
			t.Fatal(err)
		}
		r, err := estargz.Open(ra, ra.Size())
		ra.Close()
		if err != nil {
			t.Fatal(err)
		}
		// TOC order is the layer's order.
		at := make(map[string]int)
		for j, e := range r.TOC().Entries() {
			at[e.Path()] = j
		}
		end, ok := at[estargz.PrefetchLandmark]
		if !ok {
			t.Fatalf("layer %d has no prefetch landmark", i)
		}
		for name, first := range want[i] {
			j, ok := at[name]
			if !ok {
				t.Errorf("layer %d lacks %s", i, name)
				continue
			}
			if before := j < end; before != first {
				t.Errorf("layer %d: %s is entry %d, the landmark %d: before it %v, want %v", i, name, j, end, before, first)
			}
		}
	}
}

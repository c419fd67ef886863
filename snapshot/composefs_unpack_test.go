package snapshot

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/diff/apply"
	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/lazypull/lazypull/internal/testenv"
)

// blobProvider serves layer blobs from memory, as containerd's content
// store serves them to its applier.
type blobProvider map[string][]byte

type blobReader struct{ *bytes.Reader }

func (blobReader) Close() error { return nil }

func (p blobProvider) ReaderAt(_ context.Context, desc ocispec.Descriptor) (content.ReaderAt, error) {
	b, ok := p[desc.Digest.String()]
	if !ok {
		return nil, fmt.Errorf("blob %s: %w", desc.Digest, errdefs.ErrNotFound)
	}
	return blobReader{bytes.NewReader(b)}, nil
}

// applyLayer applies a layer of entries to mounts with containerd's own
// applier, as containerd's unpacker does after Prepare.
func applyLayer(t *testing.T, ctx context.Context, mounts []mount.Mount, entries []testenv.Entry) {
	t.Helper()
	l, err := testenv.GzipLayer(entries)
	if err != nil {
		t.Fatal(err)
	}
	applier := apply.NewFileSystemApplier(blobProvider{l.Desc.Digest.String(): l.Blob})
	if _, err := applier.Apply(ctx, l.Desc, mounts); err != nil {
		t.Fatalf("apply layer: %v (mounts %+v)", err, mounts)
	}
}

// TestComposefsUnpackImpliedDirs: a layer unpacked over composefs layers
// whose tar leaves out some of its files' directories gets those
// directories as the layers below have them (mode, owner), or as
// containerd makes a directory no layer has (0755): never the host's
// directory of the same name. containerd applies a tar straight into an
// overlay's upperdir and takes the implied directories' attributes from
// the lowerdir's elements; a composefs lowerdir's "::" is an empty element
// there, the host's root.
func TestComposefsUnpackImpliedDirs(t *testing.T) {
	for _, c := range []struct{ name, key string }{
		{"labelled", "unpack-2"},                                // containerd 2.x, CRI
		{"extract-key", "default/7/extract-7-AbCd sha256:0002"}, // containerd 1.6's ctr pull
	} {
		t.Run(c.name, func(t *testing.T) { testComposefsUnpackImpliedDirs(t, c.key) })
	}
}

func testComposefsUnpackImpliedDirs(t *testing.T, key string) {
	root := t.TempDir()
	s, layers, ctx := newComposefsSnapshotter(t, root)

	// An object (larger than composefs.InlineMax), so that the store has
	// a fan-out directory named as the object's first two hex digits.
	big := strings.Repeat("stored as an object\n", 100)
	fanOut := digest.FromString(big).Encoded()[:2]

	ms, err := s.Prepare(ctx, "unpack-1", "", unpackOf("layer-1"))
	if err != nil {
		t.Fatal(err)
	}
	applyLayer(t, ctx, ms, []testenv.Entry{
		{Path: "a", Type: tar.TypeDir, Mode: 0o750},
		testenv.File("a/kept", "from layer 1\n"),
		testenv.File("big", big),
		{Path: "srv", Type: tar.TypeDir, Mode: 0o711},
		{Path: "srv/deep", Type: tar.TypeDir, Mode: 0o700},
		testenv.File("gone", "deleted by layer 2\n"),
		testenv.File("gone-dir/f", "deleted with its directory by layer 2\n"),
		testenv.File("opq/old", "hidden by layer 2's opaque directory\n"),
	})
	if err := s.Commit(ctx, "layer-1", "unpack-1"); err != nil {
		t.Fatal(err)
	}

	var opts []snapshots.Opt
	if key == "unpack-2" {
		opts = append(opts, unpackOf("layer-2"))
	}
	if ms, err = s.Prepare(ctx, key, "layer-1", opts...); err != nil {
		t.Fatal(err)
	}
	// containerd unpacks with the mounts Prepare gave, even if the
	// snapshotter restarts meanwhile.
	s.Close()
	s, ctx = newTestSnapshotterAt(t, root, WithComposefs(layers))
	if err := s.Restore(ctx); err != nil {
		t.Fatal(err)
	}
	// No directory entries: tmp (1777 on the host), tmp/x, a/b, srv/deep/c,
	// root (0700 on the host) and fanOut (0700 in the object store) are
	// implied.
	applyLayer(t, ctx, ms, []testenv.Entry{
		testenv.File("tmp/x/file", "implied\n"),
		testenv.File("a/b/file", "implied\n"),
		testenv.File("srv/deep/c/file", "implied\n"),
		testenv.File("root/file", "implied\n"),
		testenv.File(fanOut+"/file", "implied\n"),
		testenv.Whiteout("gone"),
		testenv.Whiteout("gone-dir"),
		testenv.Opaque("opq"),
		testenv.File("opq/new", "in the opaque directory\n"),
	})
	if err := s.Commit(ctx, "layer-2", key); err != nil {
		t.Fatal(err)
	}
	if info, _ := s.Stat(ctx, "layer-2"); info.Labels[LabelComposefs] == "" {
		t.Fatalf("layer-2 was not converted: %v", info.Labels)
	}
	for _, m := range testenv.MountsUnder(root) {
		if strings.HasSuffix(m, "/merged") {
			t.Errorf("the unpack's overlay is still mounted after Commit: %s", m)
		}
	}

	if _, err := s.View(ctx, "view", "layer-2"); err != nil {
		t.Fatal(err)
	}
	writeThrough(t, s, ctx, "view", func(dir string) {
		for p, want := range map[string]os.FileMode{
			"a":          os.ModeDir | 0o750, // layer 1's
			"a/b":        os.ModeDir | 0o755,
			"srv":        os.ModeDir | 0o711,
			"srv/deep":   os.ModeDir | 0o700,
			"srv/deep/c": os.ModeDir | 0o755,
			"tmp":        os.ModeDir | 0o755, // not the host's 1777
			"tmp/x":      os.ModeDir | 0o755,
			"root":       os.ModeDir | 0o755, // not the host's 0700
			fanOut:       os.ModeDir | 0o755, // not the object store's 0700
		} {
			fi, err := os.Lstat(filepath.Join(dir, p))
			if err != nil {
				t.Errorf("%s: %v", p, err)
				continue
			}
			if fi.Mode() != want {
				t.Errorf("%s: mode %v, want %v", p, fi.Mode(), want)
			}
		}
		for _, p := range []string{"tmp/x/file", "a/b/file", "srv/deep/c/file", "root/file", fanOut + "/file"} {
			if got, err := os.ReadFile(filepath.Join(dir, p)); err != nil || string(got) != "implied\n" {
				t.Errorf("%s: %q, %v", p, got, err)
			}
		}
		for p, want := range map[string]string{"a/kept": "from layer 1\n", "big": big, "opq/new": "in the opaque directory\n"} {
			if got, err := os.ReadFile(filepath.Join(dir, p)); err != nil || string(got) != want {
				t.Errorf("%s: %q, %v", p, truncate(string(got), 40), err)
			}
		}
		for _, p := range []string{"gone", "gone-dir", "opq/old"} {
			if _, err := os.Lstat(filepath.Join(dir, p)); !os.IsNotExist(err) {
				t.Errorf("%s, deleted by layer 2: %v", p, err)
			}
		}
	})
}

// TestComposefsUnpackWithRemote: with a Remote, as the daemon always has
// one, a layer the Remote cannot mount is unpacked through the stack (the
// implied directories right), and one it mounts costs no overlay.
func TestComposefsUnpackWithRemote(t *testing.T) {
	remote := &bindRemote{source: t.TempDir(), fail: errors.New("not a lazy layer")}
	s, _, ctx := newComposefsSnapshotter(t, t.TempDir(), WithRemote(remote))

	for i, entries := range [][]testenv.Entry{
		{{Path: "a", Type: tar.TypeDir, Mode: 0o750}},
		{testenv.File("a/b/file", "implied\n"), testenv.File("tmp/file", "implied\n")},
	} {
		key, name, parent := fmt.Sprintf("unpack-%d", i+1), fmt.Sprintf("layer-%d", i+1), fmt.Sprintf("layer-%d", i)
		if i == 0 {
			parent = ""
		}
		ms, err := s.Prepare(ctx, key, parent, unpackOf(name))
		if err != nil {
			t.Fatal(err)
		}
		applyLayer(t, ctx, ms, entries)
		if err := s.Commit(ctx, name, key); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := s.View(ctx, "view", "layer-2"); err != nil {
		t.Fatal(err)
	}
	writeThrough(t, s, ctx, "view", func(dir string) {
		for p, want := range map[string]os.FileMode{"a": os.ModeDir | 0o750, "a/b": os.ModeDir | 0o755, "tmp": os.ModeDir | 0o755} {
			if fi, err := os.Lstat(filepath.Join(dir, p)); err != nil || fi.Mode() != want {
				t.Errorf("%s: %v, %v; want mode %v", p, fi.Mode(), err, want)
			}
		}
	})

	// A lazy layer on top: mounted by the Remote, no overlay made for it.
	remote.fail = nil
	if _, err := s.Prepare(ctx, "unpack-3", "layer-2", unpackOf("layer-3")); !errdefs.IsAlreadyExists(err) {
		t.Fatalf("Prepare of a layer the Remote mounts: %v, want ErrAlreadyExists", err)
	}
	id3, _, _, err := s.idOf(ctx, "layer-3")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(s.mergedPath(id3)); !os.IsNotExist(err) {
		t.Errorf("a remote layer's snapshot has a merged directory (%v): an overlay was mounted for nothing", err)
	}
}

// refusingLazy is a LazyComposefs that serves no layer.
type refusingLazy struct{ err error }

func (r refusingLazy) MountComposefs(ctx context.Context, mountpoint, image, id string, labels map[string]string) error {
	return r.err
}

func (r refusingLazy) ObjectsDir() string { return "/nonexistent" }

// TestLazyComposefsFallback: a layer the lazy composefs mode cannot serve
// is mounted by the Remote instead, and its snapshot says why not lazily
// in the composefs form.
func TestLazyComposefsFallback(t *testing.T) {
	why := errors.New("the kernel has no data-only lower layers")
	s, _, ctx := newComposefsSnapshotter(t, t.TempDir(), WithRemote(&bindRemote{source: t.TempDir()}), WithLazyComposefs(refusingLazy{why}))
	if _, err := s.Prepare(ctx, "unpack-1", "", unpackOf("layer-1")); !errdefs.IsAlreadyExists(err) {
		t.Fatalf("Prepare of a layer the Remote mounts: %v, want ErrAlreadyExists", err)
	}
	info, err := s.Stat(ctx, "layer-1")
	if err != nil {
		t.Fatal(err)
	}
	if _, remote := info.Labels[LabelRemote]; !remote || info.Labels[LabelNotLazy] != why.Error() {
		t.Errorf("labels %v: want the layer mounted remotely, and why not lazily in the composefs form", info.Labels)
	}
	if _, lazy := info.Labels[LabelLazy]; lazy {
		t.Errorf("labels %v: a layer the lazy composefs mode refused is marked lazy", info.Labels)
	}
}

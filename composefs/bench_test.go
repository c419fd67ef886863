package composefs

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/lazypull/lazypull/composefs/objects"
	"github.com/lazypull/lazypull/internal/testenv"
)

// BenchmarkStatTree is the metadata side of the composefs mode (issue 12:
// stat at least 0.9× as fast as ext4): lstat of every file of a generated
// layer of 50,000 files (LAZYPULL_BENCH_FILES), through a composefs stack
// (the layer's EROFS metadata image over the object store) and on the same
// tree in a plain directory of the host's filesystem, in the same run.
// A third way, the overlay snapshotter's, stats the plain tree through an
// overlay mount, which tells overlayfs's own cost from the image's. The
// fusefs package's BenchmarkStatTree measures the FUSE mode on a tree of
// the same shape.
//
// A fourth way stats the layer's image mount alone: the layer as the
// fusefs benchmark measures the FUSE mode's (image/local), where the
// composefs ratios include overlayfs's cost, which a container pays with
// any snapshotter.
//
// cold: each round stats each way after dropping the kernel's caches
// (dentries, inodes, pages) and mounting it afresh. cold-walk: the same as
// find does it, listing each directory and stating its entries. warm: all
// cached. Reported: µs per stat each way, image/local, composefs/local (the plain
// tree's time over the stack's: 1 is as fast as the host filesystem; the
// target is ≥ 0.9) and composefs/overlay. None asserts a time.
func BenchmarkStatTree(b *testing.B) {
	testenv.NeedRoot(b)
	names := statTreeNames(testenv.EnvInt(b, "LAZYPULL_BENCH_FILES", 50000))
	parent := benchParent(b)
	local, layer := filepath.Join(parent, "local"), filepath.Join(parent, "layer")
	writeStatTree(b, local, names)
	writeStatTree(b, layer, names)
	store, err := objects.Open(context.Background(), filepath.Join(parent, "store"))
	if err != nil {
		b.Fatal(err)
	}
	defer store.Close()
	image := filepath.Join(parent, "layer.erofs")
	if _, err := BuildDir(context.Background(), layer, store, "bench", image); err != nil {
		b.Fatal(err)
	}
	os.RemoveAll(layer) // as the snapshotter does
	meta, stack := filepath.Join(parent, "meta"), filepath.Join(parent, "stack")
	empty, plain := filepath.Join(parent, "empty"), filepath.Join(parent, "overlay")
	for _, d := range []string{meta, stack, empty, plain} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			b.Fatal(err)
		}
	}
	s := &statStack{image: image, meta: meta, stack: stack, objects: store.ObjectsDir(), local: local, empty: empty, plain: plain}
	b.Cleanup(func() { s.unmount(b) })

	// Each way from a dropped cache and a fresh mount: no dentry, inode
	// or page left by the previous one (the stacks share no files, but
	// the plain overlay is over the local tree).
	cold := func(b *testing.B, stat func(b *testing.B, root string) time.Duration) {
		var tLocal, tPlain, tStack, tImage time.Duration
		for b.Loop() {
			s.unmount(b)
			dropCaches(b)
			tLocal += stat(b, local)
			dropCaches(b)
			s.mountPlain(b)
			tPlain += stat(b, plain)
			s.unmount(b)
			dropCaches(b)
			s.mount(b)
			tStack += stat(b, stack)
			s.unmount(b)
			dropCaches(b)
			s.mount(b)
			tImage += stat(b, meta)
		}
		reportStatTree(b, len(names), tLocal, tPlain, tStack, tImage)
	}
	b.Run("cold", func(b *testing.B) {
		cold(b, func(b *testing.B, root string) time.Duration { return statAll(b, root, names) })
	})
	b.Run("cold-walk", func(b *testing.B) {
		cold(b, func(b *testing.B, root string) time.Duration { return walkStatAll(b, root, len(names)) })
	})
	b.Run("warm", func(b *testing.B) {
		s.unmount(b)
		s.mount(b)
		s.mountPlain(b)
		statAll(b, local, names)
		statAll(b, plain, names)
		statAll(b, stack, names)
		statAll(b, meta, names)
		var tLocal, tPlain, tStack, tImage time.Duration
		for b.Loop() {
			tLocal += statAll(b, local, names)
			tPlain += statAll(b, plain, names)
			tStack += statAll(b, stack, names)
			tImage += statAll(b, meta, names)
		}
		reportStatTree(b, len(names), tLocal, tPlain, tStack, tImage)
	})
}

// statStack is the benchmark's mounts: the composefs stack (the image
// mounted at meta, the overlay of it over the objects at stack), and the
// overlay snapshotter's way for comparison (the plain tree as an overlay
// lower at plain, with an empty second lower as overlayfs wants two
// without an upper).
type statStack struct {
	image, meta, stack, objects string
	local, empty, plain         string
	mounted, plainMounted       bool
}

func (s *statStack) mount(b *testing.B) {
	b.Helper()
	if err := MountImage(s.image, s.meta); err != nil {
		b.Fatal(err)
	}
	if err := (Overlay{Layers: []string{s.meta}, Objects: s.objects, Verity: VerityOff}).MountAt(s.stack); err != nil {
		Unmount(s.meta)
		b.Fatal(err)
	}
	s.mounted = true
}

func (s *statStack) mountPlain(b *testing.B) {
	b.Helper()
	if err := unix.Mount("overlay", s.plain, "overlay", unix.MS_RDONLY, "lowerdir="+s.local+":"+s.empty); err != nil {
		b.Fatalf("mount an overlay of %s at %s: %v", s.local, s.plain, err)
	}
	s.plainMounted = true
}

func (s *statStack) unmount(b *testing.B) {
	b.Helper()
	if s.plainMounted {
		s.plainMounted = false
		if err := unix.Unmount(s.plain, 0); err != nil {
			b.Fatalf("unmount %s: %v", s.plain, err)
		}
	}
	if !s.mounted {
		return
	}
	s.mounted = false
	if err := Unmount(s.stack); err != nil {
		b.Fatal(err)
	}
	if err := Unmount(s.meta); err != nil {
		b.Fatal(err)
	}
}

// statTreeNames are n file paths shaped like a Python library: 1000 files
// a package, 100 a subdirectory (the fusefs benchmark's tree).
func statTreeNames(n int) []string {
	names := make([]string, n)
	for i := range names {
		names[i] = fmt.Sprintf("usr/lib/python3/pkg%03d/sub%d/module_%05d.py", i/1000, i/100%10, i)
	}
	return names
}

// writeStatTree writes the files under root, each with distinct content
// of up to 2 KiB (a fifth of them small enough to be inlined in the image,
// as in real layers), the same every call.
func writeStatTree(b *testing.B, root string, names []string) {
	b.Helper()
	r := rand.New(rand.NewPCG(12, 0))
	buf := make([]byte, 2048)
	for i, name := range names {
		p := filepath.Join(root, name)
		if i%100 == 0 {
			if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
				b.Fatal(err)
			}
		}
		size := 8 + r.IntN(2048-8)
		if i%5 == 0 {
			size = 8 + r.IntN(InlineMax-8)
		}
		data := fmt.Appendf(buf[:0], "%08d", i)
		for len(data) < size {
			data = append(data, byte('a'+r.IntN(26)))
		}
		if err := os.WriteFile(p, data, 0o644); err != nil {
			b.Fatal(err)
		}
	}
}

// statAll lstats every name under root, in the order written.
func statAll(b *testing.B, root string, names []string) time.Duration {
	b.Helper()
	var st unix.Stat_t
	start := time.Now()
	for _, name := range names {
		if err := unix.Lstat(filepath.Join(root, name), &st); err != nil {
			b.Fatalf("lstat %s: %v", name, err)
		}
	}
	return time.Since(start)
}

// walkStatAll lists every directory under root and lstats each entry,
// checking it met every file.
func walkStatAll(b *testing.B, root string, files int) time.Duration {
	b.Helper()
	var st unix.Stat_t
	seen := 0
	start := time.Now()
	err := filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() {
			seen++
		}
		return unix.Lstat(p, &st)
	})
	elapsed := time.Since(start)
	if err != nil || seen != files {
		b.Fatalf("walk %s: %d of %d files, %v", root, seen, files, err)
	}
	return elapsed
}

func reportStatTree(b *testing.B, files int, tLocal, tPlain, tStack, tImage time.Duration) {
	per := func(d time.Duration) float64 { return float64(d.Nanoseconds()) / 1000 / float64(files*b.N) }
	b.ReportMetric(per(tImage), "image-µs/stat")
	b.ReportMetric(tLocal.Seconds()/tImage.Seconds(), "image/local")
	b.ReportMetric(per(tStack), "composefs-µs/stat")
	b.ReportMetric(per(tPlain), "overlay-µs/stat")
	b.ReportMetric(per(tLocal), "local-µs/stat")
	b.ReportMetric(tLocal.Seconds()/tStack.Seconds(), "composefs/local")
	b.ReportMetric(tPlain.Seconds()/tStack.Seconds(), "composefs/overlay")
}

// dropCaches drops the kernel's caches (testenv.DropCaches), so that the
// next stat reads the disk: the image file, the plain tree's inode tables.
func dropCaches(b *testing.B) {
	b.Helper()
	if err := testenv.DropCaches(); err != nil {
		b.Fatal(err)
	}
}

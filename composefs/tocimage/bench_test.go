package tocimage

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/lazypull/lazypull/composefs"
	"github.com/lazypull/lazypull/internal/testenv"
	"golang.org/x/sys/unix"
)

// BenchmarkWrite writes the image of a layer of 5,000 small files in 250
// directories (python's largest layer has some 5,100 entries): the work a
// lazy composefs mount does before the layer can be mounted. Reported per
// entry.
func BenchmarkWrite(b *testing.B) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	const files = 5000
	for i := range files {
		name := fmt.Sprintf("usr/lib/pkg%03d/module%04d.py", i%250, i)
		data := fmt.Appendf(nil, "content of file %d\n", i)
		h := &tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: 0o644, Size: int64(len(data)), ModTime: layerTime, Format: tar.FormatPAX}
		if err := tw.WriteHeader(h); err != nil {
			b.Fatal(err)
		}
		tw.Write(data)
	}
	tw.Close()
	t := parse(b, buf.Bytes())
	image := filepath.Join(b.TempDir(), "layer.erofs")
	b.ResetTimer()
	for b.Loop() {
		if _, err := Write(context.Background(), t, image, Options{Unsynced: true}); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Microseconds())/float64(b.N)/files, "µs/entry")
}

// BenchmarkStatTree is issue 13's stat-all on a fresh lazy mount: lstat of
// every file of a 50,000-file layer (LAZYPULL_BENCH_FILES) through the
// lazy composefs stack (the image written from the layer's eStargz TOC,
// over an empty data-only lower: stat never reaches the object filesystem,
// whatever serves it) and on the same tree in a plain directory of the
// host's filesystem, each after dropping the kernel's caches and mounting
// afresh. The tree is composefs's BenchmarkStatTree's shape, which
// measures the composefs mode, plain overlayfs and ext4 the same way; the
// fusefs package's, the FUSE mode. Reported: µs per stat, stack/local and
// image/local (the plain tree's time over the way's: 1 is as fast as the
// host's filesystem). None asserts a time.
func BenchmarkStatTree(b *testing.B) {
	testenv.NeedRoot(b)
	n := testenv.EnvInt(b, "LAZYPULL_BENCH_FILES", 50000)
	dir := b.TempDir()
	local := filepath.Join(dir, "local")
	var layer bytes.Buffer
	tw := tar.NewWriter(&layer)
	names := make([]string, n)
	for i := range names {
		names[i] = fmt.Sprintf("usr/lib/python3/pkg%03d/sub%d/module_%05d.py", i/1000, i/100%10, i)
		data := fmt.Appendf(nil, "%08d module %d\n", i, i)
		p := filepath.Join(local, names[i])
		if i%100 == 0 {
			if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
				b.Fatal(err)
			}
		}
		if err := os.WriteFile(p, data, 0o644); err != nil {
			b.Fatal(err)
		}
		h := &tar.Header{Typeflag: tar.TypeReg, Name: names[i], Mode: 0o644, Size: int64(len(data)), ModTime: layerTime, Format: tar.FormatPAX}
		if err := tw.WriteHeader(h); err != nil {
			b.Fatal(err)
		}
		tw.Write(data)
	}
	tw.Close()
	image := filepath.Join(dir, "layer.erofs")
	if _, err := Write(context.Background(), parse(b, layer.Bytes()), image, Options{}); err != nil {
		b.Fatal(err)
	}
	meta, stack, objects := filepath.Join(dir, "meta"), filepath.Join(dir, "stack"), filepath.Join(dir, "objects")
	for _, d := range []string{meta, stack, objects} {
		if err := os.Mkdir(d, 0o755); err != nil {
			b.Fatal(err)
		}
	}
	mounted := false
	unmount := func() {
		if mounted {
			mounted = false
			if err := errors.Join(composefs.Unmount(stack), composefs.Unmount(meta)); err != nil {
				b.Fatal(err)
			}
		}
	}
	mount := func() {
		if err := composefs.MountImage(image, meta); err != nil {
			b.Fatal(err)
		}
		if err := (composefs.Overlay{Layers: []string{meta}, Objects: objects, Verity: composefs.VerityOff}).MountAt(stack); err != nil {
			composefs.Unmount(meta)
			b.Fatal(err)
		}
		mounted = true
	}
	b.Cleanup(unmount)
	statAll := func(root string) time.Duration {
		var st unix.Stat_t
		start := time.Now()
		for _, name := range names {
			if err := unix.Lstat(root+"/"+name, &st); err != nil {
				b.Fatalf("lstat %s: %v", name, err)
			}
		}
		return time.Since(start)
	}
	dropCaches := func() {
		if err := testenv.DropCaches(); err != nil {
			b.Fatal(err)
		}
	}
	var tLocal, tStack, tImage time.Duration
	b.ResetTimer()
	for b.Loop() {
		unmount()
		dropCaches()
		tLocal += statAll(local)
		dropCaches()
		mount()
		tStack += statAll(stack)
		unmount()
		dropCaches()
		mount()
		tImage += statAll(meta)
	}
	per := func(d time.Duration) float64 { return float64(d.Nanoseconds()) / 1000 / float64(n*b.N) }
	b.ReportMetric(per(tLocal), "local-µs/stat")
	b.ReportMetric(per(tStack), "lazy-composefs-µs/stat")
	b.ReportMetric(per(tImage), "image-µs/stat")
	b.ReportMetric(tLocal.Seconds()/tStack.Seconds(), "lazy-composefs/local")
	b.ReportMetric(tLocal.Seconds()/tImage.Seconds(), "image/local")
}

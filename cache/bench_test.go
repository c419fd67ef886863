package cache

// Each benchmark times the cache's operation with b.Loop, then the same
// number of runs of its baseline, the plain file operation a cache-less
// daemon would make on the same bytes, and reports the baseline's time and
// the ratio (cache/file: under 1, the cache is faster). None asserts a time.

import (
	"encoding/binary"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	"golang.org/x/sys/unix"
)

// reportBaseline reports base, the time of b.N runs of the baseline named
// name, and the ratio of the benchmark's own time to it.
func reportBaseline(b *testing.B, name string, base time.Duration) {
	b.ReportMetric(float64(base.Nanoseconds())/float64(b.N), name+"-ns/op")
	b.ReportMetric(b.Elapsed().Seconds()/base.Seconds(), "cache/"+name)
}

// baselineFile writes data to a plain file in a new directory.
func baselineFile(b *testing.B, data []byte) string {
	p := filepath.Join(b.TempDir(), "file")
	if err := os.WriteFile(p, data, 0o600); err != nil {
		b.Fatal(err)
	}
	return p
}

// preadFile is the baseline of a Get: open, read whole and close a file.
func preadFile(b *testing.B, p string, buf []byte, off int64) {
	fd, err := unix.Open(p, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		b.Fatal(err)
	}
	if _, err := unix.Pread(fd, buf, off); err != nil {
		b.Fatal(err)
	}
	unix.Close(fd)
}

// BenchmarkReadAt reads a FUSE request's worth of a cached entry, as the
// layer does for a file not served by passthrough, against the same pread
// of a plain file (open, pread, close) in the same run.
func BenchmarkReadAt(b *testing.B) {
	for _, bc := range []struct {
		name       string
		size, read int
	}{
		{"4KiB", 4 << 10, 4 << 10},
		{"128KiB-of-4MiB", 4 << 20, 128 << 10},
		{"1MiB-of-4MiB", 4 << 20, 1 << 20},
	} {
		b.Run(bc.name, func(b *testing.B) {
			c := newCache(b, b.TempDir())
			data := blob(1, bc.size)
			d := mustPut(b, c, data)
			buf := make([]byte, bc.read)
			off := int64(bc.size - bc.read)
			b.SetBytes(int64(bc.read))
			b.ReportAllocs()
			for b.Loop() {
				if !c.ReadAt(d, int64(bc.size), buf, off) {
					b.Fatal("miss")
				}
			}
			p := baselineFile(b, data)
			start := time.Now()
			for range b.N {
				preadFile(b, p, buf, off)
			}
			reportBaseline(b, "file", time.Since(start))
		})
	}
	b.Run("4KiB/parallel", func(b *testing.B) {
		c := newCache(b, b.TempDir())
		var ds []digest.Digest
		var files []string
		for i := range 64 {
			ds = append(ds, mustPut(b, c, blob(i, 4<<10)))
			files = append(files, baselineFile(b, blob(i, 4<<10)))
		}
		b.SetBytes(4 << 10)
		b.ReportAllocs()
		b.ResetTimer() // b.Loop does it; RunParallel does not
		b.RunParallel(func(pb *testing.PB) {
			buf := make([]byte, 4<<10)
			for i := 0; pb.Next(); i++ {
				if !c.ReadAt(ds[i%len(ds)], 4<<10, buf, 0) {
					b.Fatal("miss")
				}
			}
		})
		b.StopTimer() // b.Loop does it; RunParallel does not
		// The same reads of plain files, on as many goroutines.
		workers := runtime.GOMAXPROCS(0)
		start := time.Now()
		var wg sync.WaitGroup
		for w := range workers {
			wg.Go(func() {
				buf := make([]byte, 4<<10)
				for i := w; i < b.N; i += workers {
					preadFile(b, files[i%len(files)], buf, 0)
				}
			})
		}
		wg.Wait()
		reportBaseline(b, "file", time.Since(start))
	})
}

func BenchmarkPut(b *testing.B) {
	for _, sync := range []bool{false, true} {
		b.Run(fmt.Sprintf("4KiB/sync=%v", sync), func(b *testing.B) {
			c := newCache(b, b.TempDir(), WithSync(sync))
			data := blob(1, 4<<10)
			b.SetBytes(int64(len(data)))
			i := 0
			for b.Loop() {
				// A distinct blob each time: the first 8 bytes are a counter.
				binary.LittleEndian.PutUint64(data, uint64(i))
				i++
				if err := c.Put(digest.FromBytes(data), data); err != nil {
					b.Fatal(err)
				}
			}
			// Baseline: write each to a new plain file, fsynced alike.
			dir := b.TempDir()
			start := time.Now()
			for i := range b.N {
				f, err := os.Create(filepath.Join(dir, fmt.Sprint(i)))
				if err != nil {
					b.Fatal(err)
				}
				if _, err := f.Write(data); err != nil {
					b.Fatal(err)
				}
				if sync {
					if err := f.Sync(); err != nil {
						b.Fatal(err)
					}
				}
				f.Close()
			}
			reportBaseline(b, "file", time.Since(start))
		})
	}
}

func BenchmarkOpen(b *testing.B) {
	c := newCache(b, b.TempDir())
	data := blob(1, 4<<20)
	d := mustPut(b, c, data)
	b.ReportAllocs()
	for b.Loop() {
		f, ok := c.Open(d)
		if !ok {
			b.Fatal("miss")
		}
		f.Close()
	}
	p := baselineFile(b, data)
	start := time.Now()
	for range b.N {
		f, err := os.Open(p)
		if err != nil {
			b.Fatal(err)
		}
		f.Close()
	}
	reportBaseline(b, "file", time.Since(start))
}

// BenchmarkNewScan measures New on a directory of 100k entries: the cost of
// rebuilding the index at daemon start. The baseline walks the same tree
// with an lstat per file (filepath.WalkDir).
func BenchmarkNewScan(b *testing.B) {
	const entries = 100_000
	dir := b.TempDir()
	for i := range entries {
		data := binary.LittleEndian.AppendUint64(nil, uint64(i))
		d := digest.FromBytes(data)
		p := filepath.Join(dir, "sha256", d.Encoded()[:2], d.Encoded())
		if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
			b.Fatal(err)
		}
		if err := os.WriteFile(p, data, 0o600); err != nil {
			b.Fatal(err)
		}
	}
	for b.Loop() {
		c, err := New(dir)
		if err != nil {
			b.Fatal(err)
		}
		if n := c.Stats().Entries; n != entries {
			b.Fatalf("%d entries, want %d", n, entries)
		}
		c.Close()
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/entries, "ns/entry")
	start := time.Now()
	for range b.N {
		files := 0
		err := filepath.WalkDir(filepath.Join(dir, "sha256"), func(p string, de fs.DirEntry, err error) error {
			if err != nil || de.IsDir() {
				return err
			}
			if _, err := de.Info(); err != nil {
				return err
			}
			files++
			return nil
		})
		if err != nil || files != entries {
			b.Fatalf("walk: %d files, %v", files, err)
		}
	}
	reportBaseline(b, "walk", time.Since(start))
}

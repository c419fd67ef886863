package cache

import (
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/opencontainers/go-digest"
)

func BenchmarkGet(b *testing.B) {
	for _, bc := range []struct {
		name   string
		size   int
		memory int64
	}{
		{"memory/4KiB", 4 << 10, DefaultMemoryBytes},
		{"memory/1MiB", 1 << 20, DefaultMemoryBytes},
		{"disk/4KiB", 4 << 10, 0},
		{"disk/4MiB", 4 << 20, 0},
	} {
		b.Run(bc.name, func(b *testing.B) {
			c := newCache(b, b.TempDir(), WithMemoryBytes(bc.memory))
			d := mustPut(b, c, blob(1, bc.size))
			buf := make([]byte, 0, bc.size)
			b.SetBytes(int64(bc.size))
			b.ReportAllocs()
			for b.Loop() {
				if _, ok := c.GetInto(d, buf); !ok {
					b.Fatal("miss")
				}
			}
		})
	}
	b.Run("memory/4KiB/parallel", func(b *testing.B) {
		c := newCache(b, b.TempDir())
		var ds []digest.Digest
		for i := range 64 {
			ds = append(ds, mustPut(b, c, blob(i, 4<<10)))
		}
		b.SetBytes(4 << 10)
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			buf := make([]byte, 0, 4<<10)
			for i := 0; pb.Next(); i++ {
				if _, ok := c.GetInto(ds[i%len(ds)], buf); !ok {
					b.Fatal("miss")
				}
			}
		})
	})
}

func BenchmarkPut(b *testing.B) {
	for _, sync := range []bool{false, true} {
		b.Run(fmt.Sprintf("4KiB/sync=%v", sync), func(b *testing.B) {
			c := newCache(b, b.TempDir(), WithSync(sync), WithMemoryBytes(0))
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
		})
	}
}

func BenchmarkOpen(b *testing.B) {
	c := newCache(b, b.TempDir())
	d := mustPut(b, c, blob(1, 4<<20))
	b.ReportAllocs()
	for b.Loop() {
		f, ok := c.Open(d)
		if !ok {
			b.Fatal("miss")
		}
		f.Close()
	}
}

// BenchmarkNewScan measures New on a directory of 100k entries: the cost of
// rebuilding the index at daemon start.
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
}

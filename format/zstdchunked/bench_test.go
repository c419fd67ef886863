package zstdchunked

import (
	"bytes"
	"fmt"
	"io"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"
)

// benchLayer is a ~64 MiB tar: many small files and some large ones, half
// text that compresses well, half random bytes that do not.
var benchLayer = sync.OnceValue(func() []byte {
	var ms []member
	total := 0
	for i := 0; total < 64<<20; i++ {
		size := 4 << 10
		switch i % 16 {
		case 0:
			size = 8 << 20
		case 1, 2:
			size = 512 << 10
		}
		ms = append(ms, reg(fmt.Sprintf("dir%d/file%d", i%32, i), content(uint64(i), size, i%2 == 0)))
		total += size
	}
	return buildTar(&testing.B{}, ms)
})

// BenchmarkWrite converts the same layer single-threaded (one worker,
// GOMAXPROCS 1: reading, hashing and writing share the core too) and on
// every core, and reports both throughputs and their ratio.
func BenchmarkWrite(b *testing.B) {
	layer := benchLayer()
	workers := runtime.NumCPU()
	write := func(concurrency int) time.Duration {
		if concurrency == 1 {
			defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(1))
		}
		runtime.GC()
		start := time.Now()
		w := NewWriter(io.Discard, WithConcurrency(concurrency))
		if err := w.AppendTar(bytes.NewReader(layer)); err != nil {
			b.Fatal(err)
		}
		if _, err := w.Close(); err != nil {
			b.Fatal(err)
		}
		return time.Since(start)
	}
	var single, parallel time.Duration
	b.ResetTimer()
	for range b.N {
		single += write(1)
		parallel += write(workers)
	}
	mb := float64(len(layer)) * float64(b.N) / (1 << 20)
	b.ReportMetric(mb/single.Seconds(), "single-MB/s")
	b.ReportMetric(mb/parallel.Seconds(), "parallel-MB/s")
	b.ReportMetric(single.Seconds()/parallel.Seconds(), "speedup")
	b.ReportMetric(float64(workers), "workers")
}

// BenchmarkReadChunk is the hot path of a lazy read: one 4 MiB chunk of
// text, decompressed and verified. The baseline, the same number of times
// in the same run, is the zstd package decompressing the same bytes alone
// into a reused buffer: lazypull/zstd is what checking the chunk costs.
func BenchmarkReadChunk(b *testing.B) {
	blob, _ := writeBlob(b, buildTar(b, []member{reg("f", content(1, DefaultChunkSize, true))}))
	r := openBlob(b, blob)
	e, _ := r.TOC().Lookup("f")
	c := e.Chunks()[0]
	compressed := blob[c.Offset:c.EndOffset]
	b.SetBytes(c.Size)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := ReadChunk(nil, compressed, c); err != nil {
			b.Fatal(err)
		}
	}
	dec, err := zstd.NewReader(nil, zstd.WithDecoderConcurrency(1))
	if err != nil {
		b.Fatal(err)
	}
	defer dec.Close()
	buf := make([]byte, 0, c.Size)
	start := time.Now()
	for range b.N {
		if buf, err = dec.DecodeAll(compressed, buf[:0]); err != nil || int64(len(buf)) != c.Size {
			b.Fatalf("zstd alone: %d bytes, %v", len(buf), err)
		}
	}
	base := time.Since(start)
	b.ReportMetric(float64(base.Nanoseconds())/float64(b.N), "zstd-ns/op")
	b.ReportMetric(b.Elapsed().Seconds()/base.Seconds(), "lazypull/zstd")
}

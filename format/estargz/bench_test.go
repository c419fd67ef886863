package estargz

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"runtime"
	"strconv"
	"sync"
	"testing"
	"time"

	reference "github.com/containerd/stargz-snapshotter/estargz"
)

var (
	benchLayerOnce sync.Once
	benchLayer     []byte
)

// benchTar is a layer like a real image's: many small files and a few large
// ones, half of the bytes compressible. LAZYPULL_BENCH_MB sets its size
// (default 512).
func benchTar(b *testing.B) []byte {
	benchLayerOnce.Do(func() {
		mb := 512
		if v, err := strconv.Atoi(os.Getenv("LAZYPULL_BENCH_MB")); err == nil && v > 0 {
			mb = v
		}
		var files []testFile
		text := bytes.Repeat([]byte("the quick brown fox jumps over the lazy dog 0123456789\n"), 1<<14)
		total := 0
		for i := 0; total < mb<<20; i++ {
			var data []byte
			switch i % 4 {
			case 0:
				data = randomBytes(uint64(i), 8<<10)
			case 1:
				data = text[:12<<10]
			case 2:
				data = randomBytes(uint64(i), 3<<20)
			default:
				data = text[:min(len(text), 3<<20)]
			}
			files = append(files, reg(fmt.Sprintf("dir%d/file%d", i%50, i), data))
			total += len(data)
		}
		benchLayer = makeTar(b, files)
	})
	return benchLayer
}

// BenchmarkConvert converts the same layer single-threaded and with every
// core in each iteration, and reports both throughputs and their ratio.
//
//	go test ./format/estargz -run '^$' -bench Convert -benchtime 2x
func BenchmarkConvert(b *testing.B) {
	layer := benchTar(b)
	var took [2]time.Duration
	for b.Loop() {
		for i, workers := range []int{1, runtime.NumCPU()} {
			start := time.Now()
			w := NewWriter(io.Discard, WithConcurrency(workers))
			if err := w.AppendTar(bytes.NewReader(layer)); err != nil {
				b.Fatal(err)
			}
			if _, err := w.Close(); err != nil {
				b.Fatal(err)
			}
			took[i] += time.Since(start)
		}
	}
	mb := float64(len(layer)*b.N) / (1 << 20)
	b.ReportMetric(mb/took[0].Seconds(), "single-MB/s")
	b.ReportMetric(mb/took[1].Seconds(), "parallel-MB/s")
	b.ReportMetric(took[0].Seconds()/took[1].Seconds(), "parallel/single")
}

// BenchmarkOpen opens a blob whose TOC lists 50,000 files, with our reader
// and with the reference implementation's, and reports the ratio of times.
func BenchmarkOpen(b *testing.B) {
	var files []testFile
	for i := range 50000 {
		files = append(files, reg(fmt.Sprintf("usr/share/dir%03d/file-%05d.txt", i%500, i), []byte(strconv.Itoa(i))))
	}
	blob, _ := build(b, makeTar(b, files))
	b.ReportAllocs()
	var took [2]time.Duration
	for b.Loop() {
		start := time.Now()
		if _, err := Open(bytes.NewReader(blob), int64(len(blob))); err != nil {
			b.Fatal(err)
		}
		took[0] += time.Since(start)
		start = time.Now()
		if _, err := reference.Open(io.NewSectionReader(bytes.NewReader(blob), 0, int64(len(blob)))); err != nil {
			b.Fatal(err)
		}
		took[1] += time.Since(start)
	}
	b.ReportMetric(float64(took[0].Milliseconds())/float64(b.N), "lazypull-ms/op")
	b.ReportMetric(float64(took[1].Milliseconds())/float64(b.N), "reference-ms/op")
	b.ReportMetric(took[0].Seconds()/took[1].Seconds(), "lazypull/reference")
}

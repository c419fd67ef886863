package format

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"fmt"
	"io"
	"math/rand/v2"
	"runtime"
	"runtime/metrics"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/lazypull/lazypull/format/estargz"
	"github.com/lazypull/lazypull/format/toc"
	"github.com/lazypull/lazypull/format/zstdchunked"
)

// memoryBenchTar is a ~40 MiB layer as images have them: many small
// files, some of a few hundred KiB, and a few large ones of several
// chunks; half of them text that compresses well, half binary that
// compresses a little. It is made anew for each benchmark, not kept: the
// heap the benchmark measures must not hold it.
func memoryBenchTar() []byte {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	rng := rand.New(rand.NewPCG(1, 2))
	words := []string{"import", "def", "return", "self", "class", "value", "the", "int", "char", "static", "void", "if", "else", "for", "while"}
	total := 0
	for i := 0; total < 40<<20; i++ {
		size := 1<<10 + rng.IntN(31<<10)
		switch {
		case i%97 == 0:
			size = 9<<20 + rng.IntN(4<<20)
		case i%7 == 0:
			size = 128<<10 + rng.IntN(384<<10)
		}
		data := make([]byte, 0, size)
		if i%2 == 0 {
			for len(data) < size {
				data = append(data, words[rng.IntN(len(words))]...)
				data = append(data, " \n"[rng.IntN(2)])
			}
			data = data[:size]
		} else {
			for len(data) < size {
				// Binary: runs of a few byte values, as code and data
				// sections have, so that it compresses somewhat.
				b := byte(rng.IntN(256))
				for n := 1 + rng.IntN(4); n > 0 && len(data) < size; n-- {
					data = append(data, b)
				}
			}
		}
		tw.WriteHeader(&tar.Header{Name: fmt.Sprintf("usr/lib/d%02d/f%05d", i%50, i), Typeflag: tar.TypeReg, Mode: 0o644, Size: int64(size)})
		tw.Write(data)
		total += size
	}
	tw.Close()
	return buf.Bytes()
}

// BenchmarkDecodeMemory decodes every chunk of the same layer in both
// formats, four at a time as the background fetch does, and reports the
// heap each format needs: its peak above what the test held before
// (sampled), what stays on the heap after a collection (pooled
// decoders), and what it allocates. The zstd:chunked figures come with
// their ratio to eStargz's in the same run. "stream" is how the
// background fetch stores chunks nobody waits for (OpenChunk, hashed as
// copied); "read" is how it decodes those a reader waits for (ReadChunk).
// The blobs live outside the Go heap so that the heap is the decoding's.
func BenchmarkDecodeMemory(b *testing.B) {
	layer := memoryBenchTar()
	blobs := map[Kind]Blob{}
	datas := map[Kind][]byte{}
	for _, kind := range []Kind{EStargz, ZstdChunked} {
		data, annotations := memoryBenchBlob(b, kind, layer)
		desc := ocispec.Descriptor{Digest: digest.FromBytes(data), Size: int64(len(data)), Annotations: annotations}
		blob, _, err := Open(bytes.NewReader(data), desc, Options{})
		if err != nil {
			b.Fatalf("%s: %v", kind, err)
		}
		blobs[kind], datas[kind] = blob, data
	}
	layer = nil
	for _, mode := range []string{"stream", "read"} {
		b.Run(mode, func(b *testing.B) {
			var got [2]decodeMemory
			for b.Loop() {
				for i, kind := range []Kind{EStargz, ZstdChunked} {
					m := measureDecode(b, blobs[kind], datas[kind], mode == "stream")
					got[i].add(m)
				}
			}
			n := float64(b.N)
			est, zst := got[0], got[1]
			b.ReportMetric(zst.peak/n, "zstd-peak-MiB")
			b.ReportMetric(est.peak/n, "estargz-peak-MiB")
			b.ReportMetric(zst.peak/est.peak, "peak-zstd/estargz")
			b.ReportMetric(zst.retained/n, "zstd-retained-MiB")
			b.ReportMetric(est.retained/n, "estargz-retained-MiB")
			b.ReportMetric(zst.alloc/n, "zstd-alloc-MiB")
			b.ReportMetric(est.alloc/n, "estargz-alloc-MiB")
			b.ReportMetric(zst.alloc/est.alloc, "alloc-zstd/estargz")
		})
	}
}

// memoryBenchBlob converts layer and copies the blob out of the Go heap.
func memoryBenchBlob(b *testing.B, kind Kind, layer []byte) ([]byte, map[string]string) {
	var buf bytes.Buffer
	var appendTar func(io.Reader) error
	var finish func() (map[string]string, error)
	if kind == EStargz {
		w := estargz.NewWriter(&buf)
		appendTar = w.AppendTar
		finish = func() (map[string]string, error) { res, err := w.Close(); return res.Annotations, err }
	} else {
		w := zstdchunked.NewWriter(&buf)
		appendTar = w.AppendTar
		finish = func() (map[string]string, error) { res, err := w.Close(); return res.Annotations, err }
	}
	if err := appendTar(bytes.NewReader(layer)); err != nil {
		b.Fatal(err)
	}
	annotations, err := finish()
	if err != nil {
		b.Fatal(err)
	}
	out, err := syscall.Mmap(-1, 0, buf.Len(), syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_ANON|syscall.MAP_PRIVATE)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { syscall.Munmap(out) })
	copy(out, buf.Bytes())
	b.Logf("%s: %d bytes (layer %d)", kind, len(out), len(layer))
	return out, annotations
}

// decodeMemory is what one decoding of a layer took, in MiB.
type decodeMemory struct{ peak, retained, alloc float64 }

func (m *decodeMemory) add(o decodeMemory) {
	m.peak += o.peak
	m.retained += o.retained
	m.alloc += o.alloc
}

// measureDecode decodes every data chunk of blob on four goroutines and
// measures the heap meanwhile.
func measureDecode(b *testing.B, blob Blob, data []byte, stream bool) decodeMemory {
	var chunks []toc.Chunk
	for _, e := range blob.TOC().Entries() {
		for _, c := range e.Chunks() {
			if !c.Zero {
				chunks = append(chunks, c)
			}
		}
	}
	// Start from a heap without the garbage or the pools of the last run.
	runtime.GC()
	runtime.GC()
	before := heapSample()

	stop := make(chan struct{})
	peak := make(chan uint64)
	go func() {
		var top uint64
		tick := time.NewTicker(200 * time.Microsecond)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				peak <- max(top, heapSample().objects)
				return
			case <-tick.C:
				top = max(top, heapSample().objects)
			}
		}
	}()

	work := make(chan toc.Chunk)
	errs := make(chan error, 4)
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, 32<<10)
			var failed error
			for c := range work {
				if failed == nil {
					failed = decodeOne(blob, data[c.Offset:c.EndOffset], c, stream, buf)
				}
			}
			errs <- failed
		}()
	}
	for _, c := range chunks {
		work <- c
	}
	close(work)
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			b.Fatal(err)
		}
	}
	close(stop)
	top := <-peak
	runtime.GC()
	after := heapSample()
	const mib = 1 << 20
	return decodeMemory{
		peak:     float64(top-before.objects) / mib,
		retained: (float64(after.objects) - float64(before.objects)) / mib,
		alloc:    float64(after.allocs-before.allocs) / mib,
	}
}

// decodeOne decodes chunk c as the background fetch does: streamed into
// a hash (the cache's PutFile), or read whole and verified.
func decodeOne(blob Blob, compressed []byte, c toc.Chunk, stream bool, buf []byte) error {
	if !stream {
		_, err := blob.ReadChunk(nil, compressed, c)
		return err
	}
	rc, err := blob.OpenChunk(compressed, c)
	if err != nil {
		return err
	}
	defer rc.Close()
	h := sha256.New()
	if _, err := io.CopyBuffer(h, rc, buf); err != nil {
		return err
	}
	if got := digest.NewDigest(digest.SHA256, h); got != c.Digest() {
		return fmt.Errorf("chunk at %d: digest %s, want %s", c.Offset, got, c.Digest())
	}
	return nil
}

type heapStats struct{ objects, allocs uint64 }

var heapMetrics = []metrics.Sample{{Name: "/memory/classes/heap/objects:bytes"}, {Name: "/gc/heap/allocs:bytes"}}

// heapSample reads the bytes of heap objects (live or not yet swept) and
// the bytes allocated so far, without stopping the world.
func heapSample() heapStats {
	s := make([]metrics.Sample, len(heapMetrics))
	copy(s, heapMetrics)
	metrics.Read(s)
	return heapStats{objects: s[0].Value.Uint64(), allocs: s[1].Value.Uint64()}
}

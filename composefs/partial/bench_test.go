package partial

import (
	"archive/tar"
	"bytes"
	"fmt"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/lazypull/lazypull/format"
	"github.com/lazypull/lazypull/format/zstdchunked"
)

// BenchmarkFillOverBase is the partial pull's purpose (issue 12: a cold
// pull of a zstd:chunked image whose base is on the node already): a layer
// of 2000 files in 20 directories, two of them new and the rest as in a
// layer the store holds already, filled after that one; the baseline is
// the same layer filled into an empty store, in the same run. Reported:
// the share of the blob each read (read/blob, base-read/blob), requests
// made, and the time over the baseline's (fill/empty).
func BenchmarkFillOverBase(b *testing.B) {
	files := func(newSeed uint64) []testFile {
		var fs []testFile
		for i := range 2000 {
			seed := uint64(1000 + i)
			if i/100%10 == 0 {
				seed = newSeed + uint64(i)
			}
			fs = append(fs, testFile{fmt.Sprintf("usr/lib/pkg%02d/file%04d", i/100, i), random(seed, 1024+int(seed%8)*1024)})
		}
		return fs
	}
	base, baseDesc := zstdBlob(b, files(1<<20))
	layer, desc := zstdBlob(b, files(1<<30))
	open := func(blob []byte, desc ocispec.Descriptor) format.Blob {
		fb, _, err := format.Open(bytes.NewReader(blob), desc, format.Options{})
		if err != nil {
			b.Fatal(err)
		}
		return fb
	}

	var over, empty time.Duration
	var st, full Stats
	for b.Loop() {
		b.StopTimer()
		store, fresh := openStore(b), openStore(b)
		if _, err := fill(b, store, "base", bytes.NewReader(base), open(base, baseDesc), Options{}); err != nil {
			b.Fatal(err)
		}
		lb := open(layer, desc)
		b.StartTimer()
		start := time.Now()
		var err error
		if st, err = fill(b, store, "layer", bytes.NewReader(layer), lb, Options{}); err != nil {
			b.Fatal(err)
		}
		over += time.Since(start)
		start = time.Now()
		if full, err = fill(b, fresh, "layer", bytes.NewReader(layer), lb, Options{}); err != nil {
			b.Fatal(err)
		}
		empty += time.Since(start)
	}
	b.ReportMetric(float64(st.Read)/float64(len(layer)), "read/blob")
	b.ReportMetric(float64(full.Read)/float64(len(layer)), "base-read/blob")
	b.ReportMetric(float64(st.Reads), "requests")
	b.ReportMetric(float64(full.Reads), "base-requests")
	b.ReportMetric(over.Seconds()/empty.Seconds(), "fill/empty")
}

func zstdBlob(b *testing.B, files []testFile) ([]byte, ocispec.Descriptor) {
	b.Helper()
	var tarBuf bytes.Buffer
	tw := tar.NewWriter(&tarBuf)
	for _, f := range files {
		tw.WriteHeader(&tar.Header{Name: f.name, Typeflag: tar.TypeReg, Mode: 0o644, Size: int64(len(f.data))})
		tw.Write(f.data)
	}
	tw.Close()
	var out bytes.Buffer
	w := zstdchunked.NewWriter(&out)
	if err := w.AppendTar(&tarBuf); err != nil {
		b.Fatal(err)
	}
	res, err := w.Close()
	if err != nil {
		b.Fatal(err)
	}
	return out.Bytes(), ocispec.Descriptor{MediaType: zstdchunked.MediaType, Digest: digest.FromBytes(out.Bytes()), Size: int64(out.Len()), Annotations: res.Annotations}
}

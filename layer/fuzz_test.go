package layer_test

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"runtime"
	"testing"

	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/lazypull/lazypull/cache"
	"github.com/lazypull/lazypull/format/estargz"
	"github.com/lazypull/lazypull/format/toc"
	"github.com/lazypull/lazypull/format/zstdchunked"
	"github.com/lazypull/lazypull/layer"
)

// fuzzLimits keep one input's files small enough to read whole, and its
// holes large enough that storing one would show.
var fuzzLimits = toc.Limits{MaxTOCBytes: 1 << 20, MaxEntries: 256, MaxFileSize: 16 << 20, MaxChunkBytes: 64 << 10}

// maxFuzzRead bounds the file bytes one input may have read (holes are
// cheap to serve, but a TOC of many large holes is slow to read whole).
const maxFuzzRead = 256 << 20

// FuzzLayerRead opens fuzzed blobs through the production read path
// (layer.Open on an in-memory fetcher, a real cache, every regular file
// read whole with ReadAt, CachedFile, Close) and checks that nothing
// panics, that a file whose TOC gives its digest reads as that digest or
// fails, and that memory follows the data, not what the TOC claims.
//
// An input is the blob's file data and its TOC JSON, which the target
// wraps as the format does (eStargz: a gzip'd tar member and the footer;
// zstd:chunked: a zstd frame in a skippable frame and the footer): the
// fuzzer then mutates the TOC itself rather than bytes that no longer
// decompress. Layers open unverified, by their footer, so that mutated
// TOCs are parsed at all.
func FuzzLayerRead(f *testing.F) {
	gz, zst := sampleBlobs(f)
	data, tocJSON := splitEStargz(f, gz)
	f.Add(false, data, tocJSON)
	data, tocJSON = splitZstdChunked(f, zst)
	f.Add(true, data, tocJSON)

	f.Fuzz(func(t *testing.T, zstdChunked bool, data, tocJSON []byte) {
		if len(tocJSON) > int(fuzzLimits.MaxTOCBytes) {
			t.Skip("TOC over the limit")
		}
		blob, mediaType := joinEStargz(data, tocJSON), ocispec.MediaTypeImageLayerGzip
		if zstdChunked {
			blob, mediaType = joinZstdChunked(data, tocJSON), zstdchunked.MediaType
		}
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		budget := readLayer(t, blob, mediaType)
		runtime.ReadMemStats(&after)
		if used := after.TotalAlloc - before.TotalAlloc; used > budget {
			t.Fatalf("reading a layer of %d bytes allocated %d MiB, over its budget of %d MiB", len(blob), used>>20, budget>>20)
		}
	})
}

// sampleBlobs are a small layer in eStargz and in zstd:chunked, as our
// writers make them: files sharing a member, chunked, with a hole, links.
func sampleBlobs(t testing.TB) (gz, zst []byte) {
	var sample bytes.Buffer
	tw := tar.NewWriter(&sample)
	for _, file := range []struct {
		h    tar.Header
		data []byte
	}{
		{tar.Header{Name: "bin/", Typeflag: tar.TypeDir, Mode: 0o755}, nil},
		{tar.Header{Name: "bin/small", Typeflag: tar.TypeReg, Mode: 0o755}, []byte("hello, world\n")},
		{tar.Header{Name: "bin/chunked", Typeflag: tar.TypeReg, Mode: 0o644}, bytes.Repeat([]byte("0123456789abcdef"), 1000)},
		{tar.Header{Name: "bin/sparse", Typeflag: tar.TypeReg, Mode: 0o644}, append(append([]byte("head"), make([]byte, 20000)...), "tail"...)},
		{tar.Header{Name: "bin/link", Typeflag: tar.TypeSymlink, Linkname: "small"}, nil},
		{tar.Header{Name: "bin/hard", Typeflag: tar.TypeLink, Linkname: "bin/small"}, nil},
		{tar.Header{Name: "empty", Typeflag: tar.TypeReg, Mode: 0o600}, nil},
	} {
		file.h.Size = int64(len(file.data))
		if err := tw.WriteHeader(&file.h); err != nil {
			t.Fatal(err)
		}
		tw.Write(file.data)
	}
	tw.Close()

	var blob bytes.Buffer
	ew := estargz.NewWriter(&blob, estargz.WithChunkSize(4096), estargz.WithMinChunkSize(64))
	if err := ew.AppendTar(bytes.NewReader(sample.Bytes())); err != nil {
		t.Fatal(err)
	}
	if _, err := ew.Close(); err != nil {
		t.Fatal(err)
	}
	gz = bytes.Clone(blob.Bytes())

	blob.Reset()
	zw := zstdchunked.NewWriter(&blob, zstdchunked.WithChunkSize(4096))
	if err := zw.AppendTar(bytes.NewReader(sample.Bytes())); err != nil {
		t.Fatal(err)
	}
	if _, err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return gz, blob.Bytes()
}

// readLayer opens blob as a lazy layer, reads every regular file whole and
// returns what that may allocate: a few MiB, and a small multiple of the
// blob and of the data its chunks decompress to, holes not included.
func readLayer(t *testing.T, blob []byte, mediaType string) (budget uint64) {
	budget = 32<<20 + 16*uint64(len(blob))
	c, err := cache.New(t.TempDir(), cache.WithMaxBytes(64<<20))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	desc := ocispec.Descriptor{MediaType: mediaType, Digest: digest.FromBytes(blob), Size: int64(len(blob))}
	ctx := context.Background()
	l, err := layer.Open(ctx, desc, &memFetcher{blob}, c, layer.Options{Unverified: true, Limits: fuzzLimits})
	if err != nil {
		return budget
	}
	defer l.Close()

	var read int64
	var forged []*toc.Entry // files whose chunks do not make their digest
	buf := make([]byte, 64<<10)
	for _, e := range l.TOC().Entries() {
		if e.Type != toc.TypeReg {
			continue
		}
		for _, c := range e.Chunks() {
			if !c.Zero {
				budget += 16 * uint64(int64(c.InnerOffset)+c.Size)
			}
		}
		if read > maxFuzzRead-e.Size {
			break
		}
		read += e.Size
		served, ok := readWhole(t, l, e, buf)
		if !ok {
			continue
		}
		if e.Digest() != "" && served != e.Digest() {
			// Every chunk matched its own digest (else the read fails):
			// the TOC contradicts itself. A read cannot wait for the
			// whole file; the layer must find it out when it assembles
			// the file (below), or its verification against the image
			// does, for files too large to assemble.
			if len(e.Chunks()) > 1 && e.Size <= maxAssembled {
				forged = append(forged, e)
			}
			continue
		}
		if file, ok := l.CachedFile(e); ok {
			d := served.Algorithm().Digester()
			n, err := io.Copy(d.Hash(), file)
			file.Close()
			if err != nil || n != e.Size || d.Digest() != served {
				t.Fatalf("%s: the cached file holds %d bytes (%v) of %s, ReadAt served %d of %s", e.Path(), n, err, d.Digest(), e.Size, served)
			}
		}
	}
	if len(forged) > 0 {
		for _, e := range forged {
			if f, ok := l.CachedFile(e); ok { // assembles the file
				f.Close()
			}
		}
		l.Close() // waits for the assemblies
		if v, _ := l.Verification(); v != layer.Rejected {
			t.Fatalf("%s: its chunks do not make its TOC digest, and the layer is %s, not rejected", forged[0].Path(), v)
		}
	}
	return budget
}

// maxAssembled is layer's bound on files it assembles whole (and checks
// against their digest) as soon as they are cached.
const maxAssembled = 64 << 20

// readWhole reads e with ReadAt, buf at a time, and returns the digest of
// what it served (in the algorithm of e's digest), or false if a read
// failed.
func readWhole(t *testing.T, l *layer.Layer, e *toc.Entry, buf []byte) (digest.Digest, bool) {
	alg := digest.SHA256
	if e.Digest() != "" && e.Digest().Algorithm().Available() {
		alg = e.Digest().Algorithm()
	}
	d := alg.Digester()
	var off int64
	for off < e.Size {
		n, err := l.ReadAt(context.Background(), e, buf, off)
		if n < 0 || n > len(buf) {
			t.Fatalf("%s: ReadAt at %d returned %d bytes into %d", e.Path(), off, n, len(buf))
		}
		d.Hash().Write(buf[:n])
		off += int64(n)
		if err != nil && !(errors.Is(err, io.EOF) && off == e.Size) {
			return "", false
		}
		if n == 0 {
			t.Fatalf("%s: ReadAt at %d of %d returned nothing and no error", e.Path(), off, e.Size)
		}
	}
	return d.Digest(), true
}

// memFetcher serves a blob from memory, refusing ranges outside it.
type memFetcher struct{ data []byte }

func (f *memFetcher) Size() int64 { return int64(len(f.data)) }

func (f *memFetcher) FetchAt(ctx context.Context, p []byte, off int64) error {
	if off < 0 || off > int64(len(f.data)) || int64(len(p)) > int64(len(f.data))-off {
		return fmt.Errorf("range %d+%d outside the blob's %d bytes", off, len(p), len(f.data))
	}
	copy(p, f.data[off:])
	return nil
}

// splitEStargz takes an eStargz blob apart: file data, TOC JSON.
func splitEStargz(t testing.TB, blob []byte) (data, tocJSON []byte) {
	off, size, err := estargz.ParseFooter(blob[len(blob)-estargz.FooterSize:])
	if err != nil || size != estargz.FooterSize {
		t.Fatalf("footer: %v", err)
	}
	tocJSON, err = estargz.DecompressTOC(blob[off:len(blob)-size], 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	return blob[:off], tocJSON
}

// joinEStargz is an eStargz blob of file data and a TOC: the TOC's tar
// member gzip'd, then the footer that points at it.
func joinEStargz(data, tocJSON []byte) []byte {
	blob := bytes.NewBuffer(bytes.Clone(data))
	zw := gzip.NewWriter(blob)
	tw := tar.NewWriter(zw)
	tw.WriteHeader(&tar.Header{Name: estargz.TOCTarName, Typeflag: tar.TypeReg, Mode: 0o644, Size: int64(len(tocJSON))})
	tw.Write(tocJSON)
	tw.Close()
	zw.Close()
	// The footer is an empty gzip member whose extra field holds the
	// TOC's offset in hex in an "SG" subfield.
	payload := fmt.Sprintf("%016xSTARGZ", len(data))
	extra := append([]byte{'S', 'G', byte(len(payload)), 0}, payload...)
	footer := []byte{0x1f, 0x8b, 8, 4, 0, 0, 0, 0, 0, 255, byte(len(extra)), 0}
	footer = append(footer, extra...)
	footer = append(footer, 1, 0, 0, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 0)
	return append(blob.Bytes(), footer...)
}

// splitZstdChunked takes a zstd:chunked blob apart: file data, manifest.
func splitZstdChunked(t testing.TB, blob []byte) (data, tocJSON []byte) {
	footer, err := zstdchunked.ParseFooter(blob[len(blob)-zstdchunked.TailSize:])
	if err != nil {
		t.Fatal(err)
	}
	m := footer.Manifest
	zr, err := zstd.NewReader(nil)
	if err != nil {
		t.Fatal(err)
	}
	defer zr.Close()
	tocJSON, err = zr.DecodeAll(blob[m.Offset:m.Offset+m.Length], nil)
	if err != nil {
		t.Fatal(err)
	}
	return blob[:m.Offset-8], tocJSON
}

// zstdEncoder compresses fuzzed manifests.
var zstdEncoder, _ = zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedFastest))

// joinZstdChunked is a zstd:chunked blob of file data and a manifest: the
// manifest zstd-compressed in a skippable frame, then the 40-byte footer
// (offset, length, uncompressed length, type 1, magic) in another.
func joinZstdChunked(data, tocJSON []byte) []byte {
	manifest := zstdEncoder.EncodeAll(tocJSON, nil)
	skippable := func(dst, payload []byte) []byte {
		dst = binary.LittleEndian.AppendUint32(dst, 0x184D2A50)
		dst = binary.LittleEndian.AppendUint32(dst, uint32(len(payload)))
		return append(dst, payload...)
	}
	blob := skippable(bytes.Clone(data), manifest)
	var footer []byte
	for _, v := range []int{len(data) + 8, len(manifest), len(tocJSON), 1} {
		footer = binary.LittleEndian.AppendUint64(footer, uint64(v))
	}
	return skippable(blob, append(footer, "GnUlInUx"...))
}

package format

import (
	"archive/tar"
	"bytes"
	"errors"
	"fmt"
	"io"
	"maps"
	"slices"
	"testing"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/lazypull/lazypull/format/estargz"
	"github.com/lazypull/lazypull/format/zstdchunked"
)

func layerTar(t testing.TB) []byte {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	tw.WriteHeader(&tar.Header{Name: "hello", Typeflag: tar.TypeReg, Mode: 0o644, Size: 5})
	tw.Write([]byte("hello"))
	tw.Close()
	return buf.Bytes()
}

// bothFormats is the test layer as an eStargz and as a zstd:chunked blob,
// with the annotations each writer gives its descriptor.
func bothFormats(t testing.TB) []lazyBlob {
	t.Helper()
	var esgz bytes.Buffer
	ew := estargz.NewWriter(&esgz)
	ew.AppendTar(bytes.NewReader(layerTar(t)))
	eres, err := ew.Close()
	if err != nil {
		t.Fatal(err)
	}
	var zstd bytes.Buffer
	zw := zstdchunked.NewWriter(&zstd)
	zw.AppendTar(bytes.NewReader(layerTar(t)))
	zres, err := zw.Close()
	if err != nil {
		t.Fatal(err)
	}
	return []lazyBlob{{EStargz, esgz.Bytes(), eres.Annotations}, {ZstdChunked, zstd.Bytes(), zres.Annotations}}
}

type lazyBlob struct {
	kind        Kind
	blob        []byte
	annotations map[string]string
}

func TestOpenBothFormats(t *testing.T) {
	for _, tc := range bothFormats(t) {
		desc := ocispec.Descriptor{Digest: digest.FromBytes(tc.blob), Size: int64(len(tc.blob)), Annotations: tc.annotations}
		blob, kind, err := Open(bytes.NewReader(tc.blob), desc, Options{})
		if err != nil || kind != tc.kind {
			t.Fatalf("%s: Open = %v, %v", tc.kind, kind, err)
		}
		e, ok := blob.TOC().Lookup("hello")
		if !ok {
			t.Fatalf("%s: no hello", tc.kind)
		}
		c := e.Chunks()[0]
		data, err := blob.ReadChunk(nil, tc.blob[c.Offset:c.EndOffset], c)
		if err != nil || string(data) != "hello" {
			t.Errorf("%s: ReadChunk = %q, %v", tc.kind, data, err)
		}

		// Without its annotation the layer is refused, or opened by its
		// footer when unverified layers are allowed.
		desc.Annotations = nil
		if _, _, err := Open(bytes.NewReader(tc.blob), desc, Options{}); !errors.Is(err, ErrNotLazy) {
			t.Errorf("%s without annotations: err = %v, want ErrNotLazy", tc.kind, err)
		}
		if _, kind, err := Open(bytes.NewReader(tc.blob), desc, Options{Unverified: true}); err != nil || kind != tc.kind {
			t.Errorf("%s unverified: %v, %v", tc.kind, kind, err)
		}
	}
	plain := layerTar(t)
	desc := ocispec.Descriptor{Digest: digest.FromBytes(plain), Size: int64(len(plain))}
	if _, _, err := Open(bytes.NewReader(plain), desc, Options{Unverified: true}); !errors.Is(err, ErrNotLazy) {
		t.Errorf("a plain tar: err = %v, want ErrNotLazy", err)
	}
}

func TestTOCStart(t *testing.T) {
	formats := bothFormats(t)
	for _, tc := range formats {
		desc := ocispec.Descriptor{Digest: digest.FromBytes(tc.blob), Size: int64(len(tc.blob)), Annotations: tc.annotations}
		start, ok := TOCStart(desc)
		if !ok {
			t.Fatalf("%s: no TOC start in %v", tc.kind, tc.annotations)
		}
		blob, _, err := Open(bytes.NewReader(tc.blob), desc, Options{})
		if err != nil {
			t.Fatal(err)
		}
		// The TOC starts where file data ends, and a reader handed only
		// the bytes from there on opens the layer.
		if start != blob.DataEnd() {
			t.Errorf("%s: TOC start %d, data ends at %d", tc.kind, start, blob.DataEnd())
		}
		tail := &offsetReader{data: tc.blob[start:], off: start}
		if _, _, err := Open(tail, desc, Options{}); err != nil {
			t.Errorf("%s: open from the TOC start on: %v", tc.kind, err)
		}
	}

	// A hint outside the blob or not a number is no hint.
	for _, v := range []string{"-1", "999999", "x", ""} {
		a := map[string]string{estargz.TOCDigestAnnotation: formats[0].annotations[estargz.TOCDigestAnnotation], estargz.TOCOffsetAnnotation: v}
		if off, ok := TOCStart(ocispec.Descriptor{Size: 1000, Annotations: a}); ok {
			t.Errorf("offset annotation %q: TOCStart = %d, want none", v, off)
		}
	}
}

// offsetReader holds only the blob's bytes from off on; reading before
// them fails.
type offsetReader struct {
	data []byte
	off  int64
}

func (r *offsetReader) ReadAt(p []byte, off int64) (int, error) {
	if off < r.off {
		return 0, errors.New("read before the bytes given")
	}
	if off-r.off >= int64(len(r.data)) {
		return 0, io.EOF
	}
	n := copy(p, r.data[off-r.off:])
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

func TestKindOf(t *testing.T) {
	const (
		gzipType = "application/vnd.oci.image.layer.v1.tar+gzip"
		zstdType = "application/vnd.oci.image.layer.v1.tar+zstd"
		docker   = "application/vnd.docker.image.rootfs.diff.tar.gzip"
	)
	esgz := map[string]string{estargz.TOCDigestAnnotation: "sha256:1"}
	zstd := map[string]string{zstdchunked.ManifestChecksumAnnotation: "sha256:2"}
	legacy := map[string]string{"io.containers.zstd-chunked.manifest-checksum": "sha256:3"}
	// stargz-snapshotter's zstd:chunked layers carry both kinds.
	stargzZstd := map[string]string{estargz.TOCDigestAnnotation: "sha256:1", "io.containers.zstd-chunked.manifest-checksum": "sha256:3"}
	for _, tc := range []struct {
		mediaType   string
		annotations map[string]string
		kind        Kind // "" for not lazy
	}{
		{gzipType, esgz, EStargz},
		{docker, esgz, EStargz},
		{gzipType, zstd, ""},
		{gzipType, nil, ""},
		{zstdType, zstd, ZstdChunked},
		{zstdType, legacy, ZstdChunked},
		{zstdType, stargzZstd, ZstdChunked},
		{zstdType, esgz, ZstdChunked}, // stargz-snapshotter's, zstd annotations dropped
		{zstdType, nil, ""},
		{"", esgz, EStargz},
		{"", zstd, ZstdChunked},
		{"", stargzZstd, ZstdChunked},
		{"", nil, ""},
		{"application/vnd.oci.image.layer.v1.tar", esgz, ""},
		{"application/vnd.oci.image.layer.v1.tar+gzip+encrypted", esgz, ""},
		{"application/vnd.oci.image.layer.v1.tar+zstd+encrypted", zstd, ""},
	} {
		kind, ok := KindOf(ocispec.Descriptor{MediaType: tc.mediaType, Annotations: tc.annotations})
		if ok != (tc.kind != "") || ok && kind != tc.kind {
			t.Errorf("%q with %v: KindOf = %q, %v; want %q", tc.mediaType, tc.annotations, kind, ok, tc.kind)
		}
	}
}

// TestOpenChunkStreamsWhatReadChunkReturns: in both formats, every chunk
// streamed by OpenChunk is the bytes ReadChunk verifies (chunks of a
// large file, small files sharing a member), and a cut member yields at
// most a prefix of the chunk, never other bytes.
func TestOpenChunkStreamsWhatReadChunkReturns(t *testing.T) {
	var tarBuf bytes.Buffer
	tw := tar.NewWriter(&tarBuf)
	big := bytes.Repeat([]byte("0123456789abcdef-large-file-"), 10000) // 280 kB: several chunks
	files := map[string][]byte{"big": big}
	for i := range 20 {
		files[fmt.Sprintf("small%02d", i)] = []byte(fmt.Sprintf("small file %d\n", i))
	}
	for _, name := range slices.Sorted(maps.Keys(files)) {
		tw.WriteHeader(&tar.Header{Name: name, Typeflag: tar.TypeReg, Mode: 0o644, Size: int64(len(files[name]))})
		tw.Write(files[name])
	}
	tw.Close()
	var esgz, zst bytes.Buffer
	ew := estargz.NewWriter(&esgz, estargz.WithChunkSize(64<<10), estargz.WithMinChunkSize(4<<10))
	if err := ew.AppendTar(bytes.NewReader(tarBuf.Bytes())); err != nil {
		t.Fatal(err)
	}
	eres, err := ew.Close()
	if err != nil {
		t.Fatal(err)
	}
	zw := zstdchunked.NewWriter(&zst, zstdchunked.WithChunkSize(64<<10))
	if err := zw.AppendTar(bytes.NewReader(tarBuf.Bytes())); err != nil {
		t.Fatal(err)
	}
	zres, err := zw.Close()
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []lazyBlob{{EStargz, esgz.Bytes(), eres.Annotations}, {ZstdChunked, zst.Bytes(), zres.Annotations}} {
		desc := ocispec.Descriptor{Digest: digest.FromBytes(tc.blob), Size: int64(len(tc.blob)), Annotations: tc.annotations}
		blob, _, err := Open(bytes.NewReader(tc.blob), desc, Options{})
		if err != nil {
			t.Fatalf("%s: %v", tc.kind, err)
		}
		chunks, inner := 0, 0
		for _, e := range blob.TOC().Entries() {
			for _, c := range e.Chunks() {
				compressed := tc.blob[c.Offset:c.EndOffset]
				want, err := blob.ReadChunk(nil, compressed, c)
				if err != nil {
					t.Fatalf("%s %s: ReadChunk: %v", tc.kind, e.Path(), err)
				}
				rc, err := blob.OpenChunk(compressed, c)
				if err != nil {
					t.Fatalf("%s %s: OpenChunk: %v", tc.kind, e.Path(), err)
				}
				got, err := io.ReadAll(rc)
				rc.Close()
				if err != nil || !bytes.Equal(got, want) {
					t.Fatalf("%s %s chunk at %d: streamed %d bytes (%v), want the %d ReadChunk returns", tc.kind, e.Path(), c.FileOffset, len(got), err, len(want))
				}
				// Cut short: at most a prefix of the chunk (its
				// digest, checked by the caller, tells the rest).
				if rc, err := blob.OpenChunk(compressed[:len(compressed)/2], c); err == nil {
					got, _ := io.ReadAll(rc)
					rc.Close()
					if !bytes.HasPrefix(want, got) {
						t.Errorf("%s %s: a cut member streamed %d bytes that are not the chunk's", tc.kind, e.Path(), len(got))
					}
				}
				chunks++
				if c.InnerOffset > 0 {
					inner++
				}
			}
		}
		if chunks < 10 {
			t.Errorf("%s: only %d chunks: the test layer should have many", tc.kind, chunks)
		}
		t.Logf("%s: %d chunks, %d inside a shared member", tc.kind, chunks, inner)
	}
}

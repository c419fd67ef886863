package zstdchunked

import (
	"bytes"
	"io"
	"math"
	"testing"

	"github.com/klauspost/compress/zstd"
	"github.com/opencontainers/go-digest"

	"github.com/lazypull/lazypull/format/toc"
)

// fuzzLimits keep a fuzzed TOC from asking for much.
var fuzzLimits = toc.Limits{MaxTOCBytes: 1 << 20, MaxEntries: 1 << 12, MaxFileSize: 1 << 24, MaxChunkBytes: 1 << 20}

func smallBlob(t testing.TB, ms []member, opts ...WriterOption) []byte {
	blob, _ := writeBlob(t, buildTar(t, ms), opts...)
	return blob
}

// FuzzOpen feeds Open arbitrary blobs: footer, manifest frame and manifest
// parsing, then reads of every file. Nothing may panic. An input that
// starts with "{" is taken as manifest JSON and put in a well-formed blob
// after real data frames, so that mutations reach the manifest's rewriting,
// its checks and the chunk reads rather than only break the framing.
func FuzzOpen(f *testing.F) {
	framesData, framesManifest := blobParts(f, smallBlob(f, []member{
		reg("a", []byte("hello, world, hello, world")), reg("b", content(2, 200, false)), reg("c", content(3, 50, true)),
	}, WithChunkSize(32)))
	f.Add(framesManifest)
	two := []member{reg("a", []byte("hello, world, hello, world")), dir("d"), reg("d/b", content(1, 100, true))}
	f.Add(smallBlob(f, two))
	f.Add(smallBlob(f, two, WithChunkSize(16)))
	f.Add(smallBlob(f, nil))
	f.Add(smallBlob(f, []member{reg("a", []byte("x")), {hdr: linkHeader("b", "a")}}))
	sparse, _ := sparseTar(f, [][2]int64{{10, 20}, {100, 5}}, 200)
	sb, _ := writeBlob(f, sparse, WithChunkSize(64))
	f.Add(sb)
	data, manifest := blobParts(f, smallBlob(f, two, WithChunkSize(16)))
	legacy, _ := withManifest(f, data, manifest, 40, legacyFooterMagic)
	f.Add(legacy)
	f.Add([]byte{})
	f.Add(encodeFooter(Position{Offset: 8, Length: 1, UncompressedLength: 1}))

	f.Fuzz(func(t *testing.T, blob []byte) {
		if len(blob) > 0 && blob[0] == '{' {
			blob, _ = withManifest(t, framesData, blob, 64, footerMagic)
		}
		r, err := Open(bytes.NewReader(blob), int64(len(blob)), WithLimits(fuzzLimits))
		if err != nil {
			return
		}
		for _, e := range r.TOC().Entries() {
			if e.Type != toc.TypeReg && e.Type != toc.TypeHardlink {
				continue
			}
			f, err := r.OpenFile(e.Path())
			if err != nil {
				continue
			}
			buf := make([]byte, min(f.Size(), 1<<16))
			f.ReadAt(buf, 0)
			if f.Size() > 0 {
				f.ReadAt(buf[:1], f.Size()-1)
			}
		}
	})
}

// FuzzReadChunk feeds ReadChunk and OpenChunk arbitrary frames and chunk
// geometry. They may fail, never panic; what ReadChunk returns is what the
// digest says, and what OpenChunk streams is the same bytes.
func FuzzReadChunk(f *testing.F) {
	enc, _ := zstd.NewWriter(nil)
	text := content(3, 3000, true)
	frame := enc.EncodeAll(text, nil)
	f.Add(frame, int64(0), int64(len(text)), string(digest.FromBytes(text)))
	f.Add(frame, int64(100), int64(50), string(digest.FromBytes(text[100:150])))
	f.Add(frame, int64(0), int64(10), string(digest.SHA512.FromBytes(text[:10])))
	f.Add(enc.EncodeAll(make([]byte, 1<<20), nil), int64(0), int64(16), string(digest.FromBytes(make([]byte, 16))))
	f.Add([]byte{0x28, 0xb5, 0x2f, 0xfd, 0x00, 0x50, 0x29, 0x00, 0x00, 'h', 'e', 'l', 'l', 'o'}, int64(0), int64(5), string(digest.FromString("hello")))
	f.Add([]byte{}, int64(0), int64(0), "")

	f.Fuzz(func(t *testing.T, compressed []byte, innerOffset, size int64, d string) {
		if innerOffset < 0 || innerOffset > math.MaxUint32 {
			return // toc.Parse keeps no such chunk
		}
		c := toc.Chunk{EndOffset: int64(len(compressed)), InnerOffset: uint32(innerOffset), Size: size}
		_ = c.SetDigest(digest.Digest(d)) // a digest it refuses stays unset: ReadChunk must refuse the chunk
		// OpenChunk never yields more than the chunk, whatever the
		// frames claim.
		var streamed []byte
		if rc, err := OpenChunk(compressed, c); err == nil {
			streamed, err = io.ReadAll(io.LimitReader(rc, size+1))
			rc.Close()
			if int64(len(streamed)) > size {
				t.Fatalf("OpenChunk streamed more than the %d-byte chunk", size)
			}
		}
		out, err := ReadChunk(nil, compressed, c)
		if err != nil {
			return
		}
		if !bytes.Equal(streamed, out) {
			t.Fatalf("OpenChunk streamed %d bytes, ReadChunk verified %d other ones", len(streamed), len(out))
		}
		if int64(len(out)) != size {
			t.Fatalf("ReadChunk returned %d bytes for a %d-byte chunk", len(out), size)
		}
		if got := c.Digest().Algorithm().FromBytes(out); got != c.Digest() {
			t.Fatalf("ReadChunk returned bytes of digest %s for a chunk of %s", got, c.Digest())
		}
	})
}

package zstdchunked

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"runtime"
	"strings"
	"testing"

	"github.com/klauspost/compress/zstd"
	"github.com/opencontainers/go-digest"

	"github.com/lazypull/lazypull/format/toc"
)

func readWhole(r *Reader, name string) ([]byte, error) {
	f, err := r.OpenFile(name)
	if err != nil {
		return nil, err
	}
	buf := make([]byte, f.Size())
	n, err := f.ReadAt(buf, 0)
	if err == io.EOF && n == len(buf) {
		err = nil
	}
	return buf[:n], err
}

func TestCorruptChunk(t *testing.T) {
	tarball := richLayer(t, 4096)
	blob, res := writeBlob(t, tarball, WithChunkSize(4096))
	r := openBlob(t, blob)
	e, _ := r.TOC().Lookup("etc/several-chunks")
	c := e.Chunks()[1]
	for _, at := range []int64{c.Offset, c.Offset + 5, (c.Offset + c.EndOffset) / 2, c.EndOffset - 1} {
		bad := append([]byte(nil), blob...)
		bad[at] ^= 0x40
		r := openBlob(t, bad, WithAnnotations(res.Annotations)) // the manifest is intact
		f, _ := r.OpenFile("etc/several-chunks")
		buf := make([]byte, 4096)
		if _, err := f.ReadAt(buf, 0); err != nil {
			t.Errorf("byte %d flipped: chunk 0 fails too: %v", at, err)
		}
		_, err := f.ReadAt(buf, 4096)
		if err == nil {
			t.Errorf("byte %d flipped: chunk 1 reads without error", at)
			continue
		}
		if msg := err.Error(); !strings.Contains(msg, `file "etc/several-chunks" chunk 1 at offset`) {
			t.Errorf("byte %d flipped: error %q does not name the file and chunk", at, msg)
		}
		// The same through the hard link, named as asked.
		if _, err := readWhole(r, "etc/hard"); err == nil || !strings.Contains(err.Error(), `"etc/hard"`) {
			t.Errorf("byte %d flipped: reading the hard link: %v", at, err)
		}
	}
}

// A TOC whose digests lie (it is what the manifest checksum vouches for,
// so only a hostile or broken writer makes one): no byte is served.
func TestLyingChunkDigest(t *testing.T) {
	tarball := richLayer(t, 4096)
	blob, _ := writeBlob(t, tarball, WithChunkSize(4096))
	data, manifest := blobParts(t, blob)
	lie := digest.FromString("something else")
	lying := editManifest(t, manifest, func(doc *toc.JSON) {
		for i := range doc.Entries {
			if doc.Entries[i].Name == "etc/below-chunk" {
				// Both: toc.Parse refuses a one-chunk file whose digests differ.
				doc.Entries[i].ChunkDigest = lie.String()
				doc.Entries[i].Digest = lie.String()
			}
		}
	})
	b, annotations := withManifest(t, data, lying, 64, footerMagic)
	r := openBlob(t, b, WithAnnotations(annotations))
	got, err := readWhole(r, "etc/below-chunk")
	if !errors.Is(err, ErrDigestMismatch) {
		t.Fatalf("err %v, want ErrDigestMismatch", err)
	}
	if len(got) != 0 {
		t.Errorf("%d bytes served before the error", len(got))
	}
	want := `zstdchunked: file "etc/below-chunk" chunk 0 at offset`
	if msg := err.Error(); !strings.Contains(msg, want) || !strings.Contains(msg, "digest mismatch (want "+lie.String()+", got sha256:") {
		t.Errorf("error %q, want it to name the file, chunk and both digests", msg)
	}
}

// errAfter is a blob whose bytes from cut on cannot be read: a registry
// that drops the connection.
type errAfter struct {
	b   []byte
	cut int64
}

func (e errAfter) ReadAt(p []byte, off int64) (int, error) {
	return errIn{e.b, e.cut, int64(len(e.b))}.ReadAt(p, off)
}

// errIn is a blob whose bytes from..to cannot be read.
type errIn struct {
	b        []byte
	from, to int64
}

func (e errIn) ReadAt(p []byte, off int64) (int, error) {
	end := off + int64(len(p))
	if end <= e.from || off >= e.to {
		return copy(p, e.b[off:]), nil
	}
	n := 0
	if off < e.from {
		n = copy(p, e.b[off:e.from])
	}
	return n, io.ErrUnexpectedEOF
}

func TestTruncatedBlob(t *testing.T) {
	tarball := richLayer(t, 4096)
	blob, res := writeBlob(t, tarball, WithChunkSize(4096))
	pos, err := parseManifestPosition(res.Annotations[ManifestPositionAnnotation])
	if err != nil {
		t.Fatal(err)
	}
	for _, cut := range []int{0, 1, 7, 8, 40, 47, 48, 71, 72, 73, 200, len(blob) / 2, len(blob) - 73, len(blob) - 72, len(blob) - 1} {
		if _, err := Open(bytes.NewReader(blob[:cut]), int64(cut)); err == nil {
			t.Errorf("blob cut to %d bytes: Open succeeds", cut)
		}
		// By annotations, the footer is not needed: only the manifest.
		_, err := Open(bytes.NewReader(blob[:cut]), int64(cut), WithAnnotations(res.Annotations))
		if manifestEnd := int(pos.Offset + pos.Length); (err == nil) != (cut >= manifestEnd) {
			t.Errorf("blob cut to %d bytes (manifest ends at %d): Open by annotations: %v", cut, manifestEnd, err)
		}
		// The size says the blob is whole, the reads fail.
		if _, err := Open(errAfter{blob, int64(cut)}, int64(len(blob))); err == nil {
			t.Errorf("reads failing after %d bytes: Open succeeds", cut)
		}
	}
	// The manifest reads; file data does not.
	r := openBlob(t, blob)
	cut := r.TOC()
	e, _ := cut.Lookup("etc/several-chunks")
	ra := errIn{blob, e.Chunks()[2].Offset + 3, e.Chunks()[2].Offset + 4}
	r, err = Open(ra, int64(len(blob)), WithAnnotations(res.Annotations))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := readWhole(r, "etc/several-chunks"); err == nil || !strings.Contains(err.Error(), `file "etc/several-chunks" chunk 2`) {
		t.Errorf("read of data past the cut: %v", err)
	}
}

func TestWrongTOCDigest(t *testing.T) {
	tarball := richLayer(t, 4096)
	blob, res := writeBlob(t, tarball, WithChunkSize(4096))
	wrong := digest.FromString("not the manifest")
	if _, err := Open(bytes.NewReader(blob), int64(len(blob)), WithTOCDigest(wrong)); !errors.Is(err, ErrDigestMismatch) {
		t.Errorf("WithTOCDigest: err %v, want ErrDigestMismatch", err)
	}
	annotations := map[string]string{ManifestChecksumAnnotation: wrong.String(), ManifestPositionAnnotation: res.Annotations[ManifestPositionAnnotation]}
	if _, err := Open(bytes.NewReader(blob), int64(len(blob)), WithAnnotations(annotations)); !errors.Is(err, ErrDigestMismatch) {
		t.Errorf("annotation: err %v, want ErrDigestMismatch", err)
	}
	// WithTOCDigest wins over the annotation.
	openBlob(t, blob, WithAnnotations(annotations), WithTOCDigest(res.TOCDigest))
	for _, d := range []string{"sha256:abc", "md5:d41d8cd98f00b204e9800998ecf8427e", "nonsense"} {
		if _, err := Open(bytes.NewReader(blob), int64(len(blob)), WithTOCDigest(digest.Digest(d))); err == nil {
			t.Errorf("TOC digest %q: no error", d)
		}
		if _, err := Open(bytes.NewReader(blob), int64(len(blob)), WithAnnotations(map[string]string{ManifestChecksumAnnotation: d})); err == nil {
			t.Errorf("checksum annotation %q: no error", d)
		}
	}
	// The manifest itself altered, digest and all: the uncompressed JSON no
	// longer parses, or does not match.
	bad := append([]byte(nil), blob...)
	p := r0(t, blob).ManifestPosition()
	bad[p.Offset+p.Length/2] ^= 1
	if _, err := Open(bytes.NewReader(bad), int64(len(bad)), WithTOCDigest(res.TOCDigest)); !errors.Is(err, ErrDigestMismatch) {
		t.Errorf("altered manifest: %v", err)
	}
}

func r0(t *testing.T, blob []byte) *Reader { return openBlob(t, blob) }

// Footers and annotations that point anywhere: errors, never panics or
// huge allocations.
func TestFooterPointsAnywhere(t *testing.T) {
	tarball := richLayer(t, 4096)
	blob, _ := writeBlob(t, tarball, WithChunkSize(4096))
	p := r0(t, blob).ManifestPosition()
	footerAt := int64(len(blob)) - TailSize
	for name, pos := range map[string]Position{
		"past the end":            {Offset: int64(len(blob)) + 10, Length: 10, UncompressedLength: 10},
		"over the footer":         {Offset: p.Offset, Length: p.Length + 20, UncompressedLength: p.UncompressedLength},
		"before the blob":         {Offset: 0, Length: p.Length, UncompressedLength: p.UncompressedLength},
		"empty":                   {Offset: p.Offset, Length: 0, UncompressedLength: p.UncompressedLength},
		"huge length":             {Offset: p.Offset, Length: 1 << 62, UncompressedLength: p.UncompressedLength},
		"overflowing end":         {Offset: 1<<63 - 5, Length: 10, UncompressedLength: 10},
		"huge uncompressed":       {Offset: p.Offset, Length: p.Length, UncompressedLength: 1 << 40},
		"uncompressed too short":  {Offset: p.Offset, Length: p.Length, UncompressedLength: p.UncompressedLength - 1},
		"uncompressed too long":   {Offset: p.Offset, Length: p.Length, UncompressedLength: p.UncompressedLength + 1},
		"not on the frame header": {Offset: p.Offset + 1, Length: p.Length - 1, UncompressedLength: p.UncompressedLength},
		"into the data":           {Offset: 8, Length: p.Length, UncompressedLength: p.UncompressedLength},
	} {
		bad := append([]byte(nil), blob[:footerAt]...)
		bad = append(bad, encodeFooter(pos)...)
		before := allocated()
		if _, err := Open(bytes.NewReader(bad), int64(len(bad))); err == nil {
			t.Errorf("footer %s: Open succeeds", name)
		}
		if a := allocated() - before; a > 64<<20 {
			t.Errorf("footer %s: Open allocated %d bytes", name, a)
		}
		annotations := map[string]string{ManifestPositionAnnotation: formatManifestPosition(pos)}
		if _, err := Open(bytes.NewReader(blob), int64(len(blob)), WithAnnotations(annotations)); err == nil && name != "over the footer" {
			t.Errorf("position annotation %s: Open succeeds", name)
		}
	}
	if _, err := Open(bytes.NewReader(blob), int64(len(blob)), WithAnnotations(map[string]string{ManifestPositionAnnotation: "1:2"})); err == nil {
		t.Error("malformed position annotation: no error")
	}
	if _, err := Open(bytes.NewReader(blob), -1); err == nil {
		t.Error("negative size: no error")
	}
	small := toc.Limits{MaxTOCBytes: p.UncompressedLength - 1}
	if _, err := Open(bytes.NewReader(blob), int64(len(blob)), WithLimits(small)); err == nil || !strings.Contains(err.Error(), "limit") {
		t.Errorf("manifest over the limit: %v", err)
	}
}

func allocated() uint64 {
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.TotalAlloc
}

// A small frame that decompresses to far more than the chunk it claims to
// hold: the read stops at what the chunk needs.
func TestZstdBomb(t *testing.T) {
	enc, _ := zstd.NewWriter(nil)
	bomb := enc.EncodeAll(make([]byte, 64<<20), nil)
	if len(bomb) > 64<<10 {
		t.Fatalf("bomb of %d bytes", len(bomb))
	}
	c := withDigest(toc.Chunk{EndOffset: int64(len(bomb)), Size: 100}, digest.FromBytes(make([]byte, 100)))
	before := allocated()
	got, err := ReadChunk(nil, bomb, c)
	if err != nil || len(got) != 100 {
		t.Fatalf("first 100 bytes of a bomb: %d bytes, %v", len(got), err)
	}
	if _, err := ReadChunk(nil, bomb, withDigest(c, digest.FromString("x"))); !errors.Is(err, ErrDigestMismatch) {
		t.Fatalf("bomb with a wrong digest: %v", err)
	}
	if a := allocated() - before; a > 24<<20 {
		t.Errorf("reading 100 bytes of a 64 MiB bomb allocated %d bytes", a)
	}

	// As a manifest: it must be exactly the length the footer says.
	if _, err := decompressManifest(bomb, 1000); err == nil {
		t.Error("manifest bomb: no error")
	}
}

// A frame may declare any window; decoders allocate it. One far larger
// than the chunk is refused before anything is allocated.
func TestHugeWindow(t *testing.T) {
	frame := binary.LittleEndian.AppendUint32(nil, 0xFD2FB528)
	frame = append(frame, 0x00, 20<<3)        // no content size; a window of 2^30 bytes
	frame = append(frame, byte(1|5<<3), 0, 0) // last block, raw, 5 bytes
	frame = append(frame, "hello"...)         //
	c := withDigest(toc.Chunk{EndOffset: int64(len(frame)), Size: 5}, digest.FromString("hello"))
	before := allocated()
	if _, err := ReadChunk(nil, frame, c); err == nil {
		t.Error("a 1 GiB window: no error")
	}
	if a := allocated() - before; a > 16<<20 {
		t.Errorf("refusing a 1 GiB window allocated %d bytes", a)
	}
	frame[5] = 10 << 3 // 1 MiB: fine
	if got, err := ReadChunk(nil, frame, c); err != nil || string(got) != "hello" {
		t.Errorf("a 1 MiB window: %q, %v", got, err)
	}
}

func TestReadChunkRefuses(t *testing.T) {
	enc, _ := zstd.NewWriter(nil)
	frame := enc.EncodeAll([]byte("hello, world"), nil)
	good := withDigest(toc.Chunk{EndOffset: int64(len(frame)), Size: 12}, digest.FromString("hello, world"))
	if got, err := ReadChunk(nil, frame, good); err != nil || string(got) != "hello, world" {
		t.Fatalf("good chunk: %q, %v", got, err)
	}
	for name, edit := range map[string]func(*toc.Chunk){
		"negative size":       func(c *toc.Chunk) { c.Size = -1 },
		"huge size":           func(c *toc.Chunk) { c.Size = 1 << 62 },
		"huge inner":          func(c *toc.Chunk) { c.InnerOffset = 1 << 31 },
		"past the frame":      func(c *toc.Chunk) { c.Size = 13 },
		"inner past":          func(c *toc.Chunk) { c.InnerOffset = 1 },
		"no digest":           func(c *toc.Chunk) { *c = toc.Chunk{EndOffset: c.EndOffset, Size: c.Size} },
		"end before start":    func(c *toc.Chunk) { c.Offset, c.EndOffset = 10, 5 },
		"longer than given":   func(c *toc.Chunk) { c.EndOffset++ },
		"huge zero":           func(c *toc.Chunk) { c.Zero, c.Size = true, 1<<62 },
		"wrong digest":        func(c *toc.Chunk) { *c = withDigest(*c, digest.FromString("hello")) },
		"sha512 wrong digest": func(c *toc.Chunk) { *c = withDigest(*c, digest.SHA512.FromString("hello")) },
	} {
		c := good
		edit(&c)
		if _, err := ReadChunk(nil, frame, c); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
	if _, err := ReadChunk(nil, []byte("not zstd at all"), withDigest(toc.Chunk{EndOffset: 15, Size: 3}, digest.FromString("not"))); err == nil {
		t.Error("not zstd: no error")
	}
	sha512 := withDigest(good, digest.SHA512.FromString("hello, world"))
	if _, err := ReadChunk(nil, frame, sha512); err != nil {
		t.Errorf("sha512 digest: %v", err)
	}
}

// An eStargz-style span, far longer than the chunk (its frame goes on
// with later tar headers), is streamed rather than read whole.
func TestLongSpanIsStreamed(t *testing.T) {
	enc, _ := zstd.NewWriter(nil, zstd.WithWindowSize(1<<20))
	payload := content(7, 1000, true)
	frame := enc.EncodeAll(append(append([]byte(nil), payload...), content(8, 8<<20, false)...), nil)
	blob := append(frame, make([]byte, 64)...)
	c := withDigest(toc.Chunk{Offset: 0, EndOffset: int64(len(frame)), Size: 1000}, digest.FromBytes(payload))
	r := &Reader{ra: countingReaderAt{bytes.NewReader(blob), new(int64)}}
	before := allocated()
	data, release, err := r.readChunk(c)
	if err != nil || !bytes.Equal(data, payload) {
		t.Fatalf("long span: %v", err)
	}
	release()
	if a := allocated() - before; a > 4<<20 {
		t.Errorf("a 1000-byte chunk in an 8 MiB span allocated %d bytes", a)
	}
	if n := *r.ra.(countingReaderAt).n; n > 2<<20 {
		t.Errorf("a 1000-byte chunk in an 8 MiB span read %d bytes", n)
	}
}

type countingReaderAt struct {
	r *bytes.Reader
	n *int64
}

func (c countingReaderAt) ReadAt(p []byte, off int64) (int, error) {
	n, err := c.r.ReadAt(p, off)
	*c.n += int64(n)
	return n, err
}

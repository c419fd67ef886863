package estargz

import (
	"archive/tar"
	"bytes"
	"fmt"
	"io"
	"runtime"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/lazypull/lazypull/format/toc"
)

func TestMinChunkSizeSharesMembers(t *testing.T) {
	blob, _ := build(t, makeTar(t, sampleLayer()), WithMinChunkSize(1<<14))
	r := open(t, blob)
	shared := 0
	for _, e := range r.TOC().Entries() {
		for _, c := range e.Chunks() {
			if c.InnerOffset > 0 {
				shared++
			}
		}
	}
	if shared == 0 {
		t.Errorf("with a minimum chunk size no small file shares a member")
	}
}

func TestCorruptChunkIsRefused(t *testing.T) {
	files := sampleLayer()
	blob, res := build(t, makeTar(t, files), WithChunkSize(1<<16), WithCompressionLevel(0))
	r := open(t, blob, WithTOCDigest(res.TOCDigest))
	e, _ := r.TOC().Lookup("bin/many-chunks")
	c := e.Chunks()[1]
	// Level 0 stores data verbatim: flip a byte of the chunk itself, which
	// gzip's own CRC would also catch; then forge the CRC too.
	bad := bytes.Clone(blob)
	i := bytes.Index(bad[c.Offset:c.EndOffset], randomBytes(3, 3*(1<<16)+123)[1<<16:1<<16+64])
	if i < 0 {
		t.Fatal("chunk bytes not found in the stored member")
	}
	bad[c.Offset+int64(i)] ^= 0xff
	r2 := open(t, bad)
	f, _ := r2.OpenFile("bin/many-chunks")
	buf := make([]byte, 100)
	if _, err := f.ReadAt(buf, 1<<16); err == nil || !strings.Contains(err.Error(), "bin/many-chunks") || !strings.Contains(err.Error(), "chunk 1") {
		t.Errorf("reading a corrupted chunk: err = %v, want one naming the file and chunk", err)
	}
	// The first chunk is intact and still reads.
	if _, err := f.ReadAt(buf, 0); err != nil {
		t.Errorf("an intact chunk of a damaged file: %v", err)
	}

	// A member whose gzip CRC is right but whose data differs from the TOC.
	forged := bytes.Clone(blob)
	member, _ := compressMember(bytes.Repeat([]byte{'x'}, int(c.Size)), 0)
	if int64(len(member)) != c.EndOffset-c.Offset {
		t.Fatalf("forged member is %d bytes, the slot %d", len(member), c.EndOffset-c.Offset)
	}
	copy(forged[c.Offset:], member)
	f, _ = open(t, forged).OpenFile("bin/many-chunks")
	if _, err := f.ReadAt(buf, 1<<16); err == nil || !strings.Contains(err.Error(), "digest") {
		t.Errorf("reading a forged chunk: err = %v, want a digest mismatch", err)
	}
}

func TestOpenRefusesBadBlobs(t *testing.T) {
	blob, res := build(t, makeTar(t, sampleLayer()))
	tocOffset, _, _ := ParseFooter(blob)
	withFooter := func(off int64) []byte {
		b := bytes.Clone(blob[:len(blob)-FooterSize])
		return append(b, footer(off)...)
	}
	for name, tc := range map[string]struct {
		blob []byte
		opts []OpenOption
		want string
	}{
		"wrong TOC digest": {blob, []OpenOption{WithTOCDigest(digest.FromString("other"))}, "descriptor says"},
		"truncated":        {blob[:len(blob)-10], nil, "footer"},
		"tiny":             {blob[:20], nil, "too small"},
		"not estargz":      {bytes.Repeat([]byte{0}, 100), nil, "not an eStargz blob"},
		"TOC past end":     {withFooter(int64(len(blob))), nil, "past its end"},
		"TOC not gzip":     {withFooter(tocOffset + 1), nil, "TOC"},
		"TOC at data":      {withFooter(0), nil, "TOC"},
		"TOC too big":      {blob, []OpenOption{WithLimits(toc.Limits{MaxTOCBytes: 100})}, "over the limit"},
	} {
		_, err := Open(bytes.NewReader(tc.blob), int64(len(tc.blob)), tc.opts...)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: err = %v, want one containing %q", name, err, tc.want)
		}
	}
	if _, err := Open(bytes.NewReader(blob), int64(len(blob)), WithTOCDigest(res.TOCDigest)); err != nil {
		t.Errorf("the intact blob: %v", err)
	}
}

func TestLegacyFooter(t *testing.T) {
	blob, _ := build(t, makeTar(t, sampleLayer()))
	off, _, _ := ParseFooter(blob)
	legacy := emptyGzipMember([]byte(fmt.Sprintf("%016x%s", off, footerMagic)))
	if len(legacy) != legacyFooterSize {
		t.Fatalf("legacy footer is %d bytes", len(legacy))
	}
	old := append(bytes.Clone(blob[:len(blob)-FooterSize]), legacy...)
	r := open(t, old)
	if got := readAll(t, r, "etc/hostname"); string(got) != "lazypull\n" {
		t.Errorf("legacy stargz: read %q", got)
	}
}

// TestReadChunkBomb: a member that inflates far past its chunk is read
// only as far as the chunk needs.
func TestReadChunkBomb(t *testing.T) {
	huge := make([]byte, 64<<20)
	member, _ := compressMember(huge, 9)
	c := withDigest(toc.Chunk{Offset: 0, EndOffset: int64(len(member)), Size: 10}, digest.FromBytes(make([]byte, 10)))
	data, err := ReadChunk(nil, member, c)
	if err != nil || len(data) != 10 {
		t.Errorf("ReadChunk of a bomb: %d bytes, %v", len(data), err)
	}
	c.InnerOffset = 1 << 30
	if _, err := ReadChunk(nil, member, c); err == nil {
		t.Errorf("a chunk past the member's end was read")
	}
}

func FuzzParseFooter(f *testing.F) {
	f.Add(footer(12345))
	f.Add(emptyGzipMember([]byte("00000000000000ffSTARGZ")))
	f.Fuzz(func(t *testing.T, tail []byte) {
		off, size, err := ParseFooter(tail)
		if err == nil && (off < 0 || (size != FooterSize && size != legacyFooterSize)) {
			t.Fatalf("accepted footer: offset %d size %d", off, size)
		}
	})
}

// FuzzOpen opens arbitrary blobs (seeded with real ones) and reads every
// file: errors are fine, panics and unverified bytes are not.
func FuzzOpen(f *testing.F) {
	small := []testFile{reg("a", []byte("hello")), reg("d/b", bytes.Repeat([]byte("ab"), 300))}
	blob, _ := build(f, makeTar(f, small), WithChunkSize(256))
	f.Add(blob)
	packed, _ := build(f, makeTar(f, small), WithMinChunkSize(1024))
	f.Add(packed)
	f.Fuzz(func(t *testing.T, blob []byte) {
		r, err := Open(bytes.NewReader(blob), int64(len(blob)), WithLimits(toc.Limits{MaxTOCBytes: 1 << 20, MaxChunkBytes: 1 << 20}))
		if err != nil {
			return
		}
		for _, e := range r.TOC().Entries() {
			if e.Type != toc.TypeReg {
				continue
			}
			file, err := r.OpenFile(e.Path())
			if err != nil {
				t.Fatalf("%s: listed but cannot be opened: %v", e.Path(), err)
			}
			buf := make([]byte, min(e.Size, 1<<20))
			n, err := file.ReadAt(buf, 0)
			if err != nil && err != io.EOF {
				continue
			}
			// What was served must match the chunks' digests.
			var off int64
			for _, c := range e.Chunks() {
				if off+c.Size > int64(n) {
					break
				}
				if got := digest.FromBytes(buf[off : off+c.Size]); c.Digest() != "" && got != c.Digest() {
					t.Fatalf("%s: served bytes %d..%d that do not match their digest", e.Path(), off, off+c.Size)
				}
				off += c.Size
			}
		}
	})
}

// allocated is how many bytes f allocates.
func allocated(f func()) uint64 {
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	f()
	runtime.ReadMemStats(&after)
	return after.TotalAlloc - before.TotalAlloc
}

// TestTOCSizeIsOnlyAClaim: a TOC member whose tar header claims 60 MiB
// but holds a few bytes costs what it holds, not what it claims.
func TestTOCSizeIsOnlyAClaim(t *testing.T) {
	var tarBuf bytes.Buffer
	tw := tar.NewWriter(&tarBuf)
	if err := tw.WriteHeader(&tar.Header{Name: TOCTarName, Typeflag: tar.TypeReg, Size: 60 << 20, Mode: 0o644}); err != nil {
		t.Fatal(err)
	}
	tw.Write([]byte(`{"version":1}`)) // and nothing more: the member ends
	member, _ := compressMember(tarBuf.Bytes(), 9)
	var err error
	n := allocated(func() { _, err = DecompressTOC(member, 64<<20) })
	if err == nil || !strings.Contains(err.Error(), TOCTarName) {
		t.Errorf("a short TOC member: err = %v, want one naming %s", err, TOCTarName)
	}
	if n > 4<<20 {
		t.Errorf("a short TOC member claiming 60 MiB cost %d MiB", n>>20)
	}
	if _, err := DecompressTOC(member, 1<<20); err == nil || !strings.Contains(err.Error(), "over the limit") {
		t.Errorf("a TOC member claiming more than the limit: err = %v", err)
	}
}

// TestHolesAreServedFromNothing: a file that is one hole of a TiB reads
// as zeros anywhere, with nothing allocated for the hole, and ReadChunk
// refuses to hand out such a hole as a buffer.
func TestHolesAreServedFromNothing(t *testing.T) {
	const size = 1 << 40
	parsed, err := toc.Parse([]byte(fmt.Sprintf(`{"version":1,"entries":[
		{"name":"sparse","type":"reg","size":%d,"chunkSize":%d,"chunkType":"zeros"},
		{"name":"sparse","type":"chunk","chunkOffset":%d,"chunkType":"zeros"}]}`, size, size/2, size/2)), 0, toc.Limits{})
	if err != nil {
		t.Fatal(err)
	}
	f, err := (&Reader{toc: parsed}).OpenFile("sparse")
	if err != nil {
		t.Fatal(err)
	}
	buf := bytes.Repeat([]byte{0xaa}, 8192)
	var n int
	alloc := allocated(func() { n, err = f.ReadAt(buf, size/2-4096) })
	if err != nil || n != len(buf) || !bytes.Equal(buf, make([]byte, len(buf))) {
		t.Errorf("read across two holes: %d bytes, %v; zeros: %v", n, err, bytes.Equal(buf, make([]byte, len(buf))))
	}
	if alloc > 1<<20 {
		t.Errorf("reading 8 KiB of a hole allocated %d bytes", alloc)
	}
	n, err = f.ReadAt(buf, size-100)
	if n != 100 || err != io.EOF {
		t.Errorf("read at the end of the file: %d, %v; want 100, EOF", n, err)
	}
	e, _ := parsed.Lookup("sparse")
	if _, err := ReadChunk(nil, nil, e.Chunks()[0]); err == nil {
		t.Errorf("ReadChunk handed out a hole of %d bytes", e.Chunks()[0].Size)
	}
	if data, err := ReadChunk(nil, nil, toc.Chunk{Size: 10, Zero: true}); err != nil || !bytes.Equal(data, make([]byte, 10)) {
		t.Errorf("ReadChunk of a small hole: %v, %v", data, err)
	}
}

// TestReadChunkAllocatesWhatTheMemberCanHold: a tiny member cannot make
// ReadChunk allocate the chunk size its TOC claims.
func TestReadChunkAllocatesWhatTheMemberCanHold(t *testing.T) {
	member, _ := compressMember([]byte("hello"), 9)
	c := withDigest(toc.Chunk{EndOffset: int64(len(member)), Size: 60 << 20}, digest.FromString("x"))
	var err error
	n := allocated(func() { _, err = ReadChunk(nil, member, c) })
	if err == nil || !strings.Contains(err.Error(), "cannot inflate") {
		t.Errorf("a %d-byte member for a 60 MiB chunk: err = %v", len(member), err)
	}
	if n > 1<<20 {
		t.Errorf("it allocated %d bytes", n)
	}
	for _, bad := range []toc.Chunk{withDigest(toc.Chunk{Size: -1}, c.Digest()), withDigest(toc.Chunk{Size: 1, InnerOffset: 1 << 31}, c.Digest())} {
		if _, err := ReadChunk(nil, member, bad); err == nil {
			t.Errorf("ReadChunk took %+v", bad)
		}
	}
}

// withDigest is c with digest d, which must be valid.
func withDigest(c toc.Chunk, d digest.Digest) toc.Chunk {
	if err := c.SetDigest(d); err != nil {
		panic(err)
	}
	return c
}

// TestLargeChunksPastTheBudget: once a layer's files took
// toc.SmallChunkBudget chunks, the next file that would pass it goes into
// toc.LargeChunkSize chunks, so that no layer's TOC outgrows the limits.
func TestLargeChunksPastTheBudget(t *testing.T) {
	small := make([]byte, (toc.SmallChunkBudget-8)*16)
	for i := range small {
		small[i] = byte(i * 7)
	}
	past := bytes.Repeat([]byte("past"), 9*16/4) // nine chunks of 16 bytes: one past the budget
	files := []testFile{reg("small", small), reg("past", past)}
	blob, res := build(t, makeTar(t, files), WithChunkSize(16))
	r := open(t, blob, WithTOCDigest(res.TOCDigest))
	for _, tc := range []struct {
		name   string
		data   []byte
		chunks int
	}{{"small", small, toc.SmallChunkBudget - 8}, {"past", past, 1}} {
		e, ok := r.TOC().Lookup(tc.name)
		if !ok {
			t.Fatalf("%s: not in the TOC", tc.name)
		}
		if n := len(e.Chunks()); n != tc.chunks {
			t.Errorf("%s: %d chunks, want %d", tc.name, n, tc.chunks)
		}
		if got := readAll(t, r, tc.name); !bytes.Equal(got, tc.data) {
			t.Errorf("%s: content differs", tc.name)
		}
	}
}

package zstdchunked

import (
	"archive/tar"
	"bytes"
	"errors"
	"io"
	"io/fs"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/lazypull/lazypull/format/toc"
)

func TestRoundTrip(t *testing.T) {
	for _, chunkSize := range []int{4096, DefaultChunkSize} {
		t.Run("", func(t *testing.T) {
			tarball := richLayer(t, chunkSize)
			blob, res := writeBlob(t, tarball, WithChunkSize(chunkSize))

			if got := decompressAll(t, blob); !bytes.Equal(got, tarball) {
				t.Fatalf("the blob decompresses to %d bytes that are not the %d-byte input tar", len(got), len(tarball))
			}
			if want := digest.FromBytes(tarball); res.DiffID != want {
				t.Errorf("DiffID %s, want %s", res.DiffID, want)
			}
			if res.UncompressedSize != int64(len(tarball)) {
				t.Errorf("UncompressedSize %d, want %d", res.UncompressedSize, len(tarball))
			}

			r := openBlob(t, blob, WithTOCDigest(res.TOCDigest))
			if r.TOCDigest() != res.TOCDigest {
				t.Errorf("TOCDigest %s, want %s", r.TOCDigest(), res.TOCDigest)
			}
			checkLayer(t, r, tarball)

			// The annotations alone place the manifest and check it.
			byAnnotations := openBlob(t, blob, WithAnnotations(res.Annotations))
			if byAnnotations.DataEnd() != r.DataEnd() || byAnnotations.TOC().Len() != r.TOC().Len() {
				t.Errorf("opening by annotations gives another layer")
			}

			e, _ := r.TOC().Lookup("etc/several-chunks")
			if len(e.Chunks()) != 4 {
				t.Errorf("etc/several-chunks has %d chunks", len(e.Chunks()))
			}
			if e.Digest() != digest.FromBytes(content(4, 3*chunkSize+17, false)) {
				t.Errorf("etc/several-chunks: file digest %s is not that of its content", e.Digest())
			}
		})
	}
}

func TestDeterministic(t *testing.T) {
	tarball := richLayer(t, 4096)
	a, ra := writeBlob(t, tarball, WithChunkSize(4096), WithConcurrency(1))
	b, rb := writeBlob(t, tarball, WithChunkSize(4096), WithConcurrency(4))
	c, _ := writeBlob(t, tarball, WithChunkSize(4096), WithConcurrency(4))
	if !bytes.Equal(a, b) || !bytes.Equal(b, c) {
		t.Fatalf("the same tar gives different blobs (%d, %d, %d bytes)", len(a), len(b), len(c))
	}
	if ra.TOCDigest != rb.TOCDigest {
		t.Fatalf("TOC digests differ")
	}
	d, _ := writeBlob(t, tarball, WithChunkSize(4096), WithCompressionLevel(19))
	if bytes.Equal(a, d) {
		t.Errorf("level 19 gives the same bytes as level 3")
	}
}

func TestEmptyLayers(t *testing.T) {
	for _, tarball := range [][]byte{nil, buildTar(t, nil)} {
		blob, res := writeBlob(t, tarball)
		if got := decompressAll(t, blob); !bytes.Equal(got, tarball) {
			t.Fatalf("an empty layer decompresses to %d bytes", len(got))
		}
		r := openBlob(t, blob, WithAnnotations(res.Annotations))
		if n := r.TOC().Len(); n != 0 {
			t.Errorf("an empty layer has %d entries", n)
		}
	}
	// Close without AppendTar is an empty layer too.
	var out bytes.Buffer
	if _, err := NewWriter(&out).Close(); err != nil {
		t.Fatal(err)
	}
	openBlob(t, out.Bytes())
}

// TestTrailingBytes: tools pad a tar to a record size, some append
// garbage; the blob must give those bytes back too.
func TestTrailingBytes(t *testing.T) {
	tarball := buildTar(t, []member{reg("a", []byte("a"))})
	tarball = append(tarball, bytes.Repeat([]byte{0}, 10240-len(tarball)%10240)...)
	tarball = append(tarball, "trailing garbage"...)
	blob, res := writeBlob(t, tarball, WithChunkSize(4096))
	if got := decompressAll(t, blob); !bytes.Equal(got, tarball) {
		t.Fatal("trailing bytes lost")
	}
	if res.DiffID != digest.FromBytes(tarball) {
		t.Fatal("DiffID is not that of the input")
	}
}

func TestReplacedNamesAndHardlinks(t *testing.T) {
	v1, v2 := []byte("version one"), []byte("version two, longer")
	tarball := buildTar(t, []member{
		reg("a", v1),
		{hdr: tar.Header{Typeflag: tar.TypeLink, Name: "b", Linkname: "a"}},
		{hdr: tar.Header{Typeflag: tar.TypeLink, Name: "c", Linkname: "b"}},
		reg("a", v2), // replaces a; b and c keep version one, as on disk
		{hdr: tar.Header{Typeflag: tar.TypeLink, Name: "d", Linkname: "a"}},
		reg("e", []byte("e")),
		dir("e"), // a directory replaces a file
		dir("f"),
		{hdr: tar.Header{Typeflag: tar.TypeDir, Name: "f", Mode: 0o700}}, // listed again
	})
	blob, _ := writeBlob(t, tarball)
	r := openBlob(t, blob)
	checkLayer(t, r, tarball)
	for name, want := range map[string][]byte{"a": v2, "b": v1, "c": v1, "d": v2} {
		f, err := r.OpenFile(name)
		if err != nil {
			t.Fatal(err)
		}
		got := make([]byte, f.Size())
		if _, err := f.ReadAt(got, 0); err != nil && err != io.EOF {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			t.Errorf("%s reads %q, want %q", name, got, want)
		}
	}
	if e, _ := r.TOC().Lookup("f"); e.Mode != 0o700 {
		t.Errorf("f has mode %o, want the last listing's 700", e.Mode)
	}
}

func TestWriterRefusesWhatCannotBeRead(t *testing.T) {
	for name, ms := range map[string][]member{
		"hard link to nothing": {{hdr: tar.Header{Typeflag: tar.TypeLink, Name: "b", Linkname: "a"}}},
		"escaping name":        {reg("../evil", []byte("x"))},
		"file under a file":    {reg("a", []byte("x")), reg("a/b", []byte("y"))},
	} {
		var out bytes.Buffer
		w := NewWriter(&out)
		err := w.AppendTar(bytes.NewReader(buildTar(t, ms)))
		if err == nil {
			_, err = w.Close()
		}
		var tocErr *toc.Error
		if !errors.As(err, &tocErr) {
			t.Errorf("%s: err %v, want a toc.Error", name, err)
		}
	}
	var out bytes.Buffer
	w := NewWriter(&out)
	if err := w.AppendTar(bytes.NewReader([]byte("this is not a tar archive, not at all; it is text that goes on for more than a block of five hundred and twelve bytes so that the tar reader reads a whole block of it and complains about its checksum rather than about a short read, which would also be an error but a less interesting one. " + string(bytes.Repeat([]byte("x"), 512))))); err == nil {
		t.Error("AppendTar of text: no error")
	}
	if _, err := w.Close(); err == nil {
		t.Error("Close after a failed AppendTar: no error")
	}
}

func TestAppendTarTwice(t *testing.T) {
	var out bytes.Buffer
	w := NewWriter(&out)
	tarball := buildTar(t, []member{reg("a", []byte("a"))})
	if err := w.AppendTar(bytes.NewReader(tarball)); err != nil {
		t.Fatal(err)
	}
	if err := w.AppendTar(bytes.NewReader(tarball)); err == nil {
		t.Fatal("second AppendTar: no error")
	}
}

func TestOpenFile(t *testing.T) {
	tarball := richLayer(t, 4096)
	blob, _ := writeBlob(t, tarball, WithChunkSize(4096))
	r := openBlob(t, blob)
	for _, name := range []string{"etc/one", "./etc/one", "/etc/one", "etc//one"} {
		if _, err := r.OpenFile(name); err != nil {
			t.Errorf("OpenFile(%q): %v", name, err)
		}
	}
	if _, err := r.OpenFile("etc/none"); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("OpenFile of a missing file: %v, want fs.ErrNotExist", err)
	}
	for _, name := range []string{"etc", "etc/link", "dev/null"} {
		if _, err := r.OpenFile(name); err == nil {
			t.Errorf("OpenFile(%q): no error for a non-regular file", name)
		}
	}
	f, _ := r.OpenFile("etc/hard-to-hard")
	if f.Entry().Path() != "etc/several-chunks" {
		t.Errorf("a hard link to a hard link opens %q", f.Entry().Path())
	}
	if _, err := f.ReadAt(make([]byte, 1), -1); err == nil {
		t.Error("ReadAt at a negative offset: no error")
	}
}

// A hand-made PAX 1.0 sparse member (what GNU tar --sparse --format=pax
// writes): tar.Writer cannot write one.
func sparseTar(t testing.TB, physical [][2]int64, size int64) ([]byte, []byte) {
	t.Helper()
	logical := make([]byte, size)
	var data, sparseMap []byte
	sparseMap = append(sparseMap, []byte(itoa(len(physical))+"\n")...)
	for i, frag := range physical {
		off, n := frag[0], frag[1]
		frag := content(uint64(100+i), int(n), i%2 == 0)
		frag[0] = 0 // data that starts with a zero, like the holes around it
		copy(logical[off:], frag)
		data = append(data, frag...)
		sparseMap = append(sparseMap, []byte(itoa(int(off))+"\n"+itoa(int(n))+"\n")...)
	}
	for len(sparseMap)%512 != 0 {
		sparseMap = append(sparseMap, 0)
	}
	body := append(sparseMap, data...)

	var buf bytes.Buffer
	buf.Write(ustarBlock(t, "./PaxHeaders/sparse", 'x', paxRecords(map[string]string{
		"GNU.sparse.major":    "1",
		"GNU.sparse.minor":    "0",
		"GNU.sparse.name":     "sparse",
		"GNU.sparse.realsize": itoa(int(size)),
	})))
	buf.Write(ustarBlock(t, "GNUSparseFile.0/sparse", '0', body))
	tw := tar.NewWriter(&buf)
	tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: "after", Size: 5, Mode: 0o644})
	tw.Write([]byte("after"))
	tw.Close()
	return buf.Bytes(), logical
}

func itoa(n int) string {
	if n == 0 {
		return "0"
	}
	var b []byte
	for ; n > 0; n /= 10 {
		b = append([]byte{byte('0' + n%10)}, b...)
	}
	return string(b)
}

func paxRecords(recs map[string]string) []byte {
	var out []byte
	for _, k := range []string{"GNU.sparse.major", "GNU.sparse.minor", "GNU.sparse.name", "GNU.sparse.realsize"} {
		v := recs[k]
		rec := " " + k + "=" + v + "\n"
		n := len(rec)
		for n2 := len(itoa(n)) + len(rec); n2 != n; n2 = len(itoa(n)) + len(rec) {
			n = n2
		}
		out = append(out, []byte(itoa(n)+rec)...)
	}
	return out
}

// ustarBlock is a ustar header for a member of body, then body padded.
func ustarBlock(t testing.TB, name string, typ byte, body []byte) []byte {
	t.Helper()
	h := make([]byte, 512)
	copy(h[0:], name)
	octal := func(b []byte, v int64) {
		s := []byte{}
		for ; v > 0; v /= 8 {
			s = append([]byte{byte('0' + v%8)}, s...)
		}
		for len(s) < len(b)-1 {
			s = append([]byte{'0'}, s...)
		}
		copy(b, s)
	}
	octal(h[100:108], 0o644)
	octal(h[108:116], 0)
	octal(h[116:124], 0)
	octal(h[124:136], int64(len(body)))
	octal(h[136:148], testTime.Unix())
	h[156] = typ
	copy(h[257:], "ustar\x0000")
	copy(h[148:156], "        ")
	var sum int64
	for _, c := range h {
		sum += int64(c)
	}
	octal(h[148:155], sum)
	h[155] = ' '
	out := append(h, body...)
	for len(out)%512 != 0 {
		out = append(out, 0)
	}
	return out
}

func TestSparseFile(t *testing.T) {
	const size = 100_000
	tarball, logical := sparseTar(t, [][2]int64{{0, 300}, {5000, 5000}, {40960, 20000}, {99_000, 1000}}, size)
	// The hand-made member reads back as intended.
	tr := tar.NewReader(bytes.NewReader(tarball))
	h, err := tr.Next()
	if err != nil {
		t.Fatal(err)
	}
	if got, _ := io.ReadAll(tr); h.Name != "sparse" || !bytes.Equal(got, logical) {
		t.Fatalf("the test's sparse member reads as %q of %d bytes", h.Name, len(got))
	}

	blob, res := writeBlob(t, tarball, WithChunkSize(4096))
	if got := decompressAll(t, blob); !bytes.Equal(got, tarball) {
		t.Fatal("the blob does not decompress to the tar")
	}
	if res.DiffID != digest.FromBytes(tarball) {
		t.Fatal("DiffID is not that of the input")
	}
	r := openBlob(t, blob)
	checkLayer(t, r, tarball)
	e, _ := r.TOC().Lookup("sparse")
	var zero, data int64
	for _, c := range e.Chunks() {
		if c.Zero {
			zero += c.Size
		} else {
			data += c.Size
		}
	}
	if data != 300+5000+20000+1000 || zero != size-data {
		t.Errorf("sparse file stored as %d data and %d zero bytes", data, zero)
	}
	// Fragments stay whole, cut only at the chunk size: 1+2+5+1 data
	// chunks and the 3 holes between them.
	if len(e.Chunks()) != 12 {
		t.Errorf("sparse file stored in %d chunks, want 12", len(e.Chunks()))
	}
	if e.Digest() != digest.FromBytes(logical) {
		t.Errorf("sparse file digest %s is not that of its content", e.Digest())
	}
}

func TestReadChunk(t *testing.T) {
	tarball := richLayer(t, 4096)
	blob, _ := writeBlob(t, tarball, WithChunkSize(4096))
	r := openBlob(t, blob)
	e, _ := r.TOC().Lookup("etc/several-chunks")
	want := content(4, 3*4096+17, false)
	for i, c := range e.Chunks() {
		got, err := ReadChunk(nil, blob[c.Offset:c.EndOffset], c)
		if err != nil {
			t.Fatalf("chunk %d: %v", i, err)
		}
		if !bytes.Equal(got, want[c.FileOffset:c.FileOffset+c.Size]) {
			t.Fatalf("chunk %d: wrong bytes", i)
		}
	}
	c := e.Chunks()[0]
	if _, err := ReadChunk(nil, blob[c.Offset:c.EndOffset-1], c); err == nil {
		t.Error("ReadChunk of a short range: no error")
	}
	zero, err := ReadChunk(nil, nil, toc.Chunk{Zero: true, Size: 10})
	if err != nil || !bytes.Equal(zero, make([]byte, 10)) {
		t.Errorf("zero chunk: %v, %v", zero, err)
	}
	inner := c
	inner.InnerOffset, inner.Size = 10, 20
	if err := inner.SetDigest(digest.FromBytes(want[10:30])); err != nil {
		t.Fatal(err)
	}
	if got, err := ReadChunk(nil, blob[c.Offset:c.EndOffset], inner); err != nil || !bytes.Equal(got, want[10:30]) {
		t.Errorf("chunk at an inner offset: %v", err)
	}
}

func TestWriterOptions(t *testing.T) {
	tarball := buildTar(t, []member{reg("a", content(1, 10000, true))})
	var out bytes.Buffer
	w := NewWriter(&out, WithChunkSize(int(toc.DefaultLimits.MaxChunkBytes)+1))
	if err := w.AppendTar(bytes.NewReader(tarball)); err == nil {
		t.Error("a chunk size readers refuse: no error")
	}
	a, _ := writeBlob(t, tarball, WithChunkSize(0), WithConcurrency(0), WithCompressionLevel(-5))
	b, _ := writeBlob(t, tarball, WithChunkSize(DefaultChunkSize), WithCompressionLevel(1))
	if !bytes.Equal(a, b) {
		t.Error("zero options are not the defaults (and levels below 3 the fastest)")
	}
}

// failingWriter fails once it has taken n bytes.
type failingWriter struct{ n int }

func (f *failingWriter) Write(p []byte) (int, error) {
	if len(p) > f.n {
		return 0, errors.New("disk full")
	}
	f.n -= len(p)
	return len(p), nil
}

func TestWriteErrors(t *testing.T) {
	tarball := richLayer(t, 4096)
	blob, _ := writeBlob(t, tarball, WithChunkSize(4096))
	for _, n := range []int{0, 100, len(blob) / 2, len(blob) - 10} {
		w := NewWriter(&failingWriter{n}, WithChunkSize(4096))
		err := w.AppendTar(bytes.NewReader(tarball))
		if err == nil {
			_, err = w.Close()
		}
		if err == nil || !strings.Contains(err.Error(), "disk full") {
			t.Errorf("output failing after %d bytes: %v", n, err)
		}
	}
}

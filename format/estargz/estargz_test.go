package estargz

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"fmt"
	"io"
	"math/rand/v2"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/lazypull/lazypull/format/toc"
)

// testFile is one member of a test tar.
type testFile struct {
	hdr  tar.Header
	data []byte
}

func reg(name string, data []byte) testFile {
	return testFile{hdr: tar.Header{Name: name, Typeflag: tar.TypeReg, Mode: 0o644, Size: int64(len(data))}, data: data}
}

// randomBytes is incompressible, repeatable content.
func randomBytes(seed uint64, n int) []byte {
	r := rand.New(rand.NewPCG(seed, seed))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

// sampleLayer has one of every kind of entry a layer may hold, in an order
// a real tool might write them, with parent directories missing.
func sampleLayer() []testFile {
	mtime := time.Date(2025, 6, 1, 12, 0, 0, 0, time.UTC)
	files := []testFile{
		{hdr: tar.Header{Name: "./", Typeflag: tar.TypeDir, Mode: 0o755}},
		{hdr: tar.Header{Name: "etc/", Typeflag: tar.TypeDir, Mode: 0o755, Uid: 0, Gid: 0}},
		reg("etc/hostname", []byte("lazypull\n")),
		reg("etc/empty", nil),
		reg("usr/lib/deep/missing/parents.txt", []byte("parents are implicit")),
		reg("bin/one-chunk", randomBytes(1, 1000)),
		reg("bin/exact-chunk", randomBytes(2, 1<<16)),
		reg("bin/many-chunks", randomBytes(3, 3*(1<<16)+123)),
		reg("compressible", bytes.Repeat([]byte("lazy "), 50000)),
		{hdr: tar.Header{Name: "bin/hard", Typeflag: tar.TypeLink, Linkname: "bin/one-chunk"}},
		{hdr: tar.Header{Name: "lib", Typeflag: tar.TypeSymlink, Linkname: "usr/lib", Mode: 0o777}},
		{hdr: tar.Header{Name: "dev/null", Typeflag: tar.TypeChar, Devmajor: 1, Devminor: 3, Mode: 0o666}},
		{hdr: tar.Header{Name: "dev/sda", Typeflag: tar.TypeBlock, Devmajor: 8, Devminor: 0, Mode: 0o660}},
		{hdr: tar.Header{Name: "run/fifo", Typeflag: tar.TypeFifo, Mode: 0o600}},
		{hdr: tar.Header{Name: "caps", Typeflag: tar.TypeReg, Mode: 0o4755, Uid: 1000, Gid: 1001, Uname: "u", Gname: "g", Size: 4,
			PAXRecords: map[string]string{"SCHILY.xattr.security.capability": "\x01\x00\x00\x02", "SCHILY.xattr.user.note": "hi"}}, data: []byte("caps")},
		reg("etc/.wh.removed", nil),
		reg("opaque/.wh..wh..opq", nil),
		reg(strings.Repeat("long-name/", 30)+"file", []byte("a name past 100 bytes")),
	}
	for i := range files {
		if files[i].hdr.ModTime.IsZero() {
			files[i].hdr.ModTime = mtime
		}
	}
	return files
}

func makeTar(t testing.TB, files []testFile) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, f := range files {
		h := f.hdr
		if err := tw.WriteHeader(&h); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write(f.data); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func build(t testing.TB, layer []byte, opts ...WriterOption) ([]byte, Result) {
	t.Helper()
	var out bytes.Buffer
	w := NewWriter(&out, opts...)
	if err := w.AppendTar(bytes.NewReader(layer)); err != nil {
		t.Fatal(err)
	}
	res, err := w.Close()
	if err != nil {
		t.Fatal(err)
	}
	return out.Bytes(), res
}

func open(t testing.TB, blob []byte, opts ...OpenOption) *Reader {
	t.Helper()
	r, err := Open(bytes.NewReader(blob), int64(len(blob)), opts...)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func readAll(t testing.TB, r *Reader, name string) []byte {
	t.Helper()
	f, err := r.OpenFile(name)
	if err != nil {
		t.Fatal(err)
	}
	data := make([]byte, f.Size())
	if n, err := f.ReadAt(data, 0); err != nil && !(err == io.EOF && n == len(data)) {
		t.Fatalf("read %s: %v", name, err)
	}
	return data
}

func TestRoundTrip(t *testing.T) {
	files := sampleLayer()
	for _, opts := range [][]WriterOption{
		{WithChunkSize(1 << 16)},
		{WithChunkSize(1 << 16), WithMinChunkSize(1 << 14)},
		{WithChunkSize(1 << 16), WithPrioritizedFiles([]string{"bin/hard", "/etc/hostname", "not/in/layer"})},
	} {
		blob, res := build(t, makeTar(t, files), opts...)
		r := open(t, blob, WithTOCDigest(res.TOCDigest))
		checkLayer(t, r, files)
	}
}

// checkLayer compares every entry of the opened blob with the tar it came from.
func checkLayer(t *testing.T, r *Reader, files []testFile) {
	t.Helper()
	for _, f := range files {
		name := toc.CleanTarName(f.hdr.Name)
		e, ok := r.TOC().Lookup(name)
		if !ok {
			t.Errorf("%s: missing from the TOC", name)
			continue
		}
		if f.hdr.Typeflag == tar.TypeLink {
			if e.Type != toc.TypeHardlink || e.LinkName() != toc.CleanTarName(f.hdr.Linkname) {
				t.Errorf("%s: %s -> %q, want a hard link to %s", name, e.Type, e.LinkName(), f.hdr.Linkname)
			}
			continue
		}
		if int64(e.Mode) != f.hdr.Mode&0o7777 || int(e.UID) != f.hdr.Uid || int(e.GID) != f.hdr.Gid {
			t.Errorf("%s: mode %o owner %d:%d, want %o %d:%d", name, e.Mode, e.UID, e.GID, f.hdr.Mode, f.hdr.Uid, f.hdr.Gid)
		}
		if !e.ModTime().Equal(f.hdr.ModTime) {
			t.Errorf("%s: modtime %v, want %v", name, e.ModTime(), f.hdr.ModTime)
		}
		for k, v := range f.hdr.PAXRecords {
			if x, ok := strings.CutPrefix(k, "SCHILY.xattr."); ok && string(e.Xattrs()[x]) != v {
				t.Errorf("%s: xattr %s = %q, want %q", name, x, e.Xattrs()[x], v)
			}
		}
		switch f.hdr.Typeflag {
		case tar.TypeReg:
			if got := readAll(t, r, name); !bytes.Equal(got, f.data) {
				t.Errorf("%s: content differs (%d bytes, want %d)", name, len(got), len(f.data))
			}
			if want := digest.FromBytes(f.data); len(f.data) > 0 && e.Digest() != want {
				t.Errorf("%s: digest %s, want %s", name, e.Digest(), want)
			}
		case tar.TypeSymlink:
			if e.LinkName() != f.hdr.Linkname {
				t.Errorf("%s: target %q, want %q", name, e.LinkName(), f.hdr.Linkname)
			}
		case tar.TypeChar, tar.TypeBlock:
			if major, minor := e.Dev(); int64(major) != f.hdr.Devmajor || int64(minor) != f.hdr.Devminor {
				t.Errorf("%s: device %d:%d", name, major, minor)
			}
		}
	}
	if got := readAll(t, r, "bin/hard"); !bytes.Equal(got, readAll(t, r, "bin/one-chunk")) {
		t.Errorf("hard link reads differently from its target")
	}
}

// TestPlainGzipTar: the blob is an ordinary .tar.gz whose tar holds the
// layer's entries (plus the landmark and the TOC), and DiffID is its digest.
func TestPlainGzipTar(t *testing.T) {
	files := sampleLayer()
	blob, res := build(t, makeTar(t, files), WithChunkSize(1<<16))
	zr, err := gzip.NewReader(bytes.NewReader(blob))
	if err != nil {
		t.Fatal(err)
	}
	raw, err := io.ReadAll(zr)
	if err != nil {
		t.Fatalf("gunzip the blob: %v", err)
	}
	if d := digest.FromBytes(raw); d != res.DiffID || int64(len(raw)) != res.UncompressedSize {
		t.Errorf("diffID %s size %d, the writer said %s %d", d, len(raw), res.DiffID, res.UncompressedSize)
	}
	tr := tar.NewReader(bytes.NewReader(raw))
	var names []string
	contents := make(map[string][]byte)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("the blob's tar: %v", err)
		}
		names = append(names, h.Name)
		contents[h.Name], _ = io.ReadAll(tr)
	}
	want := []string{NoPrefetchLandmark}
	for _, f := range files {
		want = append(want, f.hdr.Name)
	}
	want = append(want, TOCTarName)
	if fmt.Sprint(names) != fmt.Sprint(want) {
		t.Errorf("tar members:\n%v\nwant\n%v", names, want)
	}
	for _, f := range files {
		if f.hdr.Typeflag == tar.TypeReg && !bytes.Equal(contents[f.hdr.Name], f.data) {
			t.Errorf("%s: content differs in the plain tar", f.hdr.Name)
		}
	}
}

func TestPrioritizedOrder(t *testing.T) {
	files := sampleLayer()
	blob, res := build(t, makeTar(t, files), WithPrioritizedFiles([]string{"bin/hard", "usr/lib/deep/missing/parents.txt"}))
	r := open(t, blob)
	var order []string
	for _, e := range r.TOC().Entries() {
		if !e.Implicit() {
			order = append(order, e.Path())
		}
	}
	// The hard link needs its target first; the parents that exist come first.
	want := "bin/one-chunk bin/hard usr/lib/deep/missing/parents.txt " + PrefetchLandmark + " etc"
	if got := strings.Join(order[:5], " "); got != want {
		t.Errorf("order starts %q, want %q", got, want)
	}
	end, ok := r.PrefetchEnd()
	parents, _ := r.TOC().Lookup("usr/lib/deep/missing/parents.txt")
	if !ok || end <= parents.Chunks()[0].Offset {
		t.Errorf("prefetch end %d (%v) does not follow the prioritized files", end, ok)
	}
	// The descriptor says as much, for a node that has not read the TOC.
	if got := res.Annotations[PrefetchEndAnnotation]; got != strconv.FormatInt(end, 10) {
		t.Errorf("annotation %s = %q; want the landmark's offset %d", PrefetchEndAnnotation, got, end)
	}
	plain, plainRes := build(t, makeTar(t, files))
	if _, ok := open(t, plain).PrefetchEnd(); ok {
		t.Errorf("a layer without prioritized files has a prefetch area")
	}
	if got, ok := plainRes.Annotations[PrefetchEndAnnotation]; ok {
		t.Errorf("a layer without prioritized files has annotation %s = %q", PrefetchEndAnnotation, got)
	}
}

func TestDeterministic(t *testing.T) {
	layer := makeTar(t, sampleLayer())
	one, _ := build(t, layer, WithChunkSize(1<<16), WithConcurrency(1))
	four, _ := build(t, layer, WithChunkSize(1<<16), WithConcurrency(4))
	again, _ := build(t, layer, WithChunkSize(1<<16), WithConcurrency(4))
	if !bytes.Equal(one, four) || !bytes.Equal(four, again) {
		t.Errorf("the same layer gave different blobs (%x, %x, %x)", sha256.Sum256(one), sha256.Sum256(four), sha256.Sum256(again))
	}
}

func TestReconvertKeepsOneLandmarkAndTOC(t *testing.T) {
	blob, _ := build(t, makeTar(t, sampleLayer()))
	zr, _ := gzip.NewReader(bytes.NewReader(blob))
	raw, _ := io.ReadAll(zr)
	again, _ := build(t, raw)
	r := open(t, again)
	var landmarks, tocs int
	for _, e := range r.TOC().Entries() {
		switch e.Path() {
		case NoPrefetchLandmark:
			landmarks++
		case TOCTarName:
			tocs++
		}
	}
	if landmarks != 1 || tocs != 0 {
		t.Errorf("reconverted blob has %d landmarks and %d TOC entries in its TOC, want 1 and 0", landmarks, tocs)
	}
}

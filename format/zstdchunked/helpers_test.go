package zstdchunked

import (
	"archive/tar"
	"bytes"
	"encoding/binary"
	"encoding/json"
	"io"
	"maps"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"
	"github.com/opencontainers/go-digest"

	"github.com/lazypull/lazypull/format/toc"
)

// member is one tar member to build a test archive from.
type member struct {
	hdr  tar.Header
	data []byte
}

func buildTar(t testing.TB, members []member) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, m := range members {
		h := m.hdr
		if h.Typeflag == tar.TypeReg || h.Typeflag == 0 {
			h.Size = int64(len(m.data))
		}
		if err := tw.WriteHeader(&h); err != nil {
			t.Fatalf("tar header %q: %v", h.Name, err)
		}
		if len(m.data) > 0 {
			if _, err := tw.Write(m.data); err != nil {
				t.Fatalf("tar data %q: %v", h.Name, err)
			}
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// content is deterministic test data: random (incompressible) or text.
func content(seed uint64, n int, compressible bool) []byte {
	rng := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	b := make([]byte, n)
	if !compressible {
		for i := 0; i < n; i += 8 {
			var w [8]byte
			binary.LittleEndian.PutUint64(w[:], rng.Uint64())
			copy(b[i:], w[:])
		}
		return b
	}
	words := []string{"layer ", "chunk ", "zstd ", "frame ", "lazy ", "pull ", "\n", "toc "}
	for i := 0; i < n; {
		i += copy(b[i:], words[rng.IntN(len(words))])
	}
	return b
}

var testTime = time.Date(2024, 5, 6, 7, 8, 9, 0, time.UTC)

func reg(name string, data []byte) member {
	return member{hdr: tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: 0o644, ModTime: testTime}, data: data}
}

func dir(name string) member {
	return member{hdr: tar.Header{Typeflag: tar.TypeDir, Name: name, Mode: 0o755, ModTime: testTime}}
}

// richLayer covers every kind of member a layer may hold, with file sizes
// around chunkSize.
func richLayer(t testing.TB, chunkSize int) []byte {
	global := member{hdr: tar.Header{Typeflag: tar.TypeXGlobalHeader, Name: "pax_global_header", PAXRecords: map[string]string{"comment": "made for a test"}}}
	return buildTar(t, append([]member{global}, fileMembers(chunkSize)...))
}

// fileMembers are richLayer's files: what other writers accept too.
func fileMembers(chunkSize int) []member {
	longDir := strings.Repeat("long-directory-name/", 8)
	return []member{
		dir("./"),
		{hdr: tar.Header{Typeflag: tar.TypeDir, Name: "etc/", Mode: 0o700, Uid: 1000, Gid: 1001, Uname: "user", Gname: "group", ModTime: testTime}},
		reg("etc/empty", nil),
		reg("etc/one", []byte{'x'}),
		reg("etc/below-chunk", content(1, chunkSize-1, true)),
		reg("etc/chunk", content(2, chunkSize, false)),
		reg("etc/above-chunk", content(3, chunkSize+1, true)),
		reg("etc/several-chunks", content(4, 3*chunkSize+17, false)),
		{hdr: tar.Header{Typeflag: tar.TypeReg, Name: "bin/setuid", Mode: 0o4755, ModTime: testTime.Add(1500 * time.Millisecond), Format: tar.FormatPAX}, data: []byte("#!/bin/sh\n")},
		{hdr: tar.Header{Typeflag: tar.TypeSymlink, Name: "etc/link", Linkname: "../bin/setuid", ModTime: testTime}},
		{hdr: tar.Header{Typeflag: tar.TypeSymlink, Name: "etc/long-link", Linkname: "/" + longDir + "target", ModTime: testTime}},
		{hdr: tar.Header{Typeflag: tar.TypeLink, Name: "etc/hard", Linkname: "etc/several-chunks", ModTime: testTime}},
		{hdr: tar.Header{Typeflag: tar.TypeLink, Name: "etc/hard-to-hard", Linkname: "./etc/hard", ModTime: testTime}},
		{hdr: tar.Header{Typeflag: tar.TypeChar, Name: "dev/null", Mode: 0o666, Devmajor: 1, Devminor: 3, ModTime: testTime}},
		{hdr: tar.Header{Typeflag: tar.TypeBlock, Name: "dev/sda", Mode: 0o660, Devmajor: 8, Devminor: 0, ModTime: testTime}},
		{hdr: tar.Header{Typeflag: tar.TypeFifo, Name: "dev/fifo", Mode: 0o600, ModTime: testTime}},
		{hdr: tar.Header{Typeflag: tar.TypeReg, Name: "etc/xattrs", Mode: 0o644, ModTime: testTime, PAXRecords: map[string]string{
			"SCHILY.xattr.user.comment":        "hello",
			"SCHILY.xattr.security.capability": "\x01\x00\x00\x02\x00\x20\x00\x00",
		}}, data: []byte("has xattrs")},
		{hdr: tar.Header{Typeflag: tar.TypeDir, Name: "etc/opaque/", Mode: 0o755, ModTime: testTime, PAXRecords: map[string]string{"SCHILY.xattr.trusted.overlay.opaque": "y"}}},
		reg(longDir+"file-with-a-long-name", content(5, 100, true)),
		{hdr: tar.Header{Typeflag: tar.TypeReg, Name: "gnu/" + strings.Repeat("g", 120), Mode: 0o644, ModTime: testTime, Format: tar.FormatGNU}, data: []byte("gnu long name")},
		reg("etc/.wh.deleted", nil),
		reg("etc/opaque/.wh..wh..opq", nil),
		reg("missing/parents/of/this/file", []byte("no parents listed")),
		reg("late/child", []byte("listed before its directory")),
		{hdr: tar.Header{Typeflag: tar.TypeDir, Name: "late/", Mode: 0o711, ModTime: testTime}},
	}
}

func writeBlob(t testing.TB, tarball []byte, opts ...WriterOption) ([]byte, Result) {
	t.Helper()
	var out bytes.Buffer
	w := NewWriter(&out, opts...)
	if err := w.AppendTar(bytes.NewReader(tarball)); err != nil {
		t.Fatalf("AppendTar: %v", err)
	}
	res, err := w.Close()
	if err != nil {
		t.Fatalf("Close: %v", err)
	}
	return out.Bytes(), res
}

func openBlob(t testing.TB, blob []byte, opts ...OpenOption) *Reader {
	t.Helper()
	r, err := Open(bytes.NewReader(blob), int64(len(blob)), opts...)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	return r
}

func decompressAll(t testing.TB, blob []byte) []byte {
	t.Helper()
	d, err := zstd.NewReader(bytes.NewReader(blob))
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	out, err := io.ReadAll(d)
	if err != nil {
		t.Fatalf("decompressing the blob: %v", err)
	}
	return out
}

// expected is what a tar leaves on disk, by TOC name: the last member of
// a name wins, and a hard link has its target's content at link time.
type expected struct {
	hdr     *tar.Header
	content []byte
}

func expectedFiles(t testing.TB, tarball []byte) map[string]expected {
	t.Helper()
	want := make(map[string]expected)
	tr := tar.NewReader(bytes.NewReader(tarball))
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if _, ok := toc.EntryFromTar(h); !ok {
			continue
		}
		name := toc.CleanTarName(h.Name)
		data, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		if h.Typeflag == tar.TypeLink {
			data = want[toc.CleanTarName(h.Linkname)].content
		}
		want[name] = expected{hdr: h, content: data}
	}
	return want
}

// checkLayer compares every file of r with what the tar says, attributes
// and content, reading whole files and windows across chunk boundaries;
// the TOC must hold nothing else.
func checkLayer(t *testing.T, r *Reader, tarball []byte) {
	t.Helper()
	checkFiles(t, r, tarball, true)
}

// checkFiles is checkLayer; loose allows other entries (another writer's
// landmarks) and user and group names left out.
func checkFiles(t *testing.T, r *Reader, tarball []byte, strict bool) {
	t.Helper()
	want := expectedFiles(t, tarball)
	for name, w := range want {
		e, ok := r.TOC().Lookup(name)
		if !ok {
			t.Errorf("%q: not in the TOC", name)
			continue
		}
		checkAttrs(t, e, w.hdr, strict)
		if e.Type != toc.TypeReg && e.Type != toc.TypeHardlink {
			continue
		}
		f, err := r.OpenFile(name)
		if err != nil {
			t.Errorf("OpenFile(%q): %v", name, err)
			continue
		}
		if f.Size() != int64(len(w.content)) {
			t.Errorf("%q: size %d, want %d", name, f.Size(), len(w.content))
			continue
		}
		got := make([]byte, len(w.content))
		if n, err := f.ReadAt(got, 0); n != len(got) || (err != nil && err != io.EOF) {
			t.Errorf("%q: ReadAt whole: %d bytes, %v", name, n, err)
			continue
		}
		if !bytes.Equal(got, w.content) {
			t.Errorf("%q: content differs", name)
			continue
		}
		checkWindows(t, name, f, w.content)
	}
	for _, e := range r.TOC().Entries() {
		if _, ok := want[e.Path()]; strict && !ok && !e.Implicit() {
			t.Errorf("%q: in the TOC but not in the tar", e.Path())
		}
	}
}

func checkWindows(t *testing.T, name string, f *File, content []byte) {
	t.Helper()
	size := len(content)
	for _, w := range [][2]int{{0, 1}, {size / 2, 4097}, {size - 1, 1}, {size - 3, 10}, {1, size}, {size / 3, size / 3}} {
		off, n := w[0], w[1]
		if off < 0 || off >= size || n <= 0 {
			continue
		}
		buf := make([]byte, n)
		got, err := f.ReadAt(buf, int64(off))
		wantN := min(n, size-off)
		if got != wantN {
			t.Errorf("%q: ReadAt(%d bytes at %d) = %d, want %d (%v)", name, n, off, got, wantN, err)
			continue
		}
		if wantN < n && err != io.EOF {
			t.Errorf("%q: short ReadAt at %d: err %v, want io.EOF", name, off, err)
		}
		if wantN == n && err != nil {
			t.Errorf("%q: ReadAt(%d bytes at %d): %v", name, n, off, err)
		}
		if !bytes.Equal(buf[:got], content[off:off+got]) {
			t.Errorf("%q: ReadAt(%d bytes at %d): wrong bytes", name, n, off)
		}
	}
	if n, err := f.ReadAt(make([]byte, 1), int64(size)); n != 0 || err != io.EOF {
		t.Errorf("%q: ReadAt at the end = %d, %v; want 0, io.EOF", name, n, err)
	}
}

func checkAttrs(t *testing.T, e *toc.Entry, h *tar.Header, strict bool) {
	t.Helper()
	want, _ := toc.EntryFromTar(h)
	if want.Type == toc.TypeHardlink && e.Type == toc.TypeReg {
		return // a link to a file replaced later: it keeps the old content
	}
	if e.Type != want.Type {
		t.Errorf("%q: type %s, want %s", e.Path(), e.Type, want.Type)
		return
	}
	// User and group names are in the TOC's JSON; a mounted layer does
	// not keep them.
	if uint32(e.Mode) != uint32(want.Mode) || int(e.UID) != want.UID || int(e.GID) != want.GID {
		t.Errorf("%q: owner/mode %o %d:%d, want %o %d:%d", e.Path(), e.Mode, e.UID, e.GID, want.Mode, want.UID, want.GID)
	}
	if d := e.ModTime().Sub(h.ModTime); !h.ModTime.IsZero() && (d != 0 && strict || d < -time.Second || d > time.Second) {
		t.Errorf("%q: modtime %v, want %v", e.Path(), e.ModTime(), h.ModTime)
	}
	switch e.Type {
	case toc.TypeSymlink:
		if e.LinkName() != h.Linkname {
			t.Errorf("%q: symlink to %q, want %q", e.Path(), e.LinkName(), h.Linkname)
		}
	case toc.TypeChar, toc.TypeBlock:
		if major, minor := e.Dev(); int64(major) != h.Devmajor || int64(minor) != h.Devminor {
			t.Errorf("%q: device %d:%d, want %d:%d", e.Path(), major, minor, h.Devmajor, h.Devminor)
		}
	}
	maps.DeleteFunc(want.Xattrs, func(k string, _ []byte) bool { return toc.OverlayXattr(k) }) // toc.Parse drops them
	if !maps.EqualFunc(e.Xattrs(), want.Xattrs, bytes.Equal) {
		t.Errorf("%q: xattrs %q, want %q", e.Path(), e.Xattrs(), want.Xattrs)
	}
}

// blobParts splits one of our blobs: data frames, manifest JSON.
func blobParts(t testing.TB, blob []byte) (data []byte, manifest []byte) {
	t.Helper()
	f, err := ParseFooter(blob[len(blob)-TailSize:])
	if err != nil {
		t.Fatal(err)
	}
	p := f.Manifest
	m, err := decompressManifest(blob[p.Offset:p.Offset+p.Length], p.UncompressedLength)
	if err != nil {
		t.Fatal(err)
	}
	return blob[:p.Offset-skippableHeaderSize], m
}

// withManifest rebuilds a blob around new manifest JSON, with a footer of
// the given payload size and magic; it returns the blob and its
// annotations.
func withManifest(t testing.TB, data, manifest []byte, footerSize int, magic []byte) ([]byte, map[string]string) {
	t.Helper()
	compressed := testEncoder.EncodeAll(manifest, nil)
	pos := Position{Offset: int64(len(data)) + skippableHeaderSize, Length: int64(len(compressed)), UncompressedLength: int64(len(manifest))}
	blob := append([]byte(nil), data...)
	blob = appendSkippableFrame(blob, compressed)
	p := make([]byte, footerSize)
	binary.LittleEndian.PutUint64(p[0:], uint64(pos.Offset))
	binary.LittleEndian.PutUint64(p[8:], uint64(pos.Length))
	binary.LittleEndian.PutUint64(p[16:], uint64(pos.UncompressedLength))
	binary.LittleEndian.PutUint64(p[24:], manifestTypeCRFS)
	copy(p[footerSize-8:], magic)
	blob = appendSkippableFrame(blob, p)
	return blob, map[string]string{
		ManifestChecksumAnnotation: digestOf(compressed).String(),
		ManifestPositionAnnotation: formatManifestPosition(pos),
	}
}

// testEncoder compresses what tests build by hand.
var testEncoder, _ = zstd.NewWriter(nil)

// editManifest decodes a manifest, lets edit change it, and encodes it.
func editManifest(t testing.TB, manifest []byte, edit func(*toc.JSON)) []byte {
	t.Helper()
	var doc toc.JSON
	if err := json.Unmarshal(manifest, &doc); err != nil {
		t.Fatal(err)
	}
	edit(&doc)
	out, err := json.Marshal(doc)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func linkHeader(name, target string) tar.Header {
	return tar.Header{Typeflag: tar.TypeLink, Name: name, Linkname: target, ModTime: testTime}
}

// withDigest is c with digest d, which must be valid.
func withDigest(c toc.Chunk, d digest.Digest) toc.Chunk {
	if err := c.SetDigest(d); err != nil {
		panic(err)
	}
	return c
}

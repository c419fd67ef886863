package zstdchunked

import (
	"archive/tar"
	"bytes"
	"io"
	"testing"

	"github.com/containerd/stargz-snapshotter/estargz"
	stargzzstd "github.com/containerd/stargz-snapshotter/estargz/zstdchunked"
	"github.com/klauspost/compress/zstd"
	"github.com/opencontainers/go-digest"

	"github.com/lazypull/lazypull/format/toc"
)

// stargzBlob builds a zstd:chunked blob with stargz-snapshotter's writer,
// and returns it with the annotations that writer makes (the older names).
func stargzBlob(t *testing.T, tarball []byte, opts ...estargz.Option) ([]byte, map[string]string) {
	t.Helper()
	annotations := map[string]string{}
	compression := struct {
		*stargzzstd.Compressor
		*stargzzstd.Decompressor
	}{&stargzzstd.Compressor{CompressionLevel: zstd.SpeedDefault, Metadata: annotations}, &stargzzstd.Decompressor{}}
	opts = append(opts, estargz.WithCompression(compression))
	blob, err := estargz.Build(io.NewSectionReader(bytes.NewReader(tarball), 0, int64(len(tarball))), opts...)
	if err != nil {
		t.Fatalf("estargz.Build: %v", err)
	}
	defer blob.Close()
	out, err := io.ReadAll(blob)
	if err != nil {
		t.Fatal(err)
	}
	return out, annotations
}

// linkChainFree are fileMembers less a hard link to a hard link, which
// toc.Parse refuses and this package's writer resolves, but the writers
// of stargz-snapshotter and containers/storage keep as they are.
func linkChainFree(chunkSize int) []member {
	var ms []member
	for _, m := range fileMembers(chunkSize) {
		if m.hdr.Name != "etc/hard-to-hard" {
			ms = append(ms, m)
		}
	}
	return ms
}

func TestInteropStargzWritesWeRead(t *testing.T) {
	const chunkSize = 4096
	tarball := buildTar(t, linkChainFree(chunkSize))
	for name, opts := range map[string][]estargz.Option{
		"default":         nil,
		"small chunks":    {estargz.WithChunkSize(chunkSize)},
		"shared frames":   {estargz.WithChunkSize(chunkSize), estargz.WithMinChunkSize(64 << 10)},
		"prioritized":     {estargz.WithChunkSize(chunkSize), estargz.WithPrioritizedFiles([]string{"etc/chunk", "etc/one"})},
		"single-threaded": {estargz.WithChunkSize(chunkSize), estargz.WithParallelism(1)},
	} {
		t.Run(name, func(t *testing.T) {
			blob, annotations := stargzBlob(t, tarball, opts...)
			if annotations[legacyManifestChecksumAnnotation] == "" {
				t.Fatalf("stargz-snapshotter wrote no annotations: %v", annotations)
			}
			// By the footer (40 bytes, the older magic).
			if f, err := ParseFooter(blob[len(blob)-TailSize:]); err != nil || f.Size != footerSizeV1 {
				t.Fatalf("footer: %+v, %v", f, err)
			}
			r := openBlob(t, blob)
			checkFiles(t, r, tarball, false)
			// By its annotations, checking the TOC digest.
			r = openBlob(t, blob, WithAnnotations(annotations))
			checkFiles(t, r, tarball, false)
			if name == "shared frames" && !hasInnerOffsets(r.TOC()) {
				t.Error("no chunk shares a frame: the test does not test inner offsets")
			}
		})
	}
}

func hasInnerOffsets(t *toc.TOC) bool {
	for _, e := range t.Entries() {
		for _, c := range e.Chunks() {
			if c.InnerOffset > 0 {
				return true
			}
		}
	}
	return false
}

func TestInteropWeWriteStargzReads(t *testing.T) {
	const chunkSize = 4096
	// With tar-split data (the TOC then names members as the tar does) and
	// without (a link to a link is rewritten, which tar-split cannot say).
	for name, tarball := range map[string][]byte{
		"tar-split":    buildTar(t, linkChainFree(chunkSize)),
		"no tar-split": buildTar(t, fileMembers(chunkSize)),
	} {
		t.Run(name, func(t *testing.T) {
			blob, res := writeBlob(t, tarball, WithChunkSize(chunkSize))
			if (res.TarSplitSkipped == "") != (name == "tar-split") {
				t.Fatalf("tar-split skipped: %q", res.TarSplitSkipped)
			}
			stargzReads(t, blob, res.StargzAnnotations, tarball)
		})
	}
	// Chunks larger than the 1 MiB window the writer's frames declare.
	t.Run("large chunks", func(t *testing.T) {
		tarball := buildTar(t, []member{reg("large", content(9, 3<<20+5, true)), reg("chunks", content(10, 2*DefaultChunkSize+7, false))})
		blob, res := writeBlob(t, tarball)
		stargzReads(t, blob, res.StargzAnnotations, tarball)
	})
}

// stargzReads checks that stargz-snapshotter's reader, as it is, opens a
// blob, verifies it by the TOC digest in the annotations it is given, and
// reads every file of the tar from it, each chunk verified.
func stargzReads(t *testing.T, blob []byte, annotations map[string]string, tarball []byte) {
	t.Helper()
	r, err := estargz.Open(io.NewSectionReader(bytes.NewReader(blob), 0, int64(len(blob))), estargz.WithDecompressors(&stargzzstd.Decompressor{}))
	if err != nil {
		t.Fatalf("estargz.Open: %v", err)
	}
	tocDigest, err := digest.Parse(annotations[estargz.TOCJSONDigestAnnotation])
	if err != nil {
		t.Fatalf("annotations %v: %v", annotations, err)
	}
	verifier, err := r.VerifyTOC(tocDigest)
	if err != nil {
		t.Fatalf("VerifyTOC: %v", err)
	}
	files := expectedFiles(t, tarball)
	for name, want := range files {
		for want.hdr.Typeflag == tar.TypeLink {
			// stargz-snapshotter reads a hard link as its target.
			name = toc.CleanTarName(want.hdr.Linkname)
			want = files[name]
		}
		e, ok := r.Lookup(name)
		if !ok {
			t.Errorf("%q: stargz-snapshotter does not find it", name)
			continue
		}
		wantEntry, _ := toc.EntryFromTar(want.hdr)
		if e.Type != wantEntry.Type.String() || e.Mode != wantEntry.Mode || e.UID != wantEntry.UID || !e.ModTime().Equal(want.hdr.ModTime) {
			t.Errorf("%q: stargz-snapshotter reads %s %o uid %d %s, want %s %o uid %d %s", name, e.Type, e.Mode, e.UID, e.ModTime(), wantEntry.Type, wantEntry.Mode, wantEntry.UID, want.hdr.ModTime)
		}
		if e.Type != toc.TypeReg.String() {
			continue
		}
		sr, err := r.OpenFile(name)
		if err != nil {
			t.Errorf("%q: OpenFile: %v", name, err)
			continue
		}
		got, err := io.ReadAll(sr)
		if err != nil || !bytes.Equal(got, want.content) {
			t.Errorf("%q: stargz-snapshotter reads %d bytes (%v), want the %d of the tar", name, len(got), err, len(want.content))
			continue
		}
		// Every chunk verifies against the digest the TOC gives it.
		for off := int64(0); off < int64(len(got)); {
			ce, ok := r.ChunkEntryForOffset(name, off)
			if !ok {
				t.Errorf("%q: no chunk at %d", name, off)
				break
			}
			v, err := verifier.Verifier(ce)
			if err != nil {
				t.Errorf("%q chunk at %d: %v", name, off, err)
				break
			}
			v.Write(got[ce.ChunkOffset : ce.ChunkOffset+ce.ChunkSize])
			if !v.Verified() {
				t.Errorf("%q chunk at %d does not verify", name, off)
			}
			off = ce.ChunkOffset + ce.ChunkSize
		}
	}
}

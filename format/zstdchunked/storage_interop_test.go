package zstdchunked

import (
	"bytes"
	"testing"

	"github.com/opencontainers/go-digest"
	"go.podman.io/storage/pkg/chunked/compressor"
	cstoc "go.podman.io/storage/pkg/chunked/toc"
)

// containersStorageBlob compresses a tar with containers/storage's own
// zstd:chunked writer (what podman push --compression-format=zstd:chunked
// uses), and returns the blob and the annotations it makes.
func containersStorageBlob(t *testing.T, tarball []byte) ([]byte, map[string]string) {
	t.Helper()
	var out bytes.Buffer
	annotations := map[string]string{}
	level := 3
	w, err := compressor.ZstdCompressor(&out, annotations, &level)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write(tarball); err != nil {
		t.Fatalf("containers/storage compressor: %v", err)
	}
	if err := w.Close(); err != nil {
		t.Fatalf("containers/storage compressor: %v", err)
	}
	return out.Bytes(), annotations
}

func TestInteropContainersStorageWritesWeRead(t *testing.T) {
	// Files big enough for its rolling checksum to cut several chunks, and
	// runs of zeros it stores as holes.
	ms := linkChainFree(4096)
	ms = append(ms,
		reg("big/random", content(10, 1<<20, false)),
		reg("big/text", content(11, 1<<20, true)),
		reg("big/zeros-inside", append(append(content(12, 100_000, false), make([]byte, 300_000)...), content(13, 5000, true)...)),
	)
	tarball := buildTar(t, ms)
	blob, annotations := containersStorageBlob(t, tarball)
	if annotations[ManifestChecksumAnnotation] == "" || annotations[TarSplitPositionAnnotation] == "" {
		t.Fatalf("containers/storage wrote annotations %v", annotations)
	}
	if got := decompressAll(t, blob); !bytes.Equal(got, tarball) {
		t.Fatal("containers/storage's blob does not decompress to the tar (the test's premise)")
	}

	// By its footer (64 bytes), and by its annotations with the digest.
	f, err := ParseFooter(blob[len(blob)-TailSize:])
	if err != nil || f.Size != footerSizeV2 || f.TarSplit.Length == 0 {
		t.Fatalf("footer %+v, %v", f, err)
	}
	for _, r := range []*Reader{openBlob(t, blob), openBlob(t, blob, WithAnnotations(annotations))} {
		checkFiles(t, r, tarball, false) // it keeps no user names, and sub-second times
		if r.TOCDigest().String() != annotations[ManifestChecksumAnnotation] {
			t.Errorf("TOC digest %s, annotation says %s", r.TOCDigest(), annotations[ManifestChecksumAnnotation])
		}
		e, _ := r.TOC().Lookup("big/zeros-inside")
		var holes int
		for _, c := range e.Chunks {
			if c.Zero {
				holes++
			}
		}
		if len(e.Chunks) < 3 || holes == 0 {
			t.Errorf("big/zeros-inside: %d chunks, %d holes: the test does not test chunked files", len(e.Chunks), holes)
		}
		if e.Digest != digest.FromBytes(append(append(content(12, 100_000, false), make([]byte, 300_000)...), content(13, 5000, true)...)) {
			t.Errorf("big/zeros-inside: wrong file digest")
		}
	}
}

// containers/storage reads our blobs through code it does not export (its
// differ needs a whole store); what it exports about them is how it finds
// a layer's TOC digest, which must be ours.
func TestInteropContainersStorageFindsOurTOCDigest(t *testing.T) {
	_, res := writeBlob(t, buildTar(t, linkChainFree(4096)), WithChunkSize(4096))
	d, err := cstoc.GetTOCDigest(res.Annotations)
	if err != nil || d == nil || *d != res.TOCDigest {
		t.Fatalf("containers/storage finds TOC digest %v (%v), want %s", d, err, res.TOCDigest)
	}
}

package zstdchunked

import (
	"archive/tar"
	"bytes"
	"encoding/json"
	"io"
	"strings"
	"testing"

	splittar "github.com/vbatts/tar-split/archive/tar"
	"github.com/vbatts/tar-split/tar/asm"
	tarsplit "github.com/vbatts/tar-split/tar/storage"
)

// tarSplitOf returns a blob's tar-split data, uncompressed, found by its
// annotation and checked against the digest the manifest gives it.
func tarSplitOf(t *testing.T, blob []byte, res Result) []byte {
	t.Helper()
	p, ok, err := TarSplitPosition(res.Annotations)
	if err != nil || !ok {
		t.Fatalf("tar-split position: %v, %v (annotations %v)", ok, err, res.Annotations)
	}
	compressed := blob[p.Offset : p.Offset+p.Length]
	if !isSkippableHeader(blob[p.Offset-skippableHeaderSize:], int(p.Length)) {
		t.Fatal("the tar-split data is not in a skippable frame of its length")
	}
	_, manifest := blobParts(t, blob)
	var doc manifestJSON
	if err := json.Unmarshal(manifest, &doc); err != nil {
		t.Fatal(err)
	}
	if doc.TarSplitDigest != digestOf(compressed) {
		t.Fatalf("the manifest names tar-split digest %q, the data's is %s", doc.TarSplitDigest, digestOf(compressed))
	}
	data := decompressAll(t, compressed)
	if int64(len(data)) != p.UncompressedLength {
		t.Fatalf("tar-split of %d bytes, the annotation says %d", len(data), p.UncompressedLength)
	}
	return data
}

// filesByTarName is a tar-split file getter: each member's content, by
// its name in the tar.
type filesByTarName map[string][]byte

func (f filesByTarName) Get(name string) (io.ReadCloser, error) {
	return io.NopCloser(bytes.NewReader(f[name])), nil
}

func tarContents(t *testing.T, tarball []byte) filesByTarName {
	t.Helper()
	files := filesByTarName{}
	tr := tar.NewReader(bytes.NewReader(tarball))
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return files
		}
		if err != nil {
			t.Fatal(err)
		}
		if files[h.Name], err = io.ReadAll(tr); err != nil {
			t.Fatal(err)
		}
	}
}

// tar-split's own assembler rebuilds the input tar, byte for byte, from
// our tar-split data and the files' contents, checking each file's CRC.
func TestTarSplitRebuildsTheTar(t *testing.T) {
	padded := buildTar(t, linkChainFree(4096))
	padded = append(padded, make([]byte, 10240-len(padded)%10240)...)
	noEnd := buildTar(t, []member{reg("a", []byte("no end-of-archive blocks"))})
	noEnd = noEnd[:len(noEnd)-1024]
	for name, tarball := range map[string][]byte{
		"files":          buildTar(t, linkChainFree(4096)),
		"big files":      buildTar(t, []member{reg("big", content(7, 3<<20, false)), reg("text", content(8, 1<<20, true))}),
		"record padding": padded,
		"no end blocks":  noEnd,
		"empty archive":  buildTar(t, nil),
	} {
		t.Run(name, func(t *testing.T) {
			blob, res := writeBlob(t, tarball, WithChunkSize(64<<10))
			if res.TarSplitSkipped != "" {
				t.Fatalf("no tar-split: %s", res.TarSplitSkipped)
			}
			split := tarSplitOf(t, blob, res)
			var rebuilt bytes.Buffer
			if err := asm.WriteOutputTarStream(tarContents(t, tarball), tarsplit.NewJSONUnpacker(bytes.NewReader(split)), &rebuilt); err != nil {
				t.Fatalf("tar-split rebuilding the tar: %v", err)
			}
			if !bytes.Equal(rebuilt.Bytes(), tarball) {
				t.Fatalf("tar-split rebuilds %d bytes that are not the %d of the tar", rebuilt.Len(), len(tarball))
			}
			// One header a segment, as containers/storage reads them.
			var headers int
			if err := asm.IterateHeaders(tarsplit.NewJSONUnpacker(bytes.NewReader(split)), func(*splittar.Header) error { headers++; return nil }); err != nil {
				t.Fatal(err)
			}
			if want := len(expectedFiles(t, tarball)); headers != want {
				t.Errorf("tar-split holds %d headers, the tar %d members", headers, want)
			}
			// Our reader reads the layer as before.
			checkLayer(t, openBlob(t, blob, WithAnnotations(res.Annotations)), tarball)
		})
	}
	// A changed file no longer matches its CRC: the rebuild notices.
	tarball := buildTar(t, []member{reg("a", []byte("original"))})
	blob, res := writeBlob(t, tarball)
	err := asm.WriteOutputTarStream(filesByTarName{"a": []byte("tampered")}, tarsplit.NewJSONUnpacker(bytes.NewReader(tarSplitOf(t, blob, res))), io.Discard)
	if err == nil {
		t.Error("tar-split rebuilds a tar from a file that is not the one it names")
	}
}

// A tar that containers/storage could not match with the TOC gets no
// tar-split data, and says why; the blob is otherwise as good.
func TestTarSplitSkipped(t *testing.T) {
	for name, tc := range map[string]struct {
		members []member
		why     string
	}{
		"pax global header": {[]member{{hdr: tar.Header{Typeflag: tar.TypeXGlobalHeader, Name: "g", PAXRecords: map[string]string{"comment": "x"}}}, reg("a", nil)}, "is not a file"},
		"duplicate name":    {[]member{reg("a", []byte("1")), reg("./a", []byte("2"))}, "a second member"},
		"link to a link":    {[]member{reg("a", []byte("1")), {hdr: linkHeader("b", "a")}, {hdr: linkHeader("c", "b")}}, "names another hard link"},
		"mode type bits":    {[]member{{hdr: tar.Header{Typeflag: tar.TypeReg, Name: "a", Mode: 0o100644, ModTime: testTime}}}, "beyond the permissions"},
		"name not UTF-8":    {[]member{reg("caf\xe9", []byte("x"))}, "not UTF-8"},
		"device numbers":    {[]member{{hdr: tar.Header{Typeflag: tar.TypeFifo, Name: "f", Devmajor: 1, ModTime: testTime}}}, "device numbers"},
		"sparse file":       {nil, "sparse"},
	} {
		t.Run(name, func(t *testing.T) {
			var tarball []byte
			if name == "sparse file" {
				tarball, _ = sparseTar(t, [][2]int64{{10, 20}, {100, 5}}, 200)
			} else {
				tarball = buildTar(t, tc.members)
			}
			blob, res := writeBlob(t, tarball)
			if !strings.Contains(res.TarSplitSkipped, tc.why) {
				t.Errorf("tar-split skipped for %q, want a reason with %q", res.TarSplitSkipped, tc.why)
			}
			if _, ok := res.Annotations[TarSplitPositionAnnotation]; ok {
				t.Error("a tar-split position without tar-split data")
			}
			if got := decompressAll(t, blob); !bytes.Equal(got, tarball) {
				t.Error("the blob does not decompress to the tar")
			}
			openBlob(t, blob, WithAnnotations(res.Annotations))
		})
	}
}

package partial

import (
	"archive/tar"
	"bytes"
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/klauspost/compress/zstd"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/lazypull/lazypull/composefs/objects"
	"github.com/lazypull/lazypull/format"
	"github.com/lazypull/lazypull/format/estargz"
	"github.com/lazypull/lazypull/format/zstdchunked"
)

type testFile struct {
	name string
	data []byte
}

func random(seed uint64, n int) []byte {
	r := rand.New(rand.NewPCG(seed, 0))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

// testFiles: two files of the same content, a file the store will have
// already, an empty one, one of several chunks and one larger than the
// reads of some tests.
var testFiles = []testFile{
	{"etc/a", []byte("hello\n")},
	{"etc/b", []byte("hello\n")},
	{"etc/present", []byte("in the store already\n")},
	{"etc/empty", nil},
	{"lib/medium", random(1, 150<<10)},
	{"lib/big", random(2, 3<<20)},
	{"lib/small", []byte("small\n")},
}

// blob writes testFiles as a layer of kind, in 64 KiB chunks.
func blob(t *testing.T, kind format.Kind) ([]byte, format.Blob) {
	raw, b, _ := blobDesc(t, kind)
	return raw, b
}

// blobDesc is blob, with the layer's descriptor and its DiffID in
// desc.Annotations["diffid"].
func blobDesc(t *testing.T, kind format.Kind) ([]byte, format.Blob, ocispec.Descriptor) {
	t.Helper()
	var tarBuf bytes.Buffer
	tw := tar.NewWriter(&tarBuf)
	for _, f := range testFiles {
		tw.WriteHeader(&tar.Header{Name: f.name, Typeflag: tar.TypeReg, Mode: 0o644, Size: int64(len(f.data))})
		tw.Write(f.data)
	}
	tw.Close()
	var out bytes.Buffer
	desc := ocispec.Descriptor{}
	switch kind {
	case format.EStargz:
		w := estargz.NewWriter(&out, estargz.WithChunkSize(64<<10))
		if err := w.AppendTar(&tarBuf); err != nil {
			t.Fatal(err)
		}
		res, err := w.Close()
		if err != nil {
			t.Fatal(err)
		}
		desc = ocispec.Descriptor{MediaType: ocispec.MediaTypeImageLayerGzip, Annotations: res.Annotations}
		desc.Annotations["diffid"] = res.DiffID.String()
	case format.ZstdChunked:
		w := zstdchunked.NewWriter(&out, zstdchunked.WithChunkSize(64<<10))
		if err := w.AppendTar(&tarBuf); err != nil {
			t.Fatal(err)
		}
		res, err := w.Close()
		if err != nil {
			t.Fatal(err)
		}
		desc = ocispec.Descriptor{MediaType: zstdchunked.MediaType, Annotations: res.Annotations}
		desc.Annotations["diffid"] = res.DiffID.String()
	}
	desc.Digest, desc.Size = digest.FromBytes(out.Bytes()), int64(out.Len())
	b, _, err := format.Open(bytes.NewReader(out.Bytes()), desc, format.Options{})
	if err != nil {
		t.Fatal(err)
	}
	return out.Bytes(), b, desc
}

// countingReader counts the reads Fill makes of a blob.
type countingReader struct {
	r           io.ReaderAt
	reads, read atomic.Int64
}

func (c *countingReader) ReadAt(p []byte, off int64) (int, error) {
	c.reads.Add(1)
	n, err := c.r.ReadAt(p, off)
	c.read.Add(int64(n))
	return n, err
}

func openStore(t testing.TB) *objects.Store {
	t.Helper()
	s, err := objects.Open(context.Background(), filepath.Join(t.TempDir(), "store"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func fill(t testing.TB, store *objects.Store, owner string, blob io.ReaderAt, b format.Blob, opts Options) (Stats, error) {
	t.Helper()
	batch, err := store.Batch(context.Background(), owner)
	if err != nil {
		t.Fatal(err)
	}
	st, err := Fill(context.Background(), store, batch, blob, b, opts)
	if err != nil {
		batch.Abort()
		return st, err
	}
	if err := batch.Commit(); err != nil {
		t.Fatal(err)
	}
	return st, nil
}

// TestFillFetchesWhatTheStoreLacks: a fill writes every content of the
// layer but the one the store has, reading from the blob only the chunks
// of those it writes; its owner names them all; a second layer of the
// same files reads nothing. Both formats, and reads smaller than a file.
func TestFillFetchesWhatTheStoreLacks(t *testing.T) {
	for _, kind := range []format.Kind{format.EStargz, format.ZstdChunked} {
		for _, maxRead := range []int64{0, 256 << 10} {
			t.Run(fmt.Sprintf("%s/maxread-%d", kind, maxRead), func(t *testing.T) {
				raw, b := blob(t, kind)
				store := openStore(t)
				seed, err := store.Batch(context.Background(), "seed")
				if err != nil {
					t.Fatal(err)
				}
				if _, err := seed.Put(bytes.NewReader(testFiles[2].data), digest.FromBytes(testFiles[2].data)); err != nil {
					t.Fatal(err)
				}
				seed.Commit()

				r := &countingReader{r: bytes.NewReader(raw)}
				st, err := fill(t, store, "layer", r, b, Options{MaxRead: maxRead})
				if err != nil {
					t.Fatal(err)
				}
				// 5 contents: hello, present, medium, big, small.
				wantBytes := int64(6 + 150<<10 + 3<<20 + 6)
				if st.Objects != 5 || st.Present != 1 || st.Fetched != 4 || st.Bytes != wantBytes {
					t.Errorf("stats %+v; want 5 objects, 1 present, 4 fetched, %d bytes", st, wantBytes)
				}
				if st.Reads != r.reads.Load() || st.Read != r.read.Load() || st.Read >= int64(len(raw)) {
					t.Errorf("stats say %d reads of %d bytes; the blob saw %d of %d, of %d in all", st.Reads, st.Read, r.reads.Load(), r.read.Load(), len(raw))
				}
				if maxRead > 0 && st.Reads < 3<<20/maxRead {
					t.Errorf("%d reads; a %d-byte file in reads of at most %d takes more", st.Reads, 3<<20, maxRead)
				}
				var want []digest.Digest
				for _, f := range testFiles {
					if len(f.data) == 0 {
						continue
					}
					d := digest.FromBytes(f.data)
					want = append(want, d)
					p, _ := store.Path(d)
					if got, err := os.ReadFile(p); err != nil || !bytes.Equal(got, f.data) {
						t.Errorf("%s: object of %d bytes, %v; want %d", f.name, len(got), err, len(f.data))
					}
				}
				slices.Sort(want)
				want = slices.Compact(want)
				refs, err := store.Refs("layer")
				slices.Sort(refs)
				if err != nil || !slices.Equal(refs, want) {
					t.Errorf("the layer's refs: %v, %v; want %v", refs, err, want)
				}

				again := &countingReader{r: bytes.NewReader(raw)}
				st, err = fill(t, store, "again", again, b, Options{MaxRead: maxRead})
				if err != nil || st.Present != 5 || st.Fetched != 0 || again.reads.Load() != 0 {
					t.Errorf("a second fill: %+v, %v, %d reads; want all 5 present, nothing read", st, err, again.reads.Load())
				}
			})
		}
	}
}

// TestFillRefusesWrongBytes: a blob whose bytes differ from what its TOC
// says fails the fill, naming the file, and that content is not stored.
func TestFillRefusesWrongBytes(t *testing.T) {
	for _, kind := range []format.Kind{format.EStargz, format.ZstdChunked} {
		t.Run(string(kind), func(t *testing.T) {
			raw, b := blob(t, kind)
			e, ok := b.TOC().Lookup("lib/big")
			if !ok {
				t.Fatal("no lib/big")
			}
			c := e.Chunks()[len(e.Chunks())/2]
			bad := slices.Clone(raw)
			bad[(c.Offset+c.EndOffset)/2] ^= 0x55
			store := openStore(t)
			_, err := fill(t, store, "layer", bytes.NewReader(bad), b, Options{})
			if err == nil || !strings.Contains(err.Error(), `"lib/big"`) {
				t.Fatalf("fill of a corrupt blob: %v; want an error naming lib/big", err)
			}
			if has, _ := store.Has(digest.FromBytes(testFiles[5].data)); has {
				t.Error("the corrupt file's content is in the store")
			}
		})
	}
}

// TestVerifyTar: a zstd:chunked layer filled from its chunks rebuilds, with
// its tar-split data, to the tar of its DiffID; another DiffID, or
// tar-split data that names a file twice or one the TOC lacks, fails.
func TestVerifyTar(t *testing.T) {
	raw, b, desc := blobDesc(t, format.ZstdChunked)
	store := openStore(t)
	if _, err := fill(t, store, "layer", bytes.NewReader(raw), b, Options{}); err != nil {
		t.Fatal(err)
	}
	pos, ok, err := zstdchunked.TarSplitPosition(desc.Annotations)
	if err != nil || !ok {
		t.Fatalf("no tar-split position: %v", err)
	}
	split := raw[pos.Offset : pos.Offset+pos.Length]
	diffID := digest.Digest(desc.Annotations["diffid"])
	ctx := context.Background()
	if err := VerifyTar(ctx, store, b.TOC(), bytes.NewReader(split), diffID); err != nil {
		t.Fatalf("VerifyTar: %v", err)
	}
	if err := VerifyTar(ctx, store, b.TOC(), bytes.NewReader(split), digest.FromString("another layer")); err == nil || !strings.Contains(err.Error(), "not the") {
		t.Errorf("VerifyTar against another DiffID: %v", err)
	}
	for name, lines := range map[string]string{
		"twice":   `{"type":1,"name":"lib/small","size":6}` + "\n" + `{"type":1,"name":"./lib/small","size":6}` + "\n",
		"unknown": `{"type":1,"name":"lib/other","size":6}` + "\n",
		"size":    `{"type":1,"name":"lib/small","size":7}` + "\n",
		"type":    `{"type":3}` + "\n",
	} {
		var buf bytes.Buffer
		w, _ := zstd.NewWriter(&buf)
		w.Write([]byte(lines))
		w.Close()
		if err := VerifyTar(ctx, store, b.TOC(), &buf, diffID); err == nil {
			t.Errorf("tar-split %s: VerifyTar worked", name)
		} else {
			t.Logf("tar-split %s: %v", name, err)
		}
	}
}

package remote

import (
	"bytes"
	"context"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/lazypull/lazypull/internal/testenv"
)

// pushedLayer starts a registry, pushes the test image and returns the
// image reference, its first layer and that layer's bytes.
func pushedLayer(t *testing.T) (string, ocispec.Descriptor, []byte) {
	t.Helper()
	testenv.NeedBinary(t, "docker-registry")
	testenv.NeedBinary(t, "skopeo")
	dir := t.TempDir()
	reg, err := testenv.StartRegistry(dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { reg.Stop(0) })
	hello, err := testenv.BuildHello(dir)
	if err != nil {
		t.Fatal(err)
	}
	img, err := testenv.HelloImage(hello)
	if err != nil {
		t.Fatal(err)
	}
	layout := filepath.Join(dir, "oci")
	if _, err := img.WriteOCILayout(layout, "v1"); err != nil {
		t.Fatal(err)
	}
	ref := reg.Host + "/test/hello:v1"
	if err := testenv.Push(context.Background(), layout, "v1", ref); err != nil {
		t.Fatal(err)
	}
	// The first layer is the largest blob of the layout.
	var layer ocispec.Descriptor
	var data []byte
	entries, _ := os.ReadDir(filepath.Join(layout, "blobs", "sha256"))
	for _, e := range entries {
		b, _ := os.ReadFile(filepath.Join(layout, "blobs", "sha256", e.Name()))
		if len(b) > len(data) {
			data = b
			layer = ocispec.Descriptor{MediaType: ocispec.MediaTypeImageLayerGzip, Digest: digest.NewDigestFromEncoded(digest.SHA256, e.Name()), Size: int64(len(b))}
		}
	}
	return ref, layer, data
}

func TestBlobRangedReads(t *testing.T) {
	ref, layer, data := pushedLayer(t)
	b, err := OpenBlob(context.Background(), ref, layer, Options{}, BlobOptions{})
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 1000)
	if n, err := b.ReadAt(buf, 12345); err != nil || n != 1000 || !bytes.Equal(buf, data[12345:13345]) {
		t.Errorf("ReadAt(1000 @ 12345) = %d, %v; or wrong bytes", n, err)
	}
	tail := make([]byte, 100)
	if n, err := b.ReadAt(tail, layer.Size-50); n != 50 || err != io.EOF || !bytes.Equal(tail[:50], data[len(data)-50:]) {
		t.Errorf("ReadAt past the end = %d, %v; want 50, EOF", n, err)
	}

	before := b.Stats().Requests
	ranges := []Range{{100, 10}, {0, 50}, {40, 30}, {5000, 100}, {layer.Size - 10, 10}}
	var mu sync.Mutex
	got := make(map[Range][]byte)
	err = b.ReadRanges(context.Background(), ranges, func(r Range, p []byte) error {
		mu.Lock()
		got[r] = bytes.Clone(p)
		mu.Unlock()
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range ranges {
		if !bytes.Equal(got[r], data[r.Offset:r.End()]) {
			t.Errorf("range %+v: wrong bytes", r)
		}
	}
	// The first four lie within the coalescing gap of each other.
	if n := b.Stats().Requests - before; n > 2 {
		t.Errorf("%d requests for ranges that coalesce into 2", n)
	}
}

func TestBlobErrorsNameTheBlob(t *testing.T) {
	ref, layer, _ := pushedLayer(t)
	missing := layer
	missing.Digest = digest.FromString("not there")
	b, err := OpenBlob(context.Background(), ref, missing, Options{}, BlobOptions{})
	if err != nil {
		t.Fatal(err)
	}
	_, err = b.ReadAt(make([]byte, 10), 0)
	if err == nil || !strings.Contains(err.Error(), missing.Digest.String()) {
		t.Errorf("reading a missing blob: err = %v, want one naming it", err)
	}
	if r := b.Stats().Retries; r != 0 {
		t.Errorf("a missing blob was retried %d times", r)
	}
	if err := b.ReadRanges(context.Background(), []Range{{layer.Size, 1}}, nil); err == nil {
		t.Errorf("a range past the end was accepted")
	}
}

func TestCoalesce(t *testing.T) {
	groups := Coalesce([]Range{{1000, 10}, {0, 10}, {15, 5}, {5, 20}}, 0)
	if len(groups) != 2 || groups[0].Span != (Range{0, 25}) || len(groups[0].Parts) != 3 || groups[1].Span != (Range{1000, 10}) {
		t.Errorf("Coalesce = %+v", groups)
	}
	if g := Coalesce([]Range{{0, 10}, {100, 10}}, 90); len(g) != 1 || g[0].Span != (Range{0, 110}) {
		t.Errorf("Coalesce with gap = %+v", g)
	}
}

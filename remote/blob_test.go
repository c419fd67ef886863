package remote

import (
	"bytes"
	"context"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/lazypull/lazypull/internal/testenv"
)

// pushedLayer starts a registry, pushes the test image and returns the
// image reference, its first layer and that layer's bytes.
func pushedLayer(t *testing.T) (string, ocispec.Descriptor, []byte) {
	t.Helper()
	testenv.NeedBinary(t, "skopeo")
	dir := t.TempDir()
	reg := testenv.NewRegistry(t)
	layout, err := testenv.HelloLayout(dir)
	if err != nil {
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

	mid := make([]byte, 5000)
	if err := b.FetchAt(context.Background(), mid, 100); err != nil || !bytes.Equal(mid, data[100:5100]) {
		t.Errorf("FetchAt(5000 @ 100): %v, or wrong bytes", err)
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
	if err := b.FetchAt(context.Background(), make([]byte, 1), layer.Size); err == nil {
		t.Errorf("a range past the end was accepted")
	}
}

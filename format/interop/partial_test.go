package interop

import (
	"bytes"
	"context"
	"path/filepath"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/lazypull/lazypull/composefs/objects"
	"github.com/lazypull/lazypull/composefs/partial"
	"github.com/lazypull/lazypull/format"
	"github.com/lazypull/lazypull/format/zstdchunked"
)

// TestPartialFillVerifiesTheTar: a zstd:chunked layer written by
// containers/storage's compressor, or by ours for it, filled into the
// composefs store chunk by chunk, rebuilds with its tar-split data to the
// tar it was made from (its DiffID).
func TestPartialFillVerifiesTheTar(t *testing.T) {
	tarball := layerTar(t)
	diffID := digest.FromBytes(tarball)
	for name, l := range map[string]layer{
		"containers-storage": containersStorageLayer(t, tarball),
		"lazypull":           oursForContainersStorage(t, tarball),
	} {
		t.Run(name, func(t *testing.T) {
			ctx := context.Background()
			b, _, err := format.Open(bytes.NewReader(l.blob), l.desc, format.Options{})
			if err != nil {
				t.Fatal(err)
			}
			store, err := objects.Open(ctx, filepath.Join(t.TempDir(), "store"))
			if err != nil {
				t.Fatal(err)
			}
			defer store.Close()
			batch, err := store.Batch(ctx, "layer")
			if err != nil {
				t.Fatal(err)
			}
			if _, err := partial.Fill(ctx, store, batch, bytes.NewReader(l.blob), b, partial.Options{}); err != nil {
				t.Fatal(err)
			}
			if err := batch.Commit(); err != nil {
				t.Fatal(err)
			}
			pos, ok, err := zstdchunked.TarSplitPosition(l.desc.Annotations)
			if err != nil || !ok {
				t.Fatalf("no tar-split position in %v: %v", l.desc.Annotations, err)
			}
			split := bytes.NewReader(l.blob[pos.Offset : pos.Offset+pos.Length])
			if err := partial.VerifyTar(ctx, store, b.TOC(), split, diffID); err != nil {
				t.Fatal(err)
			}
		})
	}
}

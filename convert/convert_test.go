package convert_test

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/lazypull/lazypull/convert"
	"github.com/lazypull/lazypull/format"
	"github.com/lazypull/lazypull/format/estargz"
	"github.com/lazypull/lazypull/format/zstdchunked"
	"github.com/lazypull/lazypull/internal/testenv"
	"github.com/lazypull/lazypull/remote"
	"github.com/lazypull/lazypull/transport"
)

// TestZstdChunkedForEitherPuller: zstd:chunked layers carry the annotations
// of the puller asked for (one descriptor cannot carry both), and lazypull
// reads either.
func TestZstdChunkedForEitherPuller(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	layout, err := testenv.HelloLayout(dir)
	if err != nil {
		t.Fatal(err)
	}
	src, err := transport.Open(ctx, transport.Ref{Transport: transport.OCI, Name: layout, Tag: "v1"}, remote.Options{})
	if err != nil {
		t.Fatal(err)
	}
	for _, forStargz := range []bool{false, true} {
		out := filepath.Join(dir, "out")
		os.RemoveAll(out)
		dst, err := transport.Open(ctx, transport.Ref{Transport: transport.OCI, Name: out, Tag: "v1"}, remote.Options{})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := convert.Image(ctx, src, dst, convert.Options{Format: convert.ZstdChunked, ForStargz: forStargz}); err != nil {
			t.Fatal(err)
		}
		root, err := dst.Resolve(ctx)
		if err != nil {
			t.Fatal(err)
		}
		var m ocispec.Manifest
		data, err := transport.FetchJSON(ctx, dst, root, &m)
		if err != nil || json.Unmarshal(data, &m) != nil {
			t.Fatalf("manifest: %v", err)
		}
		for _, l := range m.Layers {
			_, stargz := l.Annotations[estargz.TOCDigestAnnotation]
			_, storage := l.Annotations[zstdchunked.ManifestChecksumAnnotation]
			if stargz != forStargz || storage == forStargz {
				t.Errorf("ForStargz %v: layer %s has the stargz annotation %v and containers/storage's %v", forStargz, l.Digest, stargz, storage)
			}
			if kind, ok := format.KindOf(l); !ok || kind != format.ZstdChunked {
				t.Errorf("ForStargz %v: layer %s is %q (lazy %v) to lazypull", forStargz, l.Digest, kind, ok)
			}
		}
	}
}

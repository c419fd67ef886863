package inspect

import (
	"bytes"
	"maps"
	"slices"
	"testing"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/lazypull/lazypull/format"
	"github.com/lazypull/lazypull/format/estargz"
	"github.com/lazypull/lazypull/format/zstdchunked"
)

func TestLazyFor(t *testing.T) {
	var blob bytes.Buffer
	w := zstdchunked.NewWriter(&blob)
	if err := w.AppendTar(bytes.NewReader(nil)); err != nil {
		t.Fatal(err)
	}
	res, err := w.Close()
	if err != nil {
		t.Fatal(err)
	}
	if n := footerSize(bytes.NewReader(blob.Bytes()), int64(blob.Len())); n != 40 {
		t.Fatalf("footerSize of our blob = %d, want 40", n)
	}
	both := maps.Clone(res.Annotations)
	maps.Copy(both, res.StargzAnnotations)
	noTarSplit := maps.Clone(res.Annotations)
	delete(noTarSplit, zstdchunked.TarSplitPositionAnnotation)
	esgz := map[string]string{estargz.TOCDigestAnnotation: "sha256:1"}
	for _, tc := range []struct {
		name        string
		mediaType   string
		annotations map[string]string
		footer      int
		want        []string
	}{
		{"ours, containers/storage annotations", zstdchunked.MediaType, res.Annotations, 40, []string{"lazypull", "containers/storage"}},
		{"ours, stargz-snapshotter annotations", zstdchunked.MediaType, res.StargzAnnotations, 40, []string{"lazypull", "stargz-snapshotter"}},
		{"both annotation sets", zstdchunked.MediaType, both, 40, []string{"lazypull", "stargz-snapshotter"}},
		{"no tar-split", zstdchunked.MediaType, noTarSplit, 40, []string{"lazypull"}},
		{"64-byte footer, eStargz digest", zstdchunked.MediaType, res.StargzAnnotations, 64, []string{"lazypull"}},
		{"eStargz", ocispec.MediaTypeImageLayerGzip, esgz, 0, []string{"lazypull", "stargz-snapshotter"}},
	} {
		desc := ocispec.Descriptor{MediaType: tc.mediaType, Annotations: tc.annotations}
		kind, _ := format.KindOf(desc)
		if got := lazyFor(desc, kind, tc.footer); !slices.Equal(got, tc.want) {
			t.Errorf("%s: lazy for %q, want %q", tc.name, got, tc.want)
		}
	}
}

package format

import (
	"bytes"
	"maps"
	"testing"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/lazypull/lazypull/format/estargz"
	"github.com/lazypull/lazypull/format/zstdchunked"
)

// FuzzAnnotations hands the annotations lazypull parses (the eStargz TOC
// offset, the zstd:chunked manifest position under both names, the
// tar-split position, the TOC digests) and the media type, any values,
// to KindOf, TOCStart and Open, over a real blob of each format. Nothing
// panics; a TOC start lies in the blob; a tar-split position that parses
// is of non-negative numbers; and a layer that opens reads its one file's
// right bytes, however the annotations lie.
func FuzzAnnotations(f *testing.F) {
	blobs := bothFormats(f)
	for i, b := range blobs {
		a := b.annotations
		f.Add(uint8(i), zstdchunked.MediaType, a[estargz.TOCOffsetAnnotation], a[zstdchunked.ManifestPositionAnnotation], a[zstdchunked.ManifestPositionAnnotation], "0:0:0", a[zstdchunked.ManifestChecksumAnnotation], uint8(0))
		f.Add(uint8(i), "application/vnd.oci.image.layer.v1.tar+gzip", a[estargz.TOCOffsetAnnotation], "8:1:1:1", "-1:2:3:1", "8:9223372036854775807:1", a[estargz.TOCDigestAnnotation], uint8(0xff))
	}
	f.Add(uint8(1), "", "x", "9223372036854775807:9223372036854775807:1:1", "1:2:3", "9223372036854775800:100:1", "sha256:", uint8(0x7f))
	f.Fuzz(func(t *testing.T, which uint8, mediaType, tocOffset, position, legacyPosition, tarSplit, tocDigest string, set uint8) {
		b := blobs[int(which)%len(blobs)]
		a := maps.Clone(b.annotations)
		// Each bit of set replaces (or adds) one annotation.
		for bit, kv := range [][2]string{
			{estargz.TOCOffsetAnnotation, tocOffset},
			{zstdchunked.ManifestPositionAnnotation, position},
			{"io.containers.zstd-chunked.manifest-position", legacyPosition},
			{zstdchunked.TarSplitPositionAnnotation, tarSplit},
			{estargz.TOCDigestAnnotation, tocDigest},
			{zstdchunked.ManifestChecksumAnnotation, tocDigest},
		} {
			if set&(1<<bit) != 0 {
				a[kv[0]] = kv[1]
			}
		}
		desc := ocispec.Descriptor{MediaType: mediaType, Size: int64(len(b.blob)), Annotations: a}
		KindOf(desc)
		if start, ok := TOCStart(desc); ok && (start < 0 || start >= desc.Size) {
			t.Fatalf("TOCStart %d outside the %d-byte blob", start, desc.Size)
		}
		if p, ok, err := zstdchunked.TarSplitPosition(a); ok && err == nil && (p.Offset < 0 || p.Length < 0 || p.UncompressedLength < 0) {
			t.Fatalf("tar-split position %+v from %q", p, a[zstdchunked.TarSplitPositionAnnotation])
		}
		blob, _, err := Open(bytes.NewReader(b.blob), desc, Options{Unverified: set&0x80 != 0})
		if err != nil {
			return
		}
		e, ok := blob.TOC().Lookup("hello")
		if !ok || len(e.Chunks()) != 1 {
			t.Fatalf("the layer opens without its file hello")
		}
		c := e.Chunks()[0]
		if c.Offset < 0 || c.EndOffset > int64(len(b.blob)) || c.Offset > c.EndOffset {
			t.Fatalf("chunk %+v outside the blob", c)
		}
		if data, err := blob.ReadChunk(nil, b.blob[c.Offset:c.EndOffset], c); err != nil || string(data) != "hello" {
			t.Fatalf("hello reads %q, %v", data, err)
		}
	})
}

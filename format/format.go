// Package format opens a lazily pullable layer blob whatever its format:
// it tells eStargz from zstd:chunked by the layer descriptor, verifies the
// TOC against the descriptor's annotation and offers what lazy reading
// needs. Like the formats below it, it knows bytes, not where they come
// from.
package format

import (
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/lazypull/lazypull/format/estargz"
	"github.com/lazypull/lazypull/format/toc"
	"github.com/lazypull/lazypull/format/zstdchunked"
)

// Kind names a lazily pullable format.
type Kind string

// The formats.
const (
	EStargz     Kind = "estargz"
	ZstdChunked Kind = "zstdchunked"
)

// ErrNotLazy says a layer is in no lazily pullable format, or carries no
// TOC digest to verify one by.
var ErrNotLazy = errors.New("not a lazily pullable layer")

// KindOf tells a layer's format from its descriptor: the media type says
// gzip (eStargz) or zstd (zstd:chunked), the annotations whether the layer
// carries a TOC digest to verify it by. stargz-snapshotter's zstd:chunked
// layers carry the eStargz TOC-digest annotation, so that alone does not
// make a layer eStargz. A descriptor without a media type (one built from
// snapshot labels) is told by its annotations alone.
func KindOf(desc ocispec.Descriptor) (Kind, bool) {
	_, estargzDigest := desc.Annotations[estargz.TOCDigestAnnotation]
	zstdDigest := false
	for _, k := range []string{zstdchunked.ManifestChecksumAnnotation, legacyManifestChecksumAnnotation} {
		if _, ok := desc.Annotations[k]; ok {
			zstdDigest = true
		}
	}
	switch compression(desc.MediaType) {
	case "gzip":
		return EStargz, estargzDigest
	case "zstd":
		return ZstdChunked, estargzDigest || zstdDigest
	case "":
		if zstdDigest {
			return ZstdChunked, true
		}
		if estargzDigest {
			return EStargz, true
		}
	}
	return "", false
}

// legacyManifestChecksumAnnotation is the zstd:chunked checksum annotation
// before containers/storage moved it under io.github; stargz-snapshotter
// still writes it.
const legacyManifestChecksumAnnotation = "io.containers.zstd-chunked.manifest-checksum"

// compression tells a layer media type's compression: "gzip", "zstd",
// "" for no media type, "other" for any other (an uncompressed or an
// encrypted layer, none of which is lazily pullable).
func compression(mediaType string) string {
	switch {
	case mediaType == "":
		return ""
	case strings.Contains(mediaType, "encrypted"):
		return "other"
	case strings.HasSuffix(mediaType, "gzip"):
		return "gzip"
	case strings.HasSuffix(mediaType, "zstd"):
		return "zstd"
	}
	return "other"
}

// TOCStart tells, from the descriptor's annotations, where the blob's TOC
// starts: the first read of a layer then asks for exactly the TOC and the
// footer. The answer is a hint from the manifest, within the blob's size
// or absent; Open checks what it reads as always.
func TOCStart(desc ocispec.Descriptor) (int64, bool) {
	var off int64
	var ok bool
	switch kind, _ := KindOf(desc); kind {
	case EStargz:
		off, ok = parseOffset(desc.Annotations[estargz.TOCOffsetAnnotation])
	case ZstdChunked:
		off, ok = zstdchunked.ManifestStart(desc.Annotations)
	}
	if !ok || off < 0 || off >= desc.Size {
		return 0, false
	}
	return off, true
}

// PrefetchEnd tells, from the descriptor's annotations, where the files
// the blob holds to fetch first end (they start at 0): a node fetches them
// while it reads the TOC. A hint, within the blob's size or absent.
func PrefetchEnd(desc ocispec.Descriptor) (int64, bool) {
	if kind, _ := KindOf(desc); kind != EStargz {
		return 0, false
	}
	end, ok := parseOffset(desc.Annotations[estargz.PrefetchEndAnnotation])
	if !ok || end <= 0 || end > desc.Size {
		return 0, false
	}
	return end, true
}

func parseOffset(s string) (int64, bool) {
	n, err := strconv.ParseInt(s, 10, 64)
	return n, err == nil
}

// Blob is an opened lazy layer.
type Blob interface {
	TOC() *toc.TOC
	// TOCDigest is the digest the TOC was verified against (eStargz: of
	// the TOC JSON; zstd:chunked: of the compressed manifest).
	TOCDigest() digest.Digest
	// DataEnd is where file data ends and the TOC begins.
	DataEnd() int64
	// PrefetchEnd is where the files to fetch first end, if the layer
	// names any.
	PrefetchEnd() (int64, bool)
	// ReadChunk decompresses and verifies one chunk, given exactly the
	// bytes c.Offset..c.EndOffset of the blob, into dst's storage if it
	// can hold c.Size bytes (else into a new slice).
	ReadChunk(dst, compressed []byte, c toc.Chunk) ([]byte, error)
	// OpenChunk streams chunk c's bytes out of the same compressed bytes,
	// unverified, for a caller that hashes what it stores.
	OpenChunk(compressed []byte, c toc.Chunk) (io.ReadCloser, error)
}

// Options configure Open.
type Options struct {
	Limits toc.Limits
	// Unverified opens layers that carry no TOC digest annotation, by
	// their footer. Their TOC is then only as good as the registry.
	Unverified bool
}

// Open opens the blob a layer descriptor describes.
func Open(ra io.ReaderAt, desc ocispec.Descriptor, opts Options) (Blob, Kind, error) {
	kind, ok := KindOf(desc)
	if !ok {
		if !opts.Unverified {
			return nil, "", fmt.Errorf("layer %s: %w (no TOC digest annotation)", desc.Digest, ErrNotLazy)
		}
		if kind, ok = sniff(ra, desc.Size); !ok {
			return nil, "", fmt.Errorf("layer %s: %w (no eStargz or zstd:chunked footer)", desc.Digest, ErrNotLazy)
		}
	}
	switch kind {
	case EStargz:
		eopts := []estargz.OpenOption{estargz.WithLimits(opts.Limits)}
		if d, ok := desc.Annotations[estargz.TOCDigestAnnotation]; ok {
			parsed, err := digest.Parse(d)
			if err != nil {
				return nil, kind, fmt.Errorf("layer %s: annotation %s: %w", desc.Digest, estargz.TOCDigestAnnotation, err)
			}
			eopts = append(eopts, estargz.WithTOCDigest(parsed))
		}
		r, err := estargz.Open(ra, desc.Size, eopts...)
		if err != nil {
			return nil, kind, fmt.Errorf("layer %s: %w", desc.Digest, err)
		}
		return estargzBlob{r}, kind, nil
	default:
		r, err := zstdchunked.Open(ra, desc.Size, zstdchunked.WithLimits(opts.Limits), zstdchunked.WithAnnotations(desc.Annotations))
		if err != nil {
			return nil, kind, fmt.Errorf("layer %s: %w", desc.Digest, err)
		}
		return zstdBlob{r}, kind, nil
	}
}

// sniff looks for a footer at the blob's end.
func sniff(ra io.ReaderAt, size int64) (Kind, bool) {
	tail := make([]byte, min(size, int64(max(estargz.FooterSize, zstdchunked.TailSize))))
	if _, err := ra.ReadAt(tail, size-int64(len(tail))); err != nil && err != io.EOF {
		return "", false
	}
	if _, _, err := estargz.ParseFooter(tail); err == nil {
		return EStargz, true
	}
	if _, err := zstdchunked.ParseFooter(tail); err == nil {
		return ZstdChunked, true
	}
	return "", false
}

type estargzBlob struct{ *estargz.Reader }

func (estargzBlob) ReadChunk(dst, compressed []byte, c toc.Chunk) ([]byte, error) {
	return estargz.ReadChunk(dst, compressed, c)
}

type zstdBlob struct{ *zstdchunked.Reader }

func (zstdBlob) PrefetchEnd() (int64, bool) { return 0, false }

func (estargzBlob) OpenChunk(compressed []byte, c toc.Chunk) (io.ReadCloser, error) {
	return estargz.OpenChunk(compressed, c)
}

func (zstdBlob) OpenChunk(compressed []byte, c toc.Chunk) (io.ReadCloser, error) {
	return zstdchunked.OpenChunk(compressed, c)
}

func (zstdBlob) ReadChunk(dst, compressed []byte, c toc.Chunk) ([]byte, error) {
	return zstdchunked.ReadChunk(dst, compressed, c)
}

package zstdchunked

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
)

// MediaType is the layer media type of a zstd:chunked blob: to a client
// that knows nothing of chunks it is an ordinary zstd-compressed tar.
const MediaType = "application/vnd.oci.image.layer.v1.tar+zstd"

// Layer annotations, as containers/storage writes them.
const (
	// ManifestChecksumAnnotation holds the digest of the compressed
	// manifest: the TOC digest of a zstd:chunked layer.
	ManifestChecksumAnnotation = "io.github.containers.zstd-chunked.manifest-checksum"
	// ManifestPositionAnnotation holds "offset:length:uncompressedLength:type"
	// of the manifest, so that a reader can skip the footer.
	ManifestPositionAnnotation = "io.github.containers.zstd-chunked.manifest-position"
	// TarSplitPositionAnnotation holds "offset:length:uncompressedLength"
	// of the tar-split data, when a writer stored it.
	TarSplitPositionAnnotation = "io.github.containers.zstd-chunked.tarsplit-position"
)

// The annotation names before containers/storage moved them under
// io.github; stargz-snapshotter's writer still uses them.
const (
	legacyManifestChecksumAnnotation = "io.containers.zstd-chunked.manifest-checksum"
	legacyManifestPositionAnnotation = "io.containers.zstd-chunked.manifest-position"
)

// stargz-snapshotter's annotations, which its writer also puts on its
// zstd:chunked layers and which it needs to mount one lazily. A layer must
// not carry StargzTOCDigestAnnotation and ManifestChecksumAnnotation both:
// containers/storage then refuses to pull it at all.
const (
	// StargzTOCDigestAnnotation holds the digest of the uncompressed
	// manifest JSON (the eStargz TOC-digest annotation).
	StargzTOCDigestAnnotation        = "containerd.io/snapshot/stargz/toc.digest"
	stargzUncompressedSizeAnnotation = "io.containers.estargz.uncompressed-size"
)

// Skippable frames: a magic of 0x184D2A50..0x184D2A5F, then the payload
// length, both little endian. Every writer uses the first magic.
const (
	skippableMagic      = 0x184D2A50
	skippableHeaderSize = 8
)

// Footer payload sizes: 40 bytes (stargz-snapshotter; containers/storage
// before tar-split) and 64 bytes (containers/storage since, which adds the
// tar-split position). Both end with a magic.
const (
	footerSizeV1 = 40
	footerSizeV2 = 64

	// TailSize is how many bytes at the end of a blob hold any footer
	// version, skippable frame header included: fetch this many to
	// ParseFooter.
	TailSize = skippableHeaderSize + footerSizeV2
)

// manifestTypeCRFS is the only manifest type there is: CRFS TOC JSON.
const manifestTypeCRFS = 1

var (
	// footerMagic is the magic of containers/storage's 64-byte footer.
	footerMagic = []byte("GNUlInUx")
	// legacyFooterMagic is the one of the 40-byte footer, which
	// stargz-snapshotter and the first containers/storage releases
	// write, and we do.
	legacyFooterMagic = []byte("GnUlInUx")
)

// Position places a compressed object (the manifest, the tar-split data)
// in the blob: Offset is where its bytes start, after their skippable
// frame's header.
type Position struct {
	Offset             int64
	Length             int64 // compressed
	UncompressedLength int64
}

// Footer is what a blob's footer says.
type Footer struct {
	// Size is the footer's payload size, 40 or 64: the frame takes
	// Size+8 bytes at the end of the blob.
	Size     int
	Manifest Position
	// TarSplit is zero when the footer has no tar-split position
	// (40-byte footers, and writers that store none).
	TarSplit Position
}

func appendSkippableFrame(dst, payload []byte) []byte {
	dst = binary.LittleEndian.AppendUint32(dst, skippableMagic)
	dst = binary.LittleEndian.AppendUint32(dst, uint32(len(payload)))
	return append(dst, payload...)
}

// isSkippableHeader tells whether h starts a skippable frame of n bytes.
func isSkippableHeader(h []byte, n int) bool {
	return len(h) >= skippableHeaderSize &&
		binary.LittleEndian.Uint32(h)&^0xF == skippableMagic &&
		binary.LittleEndian.Uint32(h[4:]) == uint32(n)
}

// encodeFooter is the footer frame we write: the 40-byte one, with the
// older magic. stargz-snapshotter reads no other, and containers/storage
// never reads a footer: it places the manifest and the tar-split data by
// the layer's annotations.
func encodeFooter(manifest Position) []byte {
	p := make([]byte, 0, footerSizeV1)
	p = binary.LittleEndian.AppendUint64(p, uint64(manifest.Offset))
	p = binary.LittleEndian.AppendUint64(p, uint64(manifest.Length))
	p = binary.LittleEndian.AppendUint64(p, uint64(manifest.UncompressedLength))
	p = binary.LittleEndian.AppendUint64(p, manifestTypeCRFS)
	p = append(p, legacyFooterMagic...)
	return appendSkippableFrame(nil, p)
}

var errNoFooter = errors.New("no zstd:chunked footer at the end of the blob")

// ParseFooter reads the footer from the last bytes of a blob (TailSize of
// them, or fewer if the blob is smaller). It checks the frame and the
// footer's own fields; whether the positions fit the blob is for the
// caller, who knows its size.
func ParseFooter(tail []byte) (Footer, error) {
	for _, size := range []int{footerSizeV2, footerSizeV1} {
		if len(tail) < skippableHeaderSize+size {
			continue
		}
		frame := tail[len(tail)-skippableHeaderSize-size:]
		if !isSkippableHeader(frame, size) {
			continue
		}
		p := frame[skippableHeaderSize:]
		magic := p[size-8:]
		if !bytes.Equal(magic, footerMagic) && !bytes.Equal(magic, legacyFooterMagic) {
			return Footer{}, fmt.Errorf("footer magic is %q, want %q or %q", magic, footerMagic, legacyFooterMagic)
		}
		f := Footer{Size: size}
		var fields [7]int64
		for i := range size/8 - 1 {
			v := binary.LittleEndian.Uint64(p[8*i:])
			if v > math.MaxInt64 {
				return Footer{}, fmt.Errorf("footer field %d is %d, out of range", i, v)
			}
			fields[i] = int64(v)
		}
		if fields[3] != manifestTypeCRFS {
			return Footer{}, fmt.Errorf("footer names manifest type %d, want %d (CRFS)", fields[3], manifestTypeCRFS)
		}
		f.Manifest = Position{Offset: fields[0], Length: fields[1], UncompressedLength: fields[2]}
		f.TarSplit = Position{Offset: fields[4], Length: fields[5], UncompressedLength: fields[6]}
		return f, nil
	}
	return Footer{}, errNoFooter
}

// parseManifestPosition reads the manifest position annotation,
// "offset:length:uncompressedLength:type".
func parseManifestPosition(s string) (Position, error) {
	v, err := parseFields(s, "offset:length:uncompressedLength:type")
	if err != nil {
		return Position{}, err
	}
	if v[3] != manifestTypeCRFS {
		return Position{}, fmt.Errorf("%q names manifest type %d, want %d (CRFS)", s, v[3], manifestTypeCRFS)
	}
	return Position{Offset: v[0], Length: v[1], UncompressedLength: v[2]}, nil
}

// parseFields reads an annotation of colon-separated non-negative
// integers, one for each field that form names.
func parseFields(s, form string) ([]int64, error) {
	parts := strings.Split(s, ":")
	if len(parts) != strings.Count(form, ":")+1 {
		return nil, fmt.Errorf("%q is not %s", s, form)
	}
	v := make([]int64, len(parts))
	for i, p := range parts {
		n, err := strconv.ParseInt(p, 10, 64)
		if err != nil || n < 0 {
			return nil, fmt.Errorf("%q is not %s of non-negative integers", s, form)
		}
		v[i] = n
	}
	return v, nil
}

func formatManifestPosition(p Position) string {
	return fmt.Sprintf("%d:%d:%d:%d", p.Offset, p.Length, p.UncompressedLength, manifestTypeCRFS)
}

// parseTarSplitPosition reads the tar-split position annotation,
// "offset:length:uncompressedLength".
func parseTarSplitPosition(s string) (Position, error) {
	v, err := parseFields(s, "offset:length:uncompressedLength")
	if err != nil {
		return Position{}, err
	}
	return Position{Offset: v[0], Length: v[1], UncompressedLength: v[2]}, nil
}

func formatTarSplitPosition(p Position) string {
	return fmt.Sprintf("%d:%d:%d", p.Offset, p.Length, p.UncompressedLength)
}

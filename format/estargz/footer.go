// Package estargz reads and writes eStargz layers: gzip'd tars in which
// every file (or chunk of a file) starts a new gzip member, followed by a
// table of contents (stargz.index.json) and a footer that points at it.
// Readers find any file's bytes by its TOC entry and decompress only the
// members they need; ordinary tools still see a valid .tar.gz.
//
// The format is stargz-snapshotter's (docs/estargz.md there). This package
// knows the bytes of a blob and nothing of where they come from: no HTTP,
// no registry, no cache, no FUSE. The TOC model and its validation are in
// format/toc.
package estargz

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"strconv"

	"github.com/lazypull/lazypull/format/toc"
)

// Names and annotations of the format.
const (
	// TOCTarName is the tar member that holds the TOC JSON.
	TOCTarName = "stargz.index.json"
	// PrefetchLandmark ends the files a container is expected to read
	// first; NoPrefetchLandmark says there are none.
	PrefetchLandmark   = toc.PrefetchLandmark
	NoPrefetchLandmark = toc.NoPrefetchLandmark
	landmarkContents   = 0xf

	// TOCDigestAnnotation on a layer descriptor holds the digest of the
	// TOC JSON; UncompressedSizeAnnotation the size of the layer's tar.
	TOCDigestAnnotation        = "containerd.io/snapshot/stargz/toc.digest"
	UncompressedSizeAnnotation = "io.containers.estargz.uncompressed-size"
	// TOCOffsetAnnotation (lazypull's own) holds where the TOC's gzip
	// member starts, so that a reader fetches the TOC and the footer, and
	// nothing else, in its first request. It is only a hint: the footer
	// and the TOC digest are checked as always.
	TOCOffsetAnnotation = "io.github.lazypull.estargz.toc-offset"
	// PrefetchEndAnnotation (lazypull's own) holds where the files to
	// fetch first end (the prefetch landmark's member), so that a node
	// fetches them while it reads the TOC. Only a hint: the layer takes
	// those bytes by its TOC and checks every chunk.
	PrefetchEndAnnotation = "io.github.lazypull.estargz.prefetch-end"
)

// FooterSize is the size of the eStargz footer; legacyFooterSize that of
// the original stargz footer, which readers still meet.
const (
	FooterSize       = 51
	legacyFooterSize = 47
)

// The footer is an empty gzip member whose header's extra field holds the
// TOC offset: "%016x" + "STARGZ", in a subfield "SG" (eStargz) or as the
// whole extra field (legacy stargz).
const footerMagic = "STARGZ"

// footer returns the footer that points at a TOC starting at tocOffset.
func footer(tocOffset int64) []byte {
	payload := fmt.Sprintf("%016x%s", tocOffset, footerMagic)
	extra := make([]byte, 4, 4+len(payload))
	extra[0], extra[1] = 'S', 'G'
	binary.LittleEndian.PutUint16(extra[2:], uint16(len(payload)))
	extra = append(extra, payload...)
	return emptyGzipMember(extra)
}

// emptyGzipMember is a gzip member with the given extra field, no data.
func emptyGzipMember(extra []byte) []byte {
	b := []byte{0x1f, 0x8b, 8, 4 /* FEXTRA */, 0, 0, 0, 0, 0, 255 /* OS unknown */}
	b = binary.LittleEndian.AppendUint16(b, uint16(len(extra)))
	b = append(b, extra...)
	b = append(b, 1, 0, 0, 0xff, 0xff) // one final stored block of length 0
	return append(b, 0, 0, 0, 0, 0, 0, 0, 0)
}

// ParseFooter returns the TOC offset from a blob's tail, which must end
// with a footer; it accepts both footer kinds and returns the footer's size.
func ParseFooter(tail []byte) (tocOffset int64, footerSize int, err error) {
	if len(tail) >= FooterSize {
		if off, err := parseFooterAt(tail[len(tail)-FooterSize:], true); err == nil {
			return off, FooterSize, nil
		}
	}
	if len(tail) >= legacyFooterSize {
		if off, err := parseFooterAt(tail[len(tail)-legacyFooterSize:], false); err == nil {
			return off, legacyFooterSize, nil
		}
	}
	return 0, 0, fmt.Errorf("estargz: no eStargz or stargz footer in the last %d bytes: not an eStargz blob", min(len(tail), FooterSize))
}

func parseFooterAt(f []byte, subfield bool) (int64, error) {
	payloadLen := 16 + len(footerMagic)
	xlen := payloadLen
	if subfield {
		xlen += 4
	}
	want := emptyGzipMember(make([]byte, xlen))
	// Everything but the extra field's content is fixed.
	if len(f) != len(want) || !bytes.Equal(f[:12], want[:12]) || !bytes.Equal(f[12+xlen:], want[12+xlen:]) {
		return 0, fmt.Errorf("not a footer")
	}
	extra := f[12 : 12+xlen]
	if subfield {
		if extra[0] != 'S' || extra[1] != 'G' || int(binary.LittleEndian.Uint16(extra[2:4])) != payloadLen {
			return 0, fmt.Errorf("footer subfield is not SG")
		}
		extra = extra[4:]
	}
	if string(extra[16:]) != footerMagic {
		return 0, fmt.Errorf("footer magic missing")
	}
	off, err := strconv.ParseInt(string(extra[:16]), 16, 64)
	if err != nil || off < 0 {
		return 0, fmt.Errorf("footer TOC offset %q is not a hex number", extra[:16])
	}
	return off, nil
}

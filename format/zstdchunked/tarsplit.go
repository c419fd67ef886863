package zstdchunked

import (
	"archive/tar"
	"bytes"
	"encoding/json"
	"fmt"
	"hash"
	"hash/crc64"
	"io"
	"path/filepath"
	"unicode/utf8"

	"github.com/klauspost/compress/zstd"

	"github.com/lazypull/lazypull/format/toc"
)

// Tar-split data lets containers/storage rebuild the exact tar from the
// files it pulled chunk by chunk, and so check the layer's DiffID; without
// it, it pulls zstd:chunked layers whole. It is vbatts/tar-split's JSON
// packing: one JSON object a line, each a segment (raw tar bytes: the
// padding after the previous file and one member's header blocks) or a
// file (its name, size and the CRC-64/ISO of its content, which the
// rebuild takes from the pulled file). containers/storage reads it back
// one header per segment and requires the TOC to list exactly the same
// members with the same attributes; a layer for which ours would not, or
// that tar-split cannot describe (sparse files, duplicate names, members
// that are not files), gets none.
type tarSplit struct {
	compressed   bytes.Buffer
	enc          *zstd.Encoder
	json         *json.Encoder
	uncompressed countingWriter
	position     int
	seen         map[string]bool // file names, as tar-split compares them
	crc          hash.Hash64
	// skip says why the layer gets no tar-split; once set, nothing more
	// is recorded.
	skip string
}

// tarSplitEntry is one line of tar-split data.
type tarSplitEntry struct {
	Type     int    `json:"type"`
	Name     string `json:"name,omitempty"`
	Size     int64  `json:"size,omitempty"`
	Payload  []byte `json:"payload"` // a segment's bytes; a file's CRC-64
	Position int    `json:"position"`
}

const (
	tarSplitFile    = 1
	tarSplitSegment = 2

	// tarSplitMaxSegment bounds the segments that hold the end of the
	// archive, as tar-split itself does.
	tarSplitMaxSegment = 1 << 20
)

var crcTable = crc64.MakeTable(crc64.ISO)

func newTarSplit(level int) (*tarSplit, error) {
	s := &tarSplit{seen: make(map[string]bool), crc: crc64.New(crcTable)}
	enc, err := zstd.NewWriter(&s.compressed, zstd.WithEncoderLevel(zstd.EncoderLevelFromZstd(level)), zstd.WithEncoderConcurrency(1))
	if err != nil {
		return nil, err
	}
	s.enc = enc
	s.uncompressed.w = enc
	s.json = json.NewEncoder(&s.uncompressed)
	return s, nil
}

type countingWriter struct {
	w io.Writer
	n int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

// giveUp records why the layer gets no tar-split, the first reason only.
func (s *tarSplit) giveUp(format string, args ...any) {
	if s.skip == "" {
		s.skip = fmt.Sprintf(format, args...)
		s.enc.Close()
	}
}

func (s *tarSplit) add(e tarSplitEntry) {
	if s.skip != "" {
		return
	}
	e.Position = s.position
	s.position++
	if err := s.json.Encode(e); err != nil {
		s.giveUp("encoding it: %v", err)
	}
}

// member records one member: its header's raw bytes (with the padding
// before them), then the member as a file, whose content the caller hands
// to content. wire is the member's TOC entry, which must be able to match
// the header in containers/storage's eyes.
func (s *tarSplit) member(raw []byte, h *tar.Header, wire toc.WireEntry) {
	if s.skip != "" {
		return
	}
	if why := tarSplitMismatch(h, wire); why != "" {
		s.giveUp("member %q: %s", h.Name, why)
		return
	}
	clean := filepath.Clean(h.Name)
	if s.seen[clean] {
		s.giveUp("member %q: a second member of that name", h.Name)
		return
	}
	s.seen[clean] = true
	s.add(tarSplitEntry{Type: tarSplitSegment, Payload: raw})
	s.crc.Reset()
}

// content hashes a piece of the current member's content.
func (s *tarSplit) content(p []byte) {
	if s.skip == "" {
		s.crc.Write(p)
	}
}

// endMember closes the current member's file entry.
func (s *tarSplit) endMember(h *tar.Header) {
	e := tarSplitEntry{Type: tarSplitFile, Name: h.Name, Size: h.Size}
	if h.Size > 0 {
		e.Payload = s.crc.Sum(nil)
	}
	s.add(e)
}

// end records the bytes after the last member: padding, the end of the
// archive and whatever follows it.
func (s *tarSplit) end(raw []byte) {
	for len(raw) > 0 {
		n := min(len(raw), tarSplitMaxSegment)
		s.add(tarSplitEntry{Type: tarSplitSegment, Payload: raw[:n]})
		raw = raw[n:]
	}
}

// finish returns the compressed tar-split data and its uncompressed size,
// or ok false when the layer gets none.
func (s *tarSplit) finish() (data []byte, uncompressed int64, ok bool) {
	if s.skip != "" {
		return nil, 0, false
	}
	if err := s.enc.Close(); err != nil {
		s.skip = fmt.Sprintf("compressing it: %v", err)
		return nil, 0, false
	}
	return s.compressed.Bytes(), s.uncompressed.n, true
}

// tarSplitMismatch tells why containers/storage would find the TOC entry
// wire unlike the header h (it compares type, name, link name, mode,
// size, owner, times, device numbers and extended attributes), or "".
func tarSplitMismatch(h *tar.Header, wire toc.WireEntry) string {
	switch {
	case isSparse(h):
		return "a sparse file, which tar-split cannot rebuild"
	case !utf8.ValidString(h.Name) || !utf8.ValidString(h.Linkname):
		return "a name that is not UTF-8"
	case h.Mode&^0o7777 != 0:
		return fmt.Sprintf("mode %o has bits beyond the permissions", h.Mode)
	case wire.Type != toc.TypeReg && h.Size != 0:
		return fmt.Sprintf("a %s of size %d", wire.Type, h.Size)
	case wire.Type != toc.TypeChar && wire.Type != toc.TypeBlock && (h.Devmajor != 0 || h.Devminor != 0):
		return "device numbers on something not a device"
	}
	return ""
}

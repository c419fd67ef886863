package zstdchunked

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"

	"github.com/klauspost/compress/zstd"
)

// MaxTarSplitBytes bounds the uncompressed tar-split data ReadTarSplit
// takes: some 900 bytes a member, so room for a million members.
const MaxTarSplitBytes = 1 << 30

// ReadTarSplit reads a layer's tar-split data (the compressed bytes the
// blob holds at its tar-split position) and hands each of its parts to fn
// in tar order: a segment (raw tar bytes: headers, padding, the archive's
// end) as segment, or a member's content as its name and size, which the
// caller supplies from the file. Nothing in it is trusted: it is a stream
// of at most MaxTarSplitBytes, and fn decides what a name means.
func ReadTarSplit(compressed io.Reader, fn func(segment []byte, name string, size int64) error) error {
	dec, err := zstd.NewReader(compressed, zstd.WithDecoderConcurrency(1), zstd.WithDecoderLowmem(true), zstd.WithDecoderMaxWindow(minWindowCap))
	if err != nil {
		return fmt.Errorf("zstdchunked: tar-split: %w", err)
	}
	defer dec.Close()
	limited := &io.LimitedReader{R: dec, N: MaxTarSplitBytes + 1}
	// One entry a line; the longest, a segment of tarSplitMaxSegment
	// bytes, is some 1.4 MB of base64.
	lines := bufio.NewScanner(limited)
	lines.Buffer(nil, maxTarSplitLine)
	for n := 0; lines.Scan(); n++ {
		if limited.N <= 0 {
			return fmt.Errorf("zstdchunked: tar-split: over %d bytes", MaxTarSplitBytes)
		}
		var e tarSplitEntry
		if err := json.Unmarshal(lines.Bytes(), &e); err != nil {
			return fmt.Errorf("zstdchunked: tar-split entry %d: %w", n, err)
		}
		var err error
		switch {
		case e.Type == tarSplitSegment:
			err = fn(e.Payload, "", 0)
		case e.Type == tarSplitFile && e.Size >= 0:
			err = fn(nil, e.Name, e.Size)
		default:
			return fmt.Errorf("zstdchunked: tar-split entry %d: type %d, size %d", n, e.Type, e.Size)
		}
		if err != nil {
			return err
		}
	}
	if err := lines.Err(); err != nil {
		return fmt.Errorf("zstdchunked: tar-split: %w", err)
	}
	if limited.N <= 0 {
		return fmt.Errorf("zstdchunked: tar-split: over %d bytes", MaxTarSplitBytes)
	}
	return nil
}

// maxTarSplitLine bounds one line of tar-split data.
const maxTarSplitLine = 4 << 20

package estargz

import (
	"bytes"
	_ "crypto/sha256" // go-digest finds its algorithms through these
	_ "crypto/sha512"
	"fmt"
	"io"
	"sync"

	"github.com/klauspost/compress/gzip"

	"github.com/lazypull/lazypull/format/toc"
)

var gzipReaders sync.Pool // *gzip.Reader, reset for each member

// maxInflate is deflate's largest ratio of output to input (a run of
// 258-byte matches at a bit or two each).
const maxInflate = 1032

// maxHole is the largest hole ReadChunk hands out as zeros: a chunk's
// default limit.
var maxHole = toc.DefaultLimits.MaxChunkBytes

// ReadChunk decompresses the gzip member that holds chunk c (compressed is
// exactly the bytes c.Offset..c.EndOffset of the blob), takes the chunk's
// bytes and verifies them against c.Digest(). It decompresses no more than
// the chunk needs, whatever the member claims, and allocates no more than
// the member's bytes can inflate to.
//
// A hole is returned as zeros only up to maxHole bytes: a TOC bounds a
// hole by its file alone, up to a TiB, and readers serve larger ones
// from nothing (File does).
func ReadChunk(dst, compressed []byte, c toc.Chunk) ([]byte, error) {
	if c.Size < 0 || c.InnerOffset < 0 {
		return nil, fmt.Errorf("chunk at %d: bad geometry (inner offset %d, size %d)", c.Offset, c.InnerOffset, c.Size)
	}
	if c.Zero {
		if c.Size > maxHole {
			return nil, fmt.Errorf("hole of %d bytes at file offset %d: more than %d to hand out as zeros; serve it without storage", c.Size, c.FileOffset, maxHole)
		}
		data := grow(dst, c.Size)
		clear(data)
		return data, nil
	}
	if max := maxInflate * int64(len(compressed)); c.InnerOffset > max || c.Size > max-c.InnerOffset {
		return nil, fmt.Errorf("gzip member at %d: %d bytes cannot inflate to the %d+%d the chunk needs", c.Offset, len(compressed), c.InnerOffset, c.Size)
	}
	var zr *gzip.Reader
	if v := gzipReaders.Get(); v != nil {
		zr = v.(*gzip.Reader)
		if err := zr.Reset(bytes.NewReader(compressed)); err != nil {
			return nil, fmt.Errorf("gzip member at %d: %w", c.Offset, err)
		}
	} else {
		var err error
		if zr, err = gzip.NewReader(bytes.NewReader(compressed)); err != nil {
			return nil, fmt.Errorf("gzip member at %d: %w", c.Offset, err)
		}
	}
	defer gzipReaders.Put(zr)
	zr.Multistream(false)

	if _, err := io.CopyN(io.Discard, zr, c.InnerOffset); err != nil {
		return nil, fmt.Errorf("gzip member at %d: skip %d bytes to the chunk: %w", c.Offset, c.InnerOffset, err)
	}
	data := grow(dst, c.Size)
	if _, err := io.ReadFull(zr, data); err != nil {
		return nil, fmt.Errorf("gzip member at %d: read %d bytes: %w", c.Offset, c.Size, err)
	}
	if got := c.Digest().Algorithm().FromBytes(data); got != c.Digest() {
		return nil, fmt.Errorf("chunk digest is %s, the TOC says %s", got, c.Digest())
	}
	return data, nil
}

// grow is dst[:n] if dst can hold n bytes, else a new slice.
func grow(dst []byte, n int64) []byte {
	if int64(cap(dst)) >= n {
		return dst[:n]
	}
	return make([]byte, n)
}

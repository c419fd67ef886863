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

// ReadChunk decompresses the gzip member that holds chunk c (compressed is
// exactly the bytes c.Offset..c.EndOffset of the blob), takes the chunk's
// bytes and verifies them against c.Digest. It decompresses no more than
// the chunk needs, whatever the member claims.
func ReadChunk(compressed []byte, c toc.Chunk) ([]byte, error) {
	if c.Zero {
		return make([]byte, c.Size), nil
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
	data := make([]byte, c.Size)
	if _, err := io.ReadFull(zr, data); err != nil {
		return nil, fmt.Errorf("gzip member at %d: read %d bytes: %w", c.Offset, c.Size, err)
	}
	if got := c.Digest.Algorithm().FromBytes(data); got != c.Digest {
		return nil, fmt.Errorf("chunk digest is %s, the TOC says %s", got, c.Digest)
	}
	return data, nil
}

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
	if c.Size < 0 {
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
	zr, err := openMember(compressed, c)
	if err != nil {
		return nil, err
	}
	defer gzipReaders.Put(zr)
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

// OpenChunk is ReadChunk as a stream, for a caller that verifies what it
// stores as it stores it (the cache's PutFile): it yields the chunk's
// c.Size bytes (fewer if the member is short), unverified, and holds none
// of them in memory. Close it to recycle the decompressor. Holes have no
// member to open.
func OpenChunk(compressed []byte, c toc.Chunk) (io.ReadCloser, error) {
	if c.Size < 0 || c.Zero {
		return nil, fmt.Errorf("chunk at %d: no member to read (inner offset %d, size %d, hole %v)", c.Offset, c.InnerOffset, c.Size, c.Zero)
	}
	zr, err := openMember(compressed, c)
	if err != nil {
		return nil, err
	}
	return &chunkReader{Reader: io.LimitReader(zr, c.Size), zr: zr}, nil
}

type chunkReader struct {
	io.Reader
	zr *gzip.Reader
}

func (r *chunkReader) Close() error {
	if r.zr != nil {
		gzipReaders.Put(r.zr)
		r.zr, r.Reader = nil, eofReader{}
	}
	return nil
}

type eofReader struct{}

func (eofReader) Read([]byte) (int, error) { return 0, io.EOF }

// openMember opens the gzip member that holds chunk c and skips to the
// chunk, refusing a chunk its member's bytes cannot inflate to. The caller
// puts the reader back in gzipReaders.
func openMember(compressed []byte, c toc.Chunk) (*gzip.Reader, error) {
	if max := maxInflate * int64(len(compressed)); int64(c.InnerOffset) > max || c.Size > max-int64(c.InnerOffset) {
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
	zr.Multistream(false)
	if _, err := io.CopyN(io.Discard, zr, int64(c.InnerOffset)); err != nil {
		gzipReaders.Put(zr)
		return nil, fmt.Errorf("gzip member at %d: skip %d bytes to the chunk: %w", c.Offset, c.InnerOffset, err)
	}
	return zr, nil
}

package cache

import (
	_ "crypto/sha256" // registers sha256 for go-digest
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"sync"

	"github.com/opencontainers/go-digest"
)

// ErrDigestMismatch is wrapped by the errors of Put and PutFile when the data
// does not hash to the digest it was given under.
var ErrDigestMismatch = errors.New("digest mismatch")

// hasher is a reusable hash with scratch space for its sum, so verifying a
// chunk on the read path does not allocate.
type hasher struct {
	algorithm digest.Algorithm
	h         hash.Hash
	sum       []byte
	hex       []byte
}

func newHasher(a digest.Algorithm) *hasher {
	h := a.Hash()
	return &hasher{algorithm: a, h: h, sum: make([]byte, 0, h.Size()), hex: make([]byte, 2*h.Size())}
}

// hasherPool reuses hashers of one algorithm (each Cache has one for sha256,
// the only algorithm images use in practice; others get a fresh hash).
type hasherPool struct {
	algorithm digest.Algorithm
	pool      sync.Pool
}

func newHasherPool(a digest.Algorithm) *hasherPool {
	p := &hasherPool{algorithm: a}
	p.pool.New = func() any { return newHasher(a) }
	return p
}

func (p *hasherPool) get(a digest.Algorithm) *hasher {
	if a != p.algorithm {
		return newHasher(a)
	}
	h := p.pool.Get().(*hasher)
	h.h.Reset()
	return h
}

func (p *hasherPool) put(h *hasher) {
	if h.algorithm == p.algorithm {
		p.pool.Put(h)
	}
}

// matches reports whether what was written to h hashes to d.
func (h *hasher) matches(d digest.Digest) bool {
	sum := h.h.Sum(h.sum[:0])
	hex.Encode(h.hex, sum)
	return string(h.hex) == d.Encoded()
}

// digest returns what was written to h as a digest (for error messages).
func (h *hasher) digest() digest.Digest {
	return digest.NewDigest(h.algorithm, h.h)
}

// verifyBytes checks that data hashes to d. On mismatch the error names both
// digests and wraps ErrDigestMismatch.
func (p *hasherPool) verifyBytes(d digest.Digest, data []byte) error {
	h := p.get(d.Algorithm())
	defer p.put(h)
	h.h.Write(data)
	if !h.matches(d) {
		return fmt.Errorf("%w: expected %s, data (%d bytes) hashes to %s", ErrDigestMismatch, d, len(data), h.digest())
	}
	return nil
}

// verifyReader hashes all of r and checks it against d and size.
func (p *hasherPool) verifyReader(d digest.Digest, size int64, r io.Reader) error {
	h := p.get(d.Algorithm())
	defer p.put(h)
	buf := getCopyBuffer()
	defer copyBuffers.Put(buf)
	n, err := io.CopyBuffer(h.h, r, *buf)
	if err != nil {
		return err
	}
	if n != size {
		return fmt.Errorf("%w: expected %s of %d bytes, found %d bytes", ErrDigestMismatch, d, size, n)
	}
	if !h.matches(d) {
		return fmt.Errorf("%w: expected %s, data hashes to %s", ErrDigestMismatch, d, h.digest())
	}
	return nil
}

// copyBufferSize is the buffer for streaming a file through a hash: the
// background fetch streams every chunk it caches through one.
const copyBufferSize = 256 << 10

// copyBuffers recycle the copy buffers: one per streamed chunk would be
// garbage by the megabyte.
var copyBuffers sync.Pool

func getCopyBuffer() *[]byte {
	if b, ok := copyBuffers.Get().(*[]byte); ok {
		return b
	}
	b := make([]byte, copyBufferSize)
	return &b
}

// Package verity computes a file's fs-verity digest in user space and asks
// the kernel to enable and measure fs-verity where the filesystem can.
//
// The composefs mode names every object's fs-verity digest in its metadata
// image (trusted.overlay.metacopy), so overlayfs can check the data it
// serves; this package is where those digests come from. It computes the
// digest the way the kernel does (Documentation/filesystems/fsverity.rst:
// a SHA-256 Merkle tree over 4 KiB blocks, then SHA-256 of the 256-byte
// descriptor), streaming, in memory bounded by the tree's height (4 KiB a
// level), never the whole file; so digests are known even where the kernel
// has no fs-verity.
//
// It knows files and bytes, not layers, images or object stores.
package verity

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"hash"
	"io"
)

const (
	// Size is the length of a digest (SHA-256).
	Size = sha256.Size
	// BlockSize is the Merkle tree's block size: 4 KiB, the one every
	// filesystem with fs-verity supports.
	BlockSize = 4096

	logBlockSize   = 12
	hashesPerBlock = BlockSize / Size // 128
	algSHA256      = 1                // FS_VERITY_HASH_ALG_SHA256
	descriptorSize = 256
)

// Sum is an fs-verity file digest: SHA-256 of the file's fs-verity
// descriptor, what FS_IOC_MEASURE_VERITY reports and `fsverity digest`
// prints.
type Sum [Size]byte

// String is the digest in lower-case hex, as `fsverity digest` prints it
// (without its "sha256:" prefix).
func (s Sum) String() string { return hex.EncodeToString(s[:]) }

// ParseSum reads a digest in the form String writes.
func ParseSum(s string) (Sum, error) {
	var sum Sum
	if len(s) != 2*Size {
		return sum, fmt.Errorf("fs-verity digest %q: want %d hex digits, have %d", s, 2*Size, len(s))
	}
	if _, err := hex.Decode(sum[:], []byte(s)); err != nil {
		return sum, fmt.Errorf("fs-verity digest %q: %w", s, err)
	}
	if sum.String() != s { // upper-case hex would name the same digest twice
		return sum, fmt.Errorf("fs-verity digest %q: not lower-case hex", s)
	}
	return sum, nil
}

// Hash computes an fs-verity digest of what is written to it. It is a
// hash.Hash: Sum appends the digest, Size is 32, BlockSize 4096 (writes
// of whole blocks are hashed in place, without a copy).
//
// It keeps one partly filled 4 KiB block per tree level (levels are added
// as the data grows: 3 levels cover 256 MiB, 5 levels 2 TiB), so memory does
// not grow with the file.
type Hash struct {
	size   int64
	levels []*level // levels[0] buffers file data, levels[i] hashes of level i-1's blocks
}

// level is one level of the Merkle tree being built: the block being
// filled and how many blocks the level has finished.
type level struct {
	buf  [BlockSize]byte
	n    int   // bytes in buf
	done int64 // blocks of this level hashed so far
}

var _ hash.Hash = (*Hash)(nil)

// New returns a Hash with nothing written.
func New() *Hash { return &Hash{} }

// Digest returns the fs-verity digest of everything r yields.
func Digest(r io.Reader) (Sum, error) {
	h := New()
	if _, err := io.Copy(h, r); err != nil {
		return Sum{}, fmt.Errorf("fs-verity digest: %w", err)
	}
	return h.Digest(), nil
}

// Write adds p to the data. It never fails.
func (h *Hash) Write(p []byte) (int, error) {
	n := len(p)
	h.size += int64(n)
	if len(h.levels) == 0 {
		h.levels = append(h.levels, new(level))
	}
	data := h.levels[0]
	for len(p) > 0 {
		if data.n == 0 && len(p) >= BlockSize {
			// A whole block: hash it where it lies.
			h.blockDone(0, sha256.Sum256(p[:BlockSize]))
			p = p[BlockSize:]
			continue
		}
		c := copy(data.buf[data.n:], p)
		data.n += c
		p = p[c:]
		if data.n == BlockSize {
			h.blockDone(0, sha256.Sum256(data.buf[:]))
			data.n = 0
		}
	}
	return n, nil
}

// blockDone records the hash of a finished block of level i in level i+1,
// hashing that level's block in turn when it fills.
func (h *Hash) blockDone(i int, sum [Size]byte) {
	h.levels[i].done++
	if len(h.levels) == i+1 {
		h.levels = append(h.levels, new(level))
	}
	up := h.levels[i+1]
	copy(up.buf[up.n:], sum[:])
	up.n += Size
	if up.n == BlockSize {
		h.blockDone(i+1, sha256.Sum256(up.buf[:]))
		up.n = 0
	}
}

// Digest returns the fs-verity digest of what was written so far. Like
// Sum, it does not change the Hash: writing may go on.
func (h *Hash) Digest() Sum {
	root := h.root()
	var d [descriptorSize]byte
	d[0] = 1 // version
	d[1] = algSHA256
	d[2] = logBlockSize
	d[3] = 0 // salt size; then 4 reserved (signature size) bytes, zero
	binary.LittleEndian.PutUint64(d[8:16], uint64(h.size))
	copy(d[16:16+64], root[:]) // root_hash[64]: SHA-256 fills the first 32
	// salt[32] and reserved[144] stay zero.
	return sha256.Sum256(d[:])
}

// root finishes the tree on copies of the partial blocks (so the Hash
// itself is left as it was) and returns its root hash.
func (h *Hash) root() [Size]byte {
	if h.size == 0 {
		return [Size]byte{} // an empty file has no tree: the root is all zeros
	}
	// Each level's partial block, zero-padded, is hashed into the level
	// above; the first level that has exactly one block in all is the top,
	// and that block's hash is the root. A file of one block is its own
	// top: its root is that block's hash.
	var carry []byte // hash to append to the next level's partial block
	for i := 0; ; i++ {
		var buf [BlockSize]byte
		n, done := 0, int64(0)
		if i < len(h.levels) {
			l := h.levels[i]
			copy(buf[:], l.buf[:l.n])
			n, done = l.n, l.done
		}
		if carry != nil {
			copy(buf[n:], carry)
			n += Size
		}
		if n > 0 {
			sum := sha256.Sum256(buf[:]) // the rest of buf is the zero padding
			carry = sum[:]
			done++
		} else {
			carry = nil
		}
		if done == 1 {
			var r [Size]byte
			if carry != nil {
				copy(r[:], carry)
			} else {
				// The level's one block filled exactly and went up
				// already: its hash is first in the level above.
				copy(r[:], h.levels[i+1].buf[:Size])
			}
			return r
		}
	}
}

// Sum appends the digest to b (hash.Hash).
func (h *Hash) Sum(b []byte) []byte {
	s := h.Digest()
	return append(b, s[:]...)
}

// Reset forgets everything written.
func (h *Hash) Reset() {
	h.size = 0
	for _, l := range h.levels {
		l.n, l.done = 0, 0
	}
}

// Size is the digest's length.
func (h *Hash) Size() int { return Size }

// BlockSize is the Merkle tree's block size: writes in multiples of it
// avoid copies.
func (h *Hash) BlockSize() int { return BlockSize }

// Written is how many bytes were written.
func (h *Hash) Written() int64 { return h.size }

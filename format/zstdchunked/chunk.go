package zstdchunked

import (
	"bytes"
	_ "crypto/sha256" // digests the TOC may name
	_ "crypto/sha512"
	"errors"
	"fmt"
	"io"
	"math"
	"runtime"
	"sync"

	"github.com/klauspost/compress/zstd"
	"github.com/opencontainers/go-digest"

	"github.com/lazypull/lazypull/format/toc"
)

// ErrDigestMismatch is the error a read wraps when a chunk's bytes are not
// the ones its TOC entry names.
var ErrDigestMismatch = errors.New("digest mismatch")

// minWindowCap is the largest zstd window a frame may declare beyond the
// bytes a read needs. Decoders allocate the whole window up front, so a
// hostile frame must not choose it; 8 MiB is what zstd's own levels up to
// 19 and klauspost's streaming encoder use.
const minWindowCap = 8 << 20

// decoderPool recycles streaming decoders that decode synchronously
// (concurrency 1: no goroutines, nothing read ahead). A streaming decoder
// holds its frame's whole window (and two blocks) from the first block on,
// and keeps the largest it has held; so frames that declare a small
// window, as this package's writer's do, take decoders from a pool of
// their own, which never grow past maxFrameWindow.
type decoderPool struct {
	pool sync.Pool
	// maxWindow is the largest window its decoders take; 0: a read's
	// own bytes, at least minWindowCap.
	maxWindow uint64
}

var (
	smallWindowDecoders = &decoderPool{maxWindow: maxFrameWindow}
	anyWindowDecoders   = &decoderPool{}
)

// decodersFor picks the pool for the frame that head starts with.
func decodersFor(head []byte) *decoderPool {
	var h zstd.Header
	if err := h.Decode(head); err != nil || h.Skippable {
		return anyWindowDecoders
	}
	window := h.WindowSize
	if h.SingleSegment {
		window = h.FrameContentSize
	}
	if window <= maxFrameWindow {
		return smallWindowDecoders
	}
	return anyWindowDecoders
}

// get returns a decoder reading src, for a read of n bytes; put it back.
func (p *decoderPool) get(src io.Reader, n int64) (*zstd.Decoder, error) {
	d, ok := p.pool.Get().(*zstd.Decoder)
	if !ok {
		var err error
		d, err = zstd.NewReader(nil,
			zstd.WithDecoderConcurrency(1),
			zstd.WithDecoderLowmem(true),
			// Never decode a whole in-memory input at once: only a
			// stream stops at the bytes asked for.
			zstd.WithDecodeBuffersBelow(0),
		)
		if err != nil {
			return nil, fmt.Errorf("zstd decoder: %w", err)
		}
	}
	window := p.maxWindow
	if window == 0 {
		window = uint64(max(n, minWindowCap))
	}
	if err := d.ResetWithOptions(src, zstd.WithDecoderMaxWindow(window)); err != nil {
		p.put(d)
		return nil, fmt.Errorf("zstd: %w", err)
	}
	return d, nil
}

func (p *decoderPool) put(d *zstd.Decoder) {
	_ = d.Reset(nil) // drop the reference to the input
	p.pool.Put(d)
}

// decodePrefix decompresses the first n bytes of the zstd frames in src
// into dst (reusing its capacity), with a decoder of p. It never produces
// more than n bytes, and refuses frames whose window exceeds p's bound
// (max(n, 8 MiB) if it has none). With exact, src must hold exactly n
// bytes. hint, if not 0, is how much the first frame says it holds: what
// to allocate first, at most n.
func decodePrefix(p *decoderPool, dst []byte, src io.Reader, n int64, exact bool, hint int64) ([]byte, error) {
	if n < 0 || n > math.MaxInt-1 {
		return nil, fmt.Errorf("cannot decode %d bytes", n)
	}
	d, err := p.get(src, n)
	if err != nil {
		return nil, err
	}
	defer p.put(d)
	// Grow the buffer with what the frames really hold, so that a chunk
	// claiming more than its frame has costs no more than the frame.
	out := dst[:0]
	if int64(cap(out)) < n && hint > 0 {
		out = make([]byte, 0, min(n, hint))
	}
	for int64(len(out)) < n {
		if len(out) == cap(out) {
			grown := make([]byte, len(out), min(n, max(2*int64(cap(out)), 64<<10)))
			copy(grown, out)
			out = grown
		}
		m, err := d.Read(out[len(out):min(int64(cap(out)), n)])
		out = out[:len(out)+m]
		if err == io.EOF {
			return nil, fmt.Errorf("decompresses to %d bytes, want %d", len(out), n)
		}
		if err != nil {
			return nil, fmt.Errorf("zstd: %w", err)
		}
	}
	dst = out
	if exact {
		var one [1]byte
		if m, err := d.Read(one[:]); m > 0 || (err != nil && err != io.EOF) {
			if err == nil {
				err = fmt.Errorf("more than %d bytes", n)
			}
			return nil, fmt.Errorf("decompresses to %w", err)
		}
	}
	return dst, nil
}

// ReadChunk decompresses one chunk: compressed must be exactly the blob's
// bytes [c.Offset, c.EndOffset). It returns the c.Size bytes at
// c.InnerOffset of the frame's content once they match c.Digest(). A frame
// that declares its content size, checked against the chunk's, is decoded
// whole into a buffer of that size (no window needed); one that does not,
// or whose content goes on well past the chunk, is streamed and no more
// than c.InnerOffset+c.Size bytes of it decompressed. A zero chunk needs
// no bytes and reads as zeros (up to 1 GiB: a caller serves larger holes
// itself).
func ReadChunk(dst, compressed []byte, c toc.Chunk) ([]byte, error) {
	data, err := readChunk(dst, compressed, c)
	if err != nil {
		return nil, fmt.Errorf("zstdchunked: chunk at offset %d: %w", c.Offset, err)
	}
	return data, nil
}

// readChunk is ReadChunk decompressing into buf's storage, with errors that
// leave naming the chunk to the caller.
func readChunk(buf, compressed []byte, c toc.Chunk) ([]byte, error) {
	if err := checkChunk(c); err != nil {
		return nil, err
	}
	if c.Zero {
		if int64(cap(buf)) < c.Size {
			buf = make([]byte, c.Size)
		}
		buf = buf[:c.Size]
		clear(buf)
		return buf, nil
	}
	if want := c.EndOffset - c.Offset; int64(len(compressed)) != want {
		return nil, fmt.Errorf("got %d compressed bytes, the chunk spans %d (%d..%d)", len(compressed), want, c.Offset, c.EndOffset)
	}
	return decodeChunk(buf, compressed, nil, c)
}

// OpenChunk is ReadChunk as a stream, for a caller that verifies what it
// stores as it stores it (the cache's PutFile): it yields the chunk's
// c.Size bytes (fewer if the frames are short), unverified, holding none
// of them in memory beyond the decoder's window (at most 1 MiB for the
// frames of this package's writer). Close it to recycle the decoder.
// Holes have no frame to open.
func OpenChunk(compressed []byte, c toc.Chunk) (io.ReadCloser, error) {
	if err := checkChunk(c); err != nil {
		return nil, fmt.Errorf("zstdchunked: chunk at offset %d: %w", c.Offset, err)
	}
	if c.Zero {
		return nil, fmt.Errorf("zstdchunked: chunk at offset %d is a hole: no frame to read", c.Offset)
	}
	if want := c.EndOffset - c.Offset; int64(len(compressed)) != want {
		return nil, fmt.Errorf("zstdchunked: chunk at offset %d: got %d compressed bytes, the chunk spans %d", c.Offset, len(compressed), want)
	}
	p := decodersFor(compressed)
	d, err := p.get(bytes.NewReader(compressed), int64(c.InnerOffset)+c.Size)
	if err != nil {
		return nil, fmt.Errorf("zstdchunked: chunk at offset %d: %w", c.Offset, err)
	}
	if _, err := io.CopyN(io.Discard, d, int64(c.InnerOffset)); err != nil {
		p.put(d)
		return nil, fmt.Errorf("zstdchunked: chunk at offset %d: skip %d bytes to the chunk: %w", c.Offset, c.InnerOffset, err)
	}
	return &chunkReader{Reader: io.LimitReader(d, c.Size), d: d, p: p}, nil
}

type chunkReader struct {
	io.Reader
	d *zstd.Decoder
	p *decoderPool
}

func (r *chunkReader) Close() error {
	if r.d != nil {
		r.p.put(r.d)
		r.d, r.Reader = nil, bytes.NewReader(nil)
	}
	return nil
}

// contentSizeHint is the content size the first frame in b declares, or 0.
func contentSizeHint(b []byte) int64 {
	var h zstd.Header
	if err := h.Decode(b); err != nil || !h.HasFCS || h.FrameContentSize > math.MaxInt64 {
		return 0
	}
	return int64(h.FrameContentSize)
}

// maxChunkAlloc bounds the chunks ReadChunk serves, whatever it is handed:
// a TOC's chunks are bounded tighter by toc.Limits, but its holes are not,
// and File serves those without allocating.
const maxChunkAlloc = 1 << 30

// checkChunk refuses chunks no reader could serve: they come from a TOC,
// but ReadChunk may be handed anything.
func checkChunk(c toc.Chunk) error {
	if c.Size < 0 || c.Size > maxChunkAlloc || int64(c.InnerOffset) > maxChunkAlloc {
		return fmt.Errorf("bad geometry (inner offset %d, size %d)", c.InnerOffset, c.Size)
	}
	if c.Zero {
		return nil
	}
	if c.Offset < 0 || c.EndOffset < c.Offset {
		return fmt.Errorf("bad placement %d..%d", c.Offset, c.EndOffset)
	}
	if c.Digest() == "" {
		return errors.New("no digest to verify it against")
	}
	if err := c.Digest().Validate(); err != nil {
		return fmt.Errorf("digest %q: %w", c.Digest(), err)
	}
	return nil
}

// decodeChunk decompresses a checked data chunk and verifies it. Its
// span is compressed when the caller holds it whole (src nil); else src
// streams it and compressed is its first bytes, which tell the window.
func decodeChunk(buf, compressed []byte, src io.Reader, c toc.Chunk) ([]byte, error) {
	need := int64(c.InnerOffset) + c.Size
	var data []byte
	var err error
	sized := false
	if src == nil {
		data, sized, err = decodeSized(buf, compressed, need, false)
		src = bytes.NewReader(compressed)
	}
	if !sized && err == nil {
		data, err = decodePrefix(decodersFor(compressed), buf, src, need, false, contentSizeHint(compressed))
	}
	if err != nil {
		return nil, err
	}
	data = data[c.InnerOffset:]
	if got := c.Digest().Algorithm().FromBytes(data); got != c.Digest() {
		return nil, fmt.Errorf("%w (want %s, got %s)", ErrDigestMismatch, c.Digest(), got)
	}
	return data, nil
}

// sizedDecoder decodes whole frames that declare their content size
// straight into a buffer of that size, which is all the history such a
// frame needs: unlike a stream it keeps no window of its own, only a few
// small block buffers, whatever the frames hold. DecodeAll may be called
// concurrently; the concurrency bounds how many decode at once.
var sizedDecoder = sync.OnceValues(func() (*zstd.Decoder, error) {
	return zstd.NewReader(nil,
		zstd.WithDecoderLowmem(true),
		zstd.WithDecoderConcurrency(min(runtime.GOMAXPROCS(0), 4)),
		zstd.WithDecoderMaxMemory(maxChunkAlloc),
		zstd.WithDecoderMaxWindow(maxChunkAlloc),
		// Never grow the output past the capacity it is given, which
		// decodeSized bounds.
		zstd.WithDecodeAllCapLimit(true),
	)
})

// maxExpansion is the most a zstd frame can decompress to per byte of it:
// a 128 KiB block takes at least 4 bytes (its header and an RLE byte).
const maxExpansion = (128 << 10) / 4

// decodeSized decodes the first n bytes of the frame at the start of
// compressed, into buf's storage if it can hold the frame, when the frame
// declares its content size; with exact, that size must be n. sized is
// false, with no error, when the frame declares none (a streamed frame),
// holds far more than n bytes, or (with exact) is not all of compressed:
// the caller streams it then.
//
// The declared size is a claim of untrusted input, checked before
// anything is allocated: less than n is an error, and so is more than a
// chunk may hold or than the frame's bytes could decompress to.
func decodeSized(buf, compressed []byte, n int64, exact bool) (data []byte, sized bool, err error) {
	var h zstd.Header
	if err := h.Decode(compressed); err != nil || h.Skippable || !h.HasFCS {
		return nil, false, nil // the stream says what is wrong with it
	}
	size, length := h.FrameContentSize, frameLength(compressed, &h)
	if exact && length != len(compressed) {
		return nil, false, nil // more frames: the stream reads them all
	}
	switch {
	case size < uint64(n) || (exact && size != uint64(n)):
		return nil, true, fmt.Errorf("the frame declares %d bytes, want %d", size, n)
	case size > maxChunkAlloc:
		return nil, true, fmt.Errorf("the frame declares %d bytes, more than a chunk may hold (%d)", size, maxChunkAlloc)
	case size > uint64(length)*maxExpansion:
		return nil, true, fmt.Errorf("the frame declares %d bytes, more than its %d bytes can hold", size, length)
	case size > uint64(n+n/8+streamAbove):
		// The frame goes on well past the chunk (eStargz-style frames
		// hold the next tar headers too): take only the chunk.
		return nil, false, nil
	}
	d, err := sizedDecoder()
	if err != nil {
		return nil, true, fmt.Errorf("zstd decoder: %w", err)
	}
	if uint64(cap(buf)) < size {
		buf = make([]byte, 0, size)
	}
	data, err = d.DecodeAll(compressed[:length], buf[:0])
	if err != nil {
		return nil, true, fmt.Errorf("zstd: %w", err)
	}
	if uint64(len(data)) != size {
		return nil, true, fmt.Errorf("the frame declares %d bytes and holds %d", size, len(data))
	}
	return data[:n], true, nil
}

// frameLength is how many bytes of b the frame whose header is h spans,
// found by walking its block headers; all of b if they do not end in it
// (the decoder then says what is wrong). The chunk's span may go on with
// other frames, which DecodeAll would decode too.
func frameLength(b []byte, h *zstd.Header) int {
	pos := h.HeaderSize
	for pos+3 <= len(b) {
		bh := int(b[pos]) | int(b[pos+1])<<8 | int(b[pos+2])<<16
		pos += 3
		switch bh >> 1 & 3 {
		case 0, 2: // raw, compressed: the size is the block's bytes
			pos += bh >> 3
		case 1: // RLE: one byte, repeated
			pos++
		default:
			return len(b)
		}
		if bh&1 != 0 { // the last block
			if h.HasCheckSum {
				pos += 4
			}
			return min(pos, len(b))
		}
	}
	return len(b)
}

// chunkBuffers recycle the decompressed bytes of reads through File.
var chunkBuffers sync.Pool

func getBuffer(n int64) *[]byte {
	if p, ok := chunkBuffers.Get().(*[]byte); ok && int64(cap(*p)) >= n {
		return p
	}
	b := make([]byte, 0, n)
	return &b
}

func putBuffer(p *[]byte) { chunkBuffers.Put(p) }

// digestOf is the sha256 digest of b: what this package's writer uses.
func digestOf(b []byte) digest.Digest { return digest.SHA256.FromBytes(b) }

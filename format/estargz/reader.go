package estargz

import (
	"archive/tar"
	"bytes"
	"errors"
	"fmt"
	"io"

	"github.com/klauspost/compress/gzip"
	"github.com/opencontainers/go-digest"

	"github.com/lazypull/lazypull/format/toc"
)

// Reader is an opened eStargz blob: its checked TOC, and reads of its files.
type Reader struct {
	ra        io.ReaderAt
	size      int64
	toc       *toc.TOC
	tocDigest digest.Digest
	tocOffset int64
}

// OpenOption configures Open.
type OpenOption func(*openConfig)

type openConfig struct {
	tocDigest digest.Digest
	limits    toc.Limits
}

// WithTOCDigest makes Open verify the TOC against the digest the layer
// descriptor's TOCDigestAnnotation gives. Without it the TOC is unverified.
func WithTOCDigest(d digest.Digest) OpenOption {
	return func(c *openConfig) { c.tocDigest = d }
}

// WithLimits bounds what the TOC may ask for (see toc.Limits).
func WithLimits(l toc.Limits) OpenOption {
	return func(c *openConfig) { c.limits = l }
}

// Open reads the footer and the TOC of a blob of the given size, checks the
// TOC (and its digest, if given) and indexes it.
func Open(ra io.ReaderAt, size int64, opts ...OpenOption) (*Reader, error) {
	var cfg openConfig
	for _, o := range opts {
		o(&cfg)
	}
	limits := cfg.limits.WithDefaults()
	if size < legacyFooterSize {
		return nil, fmt.Errorf("estargz: blob of %d bytes is too small to hold a footer", size)
	}
	tail := make([]byte, min(size, FooterSize))
	if _, err := ra.ReadAt(tail, size-int64(len(tail))); err != nil {
		return nil, fmt.Errorf("estargz: read footer: %w", err)
	}
	tocOffset, footerSize, err := ParseFooter(tail)
	if err != nil {
		return nil, err
	}
	tocEnd := size - int64(footerSize)
	if tocOffset >= tocEnd {
		return nil, fmt.Errorf("estargz: footer puts the TOC at %d, past its end at %d", tocOffset, tocEnd)
	}
	if tocEnd-tocOffset > limits.MaxTOCBytes {
		return nil, fmt.Errorf("estargz: compressed TOC of %d bytes is over the limit of %d", tocEnd-tocOffset, limits.MaxTOCBytes)
	}
	compressed := make([]byte, tocEnd-tocOffset)
	if _, err := ra.ReadAt(compressed, tocOffset); err != nil {
		return nil, fmt.Errorf("estargz: read TOC at %d: %w", tocOffset, err)
	}
	tocJSON, err := DecompressTOC(compressed, limits.MaxTOCBytes)
	if err != nil {
		return nil, err
	}
	got := digest.FromBytes(tocJSON)
	if cfg.tocDigest != "" && got != cfg.tocDigest {
		return nil, fmt.Errorf("estargz: TOC digest is %s, the layer descriptor says %s: the blob is not the layer it claims to be", got, cfg.tocDigest)
	}
	t, err := toc.Parse(tocJSON, tocOffset, cfg.limits)
	if err != nil {
		return nil, fmt.Errorf("estargz: %w", err)
	}
	return &Reader{ra: ra, size: size, toc: t, tocDigest: got, tocOffset: tocOffset}, nil
}

// DecompressTOC extracts the TOC JSON from the TOC's gzip member, reading
// at most limit bytes of it.
func DecompressTOC(compressed []byte, limit int64) ([]byte, error) {
	zr, err := gzip.NewReader(bytes.NewReader(compressed))
	if err != nil {
		return nil, fmt.Errorf("estargz: TOC is not gzip: %w", err)
	}
	defer zr.Close()
	tr := tar.NewReader(zr)
	h, err := tr.Next()
	if err != nil {
		return nil, fmt.Errorf("estargz: TOC member holds no tar entry: %w", err)
	}
	if h.Name != TOCTarName {
		return nil, fmt.Errorf("estargz: TOC member holds %q, want %s", h.Name, TOCTarName)
	}
	if h.Size < 0 || h.Size > limit {
		return nil, fmt.Errorf("estargz: %s of %d bytes is over the limit of %d", TOCTarName, h.Size, limit)
	}
	// The header's size is only a claim: memory follows the bytes that
	// really decompress, so a small member cannot make a large buffer.
	data, err := io.ReadAll(io.LimitReader(tr, h.Size))
	if err != nil {
		return nil, fmt.Errorf("estargz: read %s: %w", TOCTarName, err)
	}
	if int64(len(data)) != h.Size {
		return nil, fmt.Errorf("estargz: %s holds %d bytes, its tar header says %d", TOCTarName, len(data), h.Size)
	}
	return data, nil
}

// TOC is the blob's checked table of contents.
func (r *Reader) TOC() *toc.TOC { return r.toc }

// TOCDigest is the digest of the TOC JSON (verified if WithTOCDigest was given).
func (r *Reader) TOCDigest() digest.Digest { return r.tocDigest }

// DataEnd is where file data ends and the TOC begins.
func (r *Reader) DataEnd() int64 { return r.tocOffset }

// PrefetchEnd returns where the files to prefetch end (the prefetch
// landmark's member), or false if the blob names no such files.
func (r *Reader) PrefetchEnd() (int64, bool) {
	e, ok := r.toc.Lookup(PrefetchLandmark)
	if !ok || len(e.Chunks()) == 0 {
		return 0, false
	}
	return e.Chunks()[0].Offset, true
}

// File reads one regular file of the blob, verifying every chunk it reads.
type File struct {
	r *Reader
	e *toc.Entry
}

// OpenFile opens the regular file (or hard link to one) called name.
func (r *Reader) OpenFile(name string) (*File, error) {
	e, ok := r.toc.Lookup(name)
	if !ok {
		return nil, fmt.Errorf("estargz: %q: %w", name, errNotExist)
	}
	e = r.toc.HardlinkTarget(e)
	if e.Type != toc.TypeReg {
		return nil, fmt.Errorf("estargz: %q is a %s, not a regular file", name, e.Type)
	}
	return &File{r: r, e: e}, nil
}

var errNotExist = errors.New("no such file in the layer")

// Size is the file's uncompressed size.
func (f *File) Size() int64 { return f.e.Size }

// ReadAt reads len(p) bytes at off, fetching and verifying the chunks that
// hold them.
func (f *File) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("estargz: %q: negative offset %d", f.e.Path(), off)
	}
	if off >= f.e.Size {
		return 0, io.EOF
	}
	n := 0
	i, _ := f.e.ChunkAt(off)
	for ; n < len(p) && i < len(f.e.Chunks()); i++ {
		c := f.e.Chunks()[i]
		from := off + int64(n) - c.FileOffset
		if c.Zero {
			// A hole may be as large as the file: it is served from
			// nothing, never stored.
			k := int(min(int64(len(p)-n), c.Size-from))
			clear(p[n : n+k])
			n += k
			continue
		}
		data, err := f.r.readChunk(f.e, i)
		if err != nil {
			return n, err
		}
		n += copy(p[n:], data[from:])
	}
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

// readChunk fetches and verifies chunk i of e.
func (r *Reader) readChunk(e *toc.Entry, i int) ([]byte, error) {
	c := e.Chunks()[i]
	compressed := make([]byte, c.EndOffset-c.Offset)
	if _, err := r.ra.ReadAt(compressed, c.Offset); err != nil && !(errors.Is(err, io.EOF) && c.EndOffset == r.size) {
		return nil, fmt.Errorf("estargz: %q chunk %d: read %d bytes at %d: %w", e.Path(), i, len(compressed), c.Offset, err)
	}
	data, err := ReadChunk(nil, compressed, c)
	if err != nil {
		return nil, fmt.Errorf("estargz: %q chunk %d: %w", e.Path(), i, err)
	}
	return data, nil
}

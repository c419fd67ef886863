package zstdchunked

import (
	"bufio"
	"fmt"
	"io"
	"io/fs"
	"path"

	"github.com/klauspost/compress/zstd"
	"github.com/opencontainers/go-digest"

	"github.com/lazypull/lazypull/format/toc"
)

// Reader is an opened zstd:chunked blob: its checked TOC, and reads of its
// files. It is safe for concurrent use.
type Reader struct {
	ra        io.ReaderAt
	toc       *toc.TOC
	tocDigest digest.Digest
	manifest  Position
	dataEnd   int64
}

// OpenOption configures Open.
type OpenOption func(*openConfig)

type openConfig struct {
	tocDigest      digest.Digest
	manifestDigest digest.Digest
	limits         toc.Limits
	annotations    map[string]string
}

// WithTOCDigest makes Open check the manifest against d, the digest of the
// compressed manifest (the manifest-checksum annotation). It takes
// precedence over a checksum given WithAnnotations.
func WithTOCDigest(d digest.Digest) OpenOption {
	return func(c *openConfig) { c.tocDigest = d }
}

// WithManifestDigest makes Open check the uncompressed manifest JSON
// against d, as stargz-snapshotter does with the eStargz TOC-digest
// annotation it puts on its zstd:chunked layers. It takes precedence over
// that annotation given WithAnnotations. With a TOC digest as well, both
// are checked.
func WithManifestDigest(d digest.Digest) OpenOption {
	return func(c *openConfig) { c.manifestDigest = d }
}

// WithLimits bounds what the TOC may ask of the reader; zero fields mean
// toc.DefaultLimits.
func WithLimits(l toc.Limits) OpenOption {
	return func(c *openConfig) { c.limits = l }
}

// WithAnnotations gives Open the layer descriptor's annotations. The
// manifest checksum annotation becomes the TOC digest to check (unless
// WithTOCDigest says otherwise), stargz-snapshotter's TOC-digest
// annotation the manifest digest to check (unless WithManifestDigest
// does), and the manifest position annotation replaces the footer, saving
// a read of the blob's tail. Both the current names
// (io.github.containers.zstd-chunked.*) and the older ones
// (io.containers.zstd-chunked.*) are read. Annotations that are present
// but malformed make Open fail, and so does a tar-split position outside
// the blob.
func WithAnnotations(annotations map[string]string) OpenOption {
	return func(c *openConfig) { c.annotations = annotations }
}

// Open reads a blob's manifest, checks it against the TOC digest when one
// is given, and parses it. It reads the footer from the last TailSize
// bytes unless the annotations place the manifest. Nothing is trusted:
// positions must lie inside the blob, lengths within the limits.
func Open(ra io.ReaderAt, size int64, opts ...OpenOption) (*Reader, error) {
	var cfg openConfig
	for _, o := range opts {
		o(&cfg)
	}
	limits := cfg.limits.WithDefaults()
	if size < 0 {
		return nil, fmt.Errorf("zstdchunked: blob size %d is negative", size)
	}

	a, err := fromAnnotations(cfg.annotations)
	if err != nil {
		return nil, err
	}
	tocDigest, pos, havePos := a.tocDigest, a.manifest, a.haveManifest
	if cfg.tocDigest != "" {
		tocDigest = cfg.tocDigest
	}
	manifestDigest := a.manifestDigest
	if cfg.manifestDigest != "" {
		manifestDigest = cfg.manifestDigest
	}
	for _, d := range []digest.Digest{tocDigest, manifestDigest} {
		if d == "" {
			continue
		}
		if err := d.Validate(); err != nil {
			return nil, fmt.Errorf("zstdchunked: TOC digest %q: %w", d, err)
		}
	}
	if a.haveTarSplit && (a.tarSplit.Offset < skippableHeaderSize || a.tarSplit.Length > size || a.tarSplit.Offset > size-a.tarSplit.Length) {
		return nil, fmt.Errorf("zstdchunked: annotation %s: tar-split at %d, %d bytes, lies outside the blob's %d bytes", TarSplitPositionAnnotation, a.tarSplit.Offset, a.tarSplit.Length, size)
	}
	limit := size // where the manifest must end
	if !havePos {
		tail := make([]byte, min(size, TailSize))
		if err := readFull(ra, tail, size-int64(len(tail))); err != nil {
			return nil, fmt.Errorf("zstdchunked: reading the footer: %w", err)
		}
		f, err := ParseFooter(tail)
		if err != nil {
			return nil, fmt.Errorf("zstdchunked: %w", err)
		}
		pos = f.Manifest
		limit = size - skippableHeaderSize - int64(f.Size)
	}
	if err := checkManifestPosition(pos, limit, limits); err != nil {
		return nil, err
	}

	// The manifest with its skippable frame header, in one read.
	frame := make([]byte, skippableHeaderSize+pos.Length)
	dataEnd := pos.Offset - skippableHeaderSize
	if err := readFull(ra, frame, dataEnd); err != nil {
		return nil, fmt.Errorf("zstdchunked: reading the manifest at %d: %w", pos.Offset, err)
	}
	if !isSkippableHeader(frame, int(pos.Length)) {
		return nil, fmt.Errorf("zstdchunked: manifest at %d: not in a skippable frame of %d bytes", pos.Offset, pos.Length)
	}
	compressed := frame[skippableHeaderSize:]
	if tocDigest != "" {
		if got := tocDigest.Algorithm().FromBytes(compressed); got != tocDigest {
			return nil, fmt.Errorf("zstdchunked: manifest at %d: %w (want %s, got %s)", pos.Offset, ErrDigestMismatch, tocDigest, got)
		}
	} else {
		tocDigest = digestOf(compressed)
	}
	data, err := decompressManifest(compressed, pos.UncompressedLength)
	if err != nil {
		return nil, fmt.Errorf("zstdchunked: %w", err)
	}
	if manifestDigest != "" {
		if got := manifestDigest.Algorithm().FromBytes(data); got != manifestDigest {
			return nil, fmt.Errorf("zstdchunked: manifest JSON at %d: %w (want %s, got %s)", pos.Offset, ErrDigestMismatch, manifestDigest, got)
		}
	}
	t, err := parseManifest(data, dataEnd, limits)
	if err != nil {
		return nil, fmt.Errorf("zstdchunked: %w", err)
	}
	return &Reader{ra: ra, toc: t, tocDigest: tocDigest, manifest: pos, dataEnd: dataEnd}, nil
}

// layerAnnotations is what a zstd:chunked layer's annotations say.
type layerAnnotations struct {
	tocDigest      digest.Digest // of the compressed manifest
	manifestDigest digest.Digest // of the manifest JSON (stargz-snapshotter's)
	manifest       Position
	haveManifest   bool
	tarSplit       Position
	haveTarSplit   bool
}

// fromAnnotations reads a layer's annotations, current names first.
func fromAnnotations(a map[string]string) (layerAnnotations, error) {
	var out layerAnnotations
	parseDigest := func(k string) (digest.Digest, error) {
		d, err := digest.Parse(a[k])
		if err != nil {
			return "", fmt.Errorf("zstdchunked: annotation %s: %w", k, err)
		}
		return d, nil
	}
	var err error
	for _, k := range []string{ManifestChecksumAnnotation, legacyManifestChecksumAnnotation} {
		if _, ok := a[k]; ok {
			if out.tocDigest, err = parseDigest(k); err != nil {
				return layerAnnotations{}, err
			}
			break
		}
	}
	if _, ok := a[StargzTOCDigestAnnotation]; ok {
		if out.manifestDigest, err = parseDigest(StargzTOCDigestAnnotation); err != nil {
			return layerAnnotations{}, err
		}
	}
	for _, k := range []string{ManifestPositionAnnotation, legacyManifestPositionAnnotation} {
		if v, ok := a[k]; ok {
			if out.manifest, err = parseManifestPosition(v); err != nil {
				return layerAnnotations{}, fmt.Errorf("zstdchunked: annotation %s: %w", k, err)
			}
			out.haveManifest = true
			break
		}
	}
	if v, ok := a[TarSplitPositionAnnotation]; ok {
		if out.tarSplit, err = parseTarSplitPosition(v); err != nil {
			return layerAnnotations{}, fmt.Errorf("zstdchunked: annotation %s: %w", TarSplitPositionAnnotation, err)
		}
		out.haveTarSplit = true
	}
	return out, nil
}

// ManifestStart returns where the manifest's skippable frame starts, by the
// manifest position annotation, if there is one and it parses: everything
// from there to the blob's end is what Open reads.
func ManifestStart(annotations map[string]string) (int64, bool) {
	a, err := fromAnnotations(annotations)
	if !a.haveManifest || err != nil || a.manifest.Offset < skippableHeaderSize {
		return 0, false
	}
	return a.manifest.Offset - skippableHeaderSize, true
}

// TarSplitPosition returns where the tar-split data lies by the layer's
// annotations: whether containers/storage can pull the layer partially.
// It does not read the blob; Open checks the position against its size.
func TarSplitPosition(annotations map[string]string) (Position, bool, error) {
	a, err := fromAnnotations(annotations)
	return a.tarSplit, a.haveTarSplit, err
}

// checkManifestPosition confines the manifest (and its skippable frame
// header) to the blob before limit, and its sizes to the limits.
func checkManifestPosition(p Position, limit int64, limits toc.Limits) error {
	switch {
	case p.Offset < skippableHeaderSize || p.Length <= 0 || p.Length > limit || p.Offset > limit-p.Length:
		return fmt.Errorf("zstdchunked: manifest at %d, %d bytes, lies outside the blob's %d bytes before its footer", p.Offset, p.Length, limit)
	case p.Length > limits.MaxTOCBytes || p.UncompressedLength > limits.MaxTOCBytes:
		return fmt.Errorf("zstdchunked: manifest of %d bytes (%d uncompressed) is over the limit of %d", p.Length, p.UncompressedLength, limits.MaxTOCBytes)
	case p.Length > 1<<31-1:
		return fmt.Errorf("zstdchunked: manifest of %d bytes does not fit a skippable frame", p.Length)
	}
	return nil
}

// readFull reads len(p) bytes at off: a ReaderAt may return io.EOF with a
// full read at the end of its data.
func readFull(ra io.ReaderAt, p []byte, off int64) error {
	n, err := ra.ReadAt(p, off)
	if n == len(p) {
		return nil
	}
	if err == nil || err == io.EOF {
		err = io.ErrUnexpectedEOF
	}
	return fmt.Errorf("%d of %d bytes at offset %d: %w", n, len(p), off, err)
}

// TOC is the blob's checked table of contents.
func (r *Reader) TOC() *toc.TOC { return r.toc }

// TOCDigest is the digest of the compressed manifest, which is what the
// manifest-checksum annotation of a zstd:chunked layer holds.
func (r *Reader) TOCDigest() digest.Digest { return r.tocDigest }

// DataEnd is where the tar's frames end and the manifest's skippable frame
// begins: what a full fetch of the file data needs.
func (r *Reader) DataEnd() int64 { return r.dataEnd }

// ManifestPosition is where the manifest lies in the blob.
func (r *Reader) ManifestPosition() Position { return r.manifest }

// File reads one regular file of the blob. It is safe for concurrent use.
type File struct {
	r    *Reader
	e    *toc.Entry // the regular file itself, hard links resolved
	name string     // as asked for, to name it in errors
}

// OpenFile opens a regular file by name ("./a/b", "/a/b" and "a/b" are the
// same); a hard link opens its target.
func (r *Reader) OpenFile(name string) (*File, error) {
	clean := toc.CleanTarName(path.Clean("/" + name))
	e, ok := r.toc.Lookup(clean)
	if !ok {
		return nil, fmt.Errorf("zstdchunked: file %q: %w", name, fs.ErrNotExist)
	}
	e = r.toc.HardlinkTarget(e)
	if e.Type != toc.TypeReg {
		return nil, fmt.Errorf("zstdchunked: file %q is a %s, not a regular file", name, e.Type)
	}
	return &File{r: r, e: e, name: name}, nil
}

// Size is the file's size.
func (f *File) Size() int64 { return f.e.Size }

// Entry is the file's TOC entry (the target's, for a hard link).
func (f *File) Entry() *toc.Entry { return f.e }

// ReadAt reads the chunks that hold [off, off+len(p)), each verified
// against its digest before any of its bytes is copied to p.
func (f *File) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("zstdchunked: file %q: negative offset %d", f.name, off)
	}
	size := f.e.Size
	if off >= size {
		return 0, io.EOF
	}
	end := size
	if int64(len(p)) < size-off {
		end = off + int64(len(p))
	}
	i, ok := f.e.ChunkAt(off)
	if !ok {
		return 0, fmt.Errorf("zstdchunked: file %q: no chunk holds offset %d", f.name, off)
	}
	n := 0
	for pos := off; pos < end; i++ {
		if i >= len(f.e.Chunks()) {
			return n, fmt.Errorf("zstdchunked: file %q: no chunk holds offset %d", f.name, pos)
		}
		c := f.e.Chunks()[i]
		from, to := pos-c.FileOffset, min(end-c.FileOffset, c.Size)
		if c.Zero {
			clear(p[n : n+int(to-from)])
		} else if err := f.copyChunk(p[n:n+int(to-from)], i, from); err != nil {
			return n, err
		}
		n += int(to - from)
		pos = c.FileOffset + to
	}
	if end < off+int64(len(p)) {
		return n, io.EOF
	}
	return n, nil
}

// copyChunk fetches, decompresses and verifies chunk i, and copies its
// bytes from the chunk offset from into dst.
func (f *File) copyChunk(dst []byte, i int, from int64) error {
	c := f.e.Chunks()[i]
	data, release, err := f.r.readChunk(c)
	if err != nil {
		return fmt.Errorf("zstdchunked: file %q chunk %d at offset %d: %w", f.name, i, c.Offset, err)
	}
	defer release()
	copy(dst, data[from:])
	return nil
}

// readChunk reads and verifies one data chunk into a pooled buffer, which
// release returns. The compressed bytes are read at once when they are
// about what a frame of the chunk's size can take; a span much larger
// (eStargz-style frames that go on with later tar headers, or a hostile
// TOC) is streamed, so that memory stays bounded by what the chunk needs.
func (r *Reader) readChunk(c toc.Chunk) ([]byte, func(), error) {
	if err := checkChunk(c); err != nil {
		return nil, nil, err
	}
	need := int64(c.InnerOffset) + c.Size
	span := c.EndOffset - c.Offset
	var src io.Reader
	var cbuf *[]byte
	var compressed []byte
	if span <= need+need/8+streamAbove {
		cbuf = getBuffer(span)
		compressed = (*cbuf)[:span]
		if err := readFull(r.ra, compressed, c.Offset); err != nil {
			putBuffer(cbuf)
			return nil, nil, fmt.Errorf("reading the blob: %w", err)
		}
	} else {
		br := bufio.NewReaderSize(io.NewSectionReader(r.ra, c.Offset, span), streamAbove)
		compressed, _ = br.Peek(zstd.HeaderMaxSize) // the frame's header: its window
		src = br
	}
	dbuf := getBuffer(need)
	data, err := decodeChunk(*dbuf, compressed, src, c)
	if cbuf != nil {
		putBuffer(cbuf)
	}
	if err != nil {
		putBuffer(dbuf)
		return nil, nil, err
	}
	return data, func() { putBuffer(dbuf) }, nil
}

// streamAbove is the slack over a chunk's size beyond which its compressed
// span is streamed rather than read whole.
const streamAbove = 1 << 20

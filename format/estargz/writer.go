package estargz

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"
	"path"
	"runtime"
	"strconv"
	"strings"

	"github.com/klauspost/compress/gzip"
	"github.com/opencontainers/go-digest"

	"github.com/lazypull/lazypull/format/toc"
)

// DefaultChunkSize is the largest piece of a file that one gzip member
// holds (toc.FileChunkSize says when a layer's later files get larger
// ones). The reference implementation's is 4 MiB; gzip's window is 32
// KiB, so that 64 KiB members cost the layers of our benchmark images
// only 1.4 to 2.5% more bytes, TOC included.
const DefaultChunkSize = toc.SmallChunkSize

// WriterOption configures a Writer.
type WriterOption func(*Writer)

// WithChunkSize splits files into chunks of at most n bytes.
func WithChunkSize(n int) WriterOption { return func(w *Writer) { w.chunkSize = int64(n) } }

// WithMinChunkSize lets files smaller than n share a gzip member with the
// entries before them (found by innerOffset), so that layers of many tiny
// files need fewer members and fewer requests.
func WithMinChunkSize(n int) WriterOption { return func(w *Writer) { w.minChunkSize = n } }

// WithPrioritizedFiles puts these files (layer paths, in the order a
// workload reads them) first, followed by the prefetch landmark.
func WithPrioritizedFiles(names []string) WriterOption {
	return func(w *Writer) { w.prioritized = names }
}

// WithCompressionLevel sets the gzip level (1 fastest … 9 smallest).
func WithCompressionLevel(level int) WriterOption { return func(w *Writer) { w.level = level } }

// WithConcurrency compresses up to n members at once (default: one per CPU).
// The output is the same whatever n is.
func WithConcurrency(n int) WriterOption { return func(w *Writer) { w.concurrency = n } }

// WithTempDir is where AppendTar keeps file contents while it reorders
// entries for WithPrioritizedFiles (default: the system's).
func WithTempDir(dir string) WriterOption { return func(w *Writer) { w.tempDir = dir } }

// Result describes a written blob.
type Result struct {
	TOCDigest        digest.Digest     // of the TOC JSON: TOCDigestAnnotation
	DiffID           digest.Digest     // of the uncompressed tar
	UncompressedSize int64             // of the uncompressed tar
	Annotations      map[string]string // for the layer descriptor
}

// Writer turns a tar stream into an eStargz blob.
type Writer struct {
	chunkSize          int64
	minChunkSize       int
	prioritized        []string
	level, concurrency int
	tempDir            string

	out     *countingWriter
	tw      *tar.Writer   // the layer's tar, written into seg
	seg     *bytes.Buffer // uncompressed bytes of the member being built
	segs    *compressor
	diff    hash.Hash
	rawSize int64

	entries  []toc.WireEntry
	entrySeg []int // the member each entry's data starts in, or -1
	chunks   int   // of the files so far, for toc.FileChunkSize
	appended bool
	err      error // the first error: the blob is not to be finished
}

// NewWriter writes an eStargz blob to out. Call AppendTar once, then Close.
func NewWriter(out io.Writer, opts ...WriterOption) *Writer {
	w := &Writer{chunkSize: DefaultChunkSize, level: gzip.DefaultCompression, concurrency: runtime.NumCPU()}
	for _, o := range opts {
		o(w)
	}
	if w.chunkSize <= 0 {
		w.chunkSize = DefaultChunkSize
	}
	w.out = &countingWriter{w: out}
	w.seg = new(bytes.Buffer)
	w.diff = sha256.New()
	w.tw = tar.NewWriter(rawWriter{w})
	w.segs = newCompressor(w.out, w.level, max(w.concurrency, 1))
	return w
}

// rawWriter appends to the member being built and to the diffID.
type rawWriter struct{ w *Writer }

func (r rawWriter) Write(p []byte) (int, error) {
	r.w.diff.Write(p)
	r.w.rawSize += int64(len(p))
	return r.w.seg.Write(p)
}

// AppendTar converts an uncompressed tar stream. Entries keep their order,
// except that prioritized files (and their parent directories) come first.
func (w *Writer) AppendTar(r io.Reader) error {
	if w.appended {
		return errors.New("estargz: AppendTar called twice")
	}
	w.appended = true
	if len(w.prioritized) == 0 {
		if err := w.writeLandmark(NoPrefetchLandmark); err != nil {
			return w.fail(err)
		}
		tr := tar.NewReader(r)
		for {
			h, err := tr.Next()
			if err == io.EOF {
				return nil
			}
			if err != nil {
				return w.fail(fmt.Errorf("estargz: read tar: %w", err))
			}
			if fromEarlierConversion(h) {
				continue
			}
			if err := w.writeEntry(h, tr); err != nil {
				return w.fail(err)
			}
		}
	}
	return w.fail(w.appendPrioritized(r))
}

// fail records the first error: Close then reports it instead of writing
// a blob from half a layer.
func (w *Writer) fail(err error) error {
	if err != nil && w.err == nil {
		w.err = err
	}
	return err
}

// fromEarlierConversion tells whether a tar entry was added by an earlier
// eStargz conversion (landmarks, the TOC): this one writes its own.
func fromEarlierConversion(h *tar.Header) bool {
	switch toc.CleanTarName(h.Name) {
	case PrefetchLandmark, NoPrefetchLandmark, TOCTarName:
		return true
	}
	return false
}

// appendPrioritized spools the tar's contents to a temporary file, then
// writes the prioritized files, the landmark and the rest.
func (w *Writer) appendPrioritized(r io.Reader) error {
	spool, err := os.CreateTemp(w.tempDir, "estargz-spool-")
	if err != nil {
		return fmt.Errorf("estargz: spool for reordering: %w", err)
	}
	defer os.Remove(spool.Name())
	defer spool.Close()

	type spooled struct {
		h       *tar.Header
		off     int64
		written bool
	}
	var all []*spooled
	byName := make(map[string]*spooled)
	tr := tar.NewReader(r)
	var off int64
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return fmt.Errorf("estargz: read tar: %w", err)
		}
		if fromEarlierConversion(h) {
			continue
		}
		n, err := io.Copy(spool, tr)
		if err != nil {
			return fmt.Errorf("estargz: spool %q: %w", h.Name, err)
		}
		s := &spooled{h: h, off: off}
		off += n
		all = append(all, s)
		byName[toc.CleanTarName(h.Name)] = s
	}
	write := func(s *spooled) error {
		if s.written {
			return nil
		}
		s.written = true
		return w.writeEntry(s.h, io.NewSectionReader(spool, s.off, s.h.Size))
	}
	var writeWithDeps func(name string) error
	writeWithDeps = func(name string) error {
		s, ok := byName[name]
		if !ok || s.written {
			return nil // a profile may name files this layer lacks
		}
		if dir := path.Dir(name); dir != "." {
			if err := writeWithDeps(dir); err != nil {
				return err
			}
		}
		if s.h.Typeflag == tar.TypeLink {
			if err := writeWithDeps(toc.CleanTarName(s.h.Linkname)); err != nil {
				return err
			}
		}
		return write(s)
	}
	for _, name := range w.prioritized {
		if err := writeWithDeps(toc.CleanTarName(name)); err != nil {
			return err
		}
	}
	if err := w.writeLandmark(PrefetchLandmark); err != nil {
		return err
	}
	for _, s := range all {
		if err := write(s); err != nil {
			return err
		}
	}
	return nil
}

func (w *Writer) writeLandmark(name string) error {
	h := &tar.Header{Name: name, Typeflag: tar.TypeReg, Mode: 0o644, Size: 1, Format: tar.FormatPAX}
	return w.writeEntry(h, bytes.NewReader([]byte{landmarkContents}))
}

// writeEntry writes one tar entry, starting a new gzip member for each
// chunk of its content, and records it in the TOC.
func (w *Writer) writeEntry(h *tar.Header, content io.Reader) error {
	h = normalizeHeader(h)
	ent, ok := toc.EntryFromTar(h)
	if err := w.tw.WriteHeader(h); err != nil {
		return fmt.Errorf("estargz: write header of %q: %w", h.Name, err)
	}
	if !ok {
		return nil // not a file (a PAX global header): in the tar, not in the TOC
	}
	if ent.Type != toc.TypeReg || ent.Size == 0 {
		w.addEntry(ent, -1)
		return nil
	}

	fileDigest := sha256.New()
	content = io.TeeReader(content, fileDigest)
	first := len(w.entries)
	chunkSize := toc.FileChunkSize(ent.Size, w.chunks, w.chunkSize)
	for written := int64(0); written < ent.Size; {
		size := min(chunkSize, ent.Size-written)
		if written > 0 || w.seg.Len() >= w.minChunkSize {
			w.sealMember()
		}
		chunk := ent
		if written > 0 {
			chunk = toc.WireEntry{Name: ent.Name, Type: toc.TypeChunk}
		}
		chunk.ChunkOffset = written
		if size == chunkSize {
			chunk.ChunkSize = size // the last, short chunk leaves it 0: "the rest"
		}
		chunk.InnerOffset = int64(w.seg.Len())
		chunkDigest := sha256.New()
		if _, err := io.CopyN(w.tw, io.TeeReader(content, chunkDigest), size); err != nil {
			return fmt.Errorf("estargz: copy %q: %w", h.Name, err)
		}
		chunk.ChunkDigest = digest.NewDigest(digest.SHA256, chunkDigest).String()
		w.addEntry(chunk, w.segs.next)
		w.chunks++
		written += size
	}
	w.entries[first].Digest = digest.NewDigest(digest.SHA256, fileDigest).String()
	return nil
}

func (w *Writer) addEntry(e toc.WireEntry, seg int) {
	w.entries = append(w.entries, e)
	w.entrySeg = append(w.entrySeg, seg)
}

// normalizeHeader makes a header that archive/tar can write back: sparse
// files become regular files (the reader has filled their holes).
func normalizeHeader(h *tar.Header) *tar.Header {
	c := *h
	if c.Typeflag == tar.TypeGNUSparse {
		c.Typeflag = tar.TypeReg
	}
	if c.Typeflag == tar.TypeRegA {
		c.Typeflag = tar.TypeReg
	}
	if len(c.PAXRecords) > 0 {
		c.PAXRecords = make(map[string]string, len(h.PAXRecords))
		for k, v := range h.PAXRecords {
			if !strings.HasPrefix(k, "GNU.sparse.") {
				c.PAXRecords[k] = v
			}
		}
	}
	return &c
}

// sealMember hands the member built so far to the compressor.
func (w *Writer) sealMember() {
	if w.seg.Len() == 0 {
		return
	}
	w.segs.add(w.seg.Bytes())
	w.seg = new(bytes.Buffer)
}

// Close writes the last member, the TOC and the footer.
func (w *Writer) Close() (Result, error) {
	if w.err != nil {
		w.segs.finish()
		return Result{}, w.err
	}
	if err := w.tw.Flush(); err != nil { // the last file's padding
		return Result{}, fmt.Errorf("estargz: %w", err)
	}
	w.sealMember()
	offsets, err := w.segs.finish()
	if err != nil {
		return Result{}, fmt.Errorf("estargz: write: %w", err)
	}
	for i := range w.entries {
		if s := w.entrySeg[i]; s >= 0 {
			w.entries[i].Offset = offsets[s]
		}
	}
	tocJSON, err := json.Marshal(toc.JSON{Version: 1, Entries: w.entries})
	if err != nil {
		return Result{}, fmt.Errorf("estargz: encode TOC: %w", err)
	}
	tocOffset := w.out.n
	if err := w.writeTOC(tocJSON); err != nil {
		return Result{}, err
	}
	if _, err := w.out.Write(footer(tocOffset)); err != nil {
		return Result{}, fmt.Errorf("estargz: write footer: %w", err)
	}
	res := Result{
		TOCDigest:        digest.FromBytes(tocJSON),
		DiffID:           digest.NewDigest(digest.SHA256, w.diff),
		UncompressedSize: w.rawSize,
	}
	res.Annotations = map[string]string{
		TOCDigestAnnotation:        res.TOCDigest.String(),
		UncompressedSizeAnnotation: strconv.FormatInt(res.UncompressedSize, 10),
		TOCOffsetAnnotation:        strconv.FormatInt(tocOffset, 10),
	}
	for _, e := range w.entries {
		if e.Name == PrefetchLandmark {
			res.Annotations[PrefetchEndAnnotation] = strconv.FormatInt(e.Offset, 10)
		}
	}
	return res, nil
}

// writeTOC writes the TOC's own member: a tar entry holding the JSON, and
// the tar's end.
func (w *Writer) writeTOC(tocJSON []byte) error {
	var raw bytes.Buffer
	tw := tar.NewWriter(io.MultiWriter(&raw, w.diff))
	if err := tw.WriteHeader(&tar.Header{Name: TOCTarName, Typeflag: tar.TypeReg, Mode: 0o644, Size: int64(len(tocJSON))}); err != nil {
		return fmt.Errorf("estargz: write TOC: %w", err)
	}
	tw.Write(tocJSON)
	if err := tw.Close(); err != nil {
		return fmt.Errorf("estargz: write TOC: %w", err)
	}
	w.rawSize += int64(raw.Len())
	member, err := compressMember(raw.Bytes(), w.level)
	if err != nil {
		return err
	}
	if _, err := w.out.Write(member); err != nil {
		return fmt.Errorf("estargz: write TOC: %w", err)
	}
	return nil
}

// countingWriter counts what passes through: member offsets.
type countingWriter struct {
	w io.Writer
	n int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

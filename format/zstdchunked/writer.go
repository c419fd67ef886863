package zstdchunked

import (
	"archive/tar"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/lazypull/lazypull/format/toc"
)

// DefaultChunkSize is the largest chunk a file is cut into (see
// toc.FileChunkSize for a layer's later files): small, so that a start
// fetches little more than the pages it touches, as containers/storage's
// own writer does (its rolling checksum cuts 64 KiB chunks on average).
// zstd compresses frames this small less well: our benchmark images'
// layers are 5 to 8.5% larger than in 4 MiB frames.
const DefaultChunkSize = toc.SmallChunkSize

// DefaultCompressionLevel is zstd's own default level.
const DefaultCompressionLevel = 3

// WriterOption configures a Writer.
type WriterOption func(*Writer)

// WithChunkSize sets the largest chunk of a file, in bytes; at most the
// toc.DefaultLimits.MaxChunkBytes that readers accept.
func WithChunkSize(n int) WriterOption { return func(w *Writer) { w.chunkSize = int64(n) } }

// WithCompressionLevel sets the zstd level (1 fastest … 19 and up best).
func WithCompressionLevel(level int) WriterOption { return func(w *Writer) { w.level = level } }

// WithConcurrency sets how many frames are compressed at once; the output
// does not depend on it. Each holds about three chunks' worth of memory.
// The default is runtime.NumCPU().
func WithConcurrency(n int) WriterOption { return func(w *Writer) { w.concurrency = n } }

// Result describes a written blob.
type Result struct {
	// TOCDigest is the digest of the compressed manifest.
	TOCDigest digest.Digest
	// ManifestDigest is the digest of the uncompressed manifest JSON:
	// what stargz-snapshotter verifies the layer against.
	ManifestDigest digest.Digest
	// DiffID is the digest of the uncompressed tar: of the input.
	DiffID           digest.Digest
	UncompressedSize int64
	// Annotations are the layer descriptor's as containers/storage writes
	// them: the manifest checksum and position, and the tar-split
	// position when there is tar-split data. lazypull reads them too.
	Annotations map[string]string
	// StargzAnnotations are the layer descriptor's for stargz-snapshotter,
	// as its own zstd:chunked writer makes them: the eStargz TOC digest
	// (ManifestDigest), the uncompressed size and the manifest checksum
	// and position under their older names. lazypull reads them too.
	// containers/storage refuses to pull a layer that carries both these
	// and Annotations: a descriptor gets one set or the other.
	StargzAnnotations map[string]string
	// TarSplitSkipped says why the blob has no tar-split data, which
	// containers/storage needs to pull it partially; empty when it has.
	TarSplitSkipped string
}

// Writer converts an uncompressed tar into a zstd:chunked blob. The blob
// decompresses, with any zstd decoder, to exactly the input tar.
//
// The blob is laid out as containers/storage lays out its own (manifest,
// tar-split data, footer), with the 40-byte footer that stargz-snapshotter
// reads. Tar-split data is written unless the tar holds something
// containers/storage could not match with the TOC (Result.TarSplitSkipped
// says what); the TOC then names members exactly as the tar does.
type Writer struct {
	out         io.Writer
	chunkSize   int64
	level       int
	concurrency int

	fr       *framer
	split    *tarSplit
	frames   int // frames submitted
	chunks   int // of the files so far, for toc.FileChunkSize
	appended bool
	closed   bool
	err      error // sticky: the first failure
	scratch  []byte

	entries []*entry
	live    map[string]int   // name → index of the entry that has it now
	links   map[string][]int // name → live hard links to it
}

// entry is one TOC entry in the making; its chunks point at frames whose
// offsets are known only once they are written.
type entry struct {
	wire       toc.WireEntry
	raw        toc.WireEntry // name and link name as the tar has them
	chunks     []chunkRef
	fileHash   hash.Hash     // files of several chunks: hashed as written
	fileDigest digest.Digest // sparse files: hashed as read
	dead       bool          // replaced by a later entry of the same name
}

type chunkRef struct {
	fileOffset, size int64
	// frame holds a data chunk; for a hole, it is the frame after it,
	// where the hole is placed (it has no bytes of its own).
	frame int
	zero  bool
}

// NewWriter returns a Writer that writes the blob to out.
func NewWriter(out io.Writer, opts ...WriterOption) *Writer {
	w := &Writer{
		out:         out,
		chunkSize:   DefaultChunkSize,
		level:       DefaultCompressionLevel,
		concurrency: runtime.NumCPU(),
		live:        make(map[string]int),
		links:       make(map[string][]int),
	}
	for _, o := range opts {
		o(w)
	}
	if w.chunkSize <= 0 {
		w.chunkSize = DefaultChunkSize
	}
	if w.concurrency <= 0 {
		w.concurrency = runtime.NumCPU()
	}
	return w
}

// AppendTar reads an uncompressed tar to its end and writes its frames. A
// blob holds one tar: a second call fails.
func (w *Writer) AppendTar(r io.Reader) error {
	switch {
	case w.err != nil:
		return w.err
	case w.closed:
		return errors.New("zstdchunked: AppendTar after Close")
	case w.appended:
		return w.fail(errors.New("zstdchunked: AppendTar called twice; a blob holds one tar"))
	}
	w.appended = true
	if err := w.start(); err != nil {
		return w.fail(err)
	}
	if err := w.appendTar(r); err != nil {
		return w.fail(err)
	}
	return nil
}

func (w *Writer) start() error {
	if w.fr != nil {
		return nil
	}
	if max := toc.DefaultLimits.MaxChunkBytes; w.chunkSize > max {
		return fmt.Errorf("zstdchunked: chunk size %d is over the %d that readers accept", w.chunkSize, max)
	}
	fr, err := newFramer(w.out, w.level, w.concurrency, int(w.chunkSize))
	if err != nil {
		return fmt.Errorf("zstdchunked: zstd encoder: %w", err)
	}
	split, err := newTarSplit(w.level)
	if err != nil {
		fr.finish()
		fr.enc.Close()
		return fmt.Errorf("zstdchunked: zstd encoder: %w", err)
	}
	w.fr, w.split = fr, split
	return nil
}

// fail records the first error and stops the workers.
func (w *Writer) fail(err error) error {
	if w.err == nil {
		w.err = err
	}
	if w.fr != nil {
		_ = w.fr.finish()
		w.fr.enc.Close()
		w.fr = nil
	}
	return w.err
}

func (w *Writer) submit(raw []byte, isChunk bool, fileHash hash.Hash) {
	w.fr.submit(raw, isChunk, fileHash)
	w.frames++
}

// appendTar cuts the tar into frames: tar headers (with the padding before
// them) in frames of their own, each regular file's content in frames of
// at most chunkSize. Every byte read from r lands in exactly one frame, in
// order.
func (w *Writer) appendTar(r io.Reader) error {
	rec := &recorder{r: r, on: true, splitting: true}
	tr := tar.NewReader(rec)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return fmt.Errorf("zstdchunked: reading the tar at byte %d: %w", rec.n, err)
		}
		if err := w.fr.failed(); err != nil {
			return fmt.Errorf("zstdchunked: writing the blob: %w", err)
		}
		wire, ok := toc.EntryFromTar(h)
		if !ok {
			// Not a file (a PAX global header, a volume label): whatever
			// it holds goes along with the headers.
			w.split.giveUp("member %q of type %q is not a file", h.Name, h.Typeflag)
			rec.splitting = false
			if err := w.drain(tr, rec); err != nil {
				return fmt.Errorf("zstdchunked: tar member %q: %w", h.Name, err)
			}
			continue
		}
		exactTimes(&wire, h)
		e := &entry{wire: wire, raw: toc.WireEntry{Name: h.Name, LinkName: h.Linkname}}
		w.split.member(rec.takeSplit(), h, wire)
		rec.splitting = w.split.skip == ""
		if wire.Type == toc.TypeReg && wire.Size > 0 {
			w.flushHeaders(rec, 0)
			if isSparse(h) {
				err = w.appendSparse(tr, rec, e)
			} else {
				err = w.appendContent(tr, rec, e)
			}
			w.chunks += len(e.chunks)
			if err != nil {
				return fmt.Errorf("zstdchunked: file %q: %w", h.Name, err)
			}
		}
		w.split.endMember(h)
		w.add(e)
		rec.splitting = w.split.skip == ""
		w.flushHeaders(rec, w.chunkSize)
	}
	// The end of the archive, and whatever a tool padded it with.
	if err := w.drain(rec, rec); err != nil {
		return fmt.Errorf("zstdchunked: reading the end of the tar: %w", err)
	}
	w.split.end(rec.takeSplit())
	w.flushHeaders(rec, 0)
	return w.fr.failed()
}

// flushHeaders makes the recorded bytes a frame once there are at least
// atLeast of them (and some).
func (w *Writer) flushHeaders(rec *recorder, atLeast int64) {
	if len(rec.buf) == 0 || int64(len(rec.buf)) < atLeast {
		return
	}
	w.submit(rec.take(), false, nil)
}

// drain reads src to its end while recording, in frames of at most
// chunkSize (and tar-split segments of at most tarSplitMaxSegment).
func (w *Writer) drain(src io.Reader, rec *recorder) error {
	buf := make([]byte, 64<<10)
	for {
		_, err := src.Read(buf)
		if len(rec.split) >= tarSplitMaxSegment {
			w.split.end(rec.takeSplit())
		}
		w.flushHeaders(rec, w.chunkSize)
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
	}
}

// appendContent cuts a file's content into chunks, read straight into the
// frames' buffers.
func (w *Writer) appendContent(tr *tar.Reader, rec *recorder, e *entry) error {
	size := e.wire.Size
	chunkSize := toc.FileChunkSize(size, w.chunks, w.chunkSize)
	if size > chunkSize {
		e.fileHash = sha256.New()
	}
	rec.on = false
	defer func() { rec.on = true }()
	for off := int64(0); off < size; {
		n := min(chunkSize, size-off)
		var buf []byte
		if n <= w.chunkSize {
			buf = w.fr.getRaw()[:n]
		} else {
			buf = make([]byte, n) // a large chunk, past the layer's budget of small ones
		}
		before := rec.n
		if _, err := io.ReadFull(tr, buf); err != nil {
			return fmt.Errorf("reading %d bytes at %d: %w", n, off, err)
		}
		w.split.content(buf)
		if rec.n-before != n {
			// The tar reader made up bytes the archive does not hold: a
			// sparse file isSparse missed. Its frames would not
			// decompress to the input.
			return fmt.Errorf("%d bytes at %d came from %d bytes of the archive", n, off, rec.n-before)
		}
		e.chunks = append(e.chunks, chunkRef{fileOffset: off, size: n, frame: w.frames})
		w.submit(buf, true, e.fileHash)
		off += n
	}
	return nil
}

// add puts an entry in the TOC. In a tar a later member of a name replaces
// an earlier one, so the TOC keeps only the last; hard links always name
// the file itself, never another hard link.
func (w *Writer) add(e *entry) {
	name := e.wire.Name
	if e.wire.Type == toc.TypeHardlink {
		if i, ok := w.live[e.wire.LinkName]; ok && w.entries[i].wire.Type == toc.TypeHardlink {
			e.wire.LinkName = w.entries[i].wire.LinkName
			w.split.giveUp("hard link %q names another hard link, %q", e.raw.Name, e.raw.LinkName)
		}
	}
	if i, ok := w.live[name]; ok {
		w.replace(i)
	}
	i := len(w.entries)
	w.entries = append(w.entries, e)
	w.live[name] = i
	if e.wire.Type == toc.TypeHardlink {
		w.links[e.wire.LinkName] = append(w.links[e.wire.LinkName], i)
	}
}

// replace retires entry i for a later one of the same name. Hard links
// made to it before keep its content, as they would on disk: the first
// becomes a copy of it, the others link to that copy.
func (w *Writer) replace(i int) {
	old := w.entries[i]
	old.dead = true
	w.split.giveUp("a second member named %q", old.raw.Name)
	name := old.wire.Name
	delete(w.live, name)
	if old.wire.Type == toc.TypeHardlink {
		target := old.wire.LinkName
		kept := w.links[target][:0]
		for _, j := range w.links[target] {
			if j != i {
				kept = append(kept, j)
			}
		}
		w.links[target] = kept
	}
	links := w.links[name]
	delete(w.links, name)
	if len(links) == 0 {
		return
	}
	first := w.entries[links[0]]
	kept := *old
	kept.wire.Name = first.wire.Name
	kept.dead = false
	w.entries[links[0]] = &kept
	for _, j := range links[1:] {
		w.entries[j].wire.LinkName = kept.wire.Name
	}
	w.links[kept.wire.Name] = links[1:]
}

// Close writes the manifest and the footer, and describes the blob.
func (w *Writer) Close() (Result, error) {
	if w.closed {
		return Result{}, errors.New("zstdchunked: Close called twice")
	}
	w.closed = true
	if w.err != nil {
		return Result{}, w.err
	}
	if err := w.start(); err != nil {
		return Result{}, w.fail(err)
	}
	fr := w.fr
	enc := fr.enc
	defer enc.Close()
	err := fr.finish()
	w.fr = nil
	if err != nil {
		return Result{}, w.fail(fmt.Errorf("zstdchunked: writing the blob: %w", err))
	}

	split, splitSize, haveSplit := w.split.finish()
	doc := manifestJSON{JSON: toc.JSON{Version: manifestVersion, Entries: w.wireEntries(fr, haveSplit)}}
	if haveSplit {
		doc.TarSplitDigest = digestOf(split)
	}
	manifest, err := json.Marshal(doc)
	if err != nil {
		return Result{}, w.fail(fmt.Errorf("zstdchunked: encoding the manifest: %w", err))
	}
	dataEnd := fr.pos
	// Whatever this layer holds, a reader must be able to open it: check
	// the TOC as Open will, and fail here rather than there.
	if _, err := toc.Parse(manifest, dataEnd, toc.DefaultLimits); err != nil {
		return Result{}, w.fail(fmt.Errorf("zstdchunked: the layer cannot be read lazily: %w", err))
	}
	compressed := enc.EncodeAll(manifest, nil)
	pos := Position{Offset: dataEnd + skippableHeaderSize, Length: int64(len(compressed)), UncompressedLength: int64(len(manifest))}
	tail := appendSkippableFrame(nil, compressed)
	tocDigest := digestOf(compressed)
	annotations := map[string]string{
		ManifestChecksumAnnotation: tocDigest.String(),
		ManifestPositionAnnotation: formatManifestPosition(pos),
	}
	if haveSplit {
		splitPos := Position{Offset: pos.Offset + pos.Length + skippableHeaderSize, Length: int64(len(split)), UncompressedLength: splitSize}
		tail = appendSkippableFrame(tail, split)
		annotations[TarSplitPositionAnnotation] = formatTarSplitPosition(splitPos)
	}
	tail = append(tail, encodeFooter(pos)...)
	if _, err := w.out.Write(tail); err != nil {
		return Result{}, w.fail(fmt.Errorf("zstdchunked: writing the manifest: %w", err))
	}
	manifestDigest := digestOf(manifest)
	return Result{
		TOCDigest:        tocDigest,
		ManifestDigest:   manifestDigest,
		DiffID:           digest.NewDigest(digest.SHA256, fr.diffID),
		UncompressedSize: fr.uncompressed,
		Annotations:      annotations,
		StargzAnnotations: map[string]string{
			StargzTOCDigestAnnotation:        manifestDigest.String(),
			stargzUncompressedSizeAnnotation: strconv.FormatInt(fr.uncompressed, 10),
			legacyManifestChecksumAnnotation: tocDigest.String(),
			legacyManifestPositionAnnotation: formatManifestPosition(pos),
		},
		TarSplitSkipped: w.split.skip,
	}, nil
}

// manifestJSON is the manifest: the TOC, and the digest of the tar-split
// data (of its compressed bytes), by which containers/storage trusts it.
type manifestJSON struct {
	toc.JSON
	TarSplitDigest digest.Digest `json:"tarSplitDigest,omitempty"`
}

// exactTimes gives the entry the header's times to the nanosecond, and its
// access and change times: containers/storage compares them with the
// tar-split's headers.
func exactTimes(wire *toc.WireEntry, h *tar.Header) {
	format := func(t time.Time) string {
		if t.IsZero() {
			return ""
		}
		return t.UTC().Format(time.RFC3339Nano)
	}
	wire.ModTime = format(h.ModTime)
	wire.AccessTime = format(h.AccessTime)
	wire.ChangeTime = format(h.ChangeTime)
}

// wireEntries lays out the TOC now that every frame has its place. With
// tar-split data, names are the tar's own, as containers/storage compares
// them.
func (w *Writer) wireEntries(fr *framer, rawNames bool) []toc.WireEntry {
	out := make([]toc.WireEntry, 0, len(w.entries))
	for _, e := range w.entries {
		if e.dead {
			continue
		}
		we := e.wire
		if rawNames {
			we.Name = e.raw.Name
			if we.Type == toc.TypeHardlink {
				we.LinkName = e.raw.LinkName
			}
		}
		if we.Type != toc.TypeReg {
			out = append(out, we)
			continue
		}
		we.Digest = w.fileDigest(fr, e).String()
		if len(e.chunks) == 0 {
			out = append(out, we)
			continue
		}
		for k, c := range e.chunks {
			ce := toc.WireEntry{Name: we.Name, Type: toc.TypeChunk}
			if k == 0 {
				ce = we
			}
			ce.ChunkOffset = c.fileOffset
			if len(e.chunks) > 1 {
				ce.ChunkSize = c.size
			}
			if c.zero {
				ce.ChunkType = toc.ChunkTypeZeros
				ce.Offset = fr.start(c.frame)
				ce.EndOffset = ce.Offset
			} else {
				ce.Offset = fr.start(c.frame)
				ce.EndOffset = fr.end(c.frame)
				ce.ChunkDigest = fr.chunkDigests[c.frame].String()
			}
			out = append(out, ce)
		}
	}
	return out
}

func (w *Writer) fileDigest(fr *framer, e *entry) digest.Digest {
	switch {
	case e.fileHash != nil:
		return digest.NewDigest(digest.SHA256, e.fileHash)
	case e.fileDigest != "":
		return e.fileDigest
	case len(e.chunks) == 1 && !e.chunks[0].zero:
		return fr.chunkDigests[e.chunks[0].frame]
	default:
		return digest.SHA256.FromBytes(nil)
	}
}

// isSparse tells whether tar.Reader expands holes into this file's
// content: GNU sparse members, old style or PAX.
func isSparse(h *tar.Header) bool {
	if h.Typeflag == tar.TypeGNUSparse {
		return true
	}
	for k := range h.PAXRecords {
		if strings.HasPrefix(k, "GNU.sparse.") {
			return true
		}
	}
	return false
}

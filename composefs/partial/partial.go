// Package partial fills the composefs object store from a lazy-format
// layer (eStargz, zstd:chunked) without pulling all of it: the files whose
// content the store has already are only claimed, the others are fetched
// by ranged reads of just their chunks (neighbours in the blob coalesced
// into one read, several reads in flight), each chunk verified against
// its TOC digest and each file against its content digest before it
// becomes an object.
//
// It knows a layer's format (format.Blob) and the store; not HTTP, the
// registry or snapshots: the blob is an io.ReaderAt, whose reads the
// caller turns into Range requests.
package partial

import (
	"cmp"
	"context"
	"fmt"
	"io"
	"slices"
	"sync/atomic"

	"github.com/opencontainers/go-digest"
	"golang.org/x/sync/errgroup"

	"github.com/lazypull/lazypull/composefs/objects"
	"github.com/lazypull/lazypull/format"
	"github.com/lazypull/lazypull/format/toc"
)

// Options tune the reads.
type Options struct {
	// MaxRead bounds one read of the blob (default 4 MiB): a read holds
	// this much in memory until its files are written.
	MaxRead int64
	// MaxGap is the most blob bytes between two files' chunks that one
	// read takes to save a request (default 64 KiB).
	MaxGap int64
	// Reads is how many reads are in flight (default 4).
	Reads int
}

func (o Options) withDefaults() Options {
	if o.MaxRead <= 0 {
		o.MaxRead = 4 << 20
	}
	if o.MaxGap < 0 {
		o.MaxGap = 0
	} else if o.MaxGap == 0 {
		o.MaxGap = 64 << 10
	}
	if o.Reads <= 0 {
		o.Reads = 4
	}
	return o
}

// Stats say what Fill did.
type Stats struct {
	Objects int   // distinct contents the layer's files have
	Present int   // of those, already in the store
	Fetched int   // fetched and written now
	Bytes   int64 // content bytes written now
	Reads   int64 // reads of the blob
	Read    int64 // blob bytes read
}

// Fill makes every regular file's content of the layer b describes an
// object of batch (whose owner then names them all), reading from blob
// only what the store lacks. A file the TOC gives no content digest
// cannot be named, and fails the fill.
func Fill(ctx context.Context, store *objects.Store, batch *objects.Batch, blob io.ReaderAt, b format.Blob, opts Options) (Stats, error) {
	opts = opts.withDefaults()
	var st Stats
	missing, err := plan(store, batch, b.TOC(), &st)
	if err != nil {
		return st, err
	}
	reads := group(missing, opts)

	f := &filler{batch: batch, blob: blob, b: b, opts: opts}
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(opts.Reads)
	for _, files := range reads {
		g.Go(func() error { return f.read(gctx, files) })
	}
	err = g.Wait()
	st.Fetched, st.Bytes = int(f.fetched.Load()), f.written.Load()
	st.Reads, st.Read = f.reads.Load(), f.readBytes.Load()
	return st, err
}

// file is one content to fetch: the first regular file that has it.
type file struct {
	e          *toc.Entry
	d          digest.Digest
	start, end int64 // the blob bytes its chunks take; start == end: all holes
}

// plan claims the contents the store has and lists the others, in blob
// order.
func plan(store *objects.Store, batch *objects.Batch, t *toc.TOC, st *Stats) ([]file, error) {
	seen := make(map[digest.Digest]struct{})
	var missing []file
	for _, e := range t.Entries() {
		if e.Type != toc.TypeReg || e.Size == 0 || e.IsLandmark() {
			continue // no content, or not a file of the image
		}
		d := e.Digest()
		if d == "" {
			return nil, fmt.Errorf("layer file %q: the TOC gives no digest of its content, which names its object", e.Path())
		}
		if _, ok := seen[d]; ok {
			continue
		}
		seen[d] = struct{}{}
		st.Objects++
		has, err := store.Has(d)
		if err != nil {
			return nil, fmt.Errorf("layer file %q: %w", e.Path(), err)
		}
		if has {
			if err := batch.Add(d); err != nil {
				return nil, err
			}
			st.Present++
			continue
		}
		f := file{e: e, d: d, start: -1}
		for _, c := range e.Chunks() {
			if c.Zero {
				continue
			}
			if f.start < 0 {
				f.start = c.Offset
			}
			f.start, f.end = min(f.start, c.Offset), max(f.end, c.EndOffset)
		}
		if f.start < 0 {
			f.start = 0
		}
		missing = append(missing, f)
	}
	slices.SortFunc(missing, func(a, b file) int { return cmp.Compare(a.start, b.start) })
	return missing, nil
}

// group puts neighbouring files into one read, while it stays within
// MaxRead and the gaps within MaxGap. A file larger than MaxRead is a
// read of its own, which fetches it in pieces.
func group(missing []file, opts Options) [][]file {
	var reads [][]file
	var cur []file
	var start, end int64
	for _, f := range missing {
		if len(cur) > 0 && f.start-end <= opts.MaxGap && max(end, f.end)-start <= opts.MaxRead {
			cur = append(cur, f)
			end = max(end, f.end)
			continue
		}
		if len(cur) > 0 {
			reads = append(reads, cur)
		}
		cur, start, end = []file{f}, f.start, f.end
	}
	if len(cur) > 0 {
		reads = append(reads, cur)
	}
	return reads
}

type filler struct {
	batch *objects.Batch
	blob  io.ReaderAt
	b     format.Blob
	opts  Options

	fetched, written, reads, readBytes atomic.Int64
}

// read fetches the blob bytes files take, in one read if they fit in
// MaxRead (a single larger file in several), and writes each file.
func (f *filler) read(ctx context.Context, files []file) error {
	start, end := files[0].start, files[0].end
	for _, fl := range files[1:] {
		start, end = min(start, fl.start), max(end, fl.end)
	}
	var buf []byte
	if end-start <= f.opts.MaxRead {
		var err error
		if buf, err = f.fetch(start, end, files[0]); err != nil {
			return err
		}
	}
	for _, fl := range files {
		if err := ctx.Err(); err != nil {
			return err
		}
		if err := f.write(ctx, fl, buf, start); err != nil {
			return err
		}
	}
	return nil
}

// fetch reads the blob's bytes start..end for fl (the first file of the
// read, named in an error).
func (f *filler) fetch(start, end int64, fl file) ([]byte, error) {
	if start == end {
		return nil, nil
	}
	buf := make([]byte, end-start)
	f.reads.Add(1)
	n, err := f.blob.ReadAt(buf, start)
	f.readBytes.Add(int64(n))
	if n == len(buf) {
		err = nil // io.ReaderAt may say EOF at the end
	}
	if err != nil {
		return nil, fmt.Errorf("layer file %q: read blob bytes %d-%d: %w", fl.e.Path(), start, end, err)
	}
	return buf, nil
}

// write writes one file's object from its chunks: out of buf (the blob
// from bufStart) when the read holds them, else fetched piece by piece.
func (f *filler) write(ctx context.Context, fl file, buf []byte, bufStart int64) error {
	w, err := f.batch.Create()
	if err != nil {
		return err
	}
	defer w.Close()
	chunks := fl.e.Chunks()
	for i := 0; i < len(chunks); {
		if err := ctx.Err(); err != nil {
			return err
		}
		c := chunks[i]
		if c.Zero {
			if err := writeZeros(w, c.Size); err != nil {
				return fmt.Errorf("layer file %q: %w", fl.e.Path(), err)
			}
			i++
			continue
		}
		piece, pieceStart := buf, bufStart
		j := i + 1
		if buf == nil {
			// A file larger than one read: as many of its next chunks
			// as one read holds (at least one).
			end := c.EndOffset
			for j < len(chunks) && !chunks[j].Zero && max(end, chunks[j].EndOffset)-c.Offset <= f.opts.MaxRead {
				end = max(end, chunks[j].EndOffset)
				j++
			}
			if piece, err = f.fetch(c.Offset, end, fl); err != nil {
				return err
			}
			pieceStart = c.Offset
		}
		for ; i < j; i++ {
			c := chunks[i]
			data, err := f.b.ReadChunk(nil, piece[c.Offset-pieceStart:c.EndOffset-pieceStart], c)
			if err != nil {
				return fmt.Errorf("layer file %q: %w", fl.e.Path(), err)
			}
			if _, err := w.Write(data); err != nil {
				return fmt.Errorf("layer file %q: %w", fl.e.Path(), err)
			}
		}
	}
	obj, err := w.Commit(fl.d)
	if err != nil {
		return fmt.Errorf("layer file %q: %w", fl.e.Path(), err)
	}
	if obj.Size != fl.e.Size {
		return fmt.Errorf("layer file %q: %d bytes stored, the TOC says %d", fl.e.Path(), obj.Size, fl.e.Size)
	}
	f.fetched.Add(1)
	f.written.Add(obj.Size)
	return nil
}

var zeros [64 << 10]byte

func writeZeros(w io.Writer, n int64) error {
	for n > 0 {
		k := min(n, int64(len(zeros)))
		if _, err := w.Write(zeros[:k]); err != nil {
			return err
		}
		n -= k
	}
	return nil
}

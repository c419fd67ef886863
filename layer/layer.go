// Package layer is one lazily fetched layer: it opens the layer's TOC in a
// round trip or two, serves file reads chunk by chunk through a verified
// cache, prefetches what the image marks as needed first and fetches the
// rest in the background in large ranges, never fetching a byte range twice.
//
// It reads the blob through a Fetcher and keeps data in a Cache: it must
// not know HTTP, registries or FUSE.
package layer

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"slices"
	"sort"
	"sync"
	"sync/atomic"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/lazypull/lazypull/format"
	"github.com/lazypull/lazypull/format/toc"
)

// Fetcher reads byte ranges of the layer's blob (remote.Blob does, from a
// registry).
type Fetcher interface {
	Size() int64
	// FetchAt fills p with the bytes at off, or fails.
	FetchAt(ctx context.Context, p []byte, off int64) error
}

// Cache keeps verified data by digest (cache.Cache does).
type Cache interface {
	Get(d digest.Digest) ([]byte, bool)
	Put(d digest.Digest, data []byte) error
	PutFile(d digest.Digest, r io.Reader) error
	Open(d digest.Digest) (*os.File, bool)
	Has(d digest.Digest) bool
	Remove(d digest.Digest) error
}

// Options tune a layer.
type Options struct {
	// Unverified opens layers whose descriptor carries no TOC digest.
	Unverified bool
	Limits     toc.Limits
	// TailSize is how much of the blob's end the first request reads,
	// hoping to get the footer and the whole TOC at once (default 512 KiB),
	// when the layer's annotations do not say where its TOC starts.
	TailSize int64
	// SpanSize bounds one background or prefetch request (default 8 MiB);
	// Parallel is how many such requests run at once (default 4).
	SpanSize int64
	Parallel int
	// WholeFile is the largest file, in compressed bytes, that a first
	// read fetches whole (default 16 MiB); ReadAhead is how many bytes
	// past a read of a larger file are fetched ahead of it (default 4 MiB).
	WholeFile int64
	ReadAhead int64
	// Gate is shared by the layers that share a link (default: the
	// layer's own).
	Gate *Gate
	// OnMiss, if set, is told (in a goroutine of its own) of each file a
	// read had to fetch for: the mounter guesses from it what the
	// container reads next.
	OnMiss func(e *toc.Entry)
}

func (o Options) withDefaults() Options {
	if o.TailSize <= 0 {
		o.TailSize = 512 << 10
	}
	if o.SpanSize <= 0 {
		o.SpanSize = 8 << 20
	}
	if o.Parallel <= 0 {
		o.Parallel = 4
	}
	if o.WholeFile <= 0 {
		o.WholeFile = 16 << 20
	}
	if o.ReadAhead <= 0 {
		o.ReadAhead = 4 << 20
	}
	if o.Gate == nil {
		o.Gate = NewGate()
	}
	return o
}

// Stats describe a layer's fetching so far.
type Stats struct {
	Digest        digest.Digest
	Size          int64 // of the blob
	DataSize      int64 // of the compressed file data
	FetchedBytes  int64
	Requests      int64
	CachedBytes   int64 // of the data area, fetched or found in the cache
	ChunksFetched int64
	Errors        int64
	LastError     string
}

// Layer is an opened lazy layer.
type Layer struct {
	desc    ocispec.Descriptor
	blob    format.Blob
	kind    format.Kind
	fetcher Fetcher
	cache   Cache
	opts    Options

	members   []member  // compressed members (gzip) or frames (zstd), by offset
	dataBytes int64     // their total size
	tailPiece tailPiece // set once, at Open

	mu       sync.Mutex
	inflight map[int]*call // member index → the fetch that brings it
	done     []bool        // member index → all its chunks are cached
	// assembling holds the files being assembled for passthrough;
	// Close waits for assemblies.
	assembling map[digest.Digest]bool
	assemblies sync.WaitGroup
	lastErr    error

	gate       *Gate // foreground fetches, which the background gives way to
	fetched    atomic.Int64
	requests   atomic.Int64
	chunks     atomic.Int64
	errCount   atomic.Int64
	cachedData atomic.Int64

	stop      context.CancelFunc
	bgDone    chan struct{}
	tailDone  chan struct{} // closed when the members the tail read brought are cached
	closeOnce sync.Once
}

// tailPiece is the end of a member that the first read brought.
type tailPiece struct {
	member int
	from   int64
	data   []byte
}

type member struct {
	off, end int64
	chunks   []chunkRef
}

type chunkRef struct {
	e *toc.Entry
	i int
}

// call is one fetch of a run of members; waiters find the decoded chunks
// in data even if the cache could not keep them.
type call struct {
	done chan struct{}
	err  error
	data map[digest.Digest][]byte
}

// Open reads and verifies the layer's TOC (from one read of the blob's
// tail when it fits) and indexes its chunks.
func Open(ctx context.Context, desc ocispec.Descriptor, f Fetcher, c Cache, opts Options) (*Layer, error) {
	opts = opts.withDefaults()
	if f.Size() != desc.Size {
		return nil, fmt.Errorf("layer %s: the blob has %d bytes, the descriptor says %d", desc.Digest, f.Size(), desc.Size)
	}
	tailSize := min(desc.Size, opts.TailSize)
	if start, ok := format.TOCStart(desc); ok && desc.Size-start <= opts.Limits.WithDefaults().MaxTOCBytes {
		// The manifest says where the TOC starts: read it and the footer,
		// and no file data the container may never want.
		tailSize = desc.Size - start
	}
	tail := make([]byte, tailSize)
	if err := f.FetchAt(ctx, tail, desc.Size-tailSize); err != nil {
		return nil, fmt.Errorf("layer %s: read its end: %w", desc.Digest, err)
	}
	ra := &tailReaderAt{ctx: ctx, f: f, tail: tail, tailOff: desc.Size - tailSize}
	blob, kind, err := format.Open(ra, desc, format.Options{Limits: opts.Limits, Unverified: opts.Unverified})
	if err != nil {
		return nil, err
	}
	l := &Layer{desc: desc, blob: blob, kind: kind, fetcher: f, cache: c, opts: opts, gate: opts.Gate, inflight: make(map[int]*call), assembling: make(map[digest.Digest]bool)}
	l.requests.Add(1 + ra.extra)
	l.fetched.Add(tailSize + ra.extraBytes)
	l.index()
	l.keepTail(tail, desc.Size-tailSize)
	return l, nil
}

// keepTail caches the chunks of members that the tail read brought along:
// for a small layer that is all of it, in the one request that got the TOC.
func (l *Layer) keepTail(tail []byte, tailOff int64) {
	first := sort.Search(len(l.members), func(k int) bool { return l.members[k].off >= tailOff })
	if first > 0 && l.members[first-1].end > tailOff {
		// The member the tail cuts: keep its end, so that fetching it
		// later asks only for the rest.
		m := l.members[first-1]
		l.tailPiece = tailPiece{member: first - 1, from: tailOff, data: bytes.Clone(tail[:m.end-tailOff])}
	}
	if first == len(l.members) {
		return
	}
	cl, mine := l.claim(first, len(l.members))
	if !mine {
		return
	}
	// Caching them costs a file create per chunk: for a layer of small
	// files, hundreds, which would delay the mount by as many
	// milliseconds. Cache them after Open returns; they stay claimed, so a
	// read of one waits for this call and takes its data from it.
	l.tailDone = make(chan struct{})
	go func() {
		defer close(l.tailDone)
		var err error
		for k := first; k < len(l.members) && err == nil; k++ {
			m := l.members[k]
			err = l.decodeMember(tail[m.off-tailOff:m.end-tailOff], m, cl)
		}
		l.release(first, len(l.members), cl, err)
	}()
}

// index groups chunks by the member that holds them.
func (l *Layer) index() {
	byOff := make(map[int64]int)
	for _, e := range l.blob.TOC().Entries {
		for i, c := range e.Chunks {
			if c.Zero {
				continue
			}
			k, ok := byOff[c.Offset]
			if !ok {
				k = len(l.members)
				byOff[c.Offset] = k
				l.members = append(l.members, member{off: c.Offset, end: c.EndOffset})
			}
			l.members[k].chunks = append(l.members[k].chunks, chunkRef{e, i})
		}
	}
	sort.Slice(l.members, func(a, b int) bool { return l.members[a].off < l.members[b].off })
	// Kept for the layer's life: no spare capacity (a layer of 50,000
	// files has as many members).
	l.members = slices.Clone(l.members)
	l.done = make([]bool, len(l.members))
	for _, m := range l.members {
		l.dataBytes += m.end - m.off
	}
}

// memberOf returns the index of the member that holds chunk c (not a
// hole). Members are sorted by offset and one offset is one member: a
// binary search, where a map from chunks would cost megabytes per layer
// of many files.
func (l *Layer) memberOf(c toc.Chunk) int {
	return sort.Search(len(l.members), func(k int) bool { return l.members[k].off >= c.Offset })
}

// TOC is the layer's verified table of contents.
func (l *Layer) TOC() *toc.TOC { return l.blob.TOC() }

// Kind is the layer's format.
func (l *Layer) Kind() format.Kind { return l.kind }

// Descriptor is the layer's descriptor.
func (l *Layer) Descriptor() ocispec.Descriptor { return l.desc }

// Stats returns the layer's fetching so far.
func (l *Layer) Stats() Stats {
	s := Stats{
		Digest: l.desc.Digest, Size: l.desc.Size, DataSize: l.dataBytes,
		FetchedBytes: l.fetched.Load(), Requests: l.requests.Load(), CachedBytes: l.cachedData.Load(),
		ChunksFetched: l.chunks.Load(), Errors: l.errCount.Load(),
	}
	l.mu.Lock()
	if l.lastErr != nil {
		s.LastError = l.lastErr.Error()
	}
	l.mu.Unlock()
	return s
}

// Close stops background fetching, and waits for what is being cached.
func (l *Layer) Close() {
	l.closeOnce.Do(func() {
		if l.stop != nil {
			l.stop()
			<-l.bgDone
		}
		if l.tailDone != nil {
			<-l.tailDone
		}
		l.assemblies.Wait()
	})
}

// tailReaderAt serves reads from the blob's tail it already has, and
// fetches the rest.
type tailReaderAt struct {
	ctx        context.Context
	f          Fetcher
	tail       []byte
	tailOff    int64
	extra      int64
	extraBytes int64
}

func (t *tailReaderAt) ReadAt(p []byte, off int64) (int, error) {
	if off >= t.tailOff && off+int64(len(p)) <= t.tailOff+int64(len(t.tail)) {
		return copy(p, t.tail[off-t.tailOff:]), nil
	}
	if off+int64(len(p)) > t.f.Size() {
		return 0, io.ErrUnexpectedEOF
	}
	t.extra++
	t.extraBytes += int64(len(p))
	if err := t.f.FetchAt(t.ctx, p, off); err != nil {
		return 0, err
	}
	return len(p), nil
}

// errorf records an error against the layer (stats, state file) and
// returns it.
func (l *Layer) record(err error) error {
	if err == nil {
		return nil
	}
	l.errCount.Add(1)
	l.mu.Lock()
	l.lastErr = err
	l.mu.Unlock()
	return err
}

// Package layer is one lazily fetched layer: it opens the layer's TOC in a
// round trip or two, serves file reads chunk by chunk through a verified
// cache, prefetches what the image marks as needed first and fetches the
// rest in the background in large ranges, never fetching a byte range twice.
//
// Every goroutine a layer starts belongs to it: it runs on the layer's
// context, is counted by its WaitGroup and turns a panic into an error
// recorded on the layer, so that one hostile layer fails its own reads and
// nothing else. Close cancels and waits for all of them.
//
// It reads the blob through a Fetcher and keeps data in a Cache: it must
// not know HTTP, registries or FUSE.
package layer

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime/debug"
	"slices"
	"sort"
	"sync"
	"sync/atomic"

	"github.com/containerd/log"
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
	// ReadAt fills p from off in the entry for d, which holds size bytes,
	// or reports false (absent, corrupt, or another size).
	ReadAt(d digest.Digest, size int64, p []byte, off int64) bool
	// Put stores a copy of data: the caller reuses it after.
	Put(d digest.Digest, data []byte) error
	// PutFile streams r's content in, failing with
	// cache.ErrDigestMismatch when it does not hash to d.
	PutFile(d digest.Digest, r io.Reader) error
	// PutPart, PutPartFrom, HasPart, ReadPart and Seal fill the entry of
	// a whole file d in place, a verified piece (a chunk) at a time; it
	// is a whole entry (Has, Open) only once sealed. The puts return how
	// many bytes of d are in.
	PutPart(d digest.Digest, size, off int64, piece digest.Digest, data []byte) (int64, error)
	PutPartFrom(d digest.Digest, size, off int64, piece digest.Digest, n int64, r io.Reader) (int64, error)
	HasPart(d digest.Digest, off int64, piece digest.Digest) bool
	ReadPart(d digest.Digest, size, off int64, piece digest.Digest, n int64, p []byte, from int64) bool
	Seal(d digest.Digest) error
	Open(d digest.Digest) (*os.File, bool)
	Has(d digest.Digest) bool
	Remove(d digest.Digest) error
	// Demote makes the entries the first to go when the cache is full.
	Demote(ds []digest.Digest)
}

// defaultSpanSize is Options.SpanSize unless set.
const defaultSpanSize = 8 << 20

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
	// Expect is what the layer's content must be: it is verified once
	// the background fetch has brought it all (see Expect).
	Expect Expect
	// SpoolDir holds the blobs being verified and the markers of those
	// verified (default: the system's temporary directory, no markers).
	SpoolDir string
	// Budget bounds what the layers of one process may hold and open at
	// once (default: the layer's own, DefaultBudget's bounds).
	Budget *Budget
	// OnMiss, if set, is told of files a read had to fetch for, in a
	// goroutine of the layer's (a few at once; the rest are dropped, as
	// it only guesses): the mounter guesses from it what the container
	// reads next. ctx ends when the layer closes.
	OnMiss func(ctx context.Context, e *toc.Entry)
	// Record, if set, is told of every read of a file (its entry, hard
	// links resolved, and the range asked for), cached or not, as it
	// comes: what a workload profile is recorded from. CachedFile then
	// hands out no file, so that every read comes through ReadAt.
	Record func(e *toc.Entry, off, n int64)
}

func (o Options) withDefaults() Options {
	if o.TailSize <= 0 {
		o.TailSize = 512 << 10
	}
	if o.SpanSize <= 0 {
		o.SpanSize = defaultSpanSize
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
	if o.Budget == nil {
		o.Budget = NewBudget(DefaultBudget)
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
	// ProfiledBytes are the compressed bytes of the members that
	// workload profiles asked for (FetchRanges).
	ProfiledBytes int64
	// EarlyBytes are the bytes the layer's fetches took from a fetch
	// started before it was open (Early), not from the registry.
	EarlyBytes int64
	// Verification is where the check of the layer against its image
	// stands (see Expect).
	Verification Verification
}

// Layer is an opened lazy layer.
type Layer struct {
	desc    ocispec.Descriptor
	blob    format.Blob
	kind    format.Kind
	fetcher Fetcher
	cache   Cache
	opts    Options
	// aheadStarted: a fetch ahead (a profile's, or the prefetch) has
	// started, the one an Early fetcher's spans were for.
	aheadStarted atomic.Bool

	members   []member   // compressed members (gzip) or frames (zstd), by offset
	refs      []chunkRef // the members' chunks, member by member
	dataBytes int64      // their total size
	// holes are the bytes of the holes of each file that fills in place
	// and has any (by its index in the TOC): what of it is never cached.
	holes     map[uint32]int64
	tailPiece tailPiece // set once, at Open

	// ctx ends when the layer closes; wg counts every goroutine the
	// layer started (see spawn).
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
	hints  chan struct{} // slots for OnMiss calls
	budget *Budget
	held   int64 // entries reserved in budget

	mu       sync.Mutex
	closed   bool
	rejected error // why the layer's content is not what its image says

	verification Verification
	verifyDone   chan struct{} // closed when verification ends; nil without Expect
	spool        *spool        // the blob's bytes kept to verify it (set at Open)

	inflight map[int]*call // member index → the fetch that brings it
	done     []bool        // member index → all its chunks are cached
	// sealing holds the files filled in place being sealed.
	sealing map[digest.Digest]bool
	lastErr error

	gate       *Gate // foreground fetches, which the background gives way to
	fetched    atomic.Int64
	requests   atomic.Int64
	chunks     atomic.Int64
	errCount   atomic.Int64
	cachedData atomic.Int64
	profiled   atomic.Int64 // see Stats.ProfiledBytes
	isRejected atomic.Bool  // rejected != nil, read without the lock

	bgDone    chan struct{}
	closeOnce sync.Once
	cacheWarn sync.Once // logs the first chunk the cache would not take
}

// tailPiece is the end of a member that the first read brought.
type tailPiece struct {
	member int
	from   int64
	data   []byte
}

// member is a compressed member (gzip) or frame (zstd). A layer of
// 50,000 small files has as many, kept for its life: 16 bytes each.
type member struct {
	off  int64
	size uint32 // toc.Limits keeps a member under 4 GiB
	// first is the member's first chunk in Layer.refs; the next member's
	// first ends its chunks.
	first uint32
}

func (m member) end() int64 { return m.off + int64(m.size) }

// chunkRef names a chunk by the index of its entry in the TOC's Entries
// and its index among that entry's chunks: 8 bytes, not a pointer and an
// int.
type chunkRef struct {
	entry, chunk uint32
}

// chunksOf lists the chunks that member k holds.
func (l *Layer) chunksOf(k int) []chunkRef {
	end := len(l.refs)
	if k+1 < len(l.members) {
		end = int(l.members[k+1].first)
	}
	return l.refs[l.members[k].first:end]
}

// resolve resolves a reference to its entry and chunk.
func (l *Layer) resolve(r chunkRef) (*toc.Entry, *toc.Chunk) {
	e := l.blob.TOC().Entry(int(r.entry))
	return e, &e.Chunks()[r.chunk]
}

// call is one fetch of a run of members. Readers waiting on it register
// the chunk they want in want; its decoded bytes are kept in data for
// them (the cache may not keep them, or evict them first) and dropped as
// soon as the last of them took it. Nothing else is kept: a background
// fetch holds no decoded data. want and data are guarded by Layer.mu.
type call struct {
	done chan struct{}
	err  error
	want map[digest.Digest]int
	data map[digest.Digest][]byte
}

// Open reads and verifies the layer's TOC (from one read of the blob's
// tail when it fits) and indexes its chunks.
func Open(ctx context.Context, desc ocispec.Descriptor, f Fetcher, c Cache, opts Options) (*Layer, error) {
	opts = opts.withDefaults()
	if f.Size() != desc.Size {
		return nil, fmt.Errorf("layer %s: the blob has %d bytes, the descriptor says %d", desc.Digest, f.Size(), desc.Size)
	}
	limits := opts.Limits.WithDefaults()
	tailSize := min(desc.Size, opts.TailSize)
	if start, ok := format.TOCStart(desc); ok && start >= 0 && start < desc.Size && desc.Size-start <= limits.MaxTOCBytes {
		// The manifest says where the TOC starts: read it and the footer,
		// and no file data the container may never want.
		tailSize = desc.Size - start
	}
	tail := make([]byte, tailSize)
	if err := f.FetchAt(ctx, tail, desc.Size-tailSize); err != nil {
		return nil, fmt.Errorf("layer %s: read its end: %w", desc.Digest, err)
	}
	// Decompressing and parsing a TOC costs memory in proportion to what
	// it decompresses to, not to the bytes fetched: only a few at once
	// per process (the fetches above run in parallel).
	if err := opts.Budget.startOpen(ctx); err != nil {
		return nil, fmt.Errorf("layer %s: wait to open: %w", desc.Digest, err)
	}
	ra := &tailReaderAt{ctx: ctx, f: f, tail: tail, tailOff: desc.Size - tailSize}
	// Nor more entries than the process may still hold.
	limits.MaxEntries = int(min(int64(limits.MaxEntries), opts.Budget.remaining()))
	blob, kind, err := format.Open(ra, desc, format.Options{Limits: limits, Unverified: opts.Unverified})
	opts.Budget.endOpen()
	// The blob keeps its reader, which the layer never reads through
	// again: let the tail (a TOC of megabytes) go with Open.
	ra.tail, ra.ctx = nil, context.Background()
	if err != nil {
		return nil, err
	}
	held := int64(blob.TOC().Len()) + 1
	if err := opts.Budget.reserve(held); err != nil {
		return nil, fmt.Errorf("layer %s: %w", desc.Digest, err)
	}
	l := &Layer{desc: desc, blob: blob, kind: kind, fetcher: f, cache: c, opts: opts, gate: opts.Gate,
		budget: opts.Budget, held: held, hints: make(chan struct{}, maxHintCalls),
		inflight: make(map[int]*call), sealing: make(map[digest.Digest]bool)}
	l.ctx, l.cancel = context.WithCancel(context.WithoutCancel(ctx))
	l.requests.Add(1 + ra.extra)
	l.fetched.Add(tailSize + ra.extraBytes)
	l.index()
	l.startVerify(tail, desc.Size-tailSize)
	l.keepTail(tail, desc.Size-tailSize)
	return l, nil
}

// maxHintCalls bounds the OnMiss calls of a layer in flight.
const maxHintCalls = 4

// spawn runs fn in a goroutine that belongs to the layer: on the layer's
// context, counted for Close, a panic recorded as the layer's error. It
// returns false, and runs nothing, once the layer is closed.
func (l *Layer) spawn(what string, fn func(ctx context.Context)) bool {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return false
	}
	l.wg.Add(1)
	l.mu.Unlock()
	go func() {
		defer l.wg.Done()
		defer l.recoverAs(what, nil)
		fn(l.ctx)
	}()
	return true
}

// recoverAs turns a panic in the layer's code into an error recorded on
// the layer (and in *errp if not nil): bad data from one image must not
// take down the process that serves every image.
func (l *Layer) recoverAs(what string, errp *error) {
	if r := recover(); r != nil {
		l.recovered(r, what, errp)
	}
}

// recovered records the panic r, recovered in what.
func (l *Layer) recovered(r any, what string, errp *error) {
	err := fmt.Errorf("layer %s: internal error in %s: %v", l.desc.Digest, what, r)
	log.L.WithError(err).WithField("stack", string(debug.Stack())).Error("recovered from a panic; the layer's reads fail with EIO")
	l.record(err)
	if errp != nil {
		*errp = err
	}
}

// missed tells OnMiss of e, if a slot is free.
func (l *Layer) missed(e *toc.Entry) {
	if l.opts.OnMiss == nil {
		return
	}
	select {
	case l.hints <- struct{}{}:
	default:
		return // a guess: drop it rather than pile goroutines up
	}
	if !l.spawn("hint", func(ctx context.Context) {
		defer func() { <-l.hints }()
		l.opts.OnMiss(ctx, e)
	}) {
		<-l.hints
	}
}

// keepTail caches the chunks of members that the tail read brought along:
// for a small layer that is all of it, in the one request that got the TOC.
func (l *Layer) keepTail(tail []byte, tailOff int64) {
	first := sort.Search(len(l.members), func(k int) bool { return l.members[k].off >= tailOff })
	if first > 0 && l.members[first-1].end() > tailOff {
		// The member the tail cuts: keep its end, so that fetching it
		// later asks only for the rest.
		m := l.members[first-1]
		l.tailPiece = tailPiece{member: first - 1, from: tailOff, data: bytes.Clone(tail[:m.end()-tailOff])}
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
	l.spawn("caching the tail", func(ctx context.Context) {
		var err error
		defer func() { l.release(first, len(l.members), cl, err) }()
		defer l.recoverAs("caching the tail", &err)
		for k := first; k < len(l.members) && err == nil; k++ {
			m := l.members[k]
			err = l.decodeMember(tail[m.off-tailOff:m.end()-tailOff], k, cl)
		}
	})
}

// index groups chunks by the member that holds them. Kept for the
// layer's life, so packed: one array of chunk references, in member
// order, which each member indexes into (a layer of 50,000 files has as
// many members), and no spare capacity.
func (l *Layer) index() {
	type placed struct {
		off, end int64
		ref      chunkRef
	}
	entries := l.blob.TOC().Entries()
	var n int
	l.holes = make(map[uint32]int64)
	for i, e := range entries {
		for _, c := range e.Chunks() {
			if !c.Zero {
				n++
			} else if fills(e) {
				l.holes[uint32(i)] += c.Size
			}
		}
	}
	// The indexes fit in 32 bits: toc.Limits bounds the TOC's bytes, and
	// every chunk takes some of them.
	all := make([]placed, 0, n)
	for i, e := range entries {
		for j, c := range e.Chunks() {
			if !c.Zero {
				all = append(all, placed{c.Offset, c.EndOffset, chunkRef{uint32(i), uint32(j)}})
			}
		}
	}
	// By offset; in TOC order within a member.
	slices.SortStableFunc(all, func(a, b placed) int { return cmp.Compare(a.off, b.off) })
	l.refs = make([]chunkRef, len(all))
	members := 0
	for i, p := range all {
		l.refs[i] = p.ref
		if i == 0 || p.off != all[i-1].off {
			members++
		}
	}
	l.members = make([]member, 0, members)
	for i, p := range all {
		if i == 0 || p.off != all[i-1].off {
			l.members = append(l.members, member{off: p.off, size: uint32(p.end - p.off), first: uint32(i)})
			l.dataBytes += p.end - p.off
		}
	}
	l.done = make([]bool, len(l.members))
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
		ChunksFetched: l.chunks.Load(), Errors: l.errCount.Load(), ProfiledBytes: l.profiled.Load(),
	}
	if e, ok := l.fetcher.(*Early); ok {
		s.EarlyBytes = e.taken.Load()
	}
	s.Verification, _ = l.Verification()
	l.mu.Lock()
	if l.lastErr != nil {
		s.LastError = l.lastErr.Error()
	}
	l.mu.Unlock()
	return s
}

// Close stops every fetch the layer started, waits for its goroutines and
// gives its entries back to the budget. Reads after Close fail.
func (l *Layer) Close() {
	l.closeOnce.Do(func() {
		l.mu.Lock()
		l.closed = true
		l.mu.Unlock()
		l.cancel()
		l.wg.Wait()
		if e, ok := l.fetcher.(*Early); ok {
			e.Close()
		}
		if l.spool != nil {
			l.spool.close()
		}
		l.budget.release(l.held)
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

// record records an error against the layer (stats, state file) and
// returns it. The end of the layer's own life is not an error.
func (l *Layer) record(err error) error {
	if err == nil || l.ctx.Err() != nil && (errors.Is(err, errClosed) || errors.Is(err, context.Canceled)) {
		return err
	}
	l.errCount.Add(1)
	l.mu.Lock()
	l.lastErr = err
	l.mu.Unlock()
	return err
}

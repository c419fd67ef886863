package layer

import (
	"cmp"
	"context"
	"errors"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/containerd/log"
	"github.com/opencontainers/go-digest"

	"github.com/lazypull/lazypull/format/toc"
)

// Span is a byte range of a layer's blob.
type Span struct {
	Offset, Length int64
}

// EarlySpan is a span an Early fetch requests, and its place among those
// of all the layers of its EarlyGroup: by Phase, then by Rank.
type EarlySpan struct {
	Span
	// Phase: 0 and 1 start as soon as a request is free; a later phase
	// waits until the requests of every phase before it are done, so that
	// those have the link to themselves. With several workloads' profiles
	// of an image, phase 0 is what more than one read, and 1, 2, … each
	// one's own: the smallest workload's bytes (0 and 1) come first,
	// undisturbed.
	Phase int
	// Rank orders spans within a phase: when the workload first touched
	// them, comparable across layers.
	Rank int
}

// Spans returns the blob's byte ranges that hold the chunks of ranges (a
// workload profile's plan), as FetchRanges would request them: members
// near each other joined, in the order of the first range that needs
// each, which is its Rank (an index in ranges). A node that knows them
// can fetch them before it has this TOC (Early).
func (l *Layer) Spans(ranges []toc.Range) []EarlySpan {
	runs := l.runsOf(ranges)
	out := make([]EarlySpan, len(runs))
	for i, r := range runs {
		off := l.members[r.from].off
		out[i] = EarlySpan{Span: Span{Offset: off, Length: l.members[r.to-1].end() - off}, Rank: r.rank}
	}
	return out
}

// Early fetches spans of a blob before its layer is open: those a workload
// profile names (Layer.Spans, recorded with it), so that they cross the
// link while the TOC is parsed and the layer mounted, instead of after.
// It is the layer's Fetcher: a fetch takes the parts that pieces on their
// way or in hold, each byte once, and the rest from the blob. A read
// fetches the bytes of a piece still queued itself (that piece leaves the
// queue); the layer's paced fetches wait for it in its turn. Its spans
// start when its first fetch, the layer's tail with the TOC, has arrived,
// and those of the other layers of its EarlyGroup: they never slow the
// mount. The group requests the pieces of all its layers in one order.
//
// It holds raw blob bytes and trusts them no more than the registry's:
// the layer verifies every chunk it decodes from them. Once its layer has
// taken nothing for earlyKeep, it stops and drops what it holds. The
// bytes held in the process are bounded (earlyMaxBytes): spans past it
// are fetched by the layer later.
type Early struct {
	f     Fetcher
	layer digest.Digest // its blob: for its group and the log
	spans []EarlySpan
	group *EarlyGroup

	start sync.Once
	ctx   context.Context
	stop  context.CancelFunc
	idle  *time.Timer // stops it earlyKeep after the last take

	taken atomic.Int64 // bytes handed out from pieces

	mu       sync.Mutex
	pieces   []*piece // by offset, disjoint
	launched bool
	direct   SpanSet // what the layer fetched itself before the launch
	dropped  bool    // earlyKeep is over: no pieces any more

	// For the log: when the launch began, the pieces not done yet, and
	// the bytes fetched.
	began   time.Time
	left    atomic.Int64
	fetched atomic.Int64
}

// piece is one request of an Early fetch, and its bytes until all have
// been taken.
type piece struct {
	off int64
	n   int64
	// phase and rank: its span's (EarlySpan), for its group's order.
	phase, rank int
	data        []byte        // its n bytes, once in
	done        chan struct{} // closed when data is in, or err set
	err         error
	// taken are the parts already handed out, sorted and merged: a part
	// is never handed out twice (a second fetch of it, after its chunks
	// failed to verify, goes to the registry).
	taken SpanSet
	// takers are the fetches that took a part and have not copied it
	// yet: the piece keeps its bytes until the last has.
	takers int
	// counted: its n bytes count against earlyMaxBytes (from when its
	// request starts), until it is released. released: it is out of
	// Early.pieces (a fetch that took it still copies from it).
	counted, released bool
}

// earlyPieceSize bounds one request of an Early fetch: small enough that
// the first ranked bytes arrive first, large enough that a round trip
// per request costs little (as the profiled fetch's spans, measured).
const earlyPieceSize = 2 << 20

// earlyKeep is how long an Early fetch goes on while its layer takes
// nothing from it (it did not open, or its profile did not fit). A layer
// that keeps taking keeps it going: a profile of a whole data set is
// fetched for minutes, and cutting it off midway wasted the pieces on
// their way and those held.
const earlyKeep = time.Minute

// earlyMaxBytes bounds the bytes all Early fetches of the process hold:
// a workload's start reads tens of MB; a profile of a whole data set is
// fetched ahead only as far as its layer keeps up.
const earlyMaxBytes = 64 << 20

var earlyHeld atomic.Int64

// EarlyHeld is how many bytes the Early fetches of the process hold.
func EarlyHeld() int64 { return earlyHeld.Load() }

// FetchEarly returns f, fetching spans (each checked against f's size)
// ahead, in the order and with the requests of group (nil: a group of its
// own, of Options.Parallel's default), as soon as the first fetch through
// it (the layer's tail) has arrived, and those of the other layers of the
// group. layer names the blob. ctx bounds the early requests.
func FetchEarly(ctx context.Context, f Fetcher, layer digest.Digest, spans []EarlySpan, group *EarlyGroup) *Early {
	if group == nil {
		group = NewEarlyGroup([]digest.Digest{layer}, 0)
	}
	ctx, stop := context.WithCancel(ctx)
	e := &Early{f: f, layer: layer, group: group, ctx: ctx, stop: stop}
	e.idle = time.AfterFunc(earlyKeep, stop)
	size := f.Size()
	for _, s := range spans {
		if s.Offset < 0 || s.Length <= 0 || s.Offset > size || s.Length > size-s.Offset {
			continue // not of this blob: the profile's spans are not trusted
		}
		e.spans = append(e.spans, s)
	}
	context.AfterFunc(ctx, e.drop)
	return e
}

// Close stops the early requests and lets go of what they brought: the
// layer closes it with itself.
func (e *Early) Close() {
	e.group.Arrived(e.layer) // or it would hold the others back
	e.idle.Stop()
	e.stop()
	e.drop()
}

// Size is the blob's.
func (e *Early) Size() int64 { return e.f.Size() }

// FetchAt fills p with the bytes at off: from the early pieces that
// hold them, fetched or on their way; the rest from the blob at once, as
// are the bytes of a piece whose request has not started (a read does not
// wait for the early fetch's order: it takes that piece's turn).
func (e *Early) FetchAt(ctx context.Context, p []byte, off int64) error {
	return e.fetch(ctx, p, off, true)
}

// fetch is FetchAt; without steal, it waits for queued pieces as for
// those on their way (the layer's own paced fetches, which would only
// double the requests in flight).
func (e *Early) fetch(ctx context.Context, p []byte, off int64, steal bool) error {
	defer e.start.Do(e.launchAfterTails)
	segs := e.take(off, off+int64(len(p)), steal)
	for i, sg := range segs {
		if sg.pc == nil {
			continue
		}
		select {
		case <-sg.pc.done:
		case <-ctx.Done():
			e.leave(segs)
			return ctx.Err()
		}
		if sg.pc.err != nil {
			e.leave(segs[i : i+1])
			segs[i].pc = nil // from the blob after all
		}
	}
	var fromPieces int64
	for i, sg := range segs {
		dst := p[sg.from-off : sg.to-off]
		if sg.pc != nil && e.copyOut(dst, sg) {
			fromPieces += sg.to - sg.from
			continue
		}
		if err := e.f.FetchAt(ctx, dst, sg.from); err != nil {
			e.leave(segs[i+1:])
			return err
		}
	}
	e.taken.Add(fromPieces)
	return nil
}

// leave gives up the parts of segs taken from pieces, uncopied: the
// fetch ended first.
func (e *Early) leave(segs []segment) {
	for _, sg := range segs {
		if sg.pc != nil {
			e.copyOut(nil, sg)
		}
	}
}

// copyOut copies segment sg of its piece into dst (nil: it is not
// wanted after all), and releases the piece once all of it is handed out
// and copied; false if the piece let go of its bytes meanwhile (earlyKeep
// ran out): they come from the blob then.
func (e *Early) copyOut(dst []byte, sg segment) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	pc := sg.pc
	pc.takers--
	if pc.data == nil {
		return false
	}
	copy(dst, pc.data[sg.from-pc.off:sg.to-pc.off])
	if pc.takers == 0 && pc.taken.Bytes() == pc.n {
		// All of it handed out and copied. Not before: a fetch that took
		// a part and copies later would find the bytes gone, and fetch
		// them again (the data image's 2 MiB pieces across its 4 MiB
		// chunks lost 150 MB that way).
		e.release(pc)
	}
	return true
}

func (pc *piece) end() int64 { return pc.off + pc.n }

// segment is a part [from, to) of a fetch, and the piece it comes from
// (nil: the blob).
type segment struct {
	pc       *piece
	from, to int64
}

// take cuts [off, end) into segments: the parts that pieces whose
// requests have started hold (marked taken from them), and the rest,
// which comes from the blob: parts no piece holds, parts taken before
// (a second fetch, after its chunks failed to verify), and, if steal, the
// parts of pieces still queued, which leave the queue. Before the launch, the
// whole range is noted as one the layer fetches itself.
func (e *Early) take(off, end int64, steal bool) []segment {
	e.mu.Lock()
	defer e.mu.Unlock()
	if !e.dropped {
		e.idle.Reset(earlyKeep)
	}
	if !e.launched {
		e.direct.Add(Span{Offset: off, Length: end - off})
		return []segment{{nil, off, end}}
	}
	i, _ := slices.BinarySearchFunc(e.pieces, off, func(pc *piece, off int64) int {
		if pc.end() <= off {
			return -1
		}
		return 1
	})
	var segs []segment
	var stolen []*piece
	add := func(pc *piece, from, to int64) {
		if n := len(segs); n > 0 && pc == nil && segs[n-1].pc == nil && segs[n-1].to == from {
			segs[n-1].to = to
			return
		}
		segs = append(segs, segment{pc, from, to})
	}
	for at := off; at < end; {
		if i >= len(e.pieces) || e.pieces[i].off >= end {
			add(nil, at, end)
			break
		}
		pc := e.pieces[i]
		if pc.off > at {
			add(nil, at, pc.off)
			at = pc.off
		}
		to := min(end, pc.end())
		part := Span{Offset: at, Length: to - at}
		switch {
		case pc.taken.Overlaps(part):
			add(nil, at, to)
		case !pc.counted && steal:
			add(nil, at, to)
			stolen = append(stolen, pc)
		default:
			pc.taken.Add(part)
			pc.takers++
			add(pc, at, to)
		}
		at = to
		i++
	}
	for _, pc := range stolen {
		e.release(pc) // its request will not run
	}
	return segs
}

// launchAfterTails launches the early requests once the tails of the
// other layers of its group have arrived too: at once if they have.
func (e *Early) launchAfterTails() {
	e.group.Arrived(e.layer)
	if len(e.spans) == 0 {
		return
	}
	select {
	case <-e.group.ready:
		e.launch()
	default:
		go func() {
			select {
			case <-e.group.ready:
				e.launch()
			case <-e.ctx.Done():
			}
		}()
	}
}

// launch cuts the spans into pieces and hands them to the group to fetch;
// not the bytes an earlier span holds, nor those the layer fetched itself
// before (a big TOC of another layer kept the launch waiting while this
// one opened).
func (e *Early) launch() {
	e.mu.Lock()
	if e.dropped {
		e.mu.Unlock()
		return
	}
	e.launched = true
	skip := slices.Clone(e.direct)
	var order []*piece
	for _, s := range e.spans {
		for _, part := range skip.Missing(s.Span) {
			skip.Add(part)
			for off, end := part.Offset, part.Offset+part.Length; off < end; off += earlyPieceSize {
				order = append(order, &piece{off: off, n: min(end-off, earlyPieceSize), phase: s.Phase, rank: s.Rank, done: make(chan struct{})})
			}
		}
	}
	e.pieces = slices.SortedFunc(slices.Values(order), func(a, b *piece) int { return cmp.Compare(a.off, b.off) })
	e.began = time.Now()
	e.left.Store(int64(len(order)))
	e.mu.Unlock()
	e.group.add(e, order)
}

// pieceDone counts a piece out: the log says what the launch fetched once
// all are done.
func (e *Early) pieceDone(pc *piece, fetched bool) {
	if fetched {
		e.fetched.Add(pc.n)
	}
	if e.left.Add(-1) == 0 {
		log.G(e.ctx).WithFields(log.Fields{"layer": e.layer, "bytes": e.fetched.Load(), "took": time.Since(e.began)}).Debug("fetched a profile's spans before the layer asked")
	}
}

// errEarlyFull fails a piece that the process's bound has no room for.
var errEarlyFull = errors.New("the early fetches hold as many bytes as they may")

// fetchPiece fetches one piece into memory it takes from the process's
// bound, and reports whether it did. A piece it could not fetch is
// released: what waits on it goes to the blob.
func (e *Early) fetchPiece(pc *piece) (ok bool) {
	defer close(pc.done)
	if pc.err = e.ctx.Err(); pc.err == nil && earlyHeld.Add(pc.n) > earlyMaxBytes {
		earlyHeld.Add(-pc.n)
		pc.err = errEarlyFull
	}
	e.mu.Lock()
	if pc.err == nil && pc.released { // dropped before its turn
		earlyHeld.Add(-pc.n)
		pc.err = context.Canceled
	}
	if pc.err != nil {
		e.release(pc)
		e.mu.Unlock()
		return false
	}
	pc.counted = true
	e.mu.Unlock()
	data := make([]byte, pc.n)
	pc.err = e.f.FetchAt(e.ctx, data, pc.off)
	e.mu.Lock()
	defer e.mu.Unlock()
	if pc.err != nil || pc.released {
		e.release(pc) // what waits on it goes to the blob
		return false
	}
	pc.data = data
	return true
}

// release lets go of a piece and its bytes: nothing takes from it any
// more (a fetch that took part of it and has not copied it yet gets those
// bytes from the blob). e.mu is held.
func (e *Early) release(pc *piece) {
	if pc.released {
		return
	}
	pc.released, pc.data = true, nil
	if pc.counted {
		earlyHeld.Add(-pc.n)
	}
	e.pieces = slices.DeleteFunc(e.pieces, func(q *piece) bool { return q == pc })
}

// drop lets go of every piece, once its context ends (Close, or earlyKeep
// without a take), and with it the requests still running.
func (e *Early) drop() {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.dropped = true
	for _, pc := range slices.Clone(e.pieces) {
		e.release(pc)
	}
}

// SpanSet is a set of byte ranges: sorted, disjoint, touching ones merged.
type SpanSet []Span

// NewSpanSet returns the set of spans (empty ones left out).
func NewSpanSet(spans []Span) SpanSet {
	sorted := slices.DeleteFunc(slices.Clone(spans), func(s Span) bool { return s.Length <= 0 })
	slices.SortFunc(sorted, func(a, b Span) int { return cmp.Compare(a.Offset, b.Offset) })
	var set SpanSet
	for _, s := range sorted {
		if n := len(set); n > 0 && s.Offset <= set[n-1].Offset+set[n-1].Length {
			set[n-1].Length = max(set[n-1].Offset+set[n-1].Length, s.Offset+s.Length) - set[n-1].Offset
			continue
		}
		set = append(set, s)
	}
	return set
}

// Overlaps reports whether the set holds any byte of x.
func (set SpanSet) Overlaps(x Span) bool {
	// The first span that ends after x starts: ends grow with offsets.
	i, _ := slices.BinarySearchFunc(set, x.Offset, func(s Span, off int64) int {
		if s.Offset+s.Length <= off {
			return -1
		}
		return 1
	})
	return i < len(set) && set[i].Offset < x.Offset+x.Length && x.Length > 0
}

// Missing returns the parts of x the set does not hold, in order.
func (set SpanSet) Missing(x Span) []Span {
	var out []Span
	at, end := x.Offset, x.Offset+x.Length
	for _, s := range set {
		if s.Offset+s.Length <= at {
			continue
		}
		if s.Offset >= end {
			break
		}
		if s.Offset > at {
			out = append(out, Span{Offset: at, Length: s.Offset - at})
		}
		at = s.Offset + s.Length
	}
	if at < end {
		out = append(out, Span{Offset: at, Length: end - at})
	}
	return out
}

// Within returns the parts of x the set holds, in order.
func (set SpanSet) Within(x Span) []Span {
	var out []Span
	end := x.Offset + x.Length
	for _, s := range set {
		from, to := max(s.Offset, x.Offset), min(s.Offset+s.Length, end)
		if from < to {
			out = append(out, Span{Offset: from, Length: to - from})
		}
	}
	return out
}

// Add puts x in the set, merged with the spans it overlaps or touches.
func (set *SpanSet) Add(x Span) {
	off, end := x.Offset, x.Offset+x.Length
	out := (*set)[:0:0]
	for _, s := range *set {
		if s.Offset+s.Length < off || end < s.Offset {
			out = append(out, s)
			continue
		}
		off, end = min(off, s.Offset), max(end, s.Offset+s.Length)
	}
	i, _ := slices.BinarySearchFunc(out, off, func(s Span, off int64) int { return cmp.Compare(s.Offset, off) })
	*set = slices.Insert(out, i, Span{Offset: off, Length: end - off})
}

// Bytes is how many bytes the set holds.
func (set SpanSet) Bytes() int64 {
	var n int64
	for _, s := range set {
		n += s.Length
	}
	return n
}

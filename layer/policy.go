package layer

import (
	"context"
	"sort"
	"sync"
	"time"

	"github.com/containerd/log"

	"github.com/lazypull/lazypull/format/toc"
)

// fetchRest fetches, alongside the reader that missed member k, the rest
// of e when e's compressed data is at most WholeFile bytes: a program
// that reads part of a binary or a library it maps reads most of it soon,
// in an order of page faults that no read-ahead follows. Spans go two at a
// time, claimed just before each is fetched, so that a reader who wants
// one of them meanwhile fetches it at once instead of queueing behind.
func (l *Layer) fetchRest(e *toc.Entry, k int) {
	if first, last, ok := l.memberSpan(e); ok && first != last {
		l.fetchFile(e, k+1, "rest of "+e.Path())
	}
}

// FetchFile fetches the whole of e (up to WholeFile bytes; hard links
// resolved by the caller), without waiting, as a read would: for a file
// the caller expects the container to read soon.
func (l *Layer) FetchFile(e *toc.Entry) {
	if first, _, ok := l.memberSpan(e); ok {
		l.fetchFile(e, first, "expected "+e.Path())
	}
}

// fetchFile fetches e's members from k to its last, then its first ones
// up to k, in the background but ahead of background work.
func (l *Layer) fetchFile(e *toc.Entry, k int, why string) {
	first, last, ok := l.memberSpan(e)
	if !ok || l.members[last].end()-l.members[first].off > l.opts.WholeFile {
		return
	}
	l.gate.enter()
	if !l.spawn(why, func(ctx context.Context) {
		defer l.gate.leave()
		p := pace{parallel: 2, span: 2 << 20}
		err := l.fetchRange(ctx, k, last+1, why, p)
		if err == nil {
			err = l.fetchRange(ctx, first, k, why, p)
		}
		if err == nil && fills(e) && !l.cache.Has(e.Digest()) {
			// A file read now is read again at the next start: have it
			// ready for passthrough then (its chunks may have been
			// cached in entries of their own).
			if f, ok := l.CachedFile(e); ok {
				f.Close()
			}
		}
	}) {
		l.gate.leave()
	}
}

// readAhead fetches, in the background, the chunks of e that follow a
// sequential read, up to ReadAhead bytes, for files too large for
// fetchRest.
func (l *Layer) readAhead(e *toc.Entry, from int) {
	if from >= len(e.Chunks()) {
		return
	}
	if first, last, ok := l.memberSpan(e); ok && l.members[last].end()-l.members[first].off <= l.opts.WholeFile {
		return
	}
	var size int64
	first, last := -1, -1
	for i := from; i < len(e.Chunks()) && size < l.opts.ReadAhead; i++ {
		c := e.Chunks()[i]
		if c.Zero {
			size += min(c.Size, l.opts.ReadAhead) // a hole is read ahead too
			continue
		}
		k := l.memberOf(c)
		if first < 0 {
			first = k
		}
		last = k
		size += c.Size
	}
	if first < 0 {
		return
	}
	// Chunks cached by an earlier mount (or another layer) are not
	// fetched again: claim skips members marked done.
	l.markCached(first, last+1)
	if cl, mine := l.claim(first, last+1); mine {
		l.gate.enter() // the reader will want these next
		if !l.spawn("read-ahead", func(ctx context.Context) {
			defer l.gate.leave()
			l.fetchSpan(ctx, first, last+1, cl, "read-ahead of "+e.Path())
		}) {
			l.gate.leave()
			l.release(first, last+1, cl, errClosed)
		}
	}
}

// Prefetch fetches the files the image marks as needed first (before the
// prefetch landmark), waiting at most timeout.
func (l *Layer) Prefetch(ctx context.Context, timeout time.Duration) error {
	defer l.earlyFor()()
	end, ok := l.blob.PrefetchEnd()
	if !ok || end == 0 {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	stop := context.AfterFunc(l.ctx, cancel) // and no longer than the layer
	defer stop()
	last := sort.Search(len(l.members), func(k int) bool { return l.members[k].off >= end })
	return l.fetchRange(ctx, 0, last, "prefetch", pace{parallel: l.opts.Parallel, span: l.opts.SpanSize})
}

// earlyFor returns what the fetch ahead (a profile's, or the prefetch)
// calls once it is over. The first one is what the layer's Early spans
// were for: then the Early ends, as what it has not handed out (bytes
// between chunks, spans the TOC does not need) would only be held, or
// fetched, for nothing. A later one (the profiles found with the image's
// referrers) does nothing.
func (l *Layer) earlyFor() (over func()) {
	e, ok := l.fetcher.(*Early)
	if !ok || !l.aheadStarted.CompareAndSwap(false, true) {
		return func() {}
	}
	return e.Close
}

// StartPrefetch runs Prefetch in the background, ahead of background
// work, as FetchRanges runs a profile's ranges: a mount need not wait for
// it, and a read that wants one of its chunks meanwhile joins the request
// that brings it. The channel gets the outcome.
func (l *Layer) StartPrefetch(timeout time.Duration) <-chan error {
	res := make(chan error, 1)
	l.gate.enter()
	if !l.spawn("prefetch", func(ctx context.Context) {
		defer l.gate.leave()
		err := l.Prefetch(ctx, timeout)
		if err != nil && l.ctx.Err() == nil {
			log.L.WithError(err).WithField("layer", l.desc.Digest).Warn("prefetch did not finish; files will be fetched on demand")
		}
		res <- err
	}) {
		l.gate.leave()
		res <- errClosed
	}
	return res
}

// StartBackground fetches every member not yet cached, in spans of
// SpanSize, two at a time (enough to fill a link), giving way to
// foreground reads of every layer that shares the Gate.
func (l *Layer) StartBackground() {
	done := make(chan struct{})
	l.mu.Lock()
	l.bgDone = done
	l.mu.Unlock()
	mounted := time.Now()
	if !l.spawn("background fetch", func(ctx context.Context) {
		defer close(done)
		if err := l.gate.waitStart(ctx, mounted); err != nil {
			return
		}
		// Small spans, few at once: a read that arrives meanwhile waits
		// for at most a couple of megabytes ahead of it on the link.
		p := pace{parallel: min(l.opts.Parallel, 2), span: min(l.opts.SpanSize, backgroundSpanSize), yield: true}
		if err := l.fetchRange(ctx, 0, len(l.members), "background", p); err != nil {
			if ctx.Err() == nil {
				log.L.WithError(err).WithField("layer", l.desc.Digest).Warn("background fetch stopped")
				l.setVerification(NotVerified, nil)
			}
			return
		}
		l.verify(ctx)
	}) {
		close(done)
	}
}

// BackgroundDone is closed when the background fetch has ended (all
// fetched, failed, or the layer closed); nil before StartBackground.
func (l *Layer) BackgroundDone() <-chan struct{} {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.bgDone
}

// backgroundSpanSize bounds the background fetch's spans.
const backgroundSpanSize = 2 << 20

// pace is how fetchRange fetches: spans of at most span bytes, parallel
// at once, and whether to yield to foreground fetches (background work).
type pace struct {
	parallel int
	span     int64
	yield    bool
}

// fetchRange fetches members [from, to) that are not cached, in spans run
// in parallel, for why (in the debug log). A span is claimed only when a
// slot is free to fetch it: until then a reader fetches what it needs
// itself rather than wait in the queue. It keeps no fetched data: the
// spans' chunks go to the cache (and to readers waiting for them).
func (l *Layer) fetchRange(ctx context.Context, from, to int, why string, p pace) error {
	return l.fetchRuns(ctx, []run{{from: from, to: to}}, why, p)
}

// run is the members [from, to); rank orders the runs of a plan
// (runsOf).
type run struct{ from, to, rank int }

// fetchRuns is fetchRange for several runs of members, in the order given,
// sharing the pace's parallel slots: a span never crosses a run's end.
func (l *Layer) fetchRuns(ctx context.Context, runs []run, why string, p pace) error {
	slots := make(chan struct{}, p.parallel)
	var pending []*call
	ri, k := 0, 0
	if len(runs) > 0 {
		k = runs[0].from
	}
	for ri < len(runs) {
		to := runs[ri].to
		if k >= to {
			if ri++; ri < len(runs) {
				k = runs[ri].from
			}
			continue
		}
		if ctx.Err() != nil {
			break
		}
		slots <- struct{}{}
		if p.yield {
			// Before claiming: a reader must never wait for a span that
			// waits for readers, or for other layers' spans.
			if err := l.gate.waitQuiet(ctx); err != nil {
				break
			}
			if err := l.gate.acquireBackground(ctx); err != nil {
				break
			}
		}
		// unslot gives back the slots taken for a span not fetched.
		unslot := func() {
			<-slots
			if p.yield {
				l.gate.releaseBackground()
			}
		}
		// The span: members from k whose bytes fit in the pace's span.
		end := k + 1
		for end < to && l.members[end].end()-l.members[k].off <= p.span {
			end++
		}
		l.markCached(k, end)
		cl, mine := l.claim(k, end)
		if !mine {
			unslot()
			if cl != nil {
				pending = append(pending, cl)
			}
			k++
			continue
		}
		pending = append(pending, cl)
		spanStart := k // k moves on below
		if !l.spawn(why, func(ctx context.Context) {
			var once sync.Once
			free := func() { once.Do(func() { <-slots }) }
			defer free()
			if p.yield {
				// Held until the span's chunks are cached, not only
				// fetched: what it bounds is the memory they take.
				defer l.gate.releaseBackground()
			}
			l.fetchSpanThen(ctx, spanStart, end, cl, why, free, true)
		}) {
			if p.yield {
				l.gate.releaseBackground()
			}
			l.release(k, end, cl, errClosed)
			break
		}
		// Skip what this span claimed.
		l.mu.Lock()
		for k < to && l.inflight[k] == cl {
			k++
		}
		l.mu.Unlock()
	}
	var first error
	for _, cl := range pending {
		select {
		case <-cl.done:
			if err := cl.err; err != nil && first == nil {
				first = err
			}
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return first
}

// markCached marks members whose chunks the cache holds already (from an
// earlier mount, or another layer with the same chunks) as done.
func (l *Layer) markCached(from, to int) {
	for k := from; k < to; k++ {
		l.mu.Lock()
		skip := l.done[k] || l.inflight[k] != nil
		l.mu.Unlock()
		if skip {
			continue
		}
		all := true
		for _, r := range l.chunksOf(k) {
			if !l.hasChunk(r) {
				all = false
				break
			}
		}
		if all {
			l.mu.Lock()
			if !l.done[k] {
				l.done[k] = true
				l.cachedData.Add(int64(l.members[k].size))
			}
			l.mu.Unlock()
		}
	}
}

package layer

import (
	"context"
	"fmt"
	"io"
	"os"
	"path"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/containerd/log"
	"github.com/opencontainers/go-digest"

	"github.com/lazypull/lazypull/format/toc"
)

// ReadAt reads file e (a regular file; hard links resolved by the caller)
// at off, fetching the chunks it needs and verifying each. A sequential
// reader gets the next chunks fetched ahead of it.
func (l *Layer) ReadAt(ctx context.Context, e *toc.Entry, p []byte, off int64) (int, error) {
	if off >= e.Size {
		return 0, io.EOF
	}
	end := min(off+int64(len(p)), e.Size)
	n := 0
	first, _ := e.ChunkAt(off)
	for i := first; i < len(e.Chunks) && e.Chunks[i].FileOffset < end; i++ {
		c := e.Chunks[i]
		data, err := l.chunk(ctx, e, i)
		if err != nil {
			return n, err
		}
		from := max(off, c.FileOffset) - c.FileOffset
		to := min(end, c.FileOffset+c.Size) - c.FileOffset
		n += copy(p[n:], data[from:to])
	}
	if last, ok := e.ChunkAt(end - 1); ok && end < e.Size {
		l.readAhead(e, last+1)
	}
	if int64(n) < int64(len(p)) {
		return n, io.EOF
	}
	return n, nil
}

// chunk returns chunk i of e, verified: from the cache, from a fetch in
// flight, or fetched now.
func (l *Layer) chunk(ctx context.Context, e *toc.Entry, i int) ([]byte, error) {
	c := e.Chunks[i]
	if c.Zero {
		return make([]byte, c.Size), nil
	}
	if data, ok := l.cachedChunk(e, i); ok {
		return data, nil
	}
	k := l.memberOf(c)
	for attempt := 0; attempt < 2; attempt++ {
		lo, hi := l.neighbours(e, k)
		cl, mine, start := l.claimAround(k, lo, hi)
		if mine {
			l.gate.enter()
			if l.opts.OnMiss != nil {
				go l.opts.OnMiss(e)
			}
			l.fetchRest(e, k)
			// Others may wait on this fetch: a reader interrupted
			// meanwhile must not fail it for them.
			l.fetchSpan(context.WithoutCancel(ctx), start, hi, cl, e.Name)
			l.gate.leave()
		} else if cl != nil {
			select {
			case <-cl.done:
			case <-ctx.Done():
				return nil, ctx.Err()
			}
		}
		if cl != nil {
			if cl.err != nil {
				return nil, fmt.Errorf("%q: %w", e.Name, cl.err)
			}
			if data, ok := cl.data[c.Digest]; ok {
				return data, nil
			}
		}
		if data, ok := l.cachedChunk(e, i); ok {
			return data, nil
		}
		// Marked done, but the cache lost it (evicted): fetch it again.
		l.mu.Lock()
		l.done[k] = false
		l.mu.Unlock()
	}
	return nil, l.record(fmt.Errorf("%q chunk %d: not cached after it was fetched", e.Name, i))
}

// cachedChunk returns chunk i of e from the cache: its own entry, or the
// file's assembled entry (which replaces the chunks of a file assembled for
// passthrough, verified whole when the cache first opens it).
func (l *Layer) cachedChunk(e *toc.Entry, i int) ([]byte, bool) {
	c := e.Chunks[i]
	if data, ok := l.cache.Get(c.Digest); ok && int64(len(data)) == c.Size {
		return data, true
	}
	if !assembles(e) {
		return nil, false
	}
	f, ok := l.cache.Open(e.Digest)
	if !ok {
		return nil, false
	}
	defer f.Close()
	data := make([]byte, c.Size)
	if _, err := f.ReadAt(data, c.FileOffset); err != nil {
		return nil, false
	}
	return data, true
}

// hasChunk tells whether the cache holds chunk r, in its own entry or in
// its file's assembled one.
func (l *Layer) hasChunk(r chunkRef) bool {
	return l.cache.Has(r.e.Chunks[r.i].Digest) || (assembles(r.e) && l.cache.Has(r.e.Digest))
}

// assembles tells whether e is a file of several chunks small enough to
// be assembled into one cache entry (see maxAssembled).
func assembles(e *toc.Entry) bool {
	return len(e.Chunks) > 1 && e.Digest != "" && e.Size <= maxAssembled
}

// claim returns the fetch that brings member k: a new one (mine), covering
// the members from k up to end that no fetch has claimed and the cache
// does not hold, or the one already in flight, or nil if k is cached.
func (l *Layer) claim(k, end int) (cl *call, mine bool) {
	cl, mine, _ = l.claimAround(k, k, end)
	return cl, mine
}

// claimAround is claim that also takes the free members just before k,
// down to lo; start is the first member it claimed.
func (l *Layer) claimAround(k, lo, end int) (cl *call, mine bool, start int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if cl := l.inflight[k]; cl != nil {
		return cl, false, k
	}
	if l.done[k] {
		return nil, false, k
	}
	cl = &call{done: make(chan struct{}), data: make(map[digest.Digest][]byte)}
	for j := k; j < end && l.inflight[j] == nil && !l.done[j]; j++ {
		l.inflight[j] = cl
	}
	start = k
	for j := k - 1; j >= lo && l.inflight[j] == nil && !l.done[j]; j-- {
		l.inflight[j] = cl
		start = j
	}
	return cl, true, start
}

// Small files are fetched with their neighbours: a program that reads one
// file of a directory (a header, a module, a locale) usually reads others
// of it soon, and each on-demand request costs a round trip, while
// neighbourWindow bytes more cost a fraction of one on a typical link.
const (
	smallMember     = 32 << 10
	neighbourWindow = 32 << 10 // on each side
)

// neighbours returns the members [lo, hi) to fetch with member k, which
// holds a chunk of e: k alone, or with the small members around it that
// hold files of e's directory (or below it), within neighbourWindow.
func (l *Layer) neighbours(e *toc.Entry, k int) (lo, hi int) {
	m := l.members[k]
	if m.end-m.off > smallMember {
		return k, k + 1
	}
	dir := path.Dir(e.Name) + "/"
	near := func(j int) bool {
		n := l.members[j]
		if n.end-n.off > smallMember {
			return false
		}
		for _, r := range n.chunks {
			if !strings.HasPrefix(r.e.Name, dir) {
				return false
			}
		}
		return true
	}
	lo, hi = k, k+1
	for lo > 0 && m.off-l.members[lo-1].off <= neighbourWindow && near(lo-1) {
		lo--
	}
	for hi < len(l.members) && l.members[hi].end-m.end <= neighbourWindow && near(hi) {
		hi++
	}
	return lo, hi
}

// fetchSpan fetches the members claimed by cl from k on (up to end) in one
// request, verifies and caches their chunks, and releases the claim. why
// names the file or the work the fetch is for, in the debug log.
func (l *Layer) fetchSpan(ctx context.Context, k, end int, cl *call, why string) {
	l.fetchSpanThen(ctx, k, end, cl, why, nil)
}

// fetchSpanThen is fetchSpan that calls arrived (if not nil) once the
// bytes are in, before it verifies and caches them: a caller pacing its
// requests starts the next while this one is decoded.
func (l *Layer) fetchSpanThen(ctx context.Context, k, end int, cl *call, why string, arrived func()) {
	l.mu.Lock()
	last := k
	for last+1 < end && l.inflight[last+1] == cl {
		last++
	}
	l.mu.Unlock()

	start, stop := l.members[k].off, l.members[last].end
	buf := make([]byte, stop-start)
	var err error
	for attempt := 0; attempt < 2; attempt++ {
		fetchEnd := stop
		if tp := l.tailPiece; attempt == 0 && tp.data != nil && tp.member >= k && tp.member <= last {
			// The end of the span came with the TOC: fetch only the rest.
			fetchEnd = tp.from
			copy(buf[fetchEnd-start:], tp.data)
		}
		if fetchEnd > start {
			l.requests.Add(1)
			began := time.Now()
			err = l.fetcher.FetchAt(ctx, buf[:fetchEnd-start], start)
			log.G(ctx).WithFields(log.Fields{"layer": l.desc.Digest, "for": why, "offset": start, "bytes": fetchEnd - start,
				"members": last + 1 - k, "took": time.Since(began)}).Debug("fetched")
			if err != nil {
				break // the fetcher has retried already
			}
			l.fetched.Add(fetchEnd - start)
		}
		if attempt == 0 && arrived != nil {
			arrived()
		}
		for j := k; j <= last && err == nil; j++ {
			m := l.members[j]
			err = l.decodeMember(buf[m.off-start:m.end-start], m, cl)
		}
		if err == nil || ctx.Err() != nil {
			break
		}
		// The bytes arrived but did not verify: damaged on the way (or in
		// the tail kept from Open). Fetch the whole span once more before
		// the reader gets EIO; chunks that did verify are cached already.
		log.L.WithError(err).WithField("layer", l.desc.Digest).Warn("fetched data failed verification; fetching it again")
	}
	l.release(k, last+1, cl, err)
}

// release ends the fetch cl of members [k, end): they are done unless it
// failed, and its waiters wake.
func (l *Layer) release(k, end int, cl *call, err error) {
	l.mu.Lock()
	for j := k; j < end; j++ {
		if l.inflight[j] != cl {
			continue
		}
		delete(l.inflight, j)
		if err == nil && !l.done[j] {
			l.done[j] = true
			l.cachedData.Add(l.members[j].end - l.members[j].off)
		}
	}
	l.mu.Unlock()
	cl.err = l.record(err)
	close(cl.done)
}

// decodeMember verifies and caches every chunk a member holds.
func (l *Layer) decodeMember(compressed []byte, m member, cl *call) error {
	for _, r := range m.chunks {
		c := r.e.Chunks[r.i]
		if l.hasChunk(r) {
			continue
		}
		data, err := l.blob.ReadChunk(compressed, c)
		if err != nil {
			return fmt.Errorf("%q chunk %d: %w", r.e.Name, r.i, err)
		}
		l.chunks.Add(1)
		cl.data[c.Digest] = data
		if err := l.cache.Put(c.Digest, data); err != nil {
			log.L.WithError(err).WithField("layer", l.desc.Digest).Warn("cannot cache a chunk; it will be fetched again when needed")
		}
	}
	return nil
}

// fetchRest fetches, alongside the reader that missed member k, the rest
// of e when e's compressed data is at most WholeFile bytes: a program
// that reads part of a binary or a library it maps reads most of it soon,
// in an order of page faults that no read-ahead follows. Spans go two at a
// time, claimed just before each is fetched, so that a reader who wants
// one of them meanwhile fetches it at once instead of queueing behind.
func (l *Layer) fetchRest(e *toc.Entry, k int) {
	if first, last, ok := l.memberSpan(e); ok && first != last {
		l.fetchFile(e, k+1, "rest of "+e.Name)
	}
}

// FetchFile fetches the whole of e (up to WholeFile bytes; hard links
// resolved by the caller), without waiting, as a read would: for a file
// the caller expects the container to read soon.
func (l *Layer) FetchFile(e *toc.Entry) {
	if first, _, ok := l.memberSpan(e); ok {
		l.fetchFile(e, first, "expected "+e.Name)
	}
}

// fetchFile fetches e's members from k to its last, then its first ones
// up to k, in the background but ahead of background work.
func (l *Layer) fetchFile(e *toc.Entry, k int, why string) {
	first, last, ok := l.memberSpan(e)
	if !ok || l.members[last].end-l.members[first].off > l.opts.WholeFile {
		return
	}
	l.gate.enter()
	go func() {
		defer l.gate.leave()
		p := pace{parallel: 2, span: 2 << 20}
		err := l.fetchRange(context.Background(), k, last+1, why, p)
		if err == nil {
			err = l.fetchRange(context.Background(), first, k, why, p)
		}
		if err == nil && assembles(e) && !l.cache.Has(e.Digest) {
			// A file read now is read again at the next start: have it
			// ready for passthrough then.
			l.assemble(e)
		}
	}()
}

// memberSpan returns the first and last members that hold e's data. It
// runs on every read of a large file: two searches, not one per chunk.
func (l *Layer) memberSpan(e *toc.Entry) (first, last int, ok bool) {
	i, j := 0, len(e.Chunks)-1
	for i <= j && e.Chunks[i].Zero {
		i++
	}
	for j >= i && e.Chunks[j].Zero {
		j--
	}
	if i > j {
		return -1, -1, false
	}
	return l.memberOf(e.Chunks[i]), l.memberOf(e.Chunks[j]), true
}

// readAhead fetches, in the background, the chunks of e that follow a
// sequential read, up to ReadAhead bytes, for files too large for
// fetchRest.
func (l *Layer) readAhead(e *toc.Entry, from int) {
	if from >= len(e.Chunks) {
		return
	}
	if first, last, ok := l.memberSpan(e); ok && l.members[last].end-l.members[first].off <= l.opts.WholeFile {
		return
	}
	var size int64
	first, last := -1, -1
	for i := from; i < len(e.Chunks) && size < l.opts.ReadAhead; i++ {
		c := e.Chunks[i]
		if c.Zero {
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
		go func() {
			defer l.gate.leave()
			l.fetchSpan(context.Background(), first, last+1, cl, "read-ahead of "+e.Name)
		}()
	}
}

// Prefetch fetches the files the image marks as needed first (before the
// prefetch landmark), waiting at most timeout.
func (l *Layer) Prefetch(ctx context.Context, timeout time.Duration) error {
	end, ok := l.blob.PrefetchEnd()
	if !ok || end == 0 {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	last := sort.Search(len(l.members), func(k int) bool { return l.members[k].off >= end })
	return l.fetchRange(ctx, 0, last, "prefetch", pace{parallel: l.opts.Parallel, span: l.opts.SpanSize})
}

// StartBackground fetches every member not yet cached, in spans of
// SpanSize, two at a time (enough to fill a link), giving way to
// foreground reads of every layer that shares the Gate.
func (l *Layer) StartBackground() {
	ctx, cancel := context.WithCancel(context.Background())
	l.stop = cancel
	l.bgDone = make(chan struct{})
	mounted := time.Now()
	go func() {
		defer close(l.bgDone)
		if err := l.gate.waitStart(ctx, mounted); err != nil {
			return
		}
		// Small spans, few at once: a read that arrives meanwhile waits
		// for at most a couple of megabytes ahead of it on the link.
		p := pace{parallel: min(l.opts.Parallel, 2), span: min(l.opts.SpanSize, 2<<20), yield: true}
		if err := l.fetchRange(ctx, 0, len(l.members), "background", p); err != nil && ctx.Err() == nil {
			log.L.WithError(err).WithField("layer", l.desc.Digest).Warn("background fetch stopped")
		}
	}()
}

// BackgroundDone is closed when the background fetch has ended (all
// fetched, failed, or the layer closed).
func (l *Layer) BackgroundDone() <-chan struct{} { return l.bgDone }

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
// itself rather than wait in the queue.
func (l *Layer) fetchRange(ctx context.Context, from, to int, why string, p pace) error {
	slots := make(chan struct{}, p.parallel)
	var pending []*call
	for k := from; k < to; {
		if ctx.Err() != nil {
			break
		}
		slots <- struct{}{}
		if p.yield {
			// Before claiming: a reader must never wait for a span that
			// waits for readers.
			if err := l.gate.waitQuiet(ctx); err != nil {
				break
			}
		}
		// The span: members from k whose bytes fit in the pace's span.
		end := k + 1
		for end < to && l.members[end].end-l.members[k].off <= p.span {
			end++
		}
		l.markCached(k, end)
		cl, mine := l.claim(k, end)
		if !mine {
			<-slots
			if cl != nil {
				pending = append(pending, cl)
			}
			k++
			continue
		}
		pending = append(pending, cl)
		go func(k, end int) {
			var once sync.Once
			free := func() { once.Do(func() { <-slots }) }
			defer free()
			l.fetchSpanThen(ctx, k, end, cl, why, free)
		}(k, end)
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
			if cl.err != nil && first == nil {
				first = cl.err
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
		for _, r := range l.members[k].chunks {
			if !l.hasChunk(r) {
				all = false
				break
			}
		}
		if all {
			l.mu.Lock()
			if !l.done[k] {
				l.done[k] = true
				l.cachedData.Add(l.members[k].end - l.members[k].off)
			}
			l.mu.Unlock()
		}
	}
}

// maxAssembled is the largest file assembled from its chunks into one
// cache file for passthrough: programs and libraries are (a warm start
// maps them at local speed); larger files, data mostly, are served from
// their chunks, since a copy doubles their room on disk and assembling
// them while a container reads them triples its disk traffic.
const maxAssembled = 64 << 20

// CachedFile returns a file holding e's whole content, if every chunk of it
// is cached: the backing file for FUSE passthrough. A file of several
// chunks, up to maxAssembled bytes, is assembled into one the first time,
// in the background: this open is served from the chunks, the next ones
// from the assembled file.
func (l *Layer) CachedFile(e *toc.Entry) (*os.File, bool) {
	if len(e.Chunks) == 1 && !e.Chunks[0].Zero {
		// One chunk is the whole file: its cache entry serves as it is.
		return l.cache.Open(e.Chunks[0].Digest)
	}
	if !assembles(e) {
		return nil, false
	}
	if l.cache.Has(e.Digest) {
		return l.cache.Open(e.Digest)
	}
	for _, c := range e.Chunks {
		if !c.Zero && !l.cache.Has(c.Digest) {
			return nil, false
		}
	}
	l.assemble(e)
	return nil, false
}

// assemble puts e's whole content into the cache as one file, in the
// background, unless that is under way.
func (l *Layer) assemble(e *toc.Entry) {
	l.mu.Lock()
	busy := l.assembling[e.Digest]
	l.assembling[e.Digest] = true
	l.mu.Unlock()
	if !busy {
		l.assemblies.Add(1)
		go func() {
			defer l.assemblies.Done()
			l.assembleNow(e)
		}()
	}
}

func (l *Layer) assembleNow(e *toc.Entry) {
	defer func() {
		l.mu.Lock()
		delete(l.assembling, e.Digest)
		l.mu.Unlock()
	}()
	pr, pw := io.Pipe()
	go func() {
		for i, c := range e.Chunks {
			data, err := l.chunk(context.Background(), e, i)
			if err != nil {
				pw.CloseWithError(err)
				return
			}
			if _, err := pw.Write(data[:c.Size]); err != nil {
				return
			}
		}
		pw.Close()
	}()
	err := l.cache.PutFile(e.Digest, pr)
	pr.Close()
	if err != nil {
		log.L.WithError(err).WithField("file", e.Name).Debug("cannot assemble a cached file for passthrough")
		return
	}
	// The assembled file holds the chunks now: keep them once on disk.
	for _, c := range e.Chunks {
		if !c.Zero {
			l.cache.Remove(c.Digest)
		}
	}
}

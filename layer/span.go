package layer

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/containerd/log"
)

// fetchSpan fetches the members claimed by cl from k on (up to end) in one
// request, verifies and caches their chunks, and releases the claim. why
// names the file or the work the fetch is for, in the debug log.
func (l *Layer) fetchSpan(ctx context.Context, k, end int, cl *call, why string) {
	l.fetchSpanThen(ctx, k, end, cl, why, nil)
}

// fetchSpanThen is fetchSpan that calls arrived (if not nil) once the
// bytes are in, before it verifies and caches them: a caller pacing its
// requests starts the next while this one is decoded. Whatever happens,
// even a panic, the claim is released and its waiters wake.
func (l *Layer) fetchSpanThen(ctx context.Context, k, end int, cl *call, why string, arrived func()) {
	l.mu.Lock()
	last := k
	for last+1 < end && l.inflight[last+1] == cl {
		last++
	}
	l.mu.Unlock()

	var err error
	defer func() { l.release(k, last+1, cl, err) }()
	defer l.recoverAs("a fetch for "+why, &err)

	start, stop := l.members[k].off, l.members[last].end
	bp := spanBuffers.get(stop - start)
	defer spanBuffers.put(bp)
	buf := *bp
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
				return // the fetcher has retried already
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
		if err == nil {
			if l.spool != nil {
				l.spool.write(start, buf) // verified chunk by chunk: keep it for the whole-blob check
			}
			return
		}
		if ctx.Err() != nil {
			return
		}
		// The bytes arrived but did not verify: damaged on the way (or in
		// the tail kept from Open). Fetch the whole span once more before
		// the reader gets EIO; chunks that did verify are cached already.
		log.L.WithError(err).WithField("layer", l.desc.Digest).Warn("fetched data failed verification; fetching it again")
	}
}

// bufferPool recycles byte buffers of up to max bytes. Nothing keeps a
// span's bytes once its chunks are decoded (they are copied out), nor a
// decoded chunk's once it is cached, unless a reader waits for it: fresh
// buffers for each (8 MiB spans, 4 MiB chunks) were garbage that kept the
// FUSE manager's heap far above what was live through a background fetch.
type bufferPool struct {
	pool sync.Pool
	max  int
}

// The pools keep buffers of the background fetch's sizes (its spans are
// at most 2 MiB, chunks are at most 4 MiB by default): larger ones, rare,
// go back to the garbage collector, and a pool of small buffers does not
// end up holding large ones.
var (
	spanBuffers  = &bufferPool{max: backgroundSpanSize}
	chunkBuffers = &bufferPool{max: 4 << 20}
)

// get returns a buffer of n bytes.
func (p *bufferPool) get(n int64) *[]byte {
	if n <= int64(p.max) {
		if b, ok := p.pool.Get().(*[]byte); ok {
			if int64(cap(*b)) >= n {
				*b = (*b)[:n]
				return b
			}
			p.pool.Put(b) // too small for this one: keep it for another
		}
	}
	b := make([]byte, n)
	return &b
}

// put gives b back, unless it is larger than the pool keeps: a rare large
// one is not kept around.
func (p *bufferPool) put(b *[]byte) {
	if cap(*b) <= p.max {
		p.pool.Put(b)
	}
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

// decodeMember verifies and caches every chunk a member holds, and keeps
// the bytes of those that readers of cl wait for. A chunk the cache holds
// already and nobody waits for is not decoded again.
func (l *Layer) decodeMember(compressed []byte, m member, cl *call) error {
	for _, r := range m.chunks {
		c := r.e.Chunks[r.i]
		l.mu.Lock()
		wanted := cl.want[c.Digest()] > 0
		l.mu.Unlock()
		cached := l.hasChunk(r)
		if cached && !wanted {
			continue
		}
		var dst []byte // a reader's chunk is its own; the rest are recycled
		var bp *[]byte
		if !wanted {
			bp = chunkBuffers.get(c.Size)
			dst = *bp
		}
		data, err := l.blob.ReadChunk(dst, compressed, c)
		if err != nil {
			return fmt.Errorf("%q chunk %d: %w", r.e.Name, r.i, err)
		}
		l.chunks.Add(1)
		if wanted {
			l.mu.Lock()
			if cl.want[c.Digest()] > 0 {
				cl.data[c.Digest()] = data
			}
			l.mu.Unlock()
		}
		if !cached {
			if err := l.cache.Put(c.Digest(), data); err != nil {
				// Once per layer: a full disk fails every Put.
				l.cacheWarn.Do(func() {
					log.L.WithError(err).WithField("layer", l.desc.Digest).Warn("cannot cache chunks; they will be fetched again when needed")
				})
			}
		}
		if bp != nil {
			chunkBuffers.put(bp)
		}
	}
	return nil
}

package layer

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/containerd/log"
	"github.com/lazypull/lazypull/cache"
	"github.com/opencontainers/go-digest"
)

// fetchSpan fetches the members claimed by cl from k on (up to end) in one
// request, verifies and caches their chunks, and releases the claim. why
// names the file or the work the fetch is for, in the debug log.
func (l *Layer) fetchSpan(ctx context.Context, k, end int, cl *call, why string) {
	l.fetchSpanThen(ctx, k, end, cl, why, nil, false)
}

// fetchSpanThen is fetchSpan that calls arrived (if not nil) once the
// bytes are in, before it verifies and caches them: a caller pacing its
// requests starts the next while this one is decoded. inTurn: the fetch is
// one of a paced series (a profile's, the background's), which waits for
// an early fetch's pieces in their order; a read's takes their turn.
// Whatever happens, even a panic, the claim is released and its waiters
// wake.
func (l *Layer) fetchSpanThen(ctx context.Context, k, end int, cl *call, why string, arrived func(), inTurn bool) {
	l.mu.Lock()
	last := k
	for last+1 < end && l.inflight[last+1] == cl {
		last++
	}
	l.mu.Unlock()

	var err error
	defer func() { l.release(k, last+1, cl, err) }()
	defer l.recoverAs("a fetch for "+why, &err)

	start, stop := l.members[k].off, l.members[last].end()
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
			if e, ok := l.fetcher.(*Early); ok {
				err = e.fetch(ctx, buf[:fetchEnd-start], start, !inTurn)
			} else {
				err = l.fetcher.FetchAt(ctx, buf[:fetchEnd-start], start)
			}
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
			err = l.decodeMember(buf[m.off-start:m.end()-start], j, cl)
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

// streamToCache decompresses chunk r out of its member's compressed bytes
// straight into the cache, which hashes it as it writes: a chunk that does
// not match its digest is an error, as ReadChunk's would be.
func (l *Layer) streamToCache(compressed []byte, r chunkRef) error {
	e, c := l.resolve(r)
	rc, err := l.blob.OpenChunk(compressed, *c)
	if err != nil {
		return fmt.Errorf("%q chunk %d: %w", e.Path(), r.chunk, err)
	}
	defer rc.Close()
	src := &readErr{r: rc}
	var bad error // the data's fault, not the cache's
	l.putChunk(c.Digest(), func() error {
		var err error
		if fills(e) {
			var filled int64
			filled, err = l.cache.PutPartFrom(e.Digest(), e.Size, c.FileOffset, c.Digest(), c.Size, src)
			l.filled(e, r.entry, filled)
		} else {
			err = l.cache.PutFile(c.Digest(), src)
		}
		if src.err != nil || errors.Is(err, cache.ErrDigestMismatch) {
			bad = fmt.Errorf("%q chunk %d: %w", e.Path(), r.chunk, errors.Join(src.err, err))
			return nil
		}
		return err
	})
	return bad
}

// readErr remembers its reader's failure (corrupt compressed data), which
// the cache reports only as a failed copy.
type readErr struct {
	r   io.Reader
	err error
}

func (r *readErr) Read(p []byte) (int, error) {
	n, err := r.r.Read(p)
	if err != nil && err != io.EOF {
		r.err = err
	}
	return n, err
}

// putChunk stores a chunk with put; the cache's failure (a full disk) is
// logged once per layer: the chunk is fetched again when needed.
func (l *Layer) putChunk(d digest.Digest, put func() error) {
	if err := put(); err != nil {
		l.cacheWarn.Do(func() {
			log.L.WithError(err).WithField("layer", l.desc.Digest).Warn("cannot cache chunks; they will be fetched again when needed")
		})
	}
}

// bufferPool recycles byte buffers of up to max bytes. Nothing keeps a
// span's bytes once its chunks are decoded (they are copied out or
// streamed to the cache): a fresh buffer for each was garbage that kept
// the FUSE manager's heap far above what was live through a background
// fetch.
type bufferPool struct {
	pool sync.Pool
	max  int
}

// The pool keeps buffers of the background fetch's spans (at most 2 MiB):
// larger ones, rare, go back to the garbage collector.
var spanBuffers = &bufferPool{max: backgroundSpanSize}

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
			l.cachedData.Add(int64(l.members[j].size))
		}
	}
	l.mu.Unlock()
	cl.err = l.record(err)
	close(cl.done)
}

// decodeMember verifies and caches every chunk a member holds, and keeps
// the bytes of those that readers of cl wait for. A chunk the cache holds
// already and nobody waits for is not decoded again.
func (l *Layer) decodeMember(compressed []byte, k int, cl *call) error {
	for _, r := range l.chunksOf(k) {
		e, c := l.resolve(r)
		l.mu.Lock()
		wanted := cl.want[c.Digest()] > 0
		l.mu.Unlock()
		cached := l.hasChunk(r)
		if cached && !wanted {
			continue
		}
		if !wanted {
			// Only the cache wants it: stream it there, hashed on the
			// way, rather than hold it whole in memory.
			if err := l.streamToCache(compressed, r); err != nil {
				return err
			}
			l.chunks.Add(1)
			continue
		}
		data, err := l.blob.ReadChunk(nil, compressed, *c)
		if err != nil {
			return fmt.Errorf("%q chunk %d: %w", e.Path(), r.chunk, err)
		}
		l.chunks.Add(1)
		l.mu.Lock()
		if cl.want[c.Digest()] > 0 {
			cl.data[c.Digest()] = data
		}
		l.mu.Unlock()
		if !cached {
			l.putChunkOf(r, data)
		}
	}
	return nil
}

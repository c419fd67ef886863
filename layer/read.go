package layer

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/opencontainers/go-digest"

	"github.com/lazypull/lazypull/format/toc"
)

// errClosed is what reads of a closed layer get.
var errClosed = errors.New("layer closed")

// ReadAt reads file e (a regular file; hard links resolved by the caller)
// at off, fetching the chunks it needs and verifying each. A sequential
// reader gets the next chunks fetched ahead of it. Holes read as zeros
// without fetching or allocating anything.
func (l *Layer) ReadAt(ctx context.Context, e *toc.Entry, p []byte, off int64) (n int, err error) {
	defer func() {
		if r := recover(); r != nil {
			l.recovered(r, "a read of "+e.Path(), &err) // named only then: Path allocates
		}
	}()
	if off < 0 {
		return 0, fmt.Errorf("%q: negative offset %d", e.Path(), off)
	}
	if off >= e.Size {
		return 0, io.EOF
	}
	if err := l.failed(); err != nil {
		return 0, err
	}
	end := off + min(int64(len(p)), e.Size-off)
	if l.opts.Record != nil {
		l.opts.Record(e, off, end-off)
	}
	first, _ := e.ChunkAt(off)
	for i := first; i < len(e.Chunks()) && e.Chunks()[i].FileOffset < end; i++ {
		c := e.Chunks()[i]
		from := max(off, c.FileOffset) - c.FileOffset
		to := min(end, c.FileOffset+c.Size) - c.FileOffset
		if c.Zero {
			clear(p[n : n+int(to-from)])
			n += int(to - from)
			continue
		}
		if l.readCached(e, i, p[n:n+int(to-from)], from) {
			n += int(to - from)
			continue
		}
		data, err := l.chunk(ctx, e, i)
		if err != nil {
			return n, err
		}
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

// Rejected tells whether the layer was found not to be its image's
// content: then it serves nothing, not even its file names.
func (l *Layer) Rejected() bool { return l.isRejected.Load() }

// failed returns why the layer serves no more reads (closed, or its
// content found not to be what the image says), or nil.
func (l *Layer) failed() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return errClosed
	}
	return l.rejected
}

// maxAttempts bounds how often a read tries to get a chunk that was
// fetched but then lost (a waiter that joined a fetch after it decoded
// the chunk, whose cache entry was evicted meanwhile).
const maxAttempts = 4

// chunk returns chunk i of e (not a hole), verified: from the cache, from
// a fetch in flight, or fetched now.
func (l *Layer) chunk(ctx context.Context, e *toc.Entry, i int) ([]byte, error) {
	c := e.Chunks()[i]
	k := l.memberOf(c)
	for attempt := 0; attempt < maxAttempts; attempt++ {
		if data, ok := l.cachedChunk(e, i); ok {
			return data, nil
		}
		lo, hi := l.neighbours(e, k)
		cl, mine, start := l.claimAround(k, lo, hi, c.Digest())
		if cl == nil {
			// Marked done since the look above: a fetch that just ended
			// cached it, or the cache lost it (evicted): then fetch it
			// again.
			if data, ok := l.cachedChunk(e, i); ok {
				return data, nil
			}
			l.mu.Lock()
			l.done[k] = false
			l.mu.Unlock()
			continue
		}
		if mine {
			l.gate.enter()
			l.missed(e)
			l.fetchRest(e, k)
			// Others may wait on this fetch: it runs on the layer's
			// context, not on this reader's.
			l.fetchSpan(l.ctx, start, hi, cl, e.Path())
			l.gate.leave()
		} else {
			select {
			case <-cl.done:
			case <-ctx.Done():
				l.take(cl, c.Digest())
				return nil, ctx.Err()
			}
		}
		data, ok := l.take(cl, c.Digest())
		if cl.err != nil {
			return nil, fmt.Errorf("%q: %w", e.Path(), cl.err)
		}
		if ok {
			return data, nil
		}
	}
	if err := l.failed(); err != nil {
		return nil, err
	}
	return nil, l.record(fmt.Errorf("%q chunk %d: lost from the cache %d times right after it was fetched (is the cache too small?)", e.Path(), i, maxAttempts))
}

// take returns the data of chunk d that call cl kept for this reader, if
// it has it, and gives up this reader's claim on it.
func (l *Layer) take(cl *call, d digest.Digest) ([]byte, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	data, ok := cl.data[d]
	if cl.want[d]--; cl.want[d] <= 0 {
		delete(cl.want, d)
		delete(cl.data, d)
	}
	return data, ok
}

// cachedChunk returns chunk i of e from the cache.
func (l *Layer) cachedChunk(e *toc.Entry, i int) ([]byte, bool) {
	data := make([]byte, e.Chunks()[i].Size)
	return data, l.readCached(e, i, data, 0)
}

// readCached reads len(p) bytes at from within chunk i of e from the cache,
// straight into p: from its file's entry (filled in place, or whole) if
// the file fills in place, else (or if it lacks the chunk: one cached
// before, or shared with another file) from the chunk's own entry. Every
// read of a file goes through here: the usual place is looked at first.
func (l *Layer) readCached(e *toc.Entry, i int, p []byte, from int64) bool {
	c := e.Chunks()[i]
	if fills(e) && l.cache.ReadPart(e.Digest(), e.Size, c.FileOffset, c.Digest(), c.Size, p, from) {
		return true
	}
	return l.cache.ReadAt(c.Digest(), c.Size, p, from)
}

// hasChunk tells whether the cache holds chunk r.
func (l *Layer) hasChunk(r chunkRef) bool {
	e, _ := l.resolve(r)
	return l.hasChunkOf(e, int(r.chunk))
}

// hasChunkOf tells whether the cache holds chunk i of e, in its own entry
// or in its file's.
func (l *Layer) hasChunkOf(e *toc.Entry, i int) bool {
	c := e.Chunks()[i]
	return (fills(e) && l.cache.HasPart(e.Digest(), c.FileOffset, c.Digest())) || l.cache.Has(c.Digest())
}

package layer

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/opencontainers/go-digest"

	"github.com/containerd/log"

	"github.com/lazypull/lazypull/cache"
	"github.com/lazypull/lazypull/format/toc"
	"github.com/lazypull/lazypull/metrics"
)

// fills tells whether e's chunks are written into one cache entry for the
// whole file, in place, as they arrive and verify (a file of several
// chunks with a digest): the file is then whole on disk, ready to hand to
// the kernel (passthrough, a composefs object), once its last chunk is in,
// whatever its size, with no second copy. A file of one chunk is that
// chunk's entry already.
func fills(e *toc.Entry) bool {
	return len(e.Chunks()) > 1 && e.Digest() != ""
}

// CachedFile returns a local file holding e's whole content, if every
// chunk of it is cached (what the file system above may hand to the
// kernel). A file filled in place is sealed (hashed whole against its
// digest) in the background the first time it is found complete: this
// call returns false, later ones the file.
func (l *Layer) CachedFile(e *toc.Entry) (*os.File, bool) {
	if l.failed() != nil || l.opts.Record != nil {
		// A recording layer hands out no local file: every read of its
		// files must come through ReadAt, to be recorded.
		return nil, false
	}
	if len(e.Chunks()) == 1 && !e.Chunks()[0].Zero {
		// One chunk is the whole file: its cache entry serves as it is.
		return l.cache.Open(e.Chunks()[0].Digest())
	}
	if !fills(e) {
		return nil, false
	}
	if f, ok := l.cache.Open(e.Digest()); ok {
		return f, true
	}
	for i, c := range e.Chunks() {
		if !c.Zero && !l.hasChunkOf(e, i) {
			return nil, false
		}
	}
	l.seal(e)
	return nil, false
}

// putChunkOf caches chunk i of e, data, verified against its digest: into
// its file's entry if the file fills in place (sealing the file when that
// was its last chunk), else into its own entry.
func (l *Layer) putChunkOf(r chunkRef, data []byte) {
	e, c := l.resolve(r)
	if !fills(e) {
		l.putChunk(c.Digest(), func() error { return l.cache.Put(c.Digest(), data) })
		return
	}
	l.putChunk(c.Digest(), func() error {
		filled, err := l.cache.PutPart(e.Digest(), e.Size, c.FileOffset, c.Digest(), data)
		l.filled(e, r.entry, filled)
		return err
	})
}

// filled seals e (entry i of the TOC) if filled, the bytes of it now
// cached, are all of its data.
func (l *Layer) filled(e *toc.Entry, i uint32, filled int64) {
	if filled > 0 && filled == e.Size-l.holes[i] {
		l.seal(e)
	}
}

// seal makes e's entry, filled in place, a whole file, in the background,
// unless that is under way.
func (l *Layer) seal(e *toc.Entry) {
	l.mu.Lock()
	busy := l.sealing[e.Digest()]
	l.sealing[e.Digest()] = true
	l.mu.Unlock()
	if busy {
		return
	}
	if !l.spawn("sealing "+e.Path(), func(ctx context.Context) { l.sealNow(ctx, e) }) {
		l.mu.Lock()
		delete(l.sealing, e.Digest())
		l.mu.Unlock()
	}
}

func (l *Layer) sealNow(ctx context.Context, e *toc.Entry) {
	defer func() {
		l.mu.Lock()
		delete(l.sealing, e.Digest())
		l.mu.Unlock()
	}()
	// Chunks cached in entries of their own (by an earlier version, or
	// shared with a file that does not fill in place) go into the file's
	// entry first; they leave their own once it is whole.
	var own []digest.Digest
	for i, c := range e.Chunks() {
		if c.Zero || l.cache.HasPart(e.Digest(), c.FileOffset, c.Digest()) {
			continue
		}
		data, ok := l.cachedChunk(e, i)
		if !ok {
			return // gone meanwhile: sealed when next found complete
		}
		if _, err := l.cache.PutPart(e.Digest(), e.Size, c.FileOffset, c.Digest(), data); err != nil {
			log.G(ctx).WithError(err).WithField("file", e.Path()).Debug("cannot fill a cached file for passthrough")
			return
		}
		own = append(own, c.Digest())
	}
	err := l.cache.Seal(e.Digest())
	if errors.Is(err, cache.ErrDigestMismatch) {
		// Every chunk matched its digest as it was read, the whole does
		// not match the file's: the TOC contradicts itself.
		err = fmt.Errorf("layer %s: file %q: its chunks do not make its TOC digest (%w); the layer is not served", l.desc.Digest, e.Path(), err)
		log.L.WithError(err).Error("rejected a lazily mounted layer")
		metrics.LayerVerifications.WithLabelValues("rejected").Inc()
		l.setVerification(Rejected, err)
		return
	}
	if err != nil {
		log.G(ctx).WithError(err).WithField("file", e.Path()).Debug("cannot seal a cached file for passthrough")
		return
	}
	for _, d := range own {
		l.cache.Remove(d)
	}
}

// WriteFile writes the whole content of e, a regular file of the layer, to
// w: each chunk from the cache or fetched, verified against its digest.
func (l *Layer) WriteFile(ctx context.Context, e *toc.Entry, w io.Writer) error {
	if err := l.failed(); err != nil {
		return err
	}
	return l.writeContent(ctx, e, w)
}

// writeContent writes e's content to w, chunk by chunk; holes as zeros
// written a piece at a time, never allocated whole.
func (l *Layer) writeContent(ctx context.Context, e *toc.Entry, w io.Writer) error {
	var zeros []byte
	for i, c := range e.Chunks() {
		if c.Zero {
			if zeros == nil {
				zeros = make([]byte, 64<<10)
			}
			for left := c.Size; left > 0; {
				n := min(left, int64(len(zeros)))
				if _, err := w.Write(zeros[:n]); err != nil {
					return err
				}
				left -= n
			}
			continue
		}
		data, err := l.chunk(ctx, e, i)
		if err != nil {
			return err
		}
		if _, err := w.Write(data[:c.Size]); err != nil {
			return err
		}
	}
	return nil
}

// ForgetCached removes the layer's file contents from the cache, for a
// caller that keeps them elsewhere (a settled lazy composefs layer, whose
// objects are in the composefs store): one copy on disk, not two. Reads
// through the layer after it fetch again.
func (l *Layer) ForgetCached() {
	for _, d := range l.cacheKeys() {
		l.cache.Remove(d)
	}
}

// DemoteCached makes what the cache holds of the layer the first to go when
// it is full: for a layer no snapshot uses any more. A chunk another layer
// shares goes early too, and is fetched again if wanted.
func (l *Layer) DemoteCached() {
	l.cache.Demote(l.cacheKeys())
}

// cacheKeys are the cache entries the layer's data may be in: its chunks',
// and the whole files it fills in place.
func (l *Layer) cacheKeys() []digest.Digest {
	var keys []digest.Digest
	for _, e := range l.TOC().Entries() {
		if e.Type != toc.TypeReg {
			continue
		}
		if fills(e) {
			keys = append(keys, e.Digest())
		}
		for _, c := range e.Chunks() {
			if !c.Zero {
				keys = append(keys, c.Digest())
			}
		}
	}
	return keys
}

package layer

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/containerd/log"

	"github.com/lazypull/lazypull/cache"
	"github.com/lazypull/lazypull/format/toc"
	"github.com/lazypull/lazypull/metrics"
)

// maxAssembled is the largest file assembled from its chunks into one
// cache file: programs and libraries are (a warm start then maps them
// from one local file); larger files, data mostly, are served from their
// chunks, since a copy doubles their room on disk and assembling them
// while a container reads them triples its disk traffic.
const maxAssembled = 64 << 20

// assembles tells whether e is a file of several chunks small enough to
// be assembled into one cache entry (see maxAssembled).
func assembles(e *toc.Entry) bool {
	return len(e.Chunks()) > 1 && e.Digest() != "" && e.Size <= maxAssembled
}

// CachedFile returns a local file holding e's whole content, if every
// chunk of it is cached (what the file system above may hand to the
// kernel). A file of several chunks, up to maxAssembled bytes, is
// assembled into one the first time, in the background: this call
// returns false, later ones the assembled file.
func (l *Layer) CachedFile(e *toc.Entry) (*os.File, bool) {
	if l.failed() != nil {
		return nil, false
	}
	if len(e.Chunks()) == 1 && !e.Chunks()[0].Zero {
		// One chunk is the whole file: its cache entry serves as it is.
		return l.cache.Open(e.Chunks()[0].Digest())
	}
	if !assembles(e) {
		return nil, false
	}
	if l.cache.Has(e.Digest()) {
		return l.cache.Open(e.Digest())
	}
	for _, c := range e.Chunks() {
		if !c.Zero && !l.cache.Has(c.Digest()) {
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
	busy := l.assembling[e.Digest()]
	l.assembling[e.Digest()] = true
	l.mu.Unlock()
	if busy {
		return
	}
	if !l.spawn("assembling "+e.Path(), func(ctx context.Context) { l.assembleNow(ctx, e) }) {
		l.mu.Lock()
		delete(l.assembling, e.Digest())
		l.mu.Unlock()
	}
}

func (l *Layer) assembleNow(ctx context.Context, e *toc.Entry) {
	defer func() {
		l.mu.Lock()
		delete(l.assembling, e.Digest())
		l.mu.Unlock()
	}()
	pr, pw := io.Pipe()
	// Not spawned: it ends with the pipe, before this goroutine does.
	go func() {
		var err error
		defer func() { pw.CloseWithError(err) }() // nil: io.EOF for the reader
		defer l.recoverAs("reading chunks to assemble "+e.Path(), &err)
		err = l.writeContent(ctx, e, pw)
	}()
	err := l.cache.PutFile(e.Digest(), pr) // checks the whole file's digest
	pr.CloseWithError(io.ErrClosedPipe)
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
		log.L.WithError(err).WithField("file", e.Path()).Debug("cannot assemble a cached file for passthrough")
		return
	}
	// The assembled file holds the chunks now: keep them once on disk.
	for _, c := range e.Chunks() {
		if !c.Zero {
			l.cache.Remove(c.Digest())
		}
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
	for _, e := range l.TOC().Entries() {
		if e.Type != toc.TypeReg {
			continue
		}
		if assembles(e) {
			l.cache.Remove(e.Digest())
		}
		for _, c := range e.Chunks() {
			if !c.Zero {
				l.cache.Remove(c.Digest())
			}
		}
	}
}

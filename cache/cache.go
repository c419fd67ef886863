// Package cache is lazypull's verified, content-addressed store of fetched
// data: chunks and whole files, each kept once under its digest on disk. It
// keeps no copies in memory: hot entries stay in the kernel's page cache.
//
// Everything served is checked against its digest: Put and PutFile refuse
// data that does not match, and an entry found on disk at New is hashed
// whole at its first read (Get, ReadAt or Open) before any of it is served;
// entries written or hashed by this Cache are trusted for its lifetime. A
// corrupt or truncated entry is deleted and reported as a miss, so the
// caller refetches.
// Because the key is the digest, identical chunks and files of different
// layers and images share one entry.
//
// The cache knows digests and bytes only. It must not know layers, TOCs,
// registries, FUSE or HTTP: the layer package decides what to cache and
// where the bytes come from.
package cache

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"sync"
	"time"

	"github.com/containerd/log"
	"github.com/opencontainers/go-digest"
)

// ErrClosed is returned by methods that change a closed Cache.
var ErrClosed = errors.New("cache: closed")

// ErrNoSpace is wrapped by the error of a Put or PutFile that found the
// cache's filesystem full (ENOSPC, or EDQUOT: the quota is). Nothing was
// stored; the caller still has its data and can serve it uncached. Each is
// counted in Stats.NoSpace.
var ErrNoSpace = errors.New("the cache's filesystem is full")

// Cache is a directory of entries named by digest, with a size limit. All methods are safe for concurrent use.
type Cache struct {
	dir     string
	opts    options
	lock    *os.File
	hashers *hasherPool
	stats   counters
	ops     sync.WaitGroup // file changes in flight, waited for by Close

	mu     sync.Mutex
	closed bool
	index  *index
	// busy holds the digests whose file is being written or deleted, with a
	// channel closed when that is done. A busy digest is never in the index;
	// Put, PutFile and Remove wait for it, so one digest has one writer.
	busy map[digest.Digest]chan struct{}
	// held counts the Holds on each digest: eviction spares their entries.
	held map[digest.Digest]int
}

// New opens the cache in dir, creating it if needed. It takes an exclusive
// lock on the directory, deletes temp files left by a crash, and lists the
// entries to rebuild sizes and LRU order (see disk.go). Entries found on disk
// are unverified until first read. Without WithMaxBytes, the limit is
// DefaultMaxPercent of the size of dir's filesystem. If the entries exceed
// the limit (it was lowered), the least recently used are deleted now.
func New(dir string, opts ...Option) (*Cache, error) {
	o := defaultOptions()
	for _, opt := range opts {
		opt(&o)
	}
	if err := os.MkdirAll(dir, dirMode); err != nil {
		return nil, fmt.Errorf("cache: create %s: %w", dir, err)
	}
	if !o.maxBytesSet {
		var err error
		if o.maxBytes, err = defaultMaxBytes(dir); err != nil {
			return nil, err
		}
	}
	lock, err := lockDir(dir)
	if err != nil {
		return nil, err
	}
	c := &Cache{
		dir:     dir,
		opts:    o,
		lock:    lock,
		hashers: newHasherPool(digest.SHA256),
		index:   newIndex(),
		busy:    make(map[digest.Digest]chan struct{}),
		held:    make(map[digest.Digest]int),
	}
	if err := c.load(); err != nil {
		unlockDir(lock)
		return nil, err
	}
	return c, nil
}

func (c *Cache) load() error {
	if err := resetTempDir(c.dir); err != nil {
		return err
	}
	found, torn, err := scanDir(c.dir)
	if err != nil {
		return err
	}
	c.stats.corruptions.Add(int64(torn))
	c.index.entries = make(map[digest.Digest]*entry, len(found))
	for _, s := range found { // oldest first
		c.index.add(&entry{digest: s.digest, size: s.size, disk: s.disk, parts: s.parts})
	}
	for _, e := range c.index.evict(c.opts.maxBytes, nil) { // no Holds yet
		c.stats.evictions.Add(1)
		if err := deleteEntryFile(c.path(e.digest)); err != nil {
			return fmt.Errorf("cache: evict %s: %w", e.digest, err)
		}
	}
	return nil
}

// Put stores data under d. The data is hashed first, even if d is already
// stored, so a nil error always means data matches d: on a mismatch Put
// returns an error wrapping ErrDigestMismatch and stores nothing. If d is
// already stored, Put then only marks it used (no write, no fsync);
// concurrent Puts of one digest write it once. The entry is written to a temp file and renamed into place,
// so a reader never sees a partial entry. data may be reused after Put
// returns.
func (c *Cache) Put(d digest.Digest, data []byte) error {
	if err := d.Validate(); err != nil {
		return fmt.Errorf("cache: put %q: %w", d, err)
	}
	if err := c.hashers.verifyBytes(d, data); err != nil {
		return fmt.Errorf("cache: put %s: %w", d, err)
	}
	return c.store(d, func(f *os.File) (int64, error) {
		n, err := f.Write(data)
		return int64(n), err
	})
}

// PutFile stores what r yields under d, streaming it to disk while hashing;
// the entry appears only if the digest matches (else the error wraps
// ErrDigestMismatch). It is for data too large to hold whole in memory
// (a chunk decompressed from its member as it is written). If d is already
// stored, r is not read. r is read to EOF otherwise: bound it (io.LimitReader)
// if its size is untrusted.
func (c *Cache) PutFile(d digest.Digest, r io.Reader) error {
	if err := d.Validate(); err != nil {
		return fmt.Errorf("cache: put %q: %w", d, err)
	}
	return c.store(d, func(f *os.File) (int64, error) {
		h := c.hashers.get(d.Algorithm())
		defer c.hashers.put(h)
		buf := getCopyBuffer()
		defer copyBuffers.Put(buf)
		n, err := io.CopyBuffer(io.MultiWriter(f, h.h), r, *buf)
		if err != nil {
			return n, fmt.Errorf("copy to %s: %w", f.Name(), err)
		}
		if !h.matches(d) {
			return n, fmt.Errorf("%w: expected %s, data (%d bytes) hashes to %s", ErrDigestMismatch, d, n, h.digest())
		}
		return n, nil
	})
}

// store claims d, writes its file with write, and indexes it, evicting older
// entries if over the limit (never this one: a Get right after the Put finds
// it).
func (c *Cache) store(d digest.Digest, write func(*os.File) (int64, error)) error {
	done, err := c.claim(d)
	if done == nil || err != nil {
		return err
	}
	defer c.ops.Done()
	size, err := c.writeEntry(d, write)

	c.mu.Lock()
	delete(c.busy, d)
	close(done)
	if err != nil {
		c.mu.Unlock()
		return err
	}
	e := &entry{digest: d, size: size, disk: size, verified: true}
	c.index.add(e)
	victims := c.evictLocked(e)
	c.mu.Unlock()
	c.deleteEvicted(victims)
	return nil
}

// evictLocked takes least recently used entries out of the index until the
// cache is within its limit, sparing keep and held digests, and marks them
// busy; the caller deletes them with deleteEvicted after releasing c.mu,
// which it holds, and the cache is open or a file change is in flight.
func (c *Cache) evictLocked(keep *entry) []detached {
	spare := func(e *entry) bool { return e == keep || c.held[e.digest] > 0 }
	var victims []detached
	for _, v := range c.index.evict(c.opts.maxBytes, spare) {
		victims = append(victims, c.detachRemovedLocked(v))
	}
	return victims
}

func (c *Cache) deleteEvicted(victims []detached) {
	c.stats.evictions.Add(int64(len(victims)))
	for _, v := range victims {
		if err := c.deleteDetached(v); err != nil {
			log.L.WithFields(log.Fields{"digest": v.digest, "path": c.path(v.digest)}).WithError(err).Warn("cache: cannot delete evicted entry")
		}
	}
}

// Demote makes the entries for ds, those present, the first to go when the
// cache is over its limit, now and after a restart: the chunks of a layer
// no snapshot uses any more go before those of layers in use. One read
// again is used as any other.
func (c *Cache) Demote(ds []digest.Digest) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, d := range ds {
		if e := c.index.get(d); e != nil {
			c.index.demote(e)
		}
	}
}

// Hold keeps the entry for d, stored now or by a later Put, from eviction
// until release is called (release may be called more than once). Eviction
// already spares an entry in the Put that stores it, but the next Put of
// another digest may take it when the limit is tight; a caller that puts
// data, or finds it stored, and then tells readers to Get it holds d from
// before until they have it, so the cache's own limit never turns their Get
// into a miss. Holds nest. Held entries can keep the cache over its limit
// until released; Remove and the deletion of a corrupt entry ignore them.
func (c *Cache) Hold(d digest.Digest) (release func()) {
	c.mu.Lock()
	c.held[d]++
	c.mu.Unlock()
	var once sync.Once
	return func() { once.Do(func() { c.unhold(d) }) }
}

// unhold ends one Hold of d, and evicts what the Holds kept over the limit.
func (c *Cache) unhold(d digest.Digest) {
	c.mu.Lock()
	if c.held[d]--; c.held[d] <= 0 {
		delete(c.held, d)
	}
	var victims []detached
	if !c.closed {
		victims = c.evictLocked(nil)
	}
	c.mu.Unlock()
	c.deleteEvicted(victims)
}

// claim makes the caller d's one writer: it returns a channel to close when
// done (with c.ops incremented), or nil if d is already stored.
func (c *Cache) claim(d digest.Digest) (chan struct{}, error) {
	for {
		c.mu.Lock()
		if c.closed {
			c.mu.Unlock()
			return nil, fmt.Errorf("cache: put %s: %w", d, ErrClosed)
		}
		if e := c.index.get(d); e != nil {
			c.index.touch(e, time.Now())
			c.mu.Unlock()
			return nil, nil
		}
		if wait, ok := c.busy[d]; ok {
			c.mu.Unlock()
			<-wait
			continue // the other writer may have failed: look again
		}
		done := make(chan struct{})
		c.busy[d] = done
		c.ops.Add(1)
		c.mu.Unlock()
		return done, nil
	}
}

// Get returns the data stored under d, or false if it is absent or was found
// corrupt (then deleted: the caller should fetch and Put it again). The
// returned slice belongs to the caller.
func (c *Cache) Get(d digest.Digest) ([]byte, bool) {
	fd, size, ok := c.open(d)
	if !ok {
		return nil, false
	}
	defer fd.Close()
	data := make([]byte, size)
	if _, err := fd.ReadAt(data, 0); err != nil {
		c.readFailed(d, err)
		return nil, false
	}
	return data, true
}

// ReadAt reads len(p) bytes at off of the entry for d, which must hold
// size bytes, into p: a FUSE read goes from the page cache straight into
// its reply buffer, with no copy of the entry in between. It returns false
// if the entry is absent, corrupt (then deleted), of another size, or
// shorter than off+len(p).
func (c *Cache) ReadAt(d digest.Digest, size int64, p []byte, off int64) bool {
	if off < 0 || off+int64(len(p)) > size {
		return false
	}
	fd, n, ok := c.open(d)
	if !ok {
		return false
	}
	defer fd.Close()
	if n != size {
		return false
	}
	if _, err := fd.ReadAt(p, off); err != nil {
		c.readFailed(d, err)
		return false
	}
	return true
}

// readFailed logs a read of an entry's open file that failed: the file was
// truncated behind our back (the next open finds its size wrong and drops
// it) or the disk failed.
func (c *Cache) readFailed(d digest.Digest, err error) {
	c.stats.misses.Add(1)
	log.L.WithFields(log.Fields{"digest": d, "path": c.path(d)}).WithError(err).Warn("cache: cannot read entry")
}

// find looks d up for a read and marks it used: it returns the entry with
// c.mu held, or nil (a miss, counted) with c.mu released.
func (c *Cache) find(d digest.Digest) *entry {
	now := time.Now()
	c.mu.Lock()
	var e *entry
	if !c.closed {
		e = c.index.get(d)
	}
	if e == nil {
		c.mu.Unlock()
		c.stats.misses.Add(1)
		return nil
	}
	c.index.touch(e, now)
	return e
}

// Open opens the entry for d read-only, for use as a FUSE passthrough
// backing file, or returns false if it is absent or corrupt. Hashing a large
// file at every read would be too slow, so an entry is hashed once per Cache
// lifetime: entries written through this Cache, or already read once, are
// trusted; an entry found on disk at New is hashed at its first read
// (concurrent reads wait for that one hash). Later reads check only the
// size. A corrupt entry is deleted and reported as a miss. The caller closes
// the file; it stays readable even if the entry is evicted meanwhile.
func (c *Cache) Open(d digest.Digest) (*os.File, bool) {
	fd, _, ok := c.open(d)
	if !ok {
		return nil, false
	}
	return os.NewFile(uintptr(fd), c.path(d)), true
}

// open is Open for the cache's own reads: a raw descriptor, and the entry's
// size.
func (c *Cache) open(d digest.Digest) (entryFD, int64, bool) {
	for {
		e := c.find(d)
		if e == nil {
			return -1, 0, false
		}
		if e.parts != nil {
			c.mu.Unlock() // being filled: not whole yet
			c.stats.misses.Add(1)
			return -1, 0, false
		}
		if wait := e.verifying; wait != nil {
			c.mu.Unlock()
			<-wait
			continue
		}
		verify := !e.verified
		if verify {
			e.verifying = make(chan struct{})
			c.ops.Add(1)
		}
		size := e.size
		c.mu.Unlock()

		p := c.path(d)
		fd, err := c.openEntry(d, p, size, verify)
		if err != nil {
			c.drop(e, p, err, verify)
			c.stats.misses.Add(1)
			if verify {
				c.ops.Done()
			}
			return -1, 0, false
		}
		if verify {
			c.stats.verifications.Add(1)
			c.mu.Lock()
			close(e.verifying)
			e.verifying = nil
			e.verified = true
			c.mu.Unlock()
			c.ops.Done()
		}
		c.stats.diskHits.Add(1)
		return fd, size, true
	}
}

// drop handles a failed read of e's file at p: a corrupt entry is counted,
// logged and deleted; a vanished one (deleted behind our back) is forgotten;
// any other error (out of descriptors, I/O error) is logged and the entry
// kept, as the file may be fine. If verifying, it also ends e's verification,
// in the same critical section, so a waiting Open does not hash it again.
func (c *Cache) drop(e *entry, p string, err error, verifying bool) {
	l := log.L.WithFields(log.Fields{"digest": e.digest, "path": p}).WithError(err)
	corrupt := errors.Is(err, ErrDigestMismatch)
	vanished := errors.Is(err, fs.ErrNotExist)
	switch {
	case corrupt:
		c.stats.corruptions.Add(1)
		l.Warn("cache: deleting corrupt entry")
	case vanished:
		l.Warn("cache: entry file vanished")
	default:
		l.Error("cache: cannot read entry")
	}

	var victim *detached
	c.mu.Lock()
	if verifying {
		close(e.verifying)
		e.verifying = nil
	}
	if c.index.current(e) && !c.closed {
		switch {
		case corrupt:
			v := c.detachLocked(e)
			victim = &v
		case vanished:
			c.index.remove(e)
		}
	}
	c.mu.Unlock()
	if victim != nil {
		if err := c.deleteDetached(*victim); err != nil {
			l.WithError(err).Error("cache: cannot delete corrupt entry")
		}
	}
}

// detached is an entry taken out of the index whose file is still to be
// deleted; its digest is busy until deleteDetached is done.
type detached struct {
	digest digest.Digest
	done   chan struct{}
}

// detachLocked removes e from the index and marks its digest busy, so that
// a Put of the same digest waits for the file deletion instead of racing it.
// c.mu is held and the cache is not closed.
func (c *Cache) detachLocked(e *entry) detached {
	c.index.remove(e)
	return c.detachRemovedLocked(e)
}

// detachRemovedLocked is detachLocked for an entry already out of the index.
func (c *Cache) detachRemovedLocked(e *entry) detached {
	done := make(chan struct{})
	c.busy[e.digest] = done
	c.ops.Add(1)
	return detached{digest: e.digest, done: done}
}

func (c *Cache) deleteDetached(v detached) error {
	defer c.ops.Done()
	err := deleteEntryFile(c.path(v.digest))
	c.mu.Lock()
	delete(c.busy, v.digest)
	close(v.done)
	c.mu.Unlock()
	return err
}

// Has reports whether d is stored whole (not being filled). It does not count as a use.
func (c *Cache) Has(d digest.Digest) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return false
	}
	e := c.index.get(d)
	return e != nil && e.parts == nil
}

// Remove deletes the entry for d, if any. An *os.File from Open stays
// readable.
func (c *Cache) Remove(d digest.Digest) error {
	for {
		c.mu.Lock()
		if c.closed {
			c.mu.Unlock()
			return fmt.Errorf("cache: remove %s: %w", d, ErrClosed)
		}
		if wait, ok := c.busy[d]; ok {
			c.mu.Unlock()
			<-wait // a Put in flight: remove what it stores
			continue
		}
		e := c.index.get(d)
		if e == nil {
			c.mu.Unlock()
			return nil
		}
		v := c.detachLocked(e)
		c.mu.Unlock()
		if err := c.deleteDetached(v); err != nil {
			return fmt.Errorf("cache: remove %s: %w", d, err)
		}
		return nil
	}
}

// Stats returns the counters since New and the current sizes.
func (c *Cache) Stats() Stats {
	c.mu.Lock()
	s := Stats{
		Entries:  len(c.index.entries),
		Bytes:    c.index.diskBytes,
		MaxBytes: c.opts.maxBytes,
	}
	c.mu.Unlock()
	s.DiskHits = c.stats.diskHits.Load()
	s.Verifications = c.stats.verifications.Load()
	s.Misses = c.stats.misses.Load()
	s.Evictions = c.stats.evictions.Load()
	s.Corruptions = c.stats.corruptions.Load()
	s.NoSpace = c.stats.noSpace.Load()
	return s
}

// Close waits for writes and deletions in flight, records the last use of
// the entries used since New as their mtime (for the next New's LRU order)
// and releases the directory. Files from Open stay
// valid. After Close, Get and Open miss and Put fails with ErrClosed.
func (c *Cache) Close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	c.closed = true
	c.mu.Unlock()
	c.ops.Wait()

	c.mu.Lock()
	var used []scannedEntry
	for _, e := range c.index.entries {
		if e.touched {
			used = append(used, scannedEntry{digest: e.digest, size: e.size, lastUse: e.lastUse})
		}
	}
	c.mu.Unlock()

	c.recordUse(used)
	return unlockDir(c.lock)
}

package cache

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/containerd/log"
	"github.com/opencontainers/go-digest"
	"golang.org/x/sys/unix"
)

// Filling in place. A file made of several pieces (a lazily fetched file's
// chunks) is written straight into its own entry, a verified piece at a
// time, as the pieces arrive: it is whole the moment its last piece is in,
// with no second copy on disk and no pass to assemble it. Until Seal has
// hashed the whole against its digest, the entry serves only the pieces
// put into it (ReadPart), never the file: Has, Get, ReadAt and Open miss
// it, so nothing hands an unchecked whole file to the kernel.
//
// The entry's file is created sparse at its full size, at the entry's own
// path; each piece put is recorded by a line "offset size digest" appended
// to a sidecar file beside it (<hex>.parts), not synced. After a restart
// the pieces recorded there are hashed again at their first read, so a torn
// write or a lost line costs a refetch, never wrong bytes. Seal deletes the
// sidecar; an entry file without one is whole.

// partsSuffix names an entry's sidecar of recorded pieces.
const partsSuffix = ".parts"

// maxPartsFile bounds the sidecar read at New: a record is under 100
// bytes, so this is some 10⁵ pieces, more than any file of a layer has.
const maxPartsFile = 8 << 20

// parts are the pieces of an entry being filled, by offset.
type parts struct {
	byOff  map[int64]*part
	filled int64 // bytes in the pieces, verified or not
}

type part struct {
	size     int64
	digest   digest.Digest
	verified bool // written or hashed by this process
}

// PutPart stores data, which must hash to piece, as the bytes at off of the
// file d of size bytes, filling d's entry in place. It returns how many
// bytes of d are in now (size once d is whole, sealed or not); a piece put
// twice counts once. A mismatch stores nothing and wraps ErrDigestMismatch.
func (c *Cache) PutPart(d digest.Digest, size, off int64, piece digest.Digest, data []byte) (int64, error) {
	if err := c.checkPart(d, size, off, piece, int64(len(data))); err != nil {
		return 0, err
	}
	if err := c.hashers.verifyBytes(piece, data); err != nil {
		return 0, fmt.Errorf("cache: put %s at %d of %s: %w", piece, off, d, err)
	}
	return c.putPart(d, size, off, piece, int64(len(data)), func(f *os.File) error {
		_, err := f.WriteAt(data, off)
		return err
	})
}

// PutPartFrom is PutPart for a piece of n bytes streamed from r, hashed as
// it is written: the piece is recorded only if it matches (else the error
// wraps ErrDigestMismatch, and what was written stays an unrecorded hole).
func (c *Cache) PutPartFrom(d digest.Digest, size, off int64, piece digest.Digest, n int64, r io.Reader) (int64, error) {
	if err := c.checkPart(d, size, off, piece, n); err != nil {
		return 0, err
	}
	return c.putPart(d, size, off, piece, n, func(f *os.File) error {
		h := c.hashers.get(piece.Algorithm())
		defer c.hashers.put(h)
		buf := getCopyBuffer()
		defer copyBuffers.Put(buf)
		w := io.MultiWriter(io.NewOffsetWriter(f, off), h.h)
		got, err := io.CopyBuffer(w, io.LimitReader(r, n+1), *buf)
		switch {
		case err != nil:
			return fmt.Errorf("copy to %s: %w", f.Name(), err)
		case got != n:
			return fmt.Errorf("%w: piece %s at %d of %s: expected %d bytes, got %d", ErrDigestMismatch, piece, off, d, n, got)
		case !h.matches(piece):
			return fmt.Errorf("%w: piece at %d of %s: expected %s, data hashes to %s", ErrDigestMismatch, off, d, piece, h.digest())
		}
		return nil
	})
}

func (c *Cache) checkPart(d digest.Digest, size, off int64, piece digest.Digest, n int64) error {
	if err := d.Validate(); err != nil {
		return fmt.Errorf("cache: put a piece of %q: %w", d, err)
	}
	if err := piece.Validate(); err != nil {
		return fmt.Errorf("cache: put piece %q of %s: %w", piece, d, err)
	}
	if off < 0 || n <= 0 || off > size-n {
		return fmt.Errorf("cache: put a piece of %d bytes at %d of %s: outside its %d bytes", n, off, d, size)
	}
	return nil
}

// putPart finds or creates d's entry being filled, writes a piece into its
// file with write, and records it. The entry counts the bytes of its
// pieces against the limit, not its size: it is sparse until filled.
func (c *Cache) putPart(d digest.Digest, size, off int64, piece digest.Digest, n int64, write func(*os.File) error) (int64, error) {
	e, filled, err := c.filling(d, size, off, piece)
	if e == nil || err != nil {
		return filled, err
	}
	defer c.ops.Done()
	p := c.path(d)
	f, err := os.OpenFile(p, os.O_WRONLY, 0)
	if errors.Is(err, fs.ErrNotExist) {
		return 0, nil // evicted meanwhile: the piece is fetched again when needed
	}
	if err != nil {
		return 0, c.putError(d, err)
	}
	err = write(f)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = appendPart(p, off, n, piece)
	}
	if err != nil {
		if errors.Is(err, ErrDigestMismatch) {
			return 0, fmt.Errorf("cache: put a piece of %s: %w", d, err)
		}
		return 0, c.putError(d, err)
	}
	c.mu.Lock()
	if !c.index.current(e) || e.parts == nil {
		c.mu.Unlock()
		return 0, nil // evicted, or sealed by another writer of the same bytes
	}
	if old := e.parts.byOff[off]; old == nil || old.digest != piece || old.size != n {
		if old != nil {
			e.parts.filled -= old.size
			c.index.grow(e, -old.size)
		}
		e.parts.byOff[off] = &part{size: n, digest: piece, verified: true}
		e.parts.filled += n
		c.index.grow(e, n)
	} else {
		old.verified = true
	}
	in := e.parts.filled
	victims := c.evictLocked(e)
	c.mu.Unlock()
	c.deleteEvicted(victims)
	return in, nil
}

// filling returns d's entry being filled, creating its file if needed, with
// c.ops incremented for the write to come; or nil and how much of d is in,
// when the piece at off is in already (or d is whole).
func (c *Cache) filling(d digest.Digest, size, off int64, piece digest.Digest) (*entry, int64, error) {
	for {
		c.mu.Lock()
		if c.closed {
			c.mu.Unlock()
			return nil, 0, fmt.Errorf("cache: put a piece of %s: %w", d, ErrClosed)
		}
		if wait, ok := c.busy[d]; ok {
			c.mu.Unlock()
			<-wait
			continue
		}
		if e := c.index.get(d); e != nil {
			defer c.mu.Unlock()
			c.index.touch(e, time.Now())
			switch {
			case e.size != size:
				return nil, 0, fmt.Errorf("cache: put a piece of %s: its entry holds %d bytes, not %d", d, e.size, size)
			case e.parts == nil:
				return nil, size, nil // whole already
			}
			if p := e.parts.byOff[off]; p != nil && p.verified && p.digest == piece {
				return nil, e.parts.filled, nil
			}
			c.ops.Add(1)
			return e, 0, nil
		}
		done := make(chan struct{})
		c.busy[d] = done
		c.ops.Add(1)
		c.mu.Unlock()

		err := c.createFill(d, size)

		c.mu.Lock()
		delete(c.busy, d)
		close(done)
		if err != nil {
			c.mu.Unlock()
			c.ops.Done()
			return nil, 0, err
		}
		e := &entry{digest: d, size: size, parts: &parts{byOff: make(map[int64]*part)}}
		c.index.add(e)
		victims := c.evictLocked(e)
		c.mu.Unlock()
		c.deleteEvicted(victims)
		return e, 0, nil
	}
}

// createFill creates d's entry file, sparse, of size bytes, and its empty
// sidecar.
func (c *Cache) createFill(d digest.Digest, size int64) error {
	p := c.path(d)
	if err := os.MkdirAll(filepath.Dir(p), dirMode); err != nil {
		return c.putError(d, err)
	}
	// A new inode, never one that exists: a whole entry's file may be
	// linked elsewhere (a composefs object adopted from the cache).
	if err := deleteEntryFile(p); err != nil {
		return c.putError(d, err)
	}
	if err := os.WriteFile(p+partsSuffix, nil, 0o600); err != nil {
		return c.putError(d, err)
	}
	f, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err == nil {
		err = f.Truncate(size)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
	}
	if err != nil {
		deleteEntryFile(p)
		return c.putError(d, err)
	}
	return nil
}

// appendPart records a piece in the sidecar of the entry at p.
func appendPart(p string, off, n int64, piece digest.Digest) error {
	f, err := os.OpenFile(p+partsSuffix, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(f, "%d %d %s\n", off, n, piece)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// HasPart reports whether the bytes of file d in its piece at off are
// stored: in d's whole entry, or as that piece of d being filled.
func (c *Cache) HasPart(d digest.Digest, off int64, piece digest.Digest) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return false
	}
	e := c.index.get(d)
	if e == nil || e.parts == nil {
		return e != nil
	}
	p := e.parts.byOff[off]
	return p != nil && p.digest == piece
}

// ReadPart reads len(p) bytes at from within the piece at off of the file d
// (size bytes; the piece n bytes hashing to piece) into p: from d's whole
// entry, or from that piece of d being filled, hashed first if this process
// did not write it (then dropped if it does not match). It reports false if
// neither holds the bytes.
func (c *Cache) ReadPart(d digest.Digest, size, off int64, piece digest.Digest, n int64, p []byte, from int64) bool {
	if from < 0 || from+int64(len(p)) > n || off < 0 || off > size-n {
		return false
	}
	for attempt := 0; attempt < 2; attempt++ {
		c.mu.Lock()
		var e *entry
		if !c.closed {
			e = c.index.get(d)
		}
		if e == nil || e.parts == nil {
			c.mu.Unlock()
			return e != nil && c.ReadAt(d, size, p, off+from)
		}
		pt := e.parts.byOff[off]
		if pt == nil || pt.digest != piece || pt.size != n {
			c.mu.Unlock()
			c.stats.misses.Add(1)
			return false
		}
		verify := !pt.verified
		c.index.touch(e, time.Now())
		c.mu.Unlock()

		path := c.path(d)
		fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if errors.Is(err, unix.ENOENT) {
			continue // sealed (or evicted) since the look: look again
		}
		if err != nil {
			c.readFailed(d, err)
			return false
		}
		ok := c.readPiece(e, entryFD(fd), pt, off, p, from, verify)
		unix.Close(fd)
		if ok {
			c.stats.diskHits.Add(1)
		}
		return ok
	}
	return false
}

// readPiece reads from the piece pt at off of e's file, hashing the piece
// first if verify.
func (c *Cache) readPiece(e *entry, fd entryFD, pt *part, off int64, p []byte, from int64, verify bool) bool {
	if verify {
		err := c.hashers.verifyReader(pt.digest, pt.size, io.NewSectionReader(fd, off, pt.size))
		c.stats.verifications.Add(1)
		c.mu.Lock()
		if c.index.current(e) && e.parts != nil && e.parts.byOff[off] == pt {
			if err == nil {
				pt.verified = true
			} else {
				delete(e.parts.byOff, off)
				e.parts.filled -= pt.size
				c.index.grow(e, -pt.size)
			}
		}
		c.mu.Unlock()
		if err != nil {
			c.stats.corruptions.Add(1)
			log.L.WithFields(log.Fields{"digest": e.digest, "offset": off, "path": c.path(e.digest)}).WithError(err).Warn("cache: dropping a corrupt piece of a file being filled")
			return false
		}
	}
	if _, err := fd.ReadAt(p, off+from); err != nil {
		c.readFailed(e.digest, err)
		return false
	}
	return true
}

// Seal hashes d's entry, filled in place, against d: from then on it is a
// whole entry like any other (Has, ReadAt, Open). It is nil if d is whole
// already. The caller seals once every piece is in: a mismatch (a missing
// piece, or pieces that do not make d) deletes the entry and wraps
// ErrDigestMismatch.
func (c *Cache) Seal(d digest.Digest) error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return fmt.Errorf("cache: seal %s: %w", d, ErrClosed)
	}
	e := c.index.get(d)
	switch {
	case e == nil:
		c.mu.Unlock()
		return fmt.Errorf("cache: seal %s: nothing of it is stored", d)
	case e.parts == nil:
		c.mu.Unlock()
		return nil
	case e.verifying != nil:
		wait := e.verifying
		c.mu.Unlock()
		<-wait // another Seal: its outcome is ours
		if !c.Has(d) {
			return fmt.Errorf("cache: seal %s: %w: it did not hash to its digest", d, ErrDigestMismatch)
		}
		return nil
	}
	e.verifying = make(chan struct{})
	c.ops.Add(1)
	size := e.size
	c.mu.Unlock()

	p := c.path(d)
	fd, err := c.openEntry(d, p, size, true)
	if err != nil {
		c.drop(e, p, err, true)
		c.ops.Done()
		return fmt.Errorf("cache: seal %s: %w", d, err)
	}
	fd.Close()
	c.stats.verifications.Add(1)
	c.mu.Lock()
	close(e.verifying)
	e.verifying = nil
	e.parts = nil
	e.verified = true
	c.mu.Unlock()
	if err := os.Remove(p + partsSuffix); err != nil && !errors.Is(err, fs.ErrNotExist) {
		log.L.WithField("path", p+partsSuffix).WithError(err).Warn("cache: cannot delete the record of a sealed file's pieces; it is read again at the next start")
	}
	c.ops.Done()
	return nil
}

// readParts reads an entry's sidecar of pieces, found at New: every piece
// is unverified. Lines that do not parse, or name a piece outside the
// entry's size, are skipped (a crash can tear the last one).
func readParts(p string, size int64) (*parts, error) {
	f, err := os.Open(p)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	ps := &parts{byOff: make(map[int64]*part)}
	sc := bufio.NewScanner(io.LimitReader(f, maxPartsFile))
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) != 3 {
			continue
		}
		off, err1 := strconv.ParseInt(fields[0], 10, 64)
		n, err2 := strconv.ParseInt(fields[1], 10, 64)
		d, err3 := digest.Parse(fields[2])
		if err1 != nil || err2 != nil || err3 != nil || off < 0 || n <= 0 || off > size-n {
			continue
		}
		if old := ps.byOff[off]; old != nil {
			ps.filled -= old.size
		}
		ps.byOff[off] = &part{size: n, digest: d}
		ps.filled += n
	}
	return ps, sc.Err()
}

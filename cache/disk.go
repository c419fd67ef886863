package cache

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/containerd/log"
	"github.com/opencontainers/go-digest"
	"golang.org/x/sys/unix"
)

// On-disk layout under the cache directory:
//
//	lock                 flock(2)ed by the one Cache that owns the directory
//	tmp/                 files being written; emptied by New (a crash leaves some)
//	sha256/ab/ab12…ef    one file per entry, named by its digest
//	sha256/ab/ab12…ef.parts  beside an entry being filled in place: its pieces (fill.go)
//
// The files are the whole truth: there is no separate index file to keep in
// step with them. New rebuilds sizes and LRU order by listing the directory:
// size from the file, last use from its mtime. A use is recorded in memory
// and written back as mtime only at Close, because a utimes per Get would be
// a syscall on every hit; after a crash the order since the last Close is
// lost, which costs eviction precision, never correctness. atime is not used:
// relatime and noatime mounts do not keep it. A bbolt or JSON index was
// rejected because it must be synced on every Put to be trustworthy and still
// checked against the files after a crash, and listing is fast enough
// (BenchmarkNewScan: 100k entries in about 0.3 s on a 2-vCPU VM).
const (
	tempDirName  = "tmp"
	lockFileName = "lock"

	dirMode = 0o700 // image content may be private: owner only
)

// path is where the entry for d lives. d must be valid (validated by Put or
// found by the scan), so its encoded part is plain hex.
func (c *Cache) path(d digest.Digest) string {
	enc := d.Encoded()
	return filepath.Join(c.dir, string(d.Algorithm()), enc[:2], enc)
}

// lockDir takes an exclusive flock on dir/lock, so two Caches (say, two
// daemons) never share a directory: each trusts its in-memory index.
func lockDir(dir string) (*os.File, error) {
	p := filepath.Join(dir, lockFileName)
	f, err := os.OpenFile(p, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("cache: open lock %s: %w", p, err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, fmt.Errorf("cache: %s is in use by another cache (lock %s): %w", dir, p, err)
		}
		return nil, fmt.Errorf("cache: lock %s: %w", p, err)
	}
	return f, nil
}

func unlockDir(f *os.File) error {
	// Closing the descriptor releases the flock.
	if err := f.Close(); err != nil {
		return fmt.Errorf("cache: unlock %s: %w", f.Name(), err)
	}
	return nil
}

// resetTempDir deletes what a crashed Put left behind. It runs with the lock
// held, so no live Cache is writing there.
func resetTempDir(dir string) error {
	p := filepath.Join(dir, tempDirName)
	if err := os.RemoveAll(p); err != nil {
		return fmt.Errorf("cache: clean temp dir %s: %w", p, err)
	}
	if err := os.Mkdir(p, dirMode); err != nil {
		return fmt.Errorf("cache: create temp dir %s: %w", p, err)
	}
	return nil
}

// writeEntry writes an entry for d atomically: into a temp file in the same
// filesystem, optionally fsynced, then renamed into place. write fills the
// file and may fail (for instance on a digest mismatch), in which case
// nothing is renamed. It returns the entry's size.
func (c *Cache) writeEntry(d digest.Digest, write func(*os.File) (int64, error)) (int64, error) {
	f, err := os.CreateTemp(filepath.Join(c.dir, tempDirName), "put-*")
	if err != nil {
		return 0, c.putError(d, err)
	}
	tmp := f.Name()
	size, err := write(f)
	if err == nil && c.opts.sync {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = renameCreatingDir(tmp, c.path(d))
	}
	if err != nil {
		os.Remove(tmp)
		return 0, c.putError(d, err)
	}
	return size, nil
}

// putError names d in a failed write, and tells a full filesystem apart (a
// partly written temp file is gone by now, so the space it took is back).
func (c *Cache) putError(d digest.Digest, err error) error {
	if errors.Is(err, unix.ENOSPC) || errors.Is(err, unix.EDQUOT) {
		c.stats.noSpace.Add(1)
		return fmt.Errorf("cache: put %s: %w (%w: free space on it, or lower the cache's size limit)", d, err, ErrNoSpace)
	}
	return fmt.Errorf("cache: put %s: %w", d, err)
}

// defaultMaxBytes is DefaultMaxPercent of the size of dir's filesystem, or 0
// (unlimited) for a filesystem that reports no size.
func defaultMaxBytes(dir string) (int64, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return 0, fmt.Errorf("cache: size the filesystem of %s for the default limit: %w (give the cache a limit explicitly)", dir, err)
	}
	size := st.Blocks * uint64(st.Frsize)
	limit := int64(min(size/100*DefaultMaxPercent, math.MaxInt64))
	l := log.L.WithFields(log.Fields{"dir": dir, "filesystem_bytes": size, "max_bytes": limit})
	if limit == 0 {
		l.Warn("cache: the filesystem reports no size; the cache is unlimited (give it a limit explicitly)")
	} else {
		l.Infof("cache: no size limit given; keeping at most %d%% of the filesystem", DefaultMaxPercent)
	}
	return limit, nil
}

// renameCreatingDir renames, creating the target's parent on first use
// (instead of a stat or mkdir on every Put).
func renameCreatingDir(from, to string) error {
	err := os.Rename(from, to)
	if !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(to), dirMode); err != nil {
		return err
	}
	return os.Rename(from, to)
}

// openEntry opens the file at p for a reader, checking its size, and when
// verify is set its content too. The content is hashed through the returned
// descriptor itself, so what was verified is what is served even if the path
// is replaced meanwhile.
func (c *Cache) openEntry(d digest.Digest, p string, size int64, verify bool) (entryFD, error) {
	raw, err := unix.Open(p, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, &fs.PathError{Op: "open", Path: p, Err: err}
	}
	fd := entryFD(raw)
	var st unix.Stat_t
	err = unix.Fstat(raw, &st)
	switch {
	case err != nil:
		err = &fs.PathError{Op: "stat", Path: p, Err: err}
	case st.Size != size:
		err = fmt.Errorf("%w: %s has %d bytes, expected %d", ErrDigestMismatch, p, st.Size, size)
	case verify:
		if err = c.hashers.verifyReader(d, size, io.NewSectionReader(fd, 0, size)); err != nil {
			err = fmt.Errorf("verify %s: %w", p, err)
		}
	}
	if err != nil {
		fd.Close()
		return -1, err
	}
	return fd, nil
}

// entryFD is an entry file's raw descriptor. The read path opens and closes
// an entry at every FUSE read it serves from the cache, and os.Open's
// allocations, fcntl and cleanup made that twice as slow as a plain pread of
// 4 KiB (BenchmarkReadAt).
type entryFD int

// ReadAt reads len(p) bytes at off; a short read is io.EOF.
func (fd entryFD) ReadAt(p []byte, off int64) (int, error) {
	n := 0
	for n < len(p) {
		m, err := unix.Pread(int(fd), p[n:], off+int64(n))
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return n, err
		}
		if m == 0 {
			return n, io.EOF
		}
		n += m
	}
	return n, nil
}

func (fd entryFD) Close() error { return unix.Close(int(fd)) }

// deleteEntryFile removes an entry's file, and the record of its pieces if
// it was being filled; either being gone already is fine.
// Readers that have it open keep reading the old inode (Linux unlink
// semantics), so an evicted file still backing a passthrough open is safe.
func deleteEntryFile(p string) error {
	for _, f := range []string{p, p + partsSuffix} {
		if err := os.Remove(f); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
	}
	return nil
}

// scannedEntry is an entry file found by scanDir.
type scannedEntry struct {
	digest  digest.Digest
	size    int64
	lastUse time.Time
	disk    int64  // see entry.disk
	parts   *parts // being filled in place
}

// scanDir lists every entry file under dir, oldest use first, and counts the
// torn files it deleted (see scanPrefixDir). It reads the
// prefix directories in parallel: the cost is one getdents per directory and
// one lstat per file, bound by syscalls rather than by CPU.
func scanDir(dir string) (found []scannedEntry, torn int, err error) {
	var prefixDirs []string
	for _, a := range []digest.Algorithm{digest.SHA256, digest.SHA384, digest.SHA512} {
		algDir := filepath.Join(dir, string(a))
		des, err := os.ReadDir(algDir)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, 0, fmt.Errorf("cache: scan %s: %w", algDir, err)
		}
		for _, de := range des {
			if de.IsDir() {
				prefixDirs = append(prefixDirs, filepath.Join(algDir, de.Name()))
			}
		}
	}

	var (
		mu      sync.Mutex
		scanErr error
		wg      sync.WaitGroup
		next    = make(chan string)
	)
	for range min(2*runtime.GOMAXPROCS(0), 16) {
		wg.Go(func() {
			for p := range next {
				entries, tornHere, err := scanPrefixDir(p)
				mu.Lock()
				found = append(found, entries...)
				torn += tornHere
				if scanErr == nil {
					scanErr = err
				}
				mu.Unlock()
			}
		})
	}
	for _, p := range prefixDirs {
		next <- p
	}
	close(next)
	wg.Wait()
	if scanErr != nil {
		return nil, 0, scanErr
	}
	slices.SortFunc(found, func(a, b scannedEntry) int { return a.lastUse.Compare(b.lastUse) })
	return found, torn, nil
}

// scanPrefixDir lists the entries in one dir like sha256/ab, with one
// fstatat per file relative to the open directory (cheaper than a path
// lookup from the root). Files that cannot be entries are logged and left
// alone; an empty file that is not the empty blob is a Put torn by a crash
// (WithSync(false)) and is deleted now rather than at its first read.
func scanPrefixDir(p string) (entries []scannedEntry, torn int, err error) {
	dirFile, err := os.Open(p)
	if err != nil {
		return nil, 0, fmt.Errorf("cache: scan %s: %w", p, err)
	}
	defer dirFile.Close()
	names, err := dirFile.Readdirnames(-1)
	if err != nil {
		return nil, 0, fmt.Errorf("cache: scan %s: %w", p, err)
	}
	dirFd := int(dirFile.Fd())
	alg := digest.Algorithm(filepath.Base(filepath.Dir(p)))
	prefix := filepath.Base(p)
	entries = make([]scannedEntry, 0, len(names))
	sidecars := make(map[string]bool)
	for _, name := range names {
		if base, ok := strings.CutSuffix(name, partsSuffix); ok && isEntryName(alg, prefix, base) {
			sidecars[base] = true
			continue
		}
		var st unix.Stat_t
		if err := unix.Fstatat(dirFd, name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			if errors.Is(err, unix.ENOENT) {
				continue
			}
			return nil, 0, fmt.Errorf("cache: scan %s: %w", filepath.Join(p, name), err)
		}
		if st.Mode&unix.S_IFMT != unix.S_IFREG || !isEntryName(alg, prefix, name) {
			log.L.WithField("path", filepath.Join(p, name)).Warn("cache: ignoring a file that is not a cache entry")
			continue
		}
		d := digest.NewDigestFromEncoded(alg, name)
		if st.Size == 0 && d != alg.FromBytes(nil) {
			fp := filepath.Join(p, name)
			log.L.WithFields(log.Fields{"digest": d, "path": fp}).Warn("cache: deleting empty entry left by a crash")
			if err := deleteEntryFile(fp); err != nil {
				return nil, 0, fmt.Errorf("cache: delete torn entry %s: %w", fp, err)
			}
			torn++
			continue
		}
		entries = append(entries, scannedEntry{digest: d, size: st.Size, disk: diskUse(st.Size, st.Blocks*512), lastUse: time.Unix(st.Mtim.Unix())})
	}
	for i := range entries {
		s := &entries[i]
		name := s.digest.Encoded()
		if !sidecars[name] {
			continue
		}
		delete(sidecars, name)
		if s.parts, err = readParts(filepath.Join(p, name+partsSuffix), s.size); err != nil {
			return nil, 0, fmt.Errorf("cache: scan %s: %w", filepath.Join(p, name+partsSuffix), err)
		}
		s.disk = s.parts.filled
	}
	for name := range sidecars { // its entry is gone: a crash during a deletion
		if err := deleteEntryFile(filepath.Join(p, name)); err != nil {
			return nil, 0, fmt.Errorf("cache: delete %s: %w", filepath.Join(p, name+partsSuffix), err)
		}
	}
	return entries, torn, nil
}

// diskUse is what a file of size bytes with blocks bytes allocated takes
// in the cache's limit: its size, or its blocks if fewer (a sparse file),
// but not less than a block, which a filesystem keeping small files inline
// reports as none.
func diskUse(size, blocks int64) int64 {
	return min(size, max(blocks, 4096))
}

// isEntryName reports whether name is a valid encoded digest of alg stored
// in the right prefix dir. It is digest.Validate without the regexp, which
// showed in the scan profile.
func isEntryName(alg digest.Algorithm, prefix, name string) bool {
	if len(name) != 2*alg.Size() || name[:2] != prefix {
		return false
	}
	for i := 0; i < len(name); i++ {
		if c := name[i]; !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return true
}

// recordUse writes the last use of each entry back as its file's mtime (and
// atime), so the next New rebuilds the same LRU order.
func (c *Cache) recordUse(used []scannedEntry) {
	for _, u := range used {
		p := c.path(u.digest)
		if err := os.Chtimes(p, u.lastUse, u.lastUse); err != nil && !errors.Is(err, fs.ErrNotExist) {
			log.L.WithFields(log.Fields{"digest": u.digest, "path": p}).WithError(err).Warn("cache: cannot record last use")
		}
	}
}

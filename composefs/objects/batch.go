package objects

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"hash"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/containerd/log"
	"github.com/opencontainers/go-digest"
	"golang.org/x/sys/unix"

	"github.com/lazypull/lazypull/composefs/verity"
)

// A Batch writes objects for one owner and keeps them alive until the
// owner's refs are recorded: its Commit writes refs/<owner> with exactly
// the digests the batch wrote or added, Abort drops them (they are then
// garbage, unless another owner names them). GC does not run while any
// batch is open, in this process or another: a batch holds the store's
// lock file shared (flock), GC exclusive. So nothing a batch wrote, found
// present or added can be swept before the batch is done.
//
// A Batch's methods may be called from several goroutines.
type Batch struct {
	s     *Store
	owner string // "" for a lease: pins, records nothing
	lock  *os.File
	ctx   context.Context // for the log

	mu    sync.Mutex
	pins  map[digest.Digest]struct{}
	dirs  map[string]struct{} // fan-out directories renamed into, to fsync
	open  int                 // writers not yet committed or closed
	ended bool
}

// Batch starts writing objects for owner (a metadata image: a layer's
// snapshot ID or key; letters, digits, '.', '_', '-', ':' only). It waits
// while GC runs, until ctx is done.
func (s *Store) Batch(ctx context.Context, owner string) (*Batch, error) {
	if err := validOwner(owner); err != nil {
		return nil, err
	}
	return s.newBatch(ctx, owner)
}

// Lease is a Batch for no owner: what it writes is kept only until it
// ends, so it suits writing objects that some owner names already (a lazy
// layer filling in the files its refs name). Its Commit records nothing.
func (s *Store) Lease(ctx context.Context) (*Batch, error) {
	return s.newBatch(ctx, "")
}

func (s *Store) newBatch(ctx context.Context, owner string) (*Batch, error) {
	lock, err := s.lock(ctx, unix.LOCK_SH)
	if err != nil {
		return nil, err
	}
	return &Batch{
		s:     s,
		owner: owner,
		lock:  lock,
		ctx:   context.WithoutCancel(ctx),
		pins:  make(map[digest.Digest]struct{}),
		dirs:  make(map[string]struct{}),
	}, nil
}

// lock takes the store's lock file (a descriptor of its own, so batches
// and GC in one process exclude each other as across processes), polling
// so that ctx can end the wait.
func (s *Store) lock(ctx context.Context, how int) (*os.File, error) {
	path := filepath.Join(s.root, lockName)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|unix.O_NOFOLLOW, 0o600)
	if err != nil {
		return nil, fmt.Errorf("objects: open lock %s: %w", path, err)
	}
	for delay := time.Millisecond; ; delay = min(2*delay, 100*time.Millisecond) {
		err := unix.Flock(int(f.Fd()), how|unix.LOCK_NB)
		if err == nil {
			return f, nil
		}
		if !errors.Is(err, unix.EWOULDBLOCK) {
			f.Close()
			return nil, fmt.Errorf("objects: lock %s: %w", path, err)
		}
		select {
		case <-ctx.Done():
			f.Close()
			return nil, fmt.Errorf("objects: waiting for lock %s: %w", path, ctx.Err())
		case <-time.After(delay):
		}
	}
}

// Owner is who the batch writes for ("" for a lease).
func (b *Batch) Owner() string { return b.owner }

// Add records that the owner names the object d, which it did not write
// through this batch: present already, or yet to be written (by a lease).
// A present object is kept alive from now on.
func (b *Batch) Add(d digest.Digest) error {
	if _, err := parseDigest(d); err != nil {
		return err
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.ended {
		return fmt.Errorf("objects: add %s to the batch for %q: it has ended", d, b.owner)
	}
	b.pins[d] = struct{}{}
	return nil
}

// Put stores what write writes as the object d, kept by a lease of its own
// until it is in place (then the owners that name d keep it, or the next
// GC removes it). It fails, storing nothing, unless the content hashes to
// d: what a caller cannot vouch for goes in only if it is d.
func (s *Store) Put(ctx context.Context, d digest.Digest, write func(io.Writer) error) error {
	b, err := s.Lease(ctx)
	if err != nil {
		return err
	}
	defer b.Abort()
	w, err := b.Create()
	if err != nil {
		return err
	}
	if err := write(w); err != nil {
		w.Close()
		return err
	}
	if _, err := w.Commit(d); err != nil {
		return err
	}
	return b.Commit()
}

// Put writes r's content as an object (Create, copy, Commit).
func (b *Batch) Put(r io.Reader, expected digest.Digest) (Object, error) {
	w, err := b.Create()
	if err != nil {
		return Object{}, err
	}
	if _, err := io.Copy(w, r); err != nil {
		w.Close()
		return Object{}, err
	}
	return w.Commit(expected)
}

// Commit makes what the batch wrote durable and, for an owner, records
// its refs (replacing any it had), then lets GC run again. Writers still
// open make it fail: the batch stays open.
func (b *Batch) Commit() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.ended {
		return fmt.Errorf("objects: commit the batch for %q: it has ended", b.owner)
	}
	if b.open > 0 {
		return fmt.Errorf("objects: commit the batch for %q: %d objects are still being written", b.owner, b.open)
	}
	// Objects first, then the refs that name them: a crash in between
	// leaves garbage, never a refs file naming a lost object.
	// A batch that placed no object (one that only names objects, as a
	// lazy layer's claim does) has nothing to sync but its refs: syncfs
	// would wait for every dirty page of the filesystem, the cache's too.
	if b.s.opts.batchSync && len(b.dirs) > 0 {
		if err := b.s.Sync(); err != nil {
			return err
		}
	} else {
		for dir := range b.dirs {
			if err := syncDir(dir); err != nil {
				return err
			}
		}
	}
	if b.owner != "" {
		if err := b.s.writeRefs(b.owner, b.pins, true); err != nil {
			return err
		}
	}
	b.end()
	return nil
}

// Abort ends the batch without recording refs. What it wrote stays until
// GC finds no owner naming it (another batch may have found it present
// and be counting on it).
func (b *Batch) Abort() {
	b.mu.Lock()
	defer b.mu.Unlock()
	if !b.ended {
		b.end()
	}
}

func (b *Batch) end() {
	b.ended = true
	b.lock.Close() // releases the flock
}

// Object is a committed object.
type Object struct {
	Info
	New bool // written now, rather than present already
}

// Writer streams one object's content to a temp file, hashing SHA-256 and
// fs-verity as it goes; Commit puts it in place.
type Writer struct {
	b      *Batch
	f      *os.File
	sha    hash.Hash
	verity *verity.Hash
	size   int64
	err    error // the first write error: Commit fails with it
	done   bool
	placed bool // the temp file was renamed into place: its name is not ours any more
}

// Create starts an object: write its content, then Commit (or Close to
// drop it).
func (b *Batch) Create() (*Writer, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.ended {
		return nil, fmt.Errorf("objects: create an object in the batch for %q: it has ended", b.owner)
	}
	f, err := os.CreateTemp(b.s.tmpDir(), "obj-")
	if err != nil {
		return nil, fmt.Errorf("objects: %w", err)
	}
	b.open++
	return &Writer{b: b, f: f, sha: sha256.New(), verity: verity.New()}, nil
}

// Write adds p to the object's content.
func (w *Writer) Write(p []byte) (int, error) {
	if w.err != nil {
		return 0, w.err
	}
	if w.done {
		return 0, fmt.Errorf("objects: write to %s: committed or closed", w.f.Name())
	}
	n, err := w.f.Write(p)
	w.sha.Write(p[:n])
	w.verity.Write(p[:n])
	w.size += int64(n)
	if err != nil {
		w.err = fmt.Errorf("objects: %w", err)
	}
	return n, w.err
}

var copyBufs = sync.Pool{New: func() any { b := make([]byte, 1<<20); return &b }}

// ReadFrom copies r into the object in 1 MiB writes (io.Copy's 32 KiB
// would cost 32 times the system calls).
func (w *Writer) ReadFrom(r io.Reader) (int64, error) {
	bp := copyBufs.Get().(*[]byte)
	defer copyBufs.Put(bp)
	buf := *bp
	var total int64
	for {
		n, err := io.ReadFull(r, buf)
		if n > 0 {
			m, werr := w.Write(buf[:n])
			total += int64(m)
			if werr != nil {
				return total, werr
			}
		}
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return total, nil
		}
		if err != nil {
			return total, err
		}
	}
}

// Size is how many bytes were written.
func (w *Writer) Size() int64 { return w.size }

// Close drops an object not committed (its temp file is removed); after
// Commit it does nothing.
func (w *Writer) Close() error {
	if w.done {
		return nil
	}
	w.finish("")
	return nil
}

// finish removes the temp file if it is still there and ends the writer
// in its batch, pinning d if it is not empty.
func (w *Writer) finish(d digest.Digest) {
	w.done = true
	w.f.Close()
	if !w.placed {
		os.Remove(w.f.Name())
	}
	b := w.b
	b.mu.Lock()
	b.open--
	if d != "" {
		b.pins[d] = struct{}{}
	}
	b.mu.Unlock()
}

// Commit checks the content against expected ("" takes the computed
// digest), makes it read-only and durable, enables fs-verity where the
// filesystem can, and renames it into place. An object present already
// (same content, so the same object) is kept and the new copy dropped:
// Object.New says which. On a mismatch the error names both digests and
// the temp file is gone.
func (w *Writer) Commit(expected digest.Digest) (Object, error) {
	if w.done {
		return Object{}, fmt.Errorf("objects: commit %s: committed or closed", w.f.Name())
	}
	obj, err := w.commit(expected)
	if err != nil {
		w.finish("")
		return Object{}, err
	}
	w.finish(obj.Digest)
	return obj, nil
}

func (w *Writer) commit(expected digest.Digest) (Object, error) {
	s := w.b.s
	ctx := w.b.ctx
	if w.err != nil {
		return Object{}, w.err
	}
	d := digest.NewDigest(digest.SHA256, w.sha)
	if expected != "" {
		if _, err := parseDigest(expected); err != nil {
			return Object{}, err
		}
		if expected != d {
			return Object{}, fmt.Errorf("objects: content digest mismatch: expected %s, the %d bytes written are %s", expected, w.size, d)
		}
	}
	name, _ := Name(d)
	obj := Object{Info: Info{Digest: d, Size: w.size, Verity: w.verity.Digest()}}
	tmp := w.f.Name()
	if !s.opts.batchSync {
		if err := w.f.Sync(); err != nil {
			return Object{}, fmt.Errorf("objects: object %s: fsync %s: %w", d, tmp, err)
		}
	}
	if err := w.f.Chmod(objectMode); err != nil {
		return Object{}, fmt.Errorf("objects: object %s: %w", d, err)
	}
	if err := s.setVerityXattr(ctx, w.f, obj.Size, obj.Verity); err != nil {
		log.G(ctx).WithError(err).Warn("objects: recording an object's fs-verity digest")
	}
	// fs-verity needs the file with no writer: close first.
	if err := w.f.Close(); err != nil {
		return Object{}, fmt.Errorf("objects: object %s: close %s: %w", d, tmp, err)
	}
	dir := filepath.Join(s.objectsDir(), name[:2])
	final := filepath.Join(s.objectsDir(), name)
	if s.Verity() != VerityUnsupported {
		// Enabling reads the whole file to build its tree: not for a
		// copy that is about to be dropped. (Two writers of the same new
		// content may both enable; one copy wins the rename.)
		if _, err := os.Lstat(final); err != nil {
			s.enableVerity(ctx, tmp)
		}
	}
	err := place(tmp, final)
	if errors.Is(err, fs.ErrNotExist) {
		// The fan-out directory's first object (GC leaves them be).
		if err := os.Mkdir(dir, dirMode); err != nil && !errors.Is(err, fs.ErrExist) {
			return Object{}, fmt.Errorf("objects: object %s: %w", d, err)
		}
		err = place(tmp, final)
	}
	switch {
	case err == nil:
		obj.New = true
		w.placed = true
	case errors.Is(err, unix.EEXIST), errors.Is(err, fs.ErrExist):
		// dedup: the temp file goes in finish. Unless what is there is
		// plainly not this content (not a file, or not its size: a
		// crash or a disk error, as nothing rewrites objects), which
		// ours then replaces.
		fi, serr := os.Lstat(final)
		if serr == nil && fi.Mode().IsRegular() && fi.Size() == obj.Size {
			break
		}
		log.G(ctx).WithField("path", final).WithField("size", obj.Size).Warn("objects: replacing a damaged object")
		if err := os.Rename(tmp, final); err != nil {
			return Object{}, fmt.Errorf("objects: object %s: replace damaged %s: %w", d, final, err)
		}
		obj.New = true
		w.placed = true
	default:
		return Object{}, fmt.Errorf("objects: object %s: rename %s to %s: %w", d, tmp, final, err)
	}
	w.b.mu.Lock()
	w.b.dirs[dir] = struct{}{}
	w.b.mu.Unlock()
	return obj, nil
}

// place renames tmp to final unless final exists. NOREPLACE: an object
// present already stays as it is (it may be open, mounted,
// verity-enabled); ours is the duplicate.
func place(tmp, final string) error {
	err := unix.Renameat2(unix.AT_FDCWD, tmp, unix.AT_FDCWD, final, unix.RENAME_NOREPLACE)
	if errors.Is(err, unix.EINVAL) {
		// A filesystem without RENAME_NOREPLACE: link fails on an
		// existing name just as atomically.
		if err = os.Link(tmp, final); err == nil {
			os.Remove(tmp)
		}
	}
	return err
}

func syncDir(dir string) error {
	f, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("objects: %w", err)
	}
	defer f.Close()
	if err := f.Sync(); err != nil {
		return fmt.Errorf("objects: fsync %s: %w", dir, err)
	}
	return nil
}

// sortedDigests lists a set in order, for a refs file that is the same
// bytes for the same set.
func sortedDigests(set map[digest.Digest]struct{}) []digest.Digest {
	ds := make([]digest.Digest, 0, len(set))
	for d := range set {
		ds = append(ds, d)
	}
	slices.Sort(ds)
	return ds
}

// Package objects is the node's content-addressed object store for the
// composefs mode: every regular file's content kept once, named by the
// SHA-256 of that content, shared by every layer and image on the node.
// Metadata images point into it (overlayfs redirects to /ab/cdef…, with
// the object's fs-verity digest beside them), and the objects directory is
// the overlay's data-only lower layer.
//
// It writes objects (hashing SHA-256 and fs-verity in one pass), answers
// whether an object is present and what its size and fs-verity digest are,
// and keeps objects alive for as long as an owner (a metadata image) names
// them: each owner's exact set of digests is one refs file, and GC removes
// every object no refs file names.
//
// It knows digests and files, not layers, TOCs, EROFS or registries.
// Digests come from untrusted images: every one is checked (sha256, 64
// lower-case hex digits) before it becomes a path.
package objects

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"github.com/containerd/log"
	"github.com/opencontainers/go-digest"
	"golang.org/x/sys/unix"

	"github.com/lazypull/lazypull/composefs/verity"
)

// On-disk layout under the store's root:
//
//	lock              flock(2): open batches hold it shared, GC exclusive
//	objects/ab/cdef…  one read-only file per object, named by the SHA-256 of
//	                  its content (fan-out directories made as needed); the
//	                  overlay's data-only lower, so nothing else lives here
//	tmp/              files being written; any found while GC holds the lock
//	                  exclusively are left by a crash and removed
//	refs/<owner>      the digests one owner names, written whole (temp in
//	                  tmp/, fsync, rename, fsync of refs/)
//
// Each object carries its fs-verity digest in the xattr user.lazypull.verity,
// set on the temp file before it is renamed into place, so an object never
// appears without it (on filesystems with user xattrs). Metadata images need
// the digest of every file they name, and this makes it one getxattr rather
// than a read of the whole file; an xattr (rather than a sidecar file) moves
// and links with its object, adds nothing to the overlay's data layer, and
// is writable only by who may write the object (root: objects are 0444 in
// 0700 directories). The value records the object's size too, and one that
// is malformed or whose size is not the object's is ignored: the digest is
// then measured by the kernel (if the object has fs-verity) or recomputed
// from the content, and stored again.
const (
	lockName    = "lock"
	objectsName = "objects"
	tmpName     = "tmp"
	refsName    = "refs"

	dirMode    = 0o700
	objectMode = 0o444

	verityXattr = "user.lazypull.verity"
	// verityXattr's value: version (1), hash algorithm (1 = SHA-256),
	// six zero bytes, the object's size (le64), the fs-verity digest.
	verityXattrSize = 16 + verity.Size
)

// VerityStatus says whether the store's filesystem enables fs-verity on
// objects.
type VerityStatus int

const (
	// VerityUnknown: not found out yet.
	VerityUnknown VerityStatus = iota
	// VerityEnabled: objects get fs-verity when written.
	VerityEnabled
	// VerityUnsupported: the filesystem or kernel cannot (objects still
	// have their digests computed, for metacopy; overlayfs mounts with
	// verity=off).
	VerityUnsupported
)

func (v VerityStatus) String() string {
	switch v {
	case VerityEnabled:
		return "enabled"
	case VerityUnsupported:
		return "not supported by the filesystem or kernel"
	default:
		return "unknown"
	}
}

// Store is an object store rooted at a directory. Several processes may
// open the same root: writes are atomic renames, and GC is exclusive
// against every open Batch through a lock file.
type Store struct {
	root    string
	rootDir *os.File // for openat2 beneath the root
	opts    options

	mu         sync.Mutex
	verity     VerityStatus
	noXattrs   bool // the filesystem refused user xattrs: recompute digests
	verityOnce sync.Once
	xattrOnce  sync.Once
}

type options struct {
	batchSync bool
	// The kernel's fs-verity calls; tests stand in for a kernel that
	// has it.
	enable  func(*os.File) error
	measure func(*os.File) (verity.Sum, error)
}

// Option configures Open.
type Option func(*options)

// WithBatchSync leaves objects unsynced when they are committed one by
// one and syncs the whole filesystem (syncfs) once when a Batch commits,
// before its refs are written: the same guarantee for owners (a refs file
// never names an object a crash may lose), far fewer flushes for layers of
// many small files, at the price of flushing whatever else is dirty on
// that filesystem. Without it every object is fsynced as it is committed.
func WithBatchSync() Option {
	return func(o *options) { o.batchSync = true }
}

// Open opens the store at root, making its directories if they are not
// there, and finds out whether its filesystem can do fs-verity (said once
// in the log when it cannot).
func Open(ctx context.Context, root string, opts ...Option) (*Store, error) {
	s := &Store{root: root, opts: options{enable: verity.Enable, measure: verity.Measure}}
	for _, o := range opts {
		o(&s.opts)
	}
	if err := os.MkdirAll(root, dirMode); err != nil {
		return nil, fmt.Errorf("objects: %w", err)
	}
	for _, d := range []string{s.objectsDir(), s.tmpDir(), s.refsDir()} {
		if err := os.Mkdir(d, dirMode); err != nil && !errors.Is(err, fs.ErrExist) {
			return nil, fmt.Errorf("objects: %w", err)
		}
	}
	f, err := os.OpenFile(root, os.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW, 0)
	if err != nil {
		return nil, fmt.Errorf("objects: open store %s: %w", root, err)
	}
	s.rootDir = f
	if err := s.probe(ctx); err != nil {
		f.Close()
		return nil, err
	}
	return s, nil
}

// Close releases the store's descriptor. Open batches must be done first.
func (s *Store) Close() error { return s.rootDir.Close() }

// Root is the directory the store lives in.
func (s *Store) Root() string { return s.root }

// ObjectsDir is the directory of objects: the overlay's data-only lower
// layer, against which Name's paths resolve.
func (s *Store) ObjectsDir() string { return s.objectsDir() }

func (s *Store) objectsDir() string { return filepath.Join(s.root, objectsName) }
func (s *Store) tmpDir() string     { return filepath.Join(s.root, tmpName) }
func (s *Store) refsDir() string    { return filepath.Join(s.root, refsName) }

// Verity says whether objects get fs-verity on this store's filesystem.
func (s *Store) Verity() VerityStatus {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.verity
}

// probe writes a file in tmp/ and tries fs-verity and a user xattr on it,
// under a lease so a concurrent GC leaves it alone.
func (s *Store) probe(ctx context.Context) error {
	lease, err := s.Lease(ctx)
	if err != nil {
		return err
	}
	defer lease.Abort()
	f, err := os.CreateTemp(s.tmpDir(), "probe-")
	if err != nil {
		return fmt.Errorf("objects: probe %s: %w", s.tmpDir(), err)
	}
	name := f.Name()
	defer os.Remove(name)
	_, err = f.Write([]byte("probe"))
	if err == nil {
		err = s.setVerityXattr(ctx, f, 5, verity.Sum{})
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("objects: probe %s: %w", name, err)
	}
	s.enableVerity(ctx, name)
	return nil
}

// enableVerity turns fs-verity on for the file at path (closed, so that
// no writer holds it), best effort: where the filesystem cannot, the
// store says so once and stops trying; other failures are logged.
func (s *Store) enableVerity(ctx context.Context, path string) {
	if s.Verity() == VerityUnsupported {
		return
	}
	f, err := os.Open(path)
	if err == nil {
		err = s.opts.enable(f)
		f.Close()
	}
	switch {
	case err == nil:
		s.mu.Lock()
		s.verity = VerityEnabled
		s.mu.Unlock()
	case errors.Is(err, verity.ErrNotSupported):
		s.mu.Lock()
		s.verity = VerityUnsupported
		s.mu.Unlock()
		s.verityOnce.Do(func() {
			log.G(ctx).WithError(err).WithField("root", s.root).Warn("objects: fs-verity is not available for the object store: objects are not protected by the kernel, composefs mounts use verity=off")
		})
	default:
		log.G(ctx).WithError(err).Warn("objects: enabling fs-verity")
	}
}

// setVerityXattr records an object's size and fs-verity digest on it. A
// filesystem without user xattrs is not an error: digests are then
// recomputed when asked for.
func (s *Store) setVerityXattr(ctx context.Context, f *os.File, size int64, sum verity.Sum) error {
	var v [verityXattrSize]byte
	v[0], v[1] = 1, 1
	binary.LittleEndian.PutUint64(v[8:16], uint64(size))
	copy(v[16:], sum[:])
	err := fsetxattr(f, verityXattr, v[:])
	if errors.Is(err, unix.ENOTSUP) || errors.Is(err, unix.EOPNOTSUPP) {
		s.mu.Lock()
		s.noXattrs = true
		s.mu.Unlock()
		s.xattrOnce.Do(func() {
			log.G(ctx).WithError(err).WithField("root", s.root).Warn("objects: the object store's filesystem has no user xattrs: fs-verity digests are recomputed from content when asked for")
		})
		return nil
	}
	if err != nil {
		return fmt.Errorf("set %s on %s: %w", verityXattr, f.Name(), err)
	}
	return nil
}

func fsetxattr(f *os.File, name string, value []byte) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	if cerr := rc.Control(func(fd uintptr) { err = unix.Fsetxattr(int(fd), name, value, 0) }); cerr != nil {
		return cerr
	}
	return err
}

func fgetxattr(f *os.File, name string, buf []byte) (int, error) {
	rc, err := f.SyscallConn()
	if err != nil {
		return 0, err
	}
	var n int
	if cerr := rc.Control(func(fd uintptr) { n, err = unix.Fgetxattr(int(fd), name, buf) }); cerr != nil {
		return 0, cerr
	}
	return n, err
}

// parseDigest checks that d names an object this store can hold: sha256
// and 64 lower-case hex digits (one spelling per content, and nothing a
// path could be made of). It returns the hex part.
func parseDigest(d digest.Digest) (string, error) {
	alg, enc, ok := strings.Cut(string(d), ":")
	if !ok || alg != string(digest.SHA256) {
		return "", fmt.Errorf("objects: digest %.100q: only sha256 digests name objects", d)
	}
	if len(enc) != 64 {
		return "", fmt.Errorf("objects: digest %.100q: want 64 hex digits, have %d characters", d, len(enc))
	}
	for i := 0; i < len(enc); i++ {
		if c := enc[i]; !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return "", fmt.Errorf("objects: digest %.100q: not lower-case hex", d)
		}
	}
	return enc, nil
}

// Name is the object's path relative to ObjectsDir, "ab/cdef…": what a
// metadata image's overlay redirect names (with a leading slash).
func Name(d digest.Digest) (string, error) {
	enc, err := parseDigest(d)
	if err != nil {
		return "", err
	}
	return enc[:2] + "/" + enc[2:], nil
}

// Path is where the object named d lives (or would).
func (s *Store) Path(d digest.Digest) (string, error) {
	name, err := Name(d)
	if err != nil {
		return "", err
	}
	return filepath.Join(s.objectsDir(), name), nil
}

// open opens the object named d read-only, resolving nothing but
// directories beneath the root (no symlink anywhere, no ..), and checks it
// is a regular file.
func (s *Store) open(d digest.Digest) (*os.File, os.FileInfo, error) {
	name, err := Name(d)
	if err != nil {
		return nil, nil, err
	}
	rel := objectsName + "/" + name
	fd, err := unix.Openat2(int(s.rootDir.Fd()), rel, &unix.OpenHow{
		Flags:   unix.O_RDONLY | unix.O_CLOEXEC | unix.O_NOFOLLOW,
		Resolve: unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS,
	})
	path := filepath.Join(s.root, rel)
	if err != nil {
		if errors.Is(err, unix.ENOENT) {
			err = fs.ErrNotExist
		}
		return nil, nil, fmt.Errorf("objects: object %s (%s): %w", d, path, err)
	}
	f := os.NewFile(uintptr(fd), path)
	fi, err := f.Stat()
	if err == nil && !fi.Mode().IsRegular() {
		err = fmt.Errorf("not a regular file (%s)", fi.Mode().Type())
	}
	if err != nil {
		f.Close()
		return nil, nil, fmt.Errorf("objects: object %s (%s): %w", d, path, err)
	}
	return f, fi, nil
}

// Has tells whether the object named d is in the store. An invalid
// digest is an error, not a no.
func (s *Store) Has(d digest.Digest) (bool, error) {
	f, _, err := s.open(d)
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	f.Close()
	return true, nil
}

// Open opens the object named d for reading. Objects are immutable.
func (s *Store) Open(d digest.Digest) (*os.File, error) {
	f, _, err := s.open(d)
	return f, err
}

// Info describes an object.
type Info struct {
	Digest digest.Digest // SHA-256 of the content: the object's name
	Size   int64
	Verity verity.Sum // fs-verity digest (SHA-256, 4 KiB blocks)
}

// Stat returns the object's size and fs-verity digest: from its xattr when
// that is well-formed and matches the object's size, else measured by the
// kernel or recomputed from the content (and recorded again). A missing
// object's error is fs.ErrNotExist.
func (s *Store) Stat(ctx context.Context, d digest.Digest) (Info, error) {
	f, fi, err := s.open(d)
	if err != nil {
		return Info{}, err
	}
	defer f.Close()
	info := Info{Digest: d, Size: fi.Size()}
	var v [verityXattrSize + 1]byte // one more: a longer value is malformed
	if n, err := fgetxattr(f, verityXattr, v[:]); err == nil && n == verityXattrSize &&
		v[0] == 1 && v[1] == 1 && binary.LittleEndian.Uint64(v[8:16]) == uint64(info.Size) {
		copy(info.Verity[:], v[16:verityXattrSize])
		return info, nil
	}
	if sum, err := s.opts.measure(f); err == nil {
		info.Verity = sum
	} else {
		h := verity.New()
		n, err := io.Copy(h, f)
		if err != nil {
			return Info{}, fmt.Errorf("objects: object %s: fs-verity digest: %w", d, err)
		}
		if n != info.Size {
			return Info{}, fmt.Errorf("objects: object %s: read %d bytes of %d", d, n, info.Size)
		}
		info.Verity = h.Digest()
	}
	if err := s.setVerityXattr(ctx, f, info.Size, info.Verity); err != nil {
		log.G(ctx).WithError(err).Warn("objects: recording an object's fs-verity digest")
	}
	return info, nil
}

// Usage is what the store's objects take: each counted once, however many
// owners name it.
type Usage struct {
	Objects int64
	Size    int64 // bytes of content
	Disk    int64 // bytes allocated on disk (st_blocks)
}

// Usage walks the objects directory.
func (s *Store) Usage(ctx context.Context) (Usage, error) {
	var u Usage
	err := s.walkObjects(ctx, func(_ digest.Digest, path string) error {
		var st unix.Stat_t
		if err := unix.Lstat(path, &st); err != nil {
			if errors.Is(err, unix.ENOENT) {
				return nil // removed since the listing
			}
			return fmt.Errorf("objects: stat %s: %w", path, err)
		}
		u.Objects++
		u.Size += st.Size
		u.Disk += st.Blocks * 512
		return nil
	})
	return u, err
}

// walkObjects calls fn for every object (a regular file with an object's
// name in a fan-out directory; fn stats it if it needs to: GC does only
// for what it removes); other entries are logged and left alone.
func (s *Store) walkObjects(ctx context.Context, fn func(d digest.Digest, path string) error) error {
	dirs, err := os.ReadDir(s.objectsDir())
	if err != nil {
		return fmt.Errorf("objects: %w", err)
	}
	for _, dir := range dirs {
		if err := ctx.Err(); err != nil {
			return err
		}
		dpath := filepath.Join(s.objectsDir(), dir.Name())
		if !dir.IsDir() || len(dir.Name()) != 2 {
			log.G(ctx).WithField("path", dpath).Warn("objects: not an object's directory, left alone")
			continue
		}
		entries, err := os.ReadDir(dpath)
		if err != nil {
			return fmt.Errorf("objects: %w", err)
		}
		for _, e := range entries {
			path := filepath.Join(dpath, e.Name())
			d := digest.Digest("sha256:" + dir.Name() + e.Name())
			if _, err := parseDigest(d); err != nil || !e.Type().IsRegular() {
				log.G(ctx).WithField("path", path).Warn("objects: not an object, left alone")
				continue
			}
			if err := fn(d, path); err != nil {
				return err
			}
		}
	}
	return nil
}

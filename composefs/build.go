package composefs

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"

	"github.com/opencontainers/go-digest"
	"golang.org/x/sys/unix"

	"github.com/lazypull/lazypull/composefs/erofs"
	"github.com/lazypull/lazypull/composefs/objects"
	"github.com/lazypull/lazypull/composefs/verity"
)

// InlineMax is the largest regular file whose content BuildDir keeps in
// the metadata image itself rather than in an object (as composefs does:
// an object and a redirect cost more than such a file).
const InlineMax = 64

// ErrOverlayUpper says a directory holds what overlayfs writes into the
// upper layer of a mount with metacopy=on and redirect_dir=on (every
// composefs stack): a file whose metadata alone was copied up
// (trusted.overlay.metacopy: its data is in a lower layer) or a renamed
// directory (trusted.overlay.redirect: its entries are in a lower layer).
// Such a directory means nothing on its own: a container's upper must be
// converted from the merged view (a diff), not by BuildDir. containerd's
// applier never writes these xattrs (it refuses trusted.* from a tar).
var ErrOverlayUpper = errors.New("an overlayfs upper layer's metadata-only copy-up or redirect, whose data is in lower layers")

// BuildStats is what BuildDir made of a layer.
type BuildStats struct {
	Entries    int   // entries in the image: the root, every path, hard links included
	Files      int   // regular files (an inode hard-linked under several names counts once)
	Inlined    int   // of those, non-empty files of at most InlineMax bytes, kept in the image
	FileBytes  int64 // their content, every regular file (inode) once
	Objects    int   // distinct objects the image names
	Bytes      int64 // their content
	NewObjects int   // of those, not in the store before this build
	NewBytes   int64 // content of the new objects
	// Verity: every object has kernel fs-verity enabled with the
	// digest the image names, so the stack can mount with
	// VerityFor(true). False on filesystems or kernels without it.
	Verity     bool
	ImageBytes int64 // the image file's size
}

// BuildOption changes what BuildDir does.
type BuildOption func(*buildConfig)

type buildConfig struct {
	copy bool
}

// WithCopy copies every file's content into the store and leaves dir as
// it was, instead of adopting the files (objects.Batch.Adopt), which
// turns them into the store's objects where dir and the store share a
// filesystem.
func WithCopy() BuildOption { return func(c *buildConfig) { c.copy = true } }

// BuildDir converts the unpacked layer in dir (as containerd's differ
// writes an overlay upper: whiteouts as 0/0 character devices, opaque
// directories with trusted.overlay.opaque=y) into the composefs form:
// every regular file's content into store, and an EROFS metadata image of
// the tree written to image (a temp file renamed into place), whose
// regular files carry trusted.overlay.metacopy (36 bytes with the
// object's fs-verity digest) and trusted.overlay.redirect=/<objects.Name>.
// Empty files and files of at most InlineMax bytes are kept in the image
// and need no object.
//
// Files are adopted, not copied (objects.Batch.Adopt): where dir and the
// store share a filesystem the files themselves become objects, so dir
// is consumed, whether BuildDir succeeds or not: the caller removes it
// afterwards and never builds from it again (WithCopy leaves it intact).
// Content the store has already is neither written nor linked again.
//
// The objects are recorded under owner in the store's refs by a batch
// committed only once the image is in place, so GC never removes what the
// image names; if that commit fails, the image is removed.
//
// Only what the layer means reaches the image: the walk follows no
// symlink; xattrs are kept if they are user.* (but not user.overlay.*),
// security.* (file capabilities, SELinux labels) or POSIX ACLs; of
// trusted.* only a directory's trusted.overlay.opaque=y. A file with
// trusted.overlay.metacopy or trusted.overlay.redirect is ErrOverlayUpper:
// a container's upper whose data is elsewhere (dropping the xattr would
// store a hole's zeros as the file), and were it forged, would expose
// other objects; none ever reaches the image from dir.
//
// Memory grows with the entries, never with file contents (streamed, at
// most one 1 MiB buffer a worker): a million entries, 600,000 of them
// objects, peaked at 891 MiB of heap (33 s on tmpfs, 2 CPUs), most of it
// the image's per-file redirect and metacopy xattrs (distinct for every
// object) and the batch's set of digests.
func BuildDir(ctx context.Context, dir string, store *objects.Store, owner, image string, opts ...BuildOption) (BuildStats, error) {
	var cfg buildConfig
	for _, o := range opts {
		o(&cfg)
	}
	batch, err := store.Batch(ctx, owner)
	if err != nil {
		return BuildStats{}, fmt.Errorf("composefs: build %s: %w", dir, err)
	}
	committed := false
	defer func() {
		if !committed {
			batch.Abort()
		}
	}()
	b := &builder{
		ctx:     ctx,
		cfg:     cfg,
		store:   store,
		batch:   batch,
		w:       erofs.NewWriter(),
		links:   map[inodeKey]string{},
		objects: map[[32]byte]struct{}{},
		verity:  store.Verity() == objects.VerityEnabled,
		sem:     make(chan struct{}, runtime.GOMAXPROCS(0)),
	}
	err = b.walk(dir)
	b.wg.Wait() // the batch ends (Abort or Commit) with no worker in it
	if err == nil {
		err = b.failed()
	}
	if err != nil {
		return BuildStats{}, err
	}
	// No object at all: nothing to check, a stack can require verity.
	b.stats.Verity = b.verity || b.stats.Objects == 0
	size, err := WriteImage(b.w, image, true)
	if err != nil {
		return BuildStats{}, fmt.Errorf("composefs: build %s: %w", dir, err)
	}
	b.stats.ImageBytes = size
	if err := batch.Commit(); err != nil {
		os.Remove(image)
		return BuildStats{}, fmt.Errorf("composefs: build %s: record the objects of %s: %w", dir, image, err)
	}
	committed = true
	return b.stats, nil
}

type inodeKey struct{ dev, ino uint64 }

type builder struct {
	ctx   context.Context
	cfg   buildConfig
	store *objects.Store
	batch *objects.Batch
	w     *erofs.Writer
	stats BuildStats
	// links maps a regular file's inode with more than one name to the
	// first of its names the (sorted) walk met: later ones are hard links.
	links map[inodeKey]string
	// objects is the set of distinct objects named (raw sha256).
	objects map[[32]byte]struct{}
	verity  bool // every object so far has kernel fs-verity
	xbuf    []byte

	// Objects are hashed and stored by workers, one a CPU (hashing is
	// most of the work), at most that many files at once; the walk
	// reads each file's metadata before handing it over.
	sem chan struct{}
	wg  sync.WaitGroup
	mu  sync.Mutex // the Writer, what workers count, err
	err error      // a worker's first
}

func (b *builder) fail(err error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.err == nil {
		b.err = err
	}
}

func (b *builder) failed() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.err
}

// walk adds dir's tree to the image, depth first in byte order of names
// (any order gives the same image; this one makes the first name of a
// hard-linked inode, the one holding its metadata, the same every time).
func (b *builder) walk(dir string) error {
	var st unix.Stat_t
	if err := unix.Lstat(dir, &st); err != nil {
		return fmt.Errorf("composefs: build %s: %w", dir, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFDIR {
		return fmt.Errorf("composefs: build %s: not a directory", dir)
	}
	return b.entry("", dir, &st)
}

// entry adds the file at path (rel in the image), whose lstat is st, and
// for a directory everything under it.
func (b *builder) entry(rel, path string, st *unix.Stat_t) error {
	if b.stats.Entries%1024 == 0 {
		if err := b.ctx.Err(); err != nil {
			return fmt.Errorf("composefs: build %s: %w", path, err)
		}
	}
	if err := b.failed(); err != nil {
		return err
	}
	b.stats.Entries++
	typ := st.Mode & unix.S_IFMT
	if typ == unix.S_IFREG && st.Nlink > 1 {
		key := inodeKey{st.Dev, st.Ino}
		if first, ok := b.links[key]; ok {
			return b.add(path, erofs.Entry{Path: rel, Link: first})
		}
		b.links[key] = rel
	}
	e := erofs.Entry{
		Path:      rel,
		Mode:      st.Mode,
		UID:       st.Uid,
		GID:       st.Gid,
		Mtime:     st.Mtim.Sec,
		MtimeNsec: uint32(st.Mtim.Nsec),
	}
	// Xattrs before the content: adopting a file makes it the store's
	// (its owner, mode and xattrs replaced).
	xattrs, err := b.xattrs(path, typ == unix.S_IFDIR)
	if err != nil {
		return err
	}
	e.Xattrs = xattrs
	switch typ {
	case unix.S_IFREG:
		if big, err := b.file(path, st, &e); err != nil || big {
			return err // a big one is the worker's to add
		}
	case unix.S_IFLNK:
		target, err := os.Readlink(path)
		if err != nil {
			return fmt.Errorf("composefs: build: %w", err)
		}
		e.Target = target
	case unix.S_IFCHR, unix.S_IFBLK:
		e.DevMajor, e.DevMinor = unix.Major(st.Rdev), unix.Minor(st.Rdev)
	case unix.S_IFDIR:
		if err := b.add(path, e); err != nil {
			return err
		}
		return b.dir(rel, path)
	case unix.S_IFIFO, unix.S_IFSOCK:
	default:
		return fmt.Errorf("composefs: build %s: unknown file type %#o", path, typ)
	}
	return b.add(path, e)
}

func (b *builder) add(path string, e erofs.Entry) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if err := b.w.Add(e); err != nil {
		return fmt.Errorf("composefs: build %s: %w", path, err)
	}
	return nil
}

// dir adds a directory's children, in byte order.
func (b *builder) dir(rel, path string) error {
	f, err := os.OpenFile(path, os.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("composefs: build: %w", err)
	}
	names, err := f.Readdirnames(-1)
	f.Close()
	if err != nil {
		return fmt.Errorf("composefs: build: %w", err)
	}
	slices.Sort(names)
	for _, name := range names {
		crel, cpath := name, path+"/"+name
		if rel != "" {
			crel = rel + "/" + name
		}
		var st unix.Stat_t
		if err := unix.Lstat(cpath, &st); err != nil {
			return fmt.Errorf("composefs: build %s: %w", cpath, err)
		}
		if err := b.entry(crel, cpath, &st); err != nil {
			return err
		}
	}
	return nil
}

// file fills in a regular file's content when it is empty or small
// (inline); a bigger one (big) goes to a worker that stores its object
// and adds the entry.
func (b *builder) file(path string, st *unix.Stat_t, e *erofs.Entry) (big bool, err error) {
	b.stats.Files++
	b.stats.FileBytes += st.Size
	e.Size = uint64(st.Size)
	switch {
	case st.Size == 0:
		return false, nil
	case st.Size <= InlineMax:
		data, err := readSmall(path, st.Size)
		if err != nil {
			return false, err
		}
		e.Data = data
		b.stats.Inlined++
		return false, nil
	}
	select {
	case b.sem <- struct{}{}:
	case <-b.ctx.Done():
		return true, fmt.Errorf("composefs: build %s: %w", path, b.ctx.Err())
	}
	b.wg.Add(1)
	size := st.Size
	go func(e erofs.Entry) {
		defer func() { <-b.sem; b.wg.Done() }()
		err := b.object(path, size, &e)
		if err == nil {
			err = b.add(path, e)
		}
		if err != nil {
			b.fail(err)
		}
	}(*e)
	return true, nil
}

// object stores a file's content and points its entry at the object.
func (b *builder) object(path string, size int64, e *erofs.Entry) error {
	put := b.batch.Adopt
	if b.cfg.copy {
		put = b.batch.PutFile
	}
	obj, err := put(path)
	if err != nil {
		return fmt.Errorf("composefs: build %s: %w", path, err)
	}
	if obj.Size != size {
		return fmt.Errorf("composefs: build %s: %d bytes stored of %d", path, obj.Size, size)
	}
	if err := b.count(obj); err != nil {
		return fmt.Errorf("composefs: build %s: %w", path, err)
	}
	sum := obj.Verity
	if err := PointAt(e, obj.Digest, &sum); err != nil {
		return fmt.Errorf("composefs: build %s: %w", path, err)
	}
	return nil
}

// PointAt makes e, a regular file of the image, metadata only: overlayfs
// serves its data from the object named d (a redirect to it) and, with
// verity, checks that object's fs-verity digest (the metacopy xattr names
// it; without, the metacopy xattr is empty and nothing is checked).
func PointAt(e *erofs.Entry, d digest.Digest, sum *verity.Sum) error {
	name, err := objects.Name(d)
	if err != nil {
		return err
	}
	if e.Xattrs == nil {
		e.Xattrs = make(map[string][]byte, 2)
	}
	e.Xattrs[xattrMetacopy] = []byte{}
	if sum != nil {
		e.Xattrs[xattrMetacopy] = metacopy(*sum)
	}
	e.Xattrs[xattrRedirect] = []byte("/" + name)
	return nil
}

// MarkOpaque makes directory e opaque: overlayfs shows nothing of the
// lower layers under it.
func MarkOpaque(e *erofs.Entry) {
	if e.Xattrs == nil {
		e.Xattrs = make(map[string][]byte, 1)
	}
	e.Xattrs[xattrOpaque] = []byte("y")
}

// count records an object the image names, once, and whether the kernel
// checks it.
func (b *builder) count(obj objects.Object) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	var key [32]byte
	if _, err := hex.Decode(key[:], []byte(obj.Digest.Encoded())); err != nil {
		return fmt.Errorf("object %s: %w", obj.Digest, err)
	}
	if _, ok := b.objects[key]; ok {
		return nil
	}
	b.objects[key] = struct{}{}
	b.stats.Objects++
	b.stats.Bytes += obj.Size
	if obj.New {
		b.stats.NewObjects++
		b.stats.NewBytes += obj.Size
	}
	if b.verity {
		ok, err := b.store.KernelVerity(obj.Digest, obj.Verity)
		if err != nil {
			return err
		}
		b.verity = ok
	}
	return nil
}

// readSmall reads a file of a few bytes whole, without following a
// symlink, and checks it is the size its lstat said.
func readSmall(path string, size int64) ([]byte, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("composefs: build: %w", err)
	}
	defer f.Close()
	data := make([]byte, size+1) // one more: a grown file is seen
	n, err := io.ReadFull(f, data)
	if err != nil && !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("composefs: build %s: %w", path, err)
	}
	if int64(n) != size {
		return nil, fmt.Errorf("composefs: build %s: read %d bytes of %d: changed while read", path, n, size)
	}
	return data[:n:n], nil
}

// Overlay xattrs BuildDir writes.
const (
	xattrMetacopy = "trusted.overlay.metacopy"
	xattrRedirect = "trusted.overlay.redirect"
	xattrOpaque   = "trusted.overlay.opaque"
)

// metacopy is trusted.overlay.metacopy naming an fs-verity digest:
// struct ovl_metacopy {version 0, len 36, flags 0, digest_algo 1
// (FS_VERITY_HASH_ALG_SHA256)} and the digest.
func metacopy(sum [32]byte) []byte {
	v := make([]byte, 4, 36)
	v[1], v[3] = 36, 1
	return append(v, sum[:]...)
}

// KeepXattr says whether an xattr of the unpacked layer goes into the
// image: what the layer's files mean to a container, and nothing that
// steers overlayfs but a directory's opacity as containerd's differ marks
// it (a forged redirect or metacopy would serve another file's bytes).
func KeepXattr(name string, value []byte, dir bool) bool {
	switch {
	case name == xattrOpaque:
		return dir && string(value) == "y"
	case strings.HasPrefix(name, "user.overlay."):
		return false
	case strings.HasPrefix(name, "user."), strings.HasPrefix(name, "security."):
		return true
	case name == "system.posix_acl_access", name == "system.posix_acl_default":
		return true
	}
	return false
}

// xattrs reads the xattrs of path (not following a symlink) that the
// image keeps.
func (b *builder) xattrs(path string, dir bool) (map[string][]byte, error) {
	names, err := b.listXattrs(path)
	if err != nil {
		return nil, err
	}
	var out map[string][]byte
	for _, name := range names {
		if name == xattrMetacopy || name == xattrRedirect {
			return nil, fmt.Errorf("composefs: build %s: has %s: %w", path, name, ErrOverlayUpper)
		}
		if name != xattrOpaque && !KeepXattr(name, nil, dir) {
			continue // not even read
		}
		value, err := b.getXattr(path, name)
		if errors.Is(err, unix.ENODATA) {
			continue
		}
		if err != nil {
			return nil, err
		}
		if !KeepXattr(name, value, dir) {
			continue
		}
		if out == nil {
			out = make(map[string][]byte, 2)
		}
		out[name] = value
	}
	return out, nil
}

func (b *builder) listXattrs(path string) ([]string, error) {
	if b.xbuf == nil {
		b.xbuf = make([]byte, 4096)
	}
	for {
		n, err := unix.Llistxattr(path, b.xbuf)
		switch {
		case errors.Is(err, unix.ERANGE):
			b.xbuf = make([]byte, 2*len(b.xbuf))
			continue
		case errors.Is(err, unix.ENOTSUP), errors.Is(err, unix.EOPNOTSUPP):
			return nil, nil
		case err != nil:
			return nil, fmt.Errorf("composefs: build %s: list xattrs: %w", path, err)
		}
		var names []string
		for s := range strings.SplitSeq(string(b.xbuf[:n]), "\x00") {
			if s != "" {
				names = append(names, s)
			}
		}
		return names, nil
	}
}

func (b *builder) getXattr(path, name string) ([]byte, error) {
	for {
		n, err := unix.Lgetxattr(path, name, b.xbuf)
		if errors.Is(err, unix.ERANGE) {
			b.xbuf = make([]byte, 2*len(b.xbuf))
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("composefs: build %s: xattr %s: %w", path, name, err)
		}
		return slices.Clone(b.xbuf[:n]), nil
	}
}

// WriteImage writes the image to a temp file beside path and renames it
// into place. Synced (the file before the rename, the directory after), a
// crash leaves the old image or the new one whole; unsynced, it may leave
// a torn one, for a caller that writes the image again after a crash (a
// lazy layer's, from its TOC, until SyncImage).
func WriteImage(w *erofs.Writer, path string, synced bool) (int64, error) {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp-")
	if err != nil {
		return 0, err
	}
	tmp := f.Name()
	n, err := w.WriteTo(f)
	if err == nil && synced {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
		return 0, fmt.Errorf("write image %s: %w", path, err)
	}
	if !synced {
		return n, nil
	}
	if err := syncDir(filepath.Dir(path)); err != nil {
		return 0, fmt.Errorf("write image %s: sync its directory: %w", path, err)
	}
	return n, nil
}

// SyncImage makes an image WriteImage left unsynced durable: the file,
// then its directory.
func SyncImage(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("sync image: %w", err)
	}
	err = f.Sync()
	f.Close()
	if err == nil {
		err = syncDir(filepath.Dir(path))
	}
	if err != nil {
		return fmt.Errorf("sync image %s: %w", path, err)
	}
	return nil
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

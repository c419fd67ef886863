package fusefs

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/containerd/log"
	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"github.com/opencontainers/go-digest"

	"github.com/lazypull/lazypull/format/toc"
	"github.com/lazypull/lazypull/metrics"
)

// ObjectStore is the node's object store (composefs/objects) as the object
// filesystem reads and fills it.
type ObjectStore interface {
	// Open opens the object named d; an error wrapping fs.ErrNotExist
	// when the store does not hold it.
	Open(d digest.Digest) (*os.File, error)
	// Put stores what write writes as the object d, failing (and
	// storing nothing) unless it hashes to d.
	Put(ctx context.Context, d digest.Digest, write func(io.Writer) error) error
}

// ObjectLayer is a layer whose files the object filesystem serves: a
// lazily fetched Layer that can write a file whole and says whether it
// has been checked against its image.
type ObjectLayer interface {
	Layer
	WriteFile(ctx context.Context, e *toc.Entry, w io.Writer) error
	// Verified tells whether the whole layer was found to be its
	// image's: its TOC's file digests are then the truth.
	Verified() bool
}

// MountedObjects is the object filesystem: the composefs object store's
// layout (/ab/cdef…, by the SHA-256 of each file's content) served over
// FUSE, so that lazily pulled layers' metadata images can be stacked over
// it as overlayfs's data-only lower layer before their files are fetched.
// An object is served from the store when the store holds it, else from a
// lazily fetched layer whose TOC names a file of that content (fetched on
// demand and verified, as the FUSE mode reads it); both through FUSE
// passthrough once the bytes are local. overlayfs looks an object up only
// when a file is opened: stat and readdir never come here.
type MountedObjects struct {
	server     *fuse.Server
	mountpoint string
	fsys       *objectFS
}

type objectFS struct {
	store       ObjectStore
	passthrough bool
	mountStats               // read errors, passthrough fallbacks
	opens       atomic.Int64 // every open, counted for tests and status

	mu     sync.RWMutex
	layers map[string]*objectLayer // by the key Add was given
}

// objectLayer is a layer whose files the object filesystem serves.
type objectLayer struct {
	l ObjectLayer
	// byDigest finds its regular files with content by their SHA-256:
	// the raw sum, 32 bytes a key, where a digest string (which the TOC
	// makes anew at each call) would be 87.
	byDigest map[[sha256.Size]byte]*toc.Entry
}

// sumOf is d's raw SHA-256, if d is one.
func sumOf(d digest.Digest) ([sha256.Size]byte, bool) {
	var sum [sha256.Size]byte
	if d.Algorithm() != digest.SHA256 {
		return sum, false
	}
	n, err := hex.Decode(sum[:], []byte(d.Encoded()))
	return sum, err == nil && n == sha256.Size
}

// MountObjects mounts the object filesystem at mountpoint, serving the
// objects store holds; layers are added with Add.
func MountObjects(mountpoint string, store ObjectStore, opts Options) (*MountedObjects, error) {
	fsys := &objectFS{store: store, passthrough: opts.Passthrough, layers: make(map[string]*objectLayer)}
	// Objects appear as layers are added: no negative entries.
	server, err := mountRO(mountpoint, &objectRoot{fsys: fsys}, "lazypull-objects", 0, opts)
	if err != nil {
		return nil, fmt.Errorf("mount the object filesystem at %s: %w", mountpoint, err)
	}
	return &MountedObjects{server: server, mountpoint: mountpoint, fsys: fsys}, nil
}

// Add serves the files of l as objects, under key (for Remove). A layer's
// files are found by the digest its TOC gives them; what they read is
// verified chunk by chunk, as in the FUSE mode. That a file's chunks make
// the digest its TOC names is the layer's word until the layer is
// verified: see objectFile.resolve for when it is taken.
func (m *MountedObjects) Add(key string, l ObjectLayer) {
	ol := &objectLayer{l: l, byDigest: make(map[[sha256.Size]byte]*toc.Entry)}
	for _, e := range l.TOC().Entries() {
		if e.Type != toc.TypeReg || e.Size == 0 {
			continue
		}
		if sum, ok := sumOf(e.Digest()); ok {
			ol.byDigest[sum] = e
		}
	}
	m.fsys.mu.Lock()
	m.fsys.layers[key] = ol
	m.fsys.mu.Unlock()
}

// Remove stops serving the layer added under key. Objects opened through
// it keep reading from it until they are closed.
func (m *MountedObjects) Remove(key string) {
	m.fsys.mu.Lock()
	delete(m.fsys.layers, key)
	m.fsys.mu.Unlock()
}

// Layers is how many layers are served.
func (m *MountedObjects) Layers() int {
	m.fsys.mu.RLock()
	defer m.fsys.mu.RUnlock()
	return len(m.fsys.layers)
}

// Mountpoint is where the object filesystem is mounted.
func (m *MountedObjects) Mountpoint() string { return m.mountpoint }

// Opens counts the objects opened, and of those the ones the kernel was
// asked to read through the daemon because passthrough did not take.
func (m *MountedObjects) Opens() (opens, fallbacks int64) {
	return m.fsys.opens.Load(), m.fsys.fallbacks.Load()
}

// Unmount unmounts the object filesystem (or detaches it while a
// container still reads an object, as MountedLayer.Unmount does).
func (m *MountedObjects) Unmount() error { return unmount(m.server, m.mountpoint) }

// source is a layer file whose TOC says its content is an object.
type source struct {
	l ObjectLayer
	e *toc.Entry
}

// find returns the files of the layers not refused whose TOC says their
// content is the object d.
func (f *objectFS) find(d digest.Digest) []source {
	sum, ok := sumOf(d)
	if !ok {
		return nil
	}
	f.mu.RLock()
	defer f.mu.RUnlock()
	var found []source
	for _, ol := range f.layers {
		if e, ok := ol.byDigest[sum]; ok && !ol.l.Rejected() {
			found = append(found, source{ol.l, e})
		}
	}
	return found
}

// objectRoot is the filesystem's root: the 256 fan-out directories "00" to
// "ff", found by lookup, never listed (overlayfs lists no data-only layer).
type objectRoot struct {
	gofs.Inode
	fsys *objectFS
}

var (
	_ gofs.NodeLookuper  = (*objectRoot)(nil)
	_ gofs.NodeGetattrer = (*objectRoot)(nil)
)

func (r *objectRoot) Getattr(ctx context.Context, fh gofs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	fillObjectDir(&out.Attr)
	return 0
}

// fillObjectDir is the attributes of the root and the fan-out directories.
func fillObjectDir(a *fuse.Attr) {
	a.Mode = syscall.S_IFDIR | 0o555
	a.Nlink = 2
}

func (r *objectRoot) Lookup(ctx context.Context, name string, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	defer metrics.ObserveFUSE("lookup", time.Now())
	if len(name) != 2 || !isLowerHex(name) {
		return nil, syscall.ENOENT
	}
	v, _ := strconv.ParseUint(name, 16, 8)
	fillObjectDir(&out.Attr)
	// Inodes 2 to 257 are the fan-out directories; objects get theirs
	// from go-fuse, above.
	return r.NewInode(ctx, &objectDir{fsys: r.fsys, prefix: name}, gofs.StableAttr{Mode: syscall.S_IFDIR, Ino: 2 + v}), 0
}

// objectDir is a fan-out directory: the objects whose digests start with
// its name.
type objectDir struct {
	gofs.Inode
	fsys   *objectFS
	prefix string
}

var (
	_ gofs.NodeLookuper  = (*objectDir)(nil)
	_ gofs.NodeGetattrer = (*objectDir)(nil)
)

func (d *objectDir) Getattr(ctx context.Context, fh gofs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	fillObjectDir(&out.Attr)
	return 0
}

func (d *objectDir) Lookup(ctx context.Context, name string, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	defer metrics.ObserveFUSE("lookup", time.Now())
	if len(name) != 62 || !isLowerHex(name) {
		return nil, syscall.ENOENT
	}
	dg := digest.NewDigestFromEncoded(digest.SHA256, d.prefix+name)
	size, ok := d.fsys.size(dg)
	if !ok {
		return nil, syscall.ENOENT
	}
	o := &objectFile{fsys: d.fsys, digest: dg, size: size}
	o.fill(&out.Attr)
	return d.NewInode(ctx, o, gofs.StableAttr{Mode: syscall.S_IFREG}), 0
}

// size is the object d's size, if the store or a layer has it.
func (f *objectFS) size(d digest.Digest) (int64, bool) {
	if file, ok := f.stored(d); ok {
		defer file.Close()
		if fi, err := file.Stat(); err == nil {
			return fi.Size(), true
		}
	}
	if found := f.find(d); len(found) > 0 {
		return found[0].e.Size, true
	}
	return 0, false
}

func isLowerHex(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return true
}

// objectFile is one object. Which copy serves it is decided at each open:
// the store's once it has it, else the cache's or the registry's through a
// layer that names it.
type objectFile struct {
	gofs.Inode
	fsys   *objectFS
	digest digest.Digest
	size   int64

	// The kernel refuses (EIO) a passthrough open of an inode that
	// another open reads through the page cache, and the other way
	// round: an open follows the ones in progress.
	mu        sync.Mutex
	pageOpens int
	passOpens int
}

var (
	_ gofs.NodeOpener    = (*objectFile)(nil)
	_ gofs.NodeGetattrer = (*objectFile)(nil)
)

func (o *objectFile) fill(a *fuse.Attr) {
	a.Mode = syscall.S_IFREG | 0o444
	a.Nlink = 1
	a.Size = uint64(o.size)
	a.Blocks = (uint64(o.size) + 511) / 512
	a.Blksize = 4096
}

func (o *objectFile) Getattr(ctx context.Context, fh gofs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	o.fill(&out.Attr)
	return 0
}

func (o *objectFile) Open(ctx context.Context, flags uint32) (gofs.FileHandle, uint32, syscall.Errno) {
	defer metrics.ObserveFUSE("open", time.Now())
	if flags&(syscall.O_WRONLY|syscall.O_RDWR|syscall.O_TRUNC) != 0 {
		return nil, 0, syscall.EROFS
	}
	f := o.fsys
	f.opens.Add(1)
	o.mu.Lock()
	defer o.mu.Unlock()
	local, l, e, errno := o.resolve(ctx)
	if errno != 0 {
		return nil, 0, errno
	}
	if local != nil && f.passthrough && o.pageOpens == 0 {
		h, err := newPassthroughHandle(local, o)
		if err != nil {
			log.L.WithError(err).WithField("object", o.digest).Error("open failed; the reader gets EIO")
			return nil, 0, syscall.EIO
		}
		o.passOpens++
		return h, fuse.FOPEN_KEEP_CACHE, 0
	}
	if o.passOpens > 0 {
		if local != nil {
			local.Close()
		}
		return nil, 0, syscall.EIO // the kernel would refuse it
	}
	o.pageOpens++
	if local != nil {
		return &localHandle{f: local, node: o}, fuse.FOPEN_KEEP_CACHE, 0
	}
	return &objectLayerHandle{layerHandle: layerHandle{l: l, e: e, node: o}, o: o}, fuse.FOPEN_KEEP_CACHE, 0
}

// objectLayerHandle reads an object through a layer, until the layer
// goes: a lazy layer settles (its objects go into the store) and is
// released under the files opened through it, whose pages the kernel
// may drop and read again at any time (a mapped program dies of SIGBUS
// if that read fails). A read the layer cannot serve is served by the
// store's copy, if it has one, and so is every read after it.
type objectLayerHandle struct {
	layerHandle
	o *objectFile

	mu    sync.Mutex
	local *os.File // the store's copy, once the layer failed a read
}

func (h *objectLayerHandle) Read(ctx context.Context, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	if local := h.stored(false); local != nil {
		return readLocal(local, h.o, dest, off)
	}
	defer metrics.ObserveFUSE("read", time.Now())
	n, err := h.l.ReadAt(ctx, h.e, dest, off)
	if err == nil || err == io.EOF {
		return fuse.ReadResultData(dest[:n]), 0
	}
	if local := h.stored(true); local != nil {
		return readLocal(local, h.o, dest, off)
	}
	return nil, h.o.readFailed(err)
}

// stored is the store's copy the handle reads, looked for if look.
func (h *objectLayerHandle) stored(look bool) *os.File {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.local == nil && look {
		h.local, _ = h.o.fsys.stored(h.o.digest)
	}
	return h.local
}

func (h *objectLayerHandle) Release(ctx context.Context) syscall.Errno {
	h.mu.Lock()
	if h.local != nil {
		h.local.Close()
	}
	h.mu.Unlock()
	return h.layerHandle.Release(ctx)
}

// resolve finds the object's bytes: a local file holding them all (the
// store's copy, or a layer's cached file), else a layer to read them
// through. ENOENT when no one has them, EIO when no layer's bytes are the
// object's.
//
// A layer's TOC names the digest of each file's content, but only its
// chunks' digests are checked as they are read: a layer whose TOC lies
// (a file of its own bytes named by another file's digest) would serve
// its bytes under that digest. So a layer's file serves the object only
// when its word can be taken: the layer was verified whole against its
// image; or it is the only layer that names the object (then only its
// own images point at it, and its bytes are its own containers' affair);
// else the file is read whole, checked against the digest and put in the
// store, which serves it from then on.
func (o *objectFile) resolve(ctx context.Context) (*os.File, ObjectLayer, *toc.Entry, syscall.Errno) {
	f := o.fsys
	if local, ok := f.stored(o.digest); ok {
		return local, nil, nil, 0
	}
	found := f.find(o.digest)
	if len(found) == 0 {
		return nil, nil, nil, syscall.ENOENT // its layer is gone, and the store never got it
	}
	src, trusted := found[0], len(found) == 1
	for _, s := range found {
		if s.l.Verified() {
			src, trusted = s, true
			break
		}
	}
	if trusted {
		local, _ := src.l.CachedFile(src.e)
		return local, src.l, src.e, 0
	}
	for _, s := range found {
		err := f.store.Put(ctx, o.digest, func(w io.Writer) error { return s.l.WriteFile(ctx, s.e, w) })
		if err != nil {
			log.L.WithError(err).WithField("object", o.digest).WithField("file", s.e.Path()).Warn("a layer's file named by an object's digest is not that object; trying another layer")
			continue
		}
		if local, ok := f.stored(o.digest); ok {
			return local, nil, nil, 0
		}
	}
	f.readErrors.Add(1)
	log.L.WithField("object", o.digest).Error("no layer's file is the object its TOC names; the reader gets EIO")
	return nil, nil, nil, syscall.EIO
}

// stored opens the store's copy of d, if it has one.
func (f *objectFS) stored(d digest.Digest) (*os.File, bool) {
	local, err := f.store.Open(d)
	if err == nil {
		return local, true
	}
	if !errors.Is(err, fs.ErrNotExist) {
		log.L.WithError(err).WithField("object", d).Warn("cannot open a stored object; reading it from a layer")
	}
	return nil, false
}

func (o *objectFile) readFailed(err error) syscall.Errno {
	return o.fsys.failed(err, "object", o.digest.String())
}

func (o *objectFile) fellBack() { o.fsys.mountStats.fellBack("the object filesystem") }

func (o *objectFile) released(passthrough bool) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if passthrough {
		o.passOpens--
	} else {
		o.pageOpens--
	}
}

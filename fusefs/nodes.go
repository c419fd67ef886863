package fusefs

import (
	"context"
	"encoding/json"
	"strings"
	"syscall"
	"time"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"

	"github.com/lazypull/lazypull/format/toc"
	"github.com/lazypull/lazypull/metrics"
)

// mode returns the file type bits of an entry.
func typeBits(e *toc.Entry) uint32 {
	switch e.Type {
	case toc.TypeDir:
		return syscall.S_IFDIR
	case toc.TypeSymlink:
		return syscall.S_IFLNK
	case toc.TypeChar:
		return syscall.S_IFCHR
	case toc.TypeBlock:
		return syscall.S_IFBLK
	case toc.TypeFifo:
		return syscall.S_IFIFO
	}
	return syscall.S_IFREG
}

// fillAttr describes entry e (hard links resolved) with inode ino.
func (f *filesystem) fillAttr(e *toc.Entry, out *fuse.Attr) {
	e = f.toc.HardlinkTarget(e)
	out.Ino = e.Ino()
	out.Mode = typeBits(e) | uint32(e.Mode)
	out.Nlink = max(e.NumLink(), 1)
	out.Uid, out.Gid = e.UID, e.GID
	switch e.Type {
	case toc.TypeReg:
		out.Size = uint64(e.Size)
	case toc.TypeSymlink:
		out.Size = uint64(len(e.LinkName()))
	case toc.TypeDir:
		out.Size = 4096
	case toc.TypeChar, toc.TypeBlock:
		out.Rdev = uint32(unix.Mkdev(e.Dev()))
	}
	out.Blocks = (out.Size + 511) / 512
	out.Blksize = 4096
	mtime := e.ModTime()
	sec, nsec := uint64(mtime.Unix()), uint32(mtime.Nanosecond())
	if mtime.IsZero() {
		sec, nsec = uint64(f.mountedAt.Unix()), 0
	}
	out.Mtime, out.Mtimensec = sec, nsec
	out.Atime, out.Atimensec = sec, nsec
	out.Ctime, out.Ctimensec = sec, nsec
}

// fillWhiteout describes the char 0/0 device overlayfs takes for a deletion.
func fillWhiteout(e *toc.Entry, ino uint64, out *fuse.Attr) {
	out.Ino = ino
	out.Mode = syscall.S_IFCHR
	out.Nlink = 1
	out.Rdev = 0
	sec := uint64(e.ModTime().Unix())
	out.Mtime, out.Atime, out.Ctime = sec, sec, sec
}

// node is what every kind of inode shares: its entry and the xattrs.
type node struct {
	fs.Inode
	fsys *filesystem
	e    *toc.Entry
}

var (
	_ fs.NodeGetattrer   = (*node)(nil)
	_ fs.NodeGetxattrer  = (*node)(nil)
	_ fs.NodeListxattrer = (*node)(nil)
)

func (n *node) Getattr(ctx context.Context, fh fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	defer metrics.ObserveFUSE("getattr", time.Now())
	n.fsys.fillAttr(n.e, &out.Attr)
	return 0
}

// xattrs returns the entry's xattrs, and for an opaque directory the
// opaque marker overlayfs reads.
func (n *node) xattrs() map[string][]byte {
	e := n.fsys.toc.HardlinkTarget(n.e)
	if e.Type != toc.TypeDir || !isOpaque(e) {
		return e.Xattrs()
	}
	all := make(map[string][]byte, len(e.Xattrs())+len(n.fsys.opaque))
	for k, v := range e.Xattrs() {
		all[k] = v
	}
	for _, name := range n.fsys.opaque {
		all[name] = []byte("y")
	}
	return all
}

func isOpaque(dir *toc.Entry) bool {
	for _, c := range dir.Children() {
		if c.Base() == toc.OpaqueWhiteout {
			return true
		}
	}
	return false
}

func (n *node) Getxattr(ctx context.Context, attr string, dest []byte) (uint32, syscall.Errno) {
	defer metrics.ObserveFUSE("getxattr", time.Now())
	if n.fsys.noXattrs {
		return 0, syscall.ENOSYS
	}
	v, ok := n.xattrs()[attr]
	if !ok {
		return 0, syscall.ENODATA
	}
	if len(dest) == 0 {
		return uint32(len(v)), 0
	}
	if len(dest) < len(v) {
		return uint32(len(v)), syscall.ERANGE
	}
	return uint32(copy(dest, v)), 0
}

func (n *node) Listxattr(ctx context.Context, dest []byte) (uint32, syscall.Errno) {
	if n.fsys.noXattrs {
		return 0, syscall.ENOSYS
	}
	var size int
	xattrs := n.xattrs()
	for k := range xattrs {
		size += len(k) + 1
	}
	if len(dest) == 0 {
		return uint32(size), 0
	}
	if len(dest) < size {
		return uint32(size), syscall.ERANGE
	}
	off := 0
	for k := range xattrs {
		off += copy(dest[off:], k)
		dest[off] = 0
		off++
	}
	return uint32(off), 0
}

// dirNode is a directory of the layer.
type dirNode struct{ node }

var (
	_ fs.NodeLookuper  = (*dirNode)(nil)
	_ fs.NodeReaddirer = (*dirNode)(nil)
	_ fs.NodeStatfser  = (*dirNode)(nil)
)

func (d *dirNode) Lookup(ctx context.Context, name string, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	defer metrics.ObserveFUSE("lookup", time.Now())
	f := d.fsys
	if d.e == f.toc.Root() {
		if name == StateDirName {
			return d.newChild(ctx, &stateDir{fsys: f}, fs.StableAttr{Mode: syscall.S_IFDIR, Ino: f.stateIno}, out, func(a *fuse.Attr) { f.fillStateDir(a) }), 0
		}
		if toc.IsLandmark(name) {
			return nil, syscall.ENOENT
		}
	}
	if f.layer.Rejected() {
		return nil, syscall.EIO
	}
	if strings.HasPrefix(name, toc.WhiteoutPrefix) {
		return nil, syscall.ENOENT // the layer's raw whiteout names are not its tree
	}
	if e, ok := f.toc.Child(d.e, name); ok {
		target := f.toc.HardlinkTarget(e)
		return d.newChild(ctx, f.newNode(target), fs.StableAttr{Mode: typeBits(target), Ino: target.Ino()}, out, func(a *fuse.Attr) { f.fillAttr(target, a) }), 0
	}
	if wh, ok := f.toc.Child(d.e, toc.WhiteoutPrefix+name); ok {
		ino := wh.Ino()
		return d.newChild(ctx, &whiteoutNode{node{fsys: f, e: wh}}, fs.StableAttr{Mode: syscall.S_IFCHR, Ino: ino}, out, func(a *fuse.Attr) { fillWhiteout(wh, ino, a) }), 0
	}
	return nil, syscall.ENOENT
}

func (d *dirNode) newChild(ctx context.Context, child fs.InodeEmbedder, attr fs.StableAttr, out *fuse.EntryOut, fill func(*fuse.Attr)) *fs.Inode {
	fill(&out.Attr)
	return d.NewInode(ctx, child, attr)
}

func (f *filesystem) newNode(e *toc.Entry) fs.InodeEmbedder {
	switch e.Type {
	case toc.TypeDir:
		return &dirNode{node{fsys: f, e: e}}
	case toc.TypeReg:
		return &fileNode{node{fsys: f, e: e}}
	case toc.TypeSymlink:
		return &symlinkNode{node{fsys: f, e: e}}
	}
	return &node{fsys: f, e: e} // devices and fifos: attributes only
}

func (d *dirNode) Readdir(ctx context.Context) (fs.DirStream, syscall.Errno) {
	defer metrics.ObserveFUSE("readdir", time.Now())
	f := d.fsys
	if f.layer.Rejected() {
		return nil, syscall.EIO
	}
	children := d.e.Children()
	list := make([]fuse.DirEntry, 0, len(children))
	for _, c := range children {
		base := c.Base()
		if c.IsLandmark() {
			continue
		}
		if name, ok := whiteoutTarget(base); ok {
			list = append(list, fuse.DirEntry{Name: name, Mode: syscall.S_IFCHR, Ino: c.Ino()})
			continue
		}
		if base == toc.OpaqueWhiteout {
			continue
		}
		target := f.toc.HardlinkTarget(c)
		list = append(list, fuse.DirEntry{Name: base, Mode: typeBits(target), Ino: target.Ino()})
	}
	return fs.NewListDirStream(list), 0
}

func (d *dirNode) Statfs(ctx context.Context, out *fuse.StatfsOut) syscall.Errno {
	s := d.fsys.layer.Stats()
	out.Bsize = 4096
	out.Frsize = 4096
	out.Blocks = uint64(s.Size+4095) / 4096
	out.Files = uint64(d.fsys.toc.Len() + 1)
	out.NameLen = 255
	return 0
}

// symlinkNode is a symbolic link.
type symlinkNode struct{ node }

var _ fs.NodeReadlinker = (*symlinkNode)(nil)

func (s *symlinkNode) Readlink(ctx context.Context) ([]byte, syscall.Errno) {
	if s.fsys.layer.Rejected() {
		return nil, syscall.EIO
	}
	return []byte(s.e.LinkName()), 0
}

// whiteoutNode is a deletion, shown as overlayfs's char 0/0 device.
type whiteoutNode struct{ node }

func (w *whiteoutNode) Getattr(ctx context.Context, fh fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	fillWhiteout(w.e, w.e.Ino(), &out.Attr)
	return 0
}

func (w *whiteoutNode) Getxattr(ctx context.Context, attr string, dest []byte) (uint32, syscall.Errno) {
	if w.fsys.noXattrs {
		return 0, syscall.ENOSYS
	}
	return 0, syscall.ENODATA
}

func (w *whiteoutNode) Listxattr(ctx context.Context, dest []byte) (uint32, syscall.Errno) {
	if w.fsys.noXattrs {
		return 0, syscall.ENOSYS
	}
	return 0, 0
}

// stateDir is /.lazypull: <layer-digest>.json inside.
type stateDir struct {
	fs.Inode
	fsys *filesystem
}

var _ fs.NodeLookuper = (*stateDir)(nil)

func (f *filesystem) stateFileName() string {
	return f.layer.Stats().Digest.String() + ".json"
}

func (f *filesystem) fillStateDir(a *fuse.Attr) {
	a.Ino = f.stateIno
	a.Mode = syscall.S_IFDIR | 0o555
	a.Nlink = 2
	sec := uint64(f.mountedAt.Unix())
	a.Mtime, a.Atime, a.Ctime = sec, sec, sec
}

func (s *stateDir) Getattr(ctx context.Context, fh fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	s.fsys.fillStateDir(&out.Attr)
	return 0
}

func (s *stateDir) Readdir(ctx context.Context) (fs.DirStream, syscall.Errno) {
	return fs.NewListDirStream([]fuse.DirEntry{{Name: s.fsys.stateFileName(), Mode: syscall.S_IFREG, Ino: s.fsys.stateIno + 1}}), 0
}

func (s *stateDir) Lookup(ctx context.Context, name string, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	if name != s.fsys.stateFileName() {
		return nil, syscall.ENOENT
	}
	sf := &stateFile{fsys: s.fsys}
	sf.fill(&out.Attr)
	out.SetEntryTimeout(0)
	out.SetAttrTimeout(0)
	return s.NewInode(ctx, sf, fs.StableAttr{Mode: syscall.S_IFREG, Ino: s.fsys.stateIno + 1}), 0
}

// stateFile is the layer's fetch progress as JSON, made at each open.
type stateFile struct {
	fs.Inode
	fsys *filesystem
}

// State is what <layer-digest>.json holds.
type State struct {
	Digest        string  `json:"digest"`
	Size          int64   `json:"size"`
	FetchedBytes  int64   `json:"fetchedBytes"`
	CachedPercent float64 `json:"cachedPercent"`
	Requests      int64   `json:"requests"`
	Errors        int64   `json:"errors"`
	ReadErrors    int64   `json:"readErrors"`
	// Verification is where the check of the layer against its image
	// stands. Error texts are not here: containers can read this file
	// (`lazypull status` on the node shows them).
	Verification string `json:"verification"`
	// PassthroughFallbacks counts reads passthrough should have served.
	PassthroughFallbacks int64 `json:"passthroughFallbacks"`
}

func (f *filesystem) state() []byte {
	s := f.layer.Stats()
	st := State{
		Digest: s.Digest.String(), Size: s.Size, FetchedBytes: s.FetchedBytes, Requests: s.Requests,
		Errors: s.Errors, ReadErrors: f.readErrors.Load(), PassthroughFallbacks: f.fallbacks.Load(), Verification: string(s.Verification),
	}
	if s.DataSize > 0 {
		st.CachedPercent = float64(s.CachedBytes) * 100 / float64(s.DataSize)
	} else {
		st.CachedPercent = 100
	}
	data, _ := json.MarshalIndent(st, "", "  ")
	return append(data, '\n')
}

func (s *stateFile) fill(a *fuse.Attr) {
	a.Ino = s.fsys.stateIno + 1
	a.Mode = syscall.S_IFREG | 0o444
	a.Nlink = 1
	a.Size = uint64(len(s.fsys.state()))
	sec := uint64(s.fsys.mountedAt.Unix())
	a.Mtime, a.Atime, a.Ctime = sec, sec, sec
}

func (s *stateFile) Getattr(ctx context.Context, fh fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	s.fill(&out.Attr)
	out.SetTimeout(0)
	return 0
}

func (s *stateFile) Open(ctx context.Context, flags uint32) (fs.FileHandle, uint32, syscall.Errno) {
	return &bytesHandle{data: s.fsys.state()}, fuse.FOPEN_DIRECT_IO, 0
}

// bytesHandle serves a snapshot of bytes.
type bytesHandle struct{ data []byte }

func (b *bytesHandle) Read(ctx context.Context, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	if off >= int64(len(b.data)) {
		return fuse.ReadResultData(nil), 0
	}
	return fuse.ReadResultData(b.data[off:min(int64(len(b.data)), off+int64(len(dest)))]), 0
}

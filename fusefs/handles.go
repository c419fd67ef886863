package fusefs

import (
	"context"
	"io"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/containerd/log"
	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/lazypull/lazypull/format/toc"
	"github.com/lazypull/lazypull/metrics"
)

// The open files of both filesystems (a layer's, the object filesystem)
// are one of three handles: a local file holding all the bytes, read by
// the daemon; the same handed to the kernel (passthrough); or reads
// through a layer, fetched on demand and verified.

// openedNode is the node a handle was opened on.
type openedNode interface {
	// readFailed counts and logs a read that failed: the reader gets
	// EIO, never wrong bytes.
	readFailed(err error) syscall.Errno
	// fellBack counts a read that passthrough should have served.
	fellBack()
	// released ends one open.
	released(passthrough bool)
}

// mountStats counts what a mount's open files did, for its status.
type mountStats struct {
	readErrors atomic.Int64
	fallbacks  atomic.Int64 // reads that passthrough should have served
	warnOnce   sync.Once
}

// fellBack counts a read that came to the daemon although passthrough was
// meant to serve it (go-fuse turns passthrough off for a whole mount after
// one failed registration), and says so once for the mount named mount.
func (s *mountStats) fellBack(mount string) {
	s.fallbacks.Add(1)
	s.warnOnce.Do(func() {
		log.L.Warnf("FUSE passthrough is not in effect on %s (the kernel lacks it, or go-fuse turned it off after a failed registration): local files are read through the daemon", mount)
	})
}

// failed counts a failed read and logs it with what was read.
func (s *mountStats) failed(err error, key, value string) syscall.Errno {
	s.readErrors.Add(1)
	log.L.WithError(err).WithField(key, value).Error("read failed; the reader gets EIO")
	return syscall.EIO
}

// localHandle reads a local file holding all of a file's bytes (a cache
// entry, a stored object) through the daemon, where passthrough is off or
// may not be used: one pread a request, where a read through the layer
// would read and hash a whole chunk for each.
type localHandle struct {
	f    *os.File
	node openedNode
}

var (
	_ fs.FileReader   = (*localHandle)(nil)
	_ fs.FileReleaser = (*localHandle)(nil)
)

func (h *localHandle) Read(ctx context.Context, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	return readLocal(h.f, h.node, dest, off)
}

// readLocal serves a read of node from f, a local file holding all of its bytes.
func readLocal(f *os.File, node openedNode, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	defer metrics.ObserveFUSE("read", time.Now())
	n, err := f.ReadAt(dest, off)
	if err != nil && err != io.EOF {
		return nil, node.readFailed(err)
	}
	return fuse.ReadResultData(dest[:n]), 0
}

func (h *localHandle) Release(ctx context.Context) syscall.Errno {
	h.f.Close()
	h.node.released(false)
	return 0
}

// layerHandle reads a file through its layer: fetched on demand, verified.
type layerHandle struct {
	l    Layer
	e    *toc.Entry
	node openedNode
}

var (
	_ fs.FileReader   = (*layerHandle)(nil)
	_ fs.FileReleaser = (*layerHandle)(nil)
)

func (h *layerHandle) Read(ctx context.Context, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	defer metrics.ObserveFUSE("read", time.Now())
	n, err := h.l.ReadAt(ctx, h.e, dest, off)
	if err != nil && err != io.EOF {
		return nil, h.node.readFailed(err)
	}
	return fuse.ReadResultData(dest[:n]), 0
}

func (h *layerHandle) Release(ctx context.Context) syscall.Errno {
	h.node.released(false)
	return 0
}

// passthroughHandle is a local file handed to the kernel. Its Read runs
// only if passthrough did not take: that is counted.
type passthroughHandle struct {
	fs.FileHandle
	node openedNode
}

// newPassthroughHandle hands the kernel a descriptor of its own for local
// (the loopback file closes it at release); local is closed either way.
func newPassthroughHandle(local *os.File, node openedNode) (*passthroughHandle, error) {
	fd, err := syscall.Dup(int(local.Fd()))
	local.Close()
	if err != nil {
		return nil, err
	}
	return &passthroughHandle{FileHandle: fs.NewLoopbackFile(fd), node: node}, nil
}

func (p *passthroughHandle) PassthroughFd() (int, bool) {
	return p.FileHandle.(fs.FilePassthroughFder).PassthroughFd()
}

func (p *passthroughHandle) Read(ctx context.Context, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	p.node.fellBack()
	return p.FileHandle.(fs.FileReader).Read(ctx, dest, off)
}

func (p *passthroughHandle) Release(ctx context.Context) syscall.Errno {
	p.node.released(true)
	return p.FileHandle.(fs.FileReleaser).Release(ctx)
}

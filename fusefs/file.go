package fusefs

import (
	"context"
	"io"
	"syscall"
	"time"

	"github.com/containerd/log"
	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"

	"github.com/lazypull/lazypull/metrics"
)

// fileNode is a regular file.
type fileNode struct{ node }

var _ fs.NodeOpener = (*fileNode)(nil)

func (n *fileNode) Open(ctx context.Context, flags uint32) (fs.FileHandle, uint32, syscall.Errno) {
	defer metrics.ObserveFUSE("open", time.Now())
	if flags&(syscall.O_WRONLY|syscall.O_RDWR|syscall.O_TRUNC) != 0 {
		return nil, 0, syscall.EROFS
	}
	f := n.fsys
	if f.passthrough {
		if cached, ok := f.layer.CachedFile(n.e); ok {
			// The kernel reads the cached file itself: no daemon in the
			// way, local speed. The loopback file closes its descriptor
			// at release: give it one of its own.
			fd, err := unix.Dup(int(cached.Fd()))
			cached.Close()
			if err == nil {
				return &passthroughFile{FileHandle: fs.NewLoopbackFile(fd), fsys: f}, fuse.FOPEN_KEEP_CACHE, 0
			}
		}
	}
	return &fileHandle{fsys: f, node: n}, fuse.FOPEN_KEEP_CACHE, 0
}

// fileHandle reads through the layer: fetched on demand, verified.
type fileHandle struct {
	fsys *filesystem
	node *fileNode
}

var _ fs.FileReader = (*fileHandle)(nil)

func (h *fileHandle) Read(ctx context.Context, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	defer metrics.ObserveFUSE("read", time.Now())
	n, err := h.fsys.layer.ReadAt(ctx, h.node.e, dest, off)
	if err != nil && err != io.EOF {
		return nil, h.fsys.readError(h.node.e, err)
	}
	return fuse.ReadResultData(dest[:n]), 0
}

// passthroughFile is a cached file handed to the kernel. Its Read runs only
// if passthrough did not take: count that, and say it once.
type passthroughFile struct {
	fs.FileHandle
	fsys *filesystem
}

func (p *passthroughFile) PassthroughFd() (int, bool) {
	return p.FileHandle.(fs.FilePassthroughFder).PassthroughFd()
}

func (p *passthroughFile) Read(ctx context.Context, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	p.fsys.fallbacks.Add(1)
	p.fsys.warnOnce.Do(func() {
		log.L.Warn("FUSE passthrough is not in effect on this mount (the kernel lacks it, or go-fuse turned it off after a failed registration): cached files are read through the daemon")
	})
	return p.FileHandle.(fs.FileReader).Read(ctx, dest, off)
}

func (p *passthroughFile) Release(ctx context.Context) syscall.Errno {
	return p.FileHandle.(fs.FileReleaser).Release(ctx)
}

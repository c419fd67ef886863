package fusefs

import (
	"context"
	"fmt"
	"io"
	"os"
	"sync"
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

// pageCacheOpens counts, per file, the opens that read through the page
// cache: the kernel refuses (EIO) to open an inode with passthrough while
// another open of it does. The counts live here rather than in each
// fileNode, which the kernel makes for every file it looks up: a mutex
// and a count there would cost a 50,000-file layer 0.8 MB.
type pageCacheOpens struct {
	stripes [64]sync.Mutex // an open decides under its file's stripe
	mu      sync.Mutex     // guards n
	n       map[*fileNode]int
}

func (p *pageCacheOpens) lock(n *fileNode) func() {
	m := &p.stripes[n.e.Ino()%uint64(len(p.stripes))]
	m.Lock()
	return m.Unlock
}

func (p *pageCacheOpens) add(n *fileNode, d int) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.n == nil {
		p.n = make(map[*fileNode]int)
	}
	v := p.n[n] + d
	if v == 0 {
		delete(p.n, n)
	} else {
		p.n[n] = v
	}
	return v
}

var _ fs.NodeOpener = (*fileNode)(nil)

func (n *fileNode) Open(ctx context.Context, flags uint32) (fs.FileHandle, uint32, syscall.Errno) {
	defer metrics.ObserveFUSE("open", time.Now())
	if flags&(syscall.O_WRONLY|syscall.O_RDWR|syscall.O_TRUNC) != 0 {
		return nil, 0, syscall.EROFS
	}
	f := n.fsys
	if f.layer.Rejected() {
		return nil, 0, syscall.EIO
	}
	defer f.opens.lock(n)()
	if cached, ok := f.layer.CachedFile(n.e); ok {
		if !f.passthrough || f.opens.add(n, 0) > 0 {
			f.opens.add(n, 1)
			// The daemon reads the cached file, verified when the cache
			// opened it: one pread a request, where a read through the
			// layer would read and hash a whole chunk for each.
			return &cachedFileHandle{f: cached, fsys: f, node: n}, fuse.FOPEN_KEEP_CACHE, 0
		}
		// The kernel reads the cached file itself: no daemon in the
		// way, local speed. The loopback file closes its descriptor
		// at release: give it one of its own.
		fd, err := unix.Dup(int(cached.Fd()))
		cached.Close()
		if err == nil {
			return &passthroughFile{FileHandle: fs.NewLoopbackFile(fd), fsys: f}, fuse.FOPEN_KEEP_CACHE, 0
		}
	}
	f.opens.add(n, 1)
	return &fileHandle{fsys: f, node: n}, fuse.FOPEN_KEEP_CACHE, 0
}

// released ends one open that read through the page cache.
func (n *fileNode) released() {
	defer n.fsys.opens.lock(n)()
	n.fsys.opens.add(n, -1)
}

// cachedFileHandle reads a file whose every chunk is cached from its cache
// file, on a mount without passthrough.
type cachedFileHandle struct {
	f    *os.File
	fsys *filesystem
	node *fileNode
}

var (
	_ fs.FileReader   = (*cachedFileHandle)(nil)
	_ fs.FileReleaser = (*cachedFileHandle)(nil)
)

func (h *cachedFileHandle) Read(ctx context.Context, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	defer metrics.ObserveFUSE("read", time.Now())
	n, err := h.f.ReadAt(dest, off)
	if err != nil && err != io.EOF {
		return nil, h.fsys.readError(h.node.e, fmt.Errorf("cached file %s: %w", h.f.Name(), err))
	}
	return fuse.ReadResultData(dest[:n]), 0
}

func (h *cachedFileHandle) Release(ctx context.Context) syscall.Errno {
	h.f.Close()
	h.node.released()
	return 0
}

// fileHandle reads through the layer: fetched on demand, verified.
type fileHandle struct {
	fsys *filesystem
	node *fileNode
}

var (
	_ fs.FileReader   = (*fileHandle)(nil)
	_ fs.FileReleaser = (*fileHandle)(nil)
)

func (h *fileHandle) Release(ctx context.Context) syscall.Errno {
	h.node.released()
	return 0
}

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

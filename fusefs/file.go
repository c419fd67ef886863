package fusefs

import (
	"context"
	"sync"
	"syscall"
	"time"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"

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
			// opened it.
			return &localHandle{f: cached, node: n}, fuse.FOPEN_KEEP_CACHE, 0
		}
		// The kernel reads the cached file itself: no daemon in the
		// way, local speed.
		if h, err := newPassthroughHandle(cached, n); err == nil {
			return h, fuse.FOPEN_KEEP_CACHE, 0
		}
	}
	f.opens.add(n, 1)
	return &layerHandle{l: f.layer, e: n.e, node: n}, fuse.FOPEN_KEEP_CACHE, 0
}

// released ends one open; those that read through the page cache are
// counted (passthrough ones are not: see pageCacheOpens).
func (n *fileNode) released(passthrough bool) {
	if passthrough {
		return
	}
	defer n.fsys.opens.lock(n)()
	n.fsys.opens.add(n, -1)
}

func (n *fileNode) readFailed(err error) syscall.Errno {
	return n.fsys.failed(err, "file", n.e.Path())
}

func (n *fileNode) fellBack() { n.fsys.mountStats.fellBack("this mount") }

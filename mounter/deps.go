package mounter

import (
	"context"
	"path"
	"strings"
	"sync"

	"github.com/containerd/log"
	"github.com/opencontainers/go-digest"

	"github.com/lazypull/lazypull/elfdeps"
	"github.com/lazypull/lazypull/format/toc"
	"github.com/lazypull/lazypull/layer"
)

// maxHinted bounds the files the mounter remembers having looked at.
const maxHinted = 100_000

// hints fetches, when a container first reads an ELF program or library,
// the interpreter and libraries the dynamic loader will open for it next,
// from whichever of the image's layers holds them: the loader opens them
// one after another, and each would otherwise cost its own round trip.
type hints struct {
	m    *Mounter
	mu   sync.Mutex
	seen map[string]bool // layer digest + file name
}

// onMiss returns the layer.Options.OnMiss of a layer of image ref.
func (h *hints) onMiss(img imageKey, d digest.Digest) func(context.Context, *toc.Entry) {
	return func(ctx context.Context, e *toc.Entry) {
		if l := h.m.mountedLayer(d); l != nil {
			h.look(ctx, img, l, e)
		}
	}
}

// first tells whether file e of layer l is looked at for the first time.
func (h *hints) first(l *layer.Layer, e *toc.Entry) bool {
	key := l.Descriptor().Digest.String() + "/" + e.Path()
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.seen[key] || len(h.seen) >= maxHinted {
		return false
	}
	h.seen[key] = true
	return true
}

// look reads e (a file of l, which image ref has) and, if it is a
// dynamically linked ELF file, fetches what it needs, and what that needs,
// one file after another in this goroutine (the layer bounds how many run).
func (h *hints) look(ctx context.Context, img imageKey, l *layer.Layer, e *toc.Entry) {
	type file struct {
		l *layer.Layer
		e *toc.Entry
	}
	todo := []file{{l, e}}
	var tree *imageTree
	for len(todo) > 0 && ctx.Err() == nil {
		f := todo[0]
		todo = todo[1:]
		if f.e.Type != toc.TypeReg || f.e.Size < 64 || !h.first(f.l, f.e) {
			continue
		}
		head := make([]byte, 4)
		if n, _ := f.l.ReadAt(ctx, f.e, head, 0); !elfdeps.IsELF(head[:n]) {
			continue
		}
		deps, err := elfdeps.Read(entryReader{ctx, f.l, f.e}, f.e.Size, f.e.Path())
		if err != nil {
			log.L.WithError(err).Debug("no dependencies read")
			continue
		}
		if tree == nil {
			t := h.m.imageTree(ctx, img)
			tree = &t
		}
		for _, p := range elfdeps.Resolve(*tree, deps) {
			l2, e2 := tree.entry(p)
			if e2 == nil || e2.Type != toc.TypeReg {
				continue
			}
			log.L.WithFields(log.Fields{"file": e2.Path(), "for": f.e.Path()}).Debug("fetching what the loader will open")
			l2.FetchFile(e2) // nothing to do if cached
			todo = append(todo, file{l2, e2})
		}
	}
}

// entryReader reads one file of a layer.
type entryReader struct {
	ctx context.Context
	l   *layer.Layer
	e   *toc.Entry
}

func (r entryReader) ReadAt(p []byte, off int64) (int, error) {
	return r.l.ReadAt(r.ctx, r.e, p, off)
}

// imageTree is an image's file tree as far as its mounted lazy layers
// show it, upper layers first.
type imageTree struct {
	layers []*layer.Layer
}

func (m *Mounter) imageTree(ctx context.Context, key imageKey) imageTree {
	img, err := m.images.get(ctx, key, nil)
	if err != nil {
		return imageTree{}
	}
	var t imageTree
	for i := len(img.layers) - 1; i >= 0; i-- {
		if l := m.mountedLayer(img.layers[i].Digest); l != nil {
			t.layers = append(t.layers, l)
		}
	}
	return t
}

// entry finds the clean absolute path p, hard links resolved.
func (t imageTree) entry(p string) (*layer.Layer, *toc.Entry) {
	name := strings.TrimPrefix(p, "/")
	for _, l := range t.layers {
		if e, ok := l.TOC().Lookup(name); ok {
			return l, l.TOC().HardlinkTarget(e)
		}
		if _, ok := l.TOC().Lookup(path.Join(path.Dir(name), ".wh."+path.Base(name))); ok {
			return nil, nil // deleted in this layer
		}
	}
	return nil, nil
}

func (t imageTree) Lookup(p string) (string, bool) {
	_, e := t.entry(p)
	switch {
	case e == nil:
		return "", false
	case e.Type == toc.TypeSymlink:
		return e.LinkName(), true
	}
	return "", true
}

// mountedLayer returns the mounted layer of digest d, if any.
func (m *Mounter) mountedLayer(d digest.Digest) *layer.Layer {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.mountedLocked(d)
}

package mounter

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/containerd/log"
	"github.com/opencontainers/go-digest"

	"github.com/lazypull/lazypull/composefs"
	"github.com/lazypull/lazypull/composefs/objects"
	"github.com/lazypull/lazypull/composefs/tocimage"
	"github.com/lazypull/lazypull/format/toc"
	"github.com/lazypull/lazypull/fusefs"
	"github.com/lazypull/lazypull/layer"
)

// ComposefsOptions set up the lazy composefs mode (MountComposefs).
type ComposefsOptions struct {
	// Store is the node's object store: a layer's objects are claimed in
	// it, and served from it once it holds them.
	Store *objects.Store
	// Mountpoint is where the object filesystem is mounted: the
	// data-only lower layer of the stacks of lazy composefs layers.
	Mountpoint string
}

// composefsLayer says where a layer in the lazy composefs form has its
// metadata image, and who claims the objects it names.
type composefsLayer struct {
	image string
	owner string
}

// MountComposefs serves the layer the labels name (as Mount finds it) in
// the lazy composefs form: it writes the layer's metadata image to image
// from its TOC, no file data fetched (again when it is called after a
// restart: the image is the same, and writing it anew mends one a crash
// tore); claims the objects the image names for owner in the store; and serves
// their data through the object filesystem, fetched on demand and in the
// background as the FUSE mode fetches it, until the store holds them all
// (see settle). A layer that settled before needs nothing more. The
// caller mounts the image; mountpoint (where it does) names the layer for
// Unmount, Check and Usage, as Mount's does.
func (m *Mounter) MountComposefs(ctx context.Context, mountpoint, image, owner string, labels map[string]string) error {
	if m.opts.Composefs.Store == nil || m.opts.Composefs.Mountpoint == "" {
		return fmt.Errorf("%w: the lazy composefs mode is not set up here ([composefs] enable and lazy)", errNotLazy)
	}
	cfs := composefsLayer{image: image, owner: owner}
	if settled(cfs) {
		// Restored after it settled: the store has it all, no registry
		// or FUSE needed.
		return nil
	}
	return m.mount(ctx, mountpoint, labels, &cfs)
}

// ObjectsDir is the object filesystem's mountpoint ("" if the lazy
// composefs mode is not set up).
func (m *Mounter) ObjectsDir() string { return m.opts.Composefs.Mountpoint }

// serveObjects writes l's image, claims its objects and serves them.
func (m *Mounter) serveObjects(ctx context.Context, mountpoint string, l *layer.Layer, cfs composefsLayer) error {
	d := l.Descriptor().Digest
	start := time.Now()
	defer func() {
		log.G(ctx).WithField("layer", d).WithField("took", time.Since(start)).Debug("composefs: lazy layer's image written and objects claimed")
	}()
	// Neither the image nor the claim is synced: both are written again
	// at every mount until the layer settles, which syncs them before it
	// says so. Two fsyncs a layer would wait on the prefetch's writes.
	if _, err := tocimage.Write(ctx, l.TOC(), cfs.image, tocimage.Options{Unsynced: true}); err != nil {
		return fmt.Errorf("layer %s: metadata image: %w", d, err)
	}
	if err := m.opts.Composefs.Store.Claim(ctx, cfs.owner, objectsOf(l.TOC())); err != nil {
		return fmt.Errorf("layer %s: %w", d, err)
	}
	return m.addObjects(mountpoint, l)
}

// objectsOf lists the objects t's regular files name.
func objectsOf(t *toc.TOC) []digest.Digest {
	var ds []digest.Digest
	for _, e := range t.Entries() {
		if e.Type == toc.TypeReg && e.Size > 0 {
			ds = append(ds, e.Digest())
		}
	}
	return ds
}

// addObjects serves l's objects, under mountpoint, mounting the object
// filesystem first if no layer is served yet.
func (m *Mounter) addObjects(mountpoint string, l *layer.Layer) error {
	m.objfsMu.Lock()
	defer m.objfsMu.Unlock()
	if m.objfs == nil {
		mp := m.opts.Composefs.Mountpoint
		if err := os.MkdirAll(mp, 0o700); err != nil {
			return err
		}
		// One a manager that died left behind answers ENOTCONN.
		if err := detachStale(mp); err != nil {
			return err
		}
		objfs, err := fusefs.MountObjects(mp, m.opts.Composefs.Store, m.opts.FUSE)
		if err != nil {
			return err
		}
		m.objfs = objfs
	}
	m.objfs.Add(mountpoint, l)
	return nil
}

// stopServing stops serving the objects of the layer at mountpoint, and
// unmounts the object filesystem when it was the last: a node with no
// lazy composefs layer has no mount of ours.
func (m *Mounter) stopServing(mountpoint string) error {
	m.objfsMu.Lock()
	defer m.objfsMu.Unlock()
	if m.objfs == nil {
		return nil
	}
	m.objfs.Remove(mountpoint)
	if m.objfs.Layers() > 0 {
		return nil
	}
	err := m.objfs.Unmount()
	m.objfs = nil
	return err
}

// settle waits for l's background fetch and its check against the image,
// then writes every object of l the store lacks into the store, from the
// cache, and leaves the layer's settled marker beside its image
// (composefs.SettledMarker): containers started from then on read the
// store with no FUSE in their path. The layer's cached copies go, and the
// layer is released: the object filesystem serves its objects from the
// store to the containers that started before. A layer that is not verified (its
// check failed, or it has none) never settles: its TOC's digests would be
// the layer's word alone.
func (m *Mounter) settle(mountpoint string, l *layer.Layer, cfs composefsLayer) {
	defer m.bg.Done()
	done := l.BackgroundDone()
	if done == nil {
		return
	}
	select {
	case <-done:
	case <-m.ctx.Done():
		return
	}
	d := l.Descriptor().Digest
	if v, _ := l.Verification(); v != layer.Verified {
		log.L.WithField("layer", d).WithField("verification", v).Info("composefs: a lazy layer that is not verified stays on the object filesystem")
		return
	}
	start := time.Now()
	n, size, err := storeObjects(m.ctx, m.opts.Composefs.Store, l)
	if err != nil {
		if m.ctx.Err() == nil {
			log.L.WithError(err).WithField("layer", d).Warn("composefs: cannot put a lazy layer's objects in the store; it stays on the object filesystem")
		}
		return
	}
	// The image and the claim were written unsynced: durable before the
	// marker that says they will not be written again.
	if err := errors.Join(composefs.SyncImage(cfs.image), m.opts.Composefs.Store.Sync()); err != nil {
		log.L.WithError(err).WithField("layer", d).Warn("composefs: cannot sync a lazy layer's image and claim; it stays on the object filesystem")
		return
	}
	if err := os.WriteFile(composefs.SettledMarker(cfs.image), nil, 0o600); err != nil {
		log.L.WithError(err).WithField("layer", d).Warn("composefs: cannot mark a lazy layer settled; it stays on the object filesystem")
		return
	}
	// The store serves every object now, to the object filesystem too:
	// the cache's copies would only double the layer on disk, and the
	// layer itself (its TOC, its fetches) is needed no more.
	l.ForgetCached()
	if err := m.Unmount(m.ctx, mountpoint); err != nil && m.ctx.Err() == nil {
		log.L.WithError(err).WithField("layer", d).Warn("composefs: cannot release a settled lazy layer")
	}
	log.L.WithField("layer", d).WithField("objects", n).WithField("bytes", size).WithField("took", time.Since(start)).
		Info("composefs: lazy layer settled: new containers read its files from the object store")
}

// settled tells whether the layer settled already (before a restart).
func settled(cfs composefsLayer) bool {
	_, err := os.Stat(composefs.SettledMarker(cfs.image))
	return err == nil
}

// storeObjects writes every object of l that store lacks, and tells how
// many it wrote and their bytes. Its owner's refs keep them from the start.
// A file the cache holds whole becomes the object itself (linked, not
// copied); the rest is written from its chunks.
func storeObjects(ctx context.Context, store *objects.Store, l *layer.Layer) (int, int64, error) {
	batch, err := store.Lease(ctx)
	if err != nil {
		return 0, 0, err
	}
	defer batch.Abort()
	seen := make(map[digest.Digest]bool)
	var n int
	var size int64
	for _, e := range l.TOC().Entries() {
		d := e.Digest()
		if e.Type != toc.TypeReg || e.Size == 0 || seen[d] {
			continue
		}
		seen[d] = true
		if has, err := store.Has(d); err != nil || has {
			if err != nil {
				return n, size, fmt.Errorf("file %q: %w", e.Path(), err)
			}
			continue
		}
		if adopted(batch, l, e) {
			n, size = n+1, size+e.Size
			continue
		}
		w, err := batch.Create()
		if err != nil {
			return n, size, err
		}
		if err := l.WriteFile(ctx, e, w); err != nil {
			w.Close()
			return n, size, fmt.Errorf("file %q: %w", e.Path(), err)
		}
		if _, err := w.Commit(d); err != nil {
			return n, size, fmt.Errorf("file %q: %w", e.Path(), err)
		}
		n, size = n+1, size+e.Size
	}
	return n, size, batch.Commit()
}

// adopted tells whether e's whole content, cached in one file, became the
// object (the cache file linked into the store; its digest checked).
func adopted(batch *objects.Batch, l *layer.Layer, e *toc.Entry) bool {
	f, ok := l.CachedFile(e)
	if !ok {
		return false
	}
	path := f.Name()
	f.Close()
	obj, err := batch.Adopt(path)
	return err == nil && obj.Digest == e.Digest()
}

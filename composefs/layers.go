package composefs

import (
	"context"
	"fmt"

	"github.com/containerd/log"

	"github.com/lazypull/lazypull/composefs/objects"
)

// Layers is the composefs mode as the snapshotter uses it (it satisfies
// snapshot.Composefs): committed layers converted into one object store
// and mounted as metadata images.
type Layers struct {
	store *objects.Store
}

// OpenLayers opens (or creates) the object store in dir. Objects are
// synced once a layer's batch commits (syncfs), not one by one: a layer
// is thousands of files, and an fsync each made a cold pull 1.4-1.6x
// overlayfs's instead of 1.0-1.25x (python, one run each).
func OpenLayers(ctx context.Context, dir string) (*Layers, error) {
	store, err := objects.Open(ctx, dir, objects.WithBatchSync())
	if err != nil {
		return nil, fmt.Errorf("composefs: open the object store in %s: %w", dir, err)
	}
	if v := store.Verity(); v.String() != "" {
		log.G(ctx).WithField("dir", dir).WithField("fs-verity", v.String()).Info("composefs: object store open")
	}
	return &Layers{store: store}, nil
}

// Convert stores the layer unpacked in dir and writes its metadata image
// to image, the objects claimed by snapshot id.
func (l *Layers) Convert(ctx context.Context, id, dir, image string) (int64, bool, error) {
	st, err := BuildDir(ctx, dir, l.store, id, image)
	if err != nil {
		return 0, false, err
	}
	return st.ImageBytes + st.Bytes, st.Verity, nil
}

// Mount mounts a layer's image read-only, with POSIX ACLs honoured (a
// layer may carry them; noacl would silently ignore them).
func (l *Layers) Mount(image, mountpoint string) error {
	return MountImage(image, mountpoint, WithACL())
}

// Release drops snapshot id's claim on its objects.
func (l *Layers) Release(ctx context.Context, id string) error {
	return l.store.Release(id)
}

// Collect removes the objects no layer names.
func (l *Layers) Collect(ctx context.Context) error {
	res, err := l.store.GC(ctx)
	if err != nil {
		return err
	}
	if res.Objects > 0 || res.Temps > 0 {
		log.G(ctx).WithField("objects", res.Objects).WithField("bytes", res.Bytes).Debug("composefs: removed unreferenced objects")
	}
	return nil
}

// Store is the object store, for what fills it other than Convert (a
// partial pull of a lazily pullable layer).
func (l *Layers) Store() *objects.Store { return l.store }

// Objects is the object store's directory.
func (l *Layers) Objects() string { return l.store.ObjectsDir() }

// Close closes the object store.
func (l *Layers) Close() error { return l.store.Close() }

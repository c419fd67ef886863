package snapshot

import (
	"context"
	"fmt"
	"os"

	"github.com/containerd/containerd/v2/core/snapshots/storage"
	"github.com/containerd/log"

	"github.com/lazypull/lazypull/composefs"
)

// LabelLazy marks a committed snapshot in the lazy composefs form: its
// metadata image was written from its layer's TOC and is mounted on its
// directory, and its files' data comes through the LazyComposefs's object
// filesystem, fetched on demand, until the object store holds it.
const LabelLazy = "containerd.io/snapshot/lazypull.lazy-composefs"

// LabelNotLazy tells, on a snapshot committed while the lazy composefs
// mode was on, why its layer was not mounted in that form (then pulled
// partially, mounted over FUSE or unpacked).
const LabelNotLazy = "containerd.io/snapshot/lazypull.not-lazy-composefs"

// LazyComposefs serves lazily pullable layers in the composefs form before
// any of their files is fetched: the metadata in the kernel (an EROFS
// image) from the first second, the data from the registry on demand
// through one object filesystem stacked as the data-only lower layer.
// The Remote that can (the mounter, or the FUSE manager for it) does it.
type LazyComposefs interface {
	// MountComposefs writes the metadata image of the layer the labels
	// (a Prepare's) name to image (again when Restore calls it: the
	// image may be in the page cache alone until the layer settles, and
	// a crash may have torn it), claims the objects it names for
	// snapshot id, and serves their data through ObjectsDir (keeping
	// what it serves still).
	// mountpoint is the snapshot's directory, where the snapshotter
	// mounts the image: the Remote's Unmount and Check know the layer by
	// it. Once every object is in the store (after the layer's
	// background fetch and its check against the image), it leaves
	// composefs.SettledMarker(image). An error means "not this way" and
	// says why.
	MountComposefs(ctx context.Context, mountpoint, image, id string, labels map[string]string) error
	// ObjectsDir is the object filesystem: the data-only lower layer of
	// every stack with a layer in this form.
	ObjectsDir() string
}

// WithLazyComposefs mounts lazily pullable layers in the lazy composefs
// form (it needs WithComposefs, and l is also the Remote's Unmount).
// Layers it cannot serve so are pulled into the store (WithComposefsFill),
// mounted remotely or unpacked.
func WithLazyComposefs(l LazyComposefs) Opt {
	return func(s *Snapshotter) error { s.lazy = l; return nil }
}

// mountLazy serves the layer of the new active snapshot snap in the lazy
// composefs form, its image mounted on the snapshot's directory, and
// returns the labels and size to commit it with.
func (s *Snapshotter) mountLazy(ctx context.Context, snap storage.Snapshot, labels map[string]string) (map[string]string, int64, error) {
	if s.lazy == nil || s.composefs == nil || s.remote == nil {
		return nil, 0, fmt.Errorf("no lazy composefs mode here")
	}
	upper, image := s.upperPath(snap.ID), s.imagePath(snap.ID)
	undo := func() {
		if err := s.remote.Unmount(ctx, upper); err != nil {
			log.G(ctx).WithError(err).WithField("snapshot id", snap.ID).Warn("composefs: cannot stop serving a lazy layer that failed to mount")
		}
		os.Remove(image)
		if err := s.composefs.Release(ctx, snap.ID); err != nil {
			log.G(ctx).WithError(err).WithField("snapshot id", snap.ID).Warn("composefs: cannot release the objects of a lazy layer that failed to mount")
		}
	}
	if err := s.lazy.MountComposefs(ctx, upper, image, snap.ID, labels); err != nil {
		undo()
		return nil, 0, err
	}
	if err := s.composefs.Mount(image, upper); err != nil {
		undo()
		return nil, 0, fmt.Errorf("composefs: mount the layer's image: %w", err)
	}
	os.RemoveAll(s.workPath(snap.ID)) // a committed layer has no upper: no work dir either
	var size int64                    // the image's; the objects are the Remote's to count
	if fi, err := os.Stat(image); err == nil {
		size = fi.Size()
	}
	// Lazy layers' metacopy xattrs name no fs-verity digest: overlayfs
	// cannot read one from FUSE.
	return map[string]string{LabelComposefs: verityLabel(false), LabelLazy: "true"}, size, nil
}

// settled tells whether every lazy composefs layer of ids has settled: the
// object store holds every object its image names (the LazyComposefs
// leaves composefs.SettledMarker beside the image). A stack of settled
// layers takes the store's directory as its data-only lower layer: no FUSE
// in its path. Stacks mounted before keep the object filesystem, which
// serves the stored objects through passthrough.
func (s *Snapshotter) settled(ids []string) bool {
	for _, id := range ids {
		if _, err := os.Stat(composefs.SettledMarker(s.imagePath(id))); err != nil {
			return false
		}
	}
	return true
}

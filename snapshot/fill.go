package snapshot

import (
	"context"
	"fmt"
	"os"

	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/core/snapshots/storage"
	"github.com/containerd/log"
)

// LabelFilled marks a committed snapshot whose layer a Filler pulled
// into the composefs store (fetching only the files it lacked), rather than
// containerd downloading and unpacking it.
const LabelFilled = "containerd.io/snapshot/lazypull.filled"

// Filler pulls a lazily pullable layer straight into the composefs form
// (a partial pull): only the files the object store lacks are fetched, and
// the layer is checked against its image before it is committed.
type Filler interface {
	// Fill stores the layer the labels (a Prepare's) name as snapshot
	// id's objects and writes its metadata image to image. It reports
	// the bytes the layer takes (image and objects). An error means "not
	// this way" and says why: nothing is then claimed, and the layer is
	// mounted remotely or unpacked instead.
	Fill(ctx context.Context, id, image string, labels map[string]string) (size int64, err error)
}

// WithComposefsFill lets the composefs mode pull the layers f can fill
// rather than mount them remotely or unpack them (it needs WithComposefs).
func WithComposefsFill(f Filler) Opt {
	return func(s *Snapshotter) error { s.filler = f; return nil }
}

// fill tries to pull the layer of the new active snapshot snap into the
// composefs form; on success its image is mounted on the snapshot's
// directory, and fill returns the labels and size to commit it with.
func (s *Snapshotter) fill(ctx context.Context, snap storage.Snapshot, labels map[string]string) (map[string]string, int64, error) {
	if s.filler == nil || s.composefs == nil {
		return nil, 0, fmt.Errorf("no partial pulls into the composefs store here")
	}
	image := s.imagePath(snap.ID)
	size, err := s.filler.Fill(ctx, snap.ID, image, labels)
	if err != nil {
		os.Remove(image)
		return nil, 0, err
	}
	if err := s.composefs.Mount(image, s.upperPath(snap.ID)); err != nil {
		os.Remove(image)
		if rerr := s.composefs.Release(ctx, snap.ID); rerr != nil {
			log.G(ctx).WithError(rerr).WithField("snapshot id", snap.ID).Warn("composefs: cannot release the objects of a layer whose image would not mount")
		}
		return nil, 0, fmt.Errorf("composefs: mount the layer's image: %w", err)
	}
	os.RemoveAll(s.workPath(snap.ID)) // a committed layer has no upper: no work dir either
	// The metacopy xattrs of a filled layer name no fs-verity digest.
	return map[string]string{LabelComposefs: verityLabel(false), LabelFilled: "true"}, size, nil
}

// commitComposefs commits an active snapshot that fill or mountLazy made.
func (s *Snapshotter) commitComposefs(ctx context.Context, name, key string, labels map[string]string, size int64, opts []snapshots.Opt) error {
	opts = append(opts[:len(opts):len(opts)], snapshots.WithLabels(labels))
	return s.ms.WithTransaction(ctx, true, func(ctx context.Context) error {
		if _, err := storage.CommitActive(ctx, key, name, snapshots.Usage{Size: size, Inodes: 1}, opts...); err != nil {
			return fmt.Errorf("commit composefs snapshot %s as %s: %w", key, name, err)
		}
		return nil
	})
}

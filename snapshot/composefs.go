package snapshot

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/log"
)

// LabelComposefs marks a committed snapshot stored in the composefs form:
// its directory is a read-only metadata image whose files point into the
// node's object store. Its value says whether every object has fs-verity
// ("verity") or not ("no-verity").
const LabelComposefs = "containerd.io/snapshot/lazypull.composefs"

// Composefs stores committed layers in the composefs form: each layer's files
// once in an object store shared by every layer on the node, and the layer
// itself as a metadata image mounted read-only, stacked by overlayfs over
// the object store as a data-only lower layer (metacopy and redirect
// xattrs). The snapshotter decides when; the Composefs knows the formats.
type Composefs interface {
	// Convert stores the layer unpacked in dir in the object store, under
	// snapshot id, and writes its metadata image to image. It reports the
	// bytes the layer takes (image and objects) and whether every object
	// has fs-verity. dir's files may become the store's (moved, not
	// copied): after an error, dir is not the layer any more.
	Convert(ctx context.Context, id, dir, image string) (size int64, verity bool, err error)
	// Mount mounts image read-only at mountpoint (an empty directory).
	Mount(image, mountpoint string) error
	// Release drops snapshot id's claim on the objects it names; objects
	// no snapshot names go at the next Collect.
	Release(ctx context.Context, id string) error
	// Collect removes the objects no snapshot names.
	Collect(ctx context.Context) error
	// Objects is the object store's directory: the data-only lower layer.
	Objects() string
}

// WithComposefs stores committed layers in the composefs form (see
// Composefs). Snapshots committed before stay as they are, and stack with
// the new ones. It needs real root: overlayfs refuses metacopy with
// userxattr, which a user namespace requires.
func WithComposefs(c Composefs) Opt {
	return func(s *Snapshotter) error { s.composefs = c; return nil }
}

// imagePath is where snapshot id's metadata image lives, beside its fs
// directory, on which the image is mounted.
func (s *Snapshotter) imagePath(id string) string {
	return filepath.Join(s.root, "snapshots", id, "layer.erofs")
}

// isComposefs tells whether snapshot id is in the composefs form.
func (s *Snapshotter) isComposefs(id string) bool {
	_, err := os.Lstat(s.imagePath(id))
	return err == nil
}

// convertOnCommit converts the active snapshot key, about to be committed,
// to the composefs form if it is an image layer containerd unpacked. It
// returns the size to record (-1: count the directory) and the labels to
// add.
func (s *Snapshotter) convertOnCommit(ctx context.Context, key string) (int64, map[string]string, error) {
	if s.composefs == nil {
		return -1, nil, nil
	}
	// Outside the commit's transaction: storing a layer takes a while,
	// and the metadata store would be locked meanwhile.
	id, info, _, err := s.idOf(ctx, key)
	if err != nil {
		return 0, nil, err
	}
	if !isUnpack(info) {
		// Not an image layer that containerd unpacked into the
		// directory, but one written through the overlay (a container,
		// a build step): with metacopy on, such a directory holds
		// overlay's own metadata-only copies and redirects, which make
		// sense in a plain layer only.
		return -1, nil, nil
	}
	labels, size, err := s.convert(ctx, key, id)
	return size, labels, err
}

// isUnpack tells whether the active snapshot info is one containerd unpacks
// an image layer into: labelled with the layer's chain ID (containerd 2.x,
// CRI), or named as containerd 1.6's unpacker names its keys (ctr pull).
func isUnpack(info snapshots.Info) bool {
	if _, ok := info.Labels[snapshots.LabelSnapshotRef]; ok {
		return true
	}
	return strings.HasPrefix(clientKey(info.Name), snapshots.UnpackKeyPrefix+"-")
}

// clientKey is the key a client gave, out of the one containerd hands a
// proxy snapshotter ("<namespace>/<n>/<key>").
func clientKey(key string) string {
	if parts := strings.SplitN(key, "/", 3); len(parts) == 3 {
		return parts[2]
	}
	return key
}

// convert turns the active snapshot id, about to be committed, into the
// composefs form: its files go to the object store, its fs directory is
// emptied and the metadata image mounted there. It returns the labels and
// size to commit with. A failure fails the commit, as a failed unpack does:
// the files may have moved to the store already.
func (s *Snapshotter) convert(ctx context.Context, key, id string) (labels map[string]string, size int64, err error) {
	upper, image := s.upperPath(id), s.imagePath(id)
	size, verity, err := s.composefs.Convert(ctx, id, upper, image)
	if err != nil {
		os.Remove(image)
		if rerr := s.composefs.Release(ctx, id); rerr != nil {
			log.G(ctx).WithError(rerr).WithField("snapshot", key).Warn("composefs: cannot release the objects of a layer that failed to convert")
		}
		return nil, 0, fmt.Errorf("composefs: store the layer: %w", err)
	}
	// From here the image is the layer: a failure fails the commit.
	if err := os.RemoveAll(upper); err != nil {
		return nil, 0, fmt.Errorf("composefs: empty %s after storing its layer: %w", upper, err)
	}
	if err := os.Mkdir(upper, 0o755); err != nil {
		return nil, 0, fmt.Errorf("composefs: %w", err)
	}
	if err := s.composefs.Mount(image, upper); err != nil {
		return nil, 0, fmt.Errorf("composefs: mount the layer's image: %w", err)
	}
	os.RemoveAll(s.workPath(id)) // a committed layer has no upper: no work dir either
	return map[string]string{LabelComposefs: verityLabel(verity)}, size, nil
}

func verityLabel(verity bool) string {
	if verity {
		return "verity"
	}
	return "no-verity"
}

// restoreComposefs mounts again the images of composefs snapshots whose
// mount is gone (after a reboot: the kernel's mounts outlive the daemon
// otherwise).
func (s *Snapshotter) restoreComposefs(ctx context.Context, ids []string) error {
	var errs []error
	for _, id := range ids {
		upper := s.upperPath(id)
		if mayBeMounted(upper) {
			continue
		}
		if err := s.composefs.Mount(s.imagePath(id), upper); err != nil {
			err = fmt.Errorf("composefs layer %s: %w", id, err)
			s.markBroken(id, err)
			errs = append(errs, err)
			continue
		}
		s.markBroken(id, nil)
	}
	if len(errs) > 0 {
		return fmt.Errorf("%d composefs layers could not be mounted again: %w", len(errs), errs[0])
	}
	return nil
}

// releaseComposefs drops the object claims of removed snapshot directories
// (those that were in the composefs form) and collects what no snapshot
// names any more.
func (s *Snapshotter) releaseComposefs(ctx context.Context, ids []string) {
	if s.composefs == nil || len(ids) == 0 {
		return
	}
	for _, id := range ids {
		if err := s.composefs.Release(ctx, id); err != nil {
			log.G(ctx).WithError(err).WithField("snapshot id", id).Warn("composefs: cannot release the layer's objects; the next cleanup tries again")
		}
	}
	if err := s.composefs.Collect(ctx); err != nil {
		log.G(ctx).WithError(err).Warn("composefs: cannot remove unreferenced objects; the next cleanup tries again")
	}
}

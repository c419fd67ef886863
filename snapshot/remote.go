package snapshot

import (
	"context"

	"github.com/containerd/containerd/v2/core/snapshots"
)

// LabelRemote marks a committed snapshot whose directory is mounted by the
// Remote rather than unpacked. Its value names the kind of mount.
const LabelRemote = "containerd.io/snapshot/lazypull.remote"

// LabelUnpacked tells why a layer that was offered to the Remote was
// unpacked instead; it is set on the committed snapshot.
const LabelUnpacked = "containerd.io/snapshot/lazypull.unpacked"

// Remote mounts layers from elsewhere (lazily, from a registry) so that
// containerd need not download and unpack them.
//
// When Prepare is called for an unpack (the labels carry
// containerd.io/snapshot.ref, the chain ID to commit to), the snapshotter asks
// the Remote to mount the layer at the new snapshot's directory. On success
// the snapshot is committed under that chain ID at once and Prepare returns
// ErrAlreadyExists, which tells containerd to skip the download. On failure
// the layer is unpacked the ordinary way and the reason is logged.
type Remote interface {
	// Mount makes the layer that labels describe appear at mountpoint, an
	// empty directory. An error means "unpack it instead" and must say why.
	// After a restart, Restore calls it again for every remote snapshot:
	// it must keep a mount it still serves and replace a dead one.
	Mount(ctx context.Context, mountpoint string, labels map[string]string) error
	// Unmount releases what Mount set up at mountpoint. It is called for
	// every snapshot directory the snapshotter removes, so it must return
	// nil for mountpoints it does not know.
	Unmount(ctx context.Context, mountpoint string) error
}

// Checker is a Remote that can say whether the layers it mounted may still
// be used: a lazily fetched layer is checked against its image after it is
// mounted, and one found wrong must refuse every container from then on.
type Checker interface {
	// Check fails, naming the layer and why, if any of the mountpoints
	// it serves holds a layer it refused; it ignores the others.
	Check(ctx context.Context, mountpoints []string) error
}

// UsageReporter is a Remote that can tell what a layer it mounted takes on
// the node: a remote snapshot's directory holds nothing, its data is in
// the Remote's cache.
type UsageReporter interface {
	// Usage reports the layer at mountpoint, or fails for one it does
	// not serve.
	Usage(ctx context.Context, mountpoint string) (snapshots.Usage, error)
}

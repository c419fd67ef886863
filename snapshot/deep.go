package snapshot

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/core/snapshots/storage"
	"golang.org/x/sys/unix"

	"github.com/lazypull/lazypull/composefs"
)

// Deep composefs stacks. containerd passes an overlay's options to one
// mount(2) call, which takes a page of them; its way around long lowerdirs
// (chdir to their common prefix) cannot apply to a lowerdir with a
// data-only layer ("::"). A composefs stack whose options do not fit is
// mounted here instead, with the new mount API (no such limit), at
// snapshots/<id>/merged, and containerd gets a bind mount of that.

// mergedMu keeps two callers (Mounts of the same key, say) from both
// finding merged/ empty and mounting it twice. Such mounts are rare: one
// lock for the process is enough.
var mergedMu sync.Mutex

// mergedPath is where a deep stack of snapshot id is mounted.
func (s *Snapshotter) mergedPath(id string) string {
	return filepath.Join(s.root, "snapshots", id, "merged")
}

// optionsTooLong tells whether an overlay's options, joined as containerd
// hands them to mount(2), exceed the page the kernel takes.
func optionsTooLong(options []string) bool {
	return len(strings.Join(options, ",")) > composefs.MaxOptionsLength
}

// deepMounts mounts snap's composefs stack at its merged directory, once
// (a mount that is there already, from an earlier call or from before a
// restart, is kept; after a reboot it is made again), and returns a bind
// mount of it: read-write for an active snapshot, read-only for a view.
func (s *Snapshotter) deepMounts(snap storage.Snapshot, idmapped bool) ([]mount.Mount, error) {
	if idmapped {
		// The bind of an overlay cannot be idmapped (see DESIGN.md), and
		// MountAt takes no uidmap=/gidmap=.
		return nil, fmt.Errorf("snapshot %s: a composefs stack of %d layers is too long for one mount(2) and cannot be idmapped", snap.ID, len(snap.ParentIDs))
	}
	merged := s.mergedPath(snap.ID)
	access := "rw"
	if snap.Kind == snapshots.KindView {
		access = "ro"
	}
	bind := []mount.Mount{{Type: "bind", Source: merged, Options: []string{access, "rbind"}}}

	mergedMu.Lock()
	defer mergedMu.Unlock()
	if isMountRoot(merged) {
		return bind, nil
	}
	if err := os.Mkdir(merged, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
		return nil, fmt.Errorf("snapshot %s: %w", snap.ID, err)
	}
	o := composefs.Overlay{
		Layers:  make([]string, len(snap.ParentIDs)),
		Objects: s.composefs.Objects(),
		// As the overlay containerd mounts for a shorter stack, which
		// names no verity mode (the kernel's default is off).
		Verity: composefs.VerityOff,
	}
	for i, id := range snap.ParentIDs {
		o.Layers[i] = s.upperPath(id)
	}
	if snap.Kind == snapshots.KindActive {
		o.Upper, o.Work = s.upperPath(snap.ID), s.workPath(snap.ID)
	}
	if err := o.MountAt(merged); err != nil {
		return nil, fmt.Errorf("snapshot %s: %w", snap.ID, err)
	}
	return bind, nil
}

// unmountMerged unmounts the deep stack of active snapshot key, if it has
// one, before Commit turns its upper directory into a layer: the overlay
// would otherwise stay over a directory that is no longer the snapshot's.
func (s *Snapshotter) unmountMerged(ctx context.Context, key string) error {
	id, _, _, err := s.idOf(ctx, key)
	if err != nil {
		return err
	}
	mergedMu.Lock()
	defer mergedMu.Unlock()
	return unmountAll(s.mergedPath(id))
}

// isMountRoot tells whether dir is the root of a mount.
func isMountRoot(dir string) bool {
	var stx unix.Statx_t
	if err := unix.Statx(unix.AT_FDCWD, dir, unix.AT_SYMLINK_NOFOLLOW, 0, &stx); err != nil {
		return false
	}
	return stx.Attributes_mask&unix.STATX_ATTR_MOUNT_ROOT != 0 && stx.Attributes&unix.STATX_ATTR_MOUNT_ROOT != 0
}

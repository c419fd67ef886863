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
	"golang.org/x/sys/unix"

	"github.com/lazypull/lazypull/composefs"
)

// Composefs stacks the snapshotter mounts itself (at snapshots/<id>/merged)
// and hands containerd as a bind mount of that, in two cases:
//
//   - a deep stack: containerd passes an overlay's options to one mount(2)
//     call, which takes a page of them; its way around long lowerdirs
//     (chdir to their common prefix) cannot apply to a lowerdir with a
//     data-only layer ("::"). The new mount API has no such limit.
//   - an unpack: given an overlay, containerd's applier writes the layer's
//     tar straight into the upperdir and makes the directories the tar
//     leaves out (implied parents) with the attributes of the same
//     directory in the first element of lowerdir that has it, split on
//     ":". The empty element of "::" is the host's root there (an implied
//     /tmp would be 1777, /root 0700, as on the host), and the object
//     store's fan-out directories would lend their 0700 too. Given a bind
//     mount, the applier mounts it and applies through the whole stack,
//     where an implied directory is the one the layers below have, or new.

// mergedMu keeps two callers (Mounts of the same key, say) from both
// finding merged/ empty and mounting it twice. Such mounts are rare: one
// lock for the process is enough.
var mergedMu sync.Mutex

// mergedPath is where snapshot id's stack is mounted by boundMounts.
func (s *Snapshotter) mergedPath(id string) string {
	return filepath.Join(s.root, "snapshots", id, "merged")
}

// optionsTooLong tells whether an overlay's options, joined as containerd
// hands them to mount(2), exceed the page the kernel takes.
func optionsTooLong(options []string) bool {
	return len(strings.Join(options, ",")) > composefs.MaxOptionsLength
}

// boundMounts mounts snap's composefs stack at its merged directory, once
// (a mount that is there already, from an earlier call or from before a
// restart, is kept; after a reboot it is made again), and returns a bind
// mount of it: read-write for an active snapshot, read-only for a view.
// The caller has made sure the snapshot is not idmapped: the bind of an
// overlay cannot be (see DESIGN.md), and MountAt takes no uidmap=/gidmap=.
func (s *Snapshotter) boundMounts(st stack) ([]mount.Mount, error) {
	snap := st.snap
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
	if err := s.overlay(st).MountAt(merged); err != nil {
		return nil, fmt.Errorf("snapshot %s: %w", snap.ID, err)
	}
	return bind, nil
}

// unmountMerged unmounts the stack boundMounts mounted for active snapshot
// key, if it has one, before Commit turns its upper directory into a layer:
// the overlay would otherwise stay over a directory that is no longer the
// snapshot's (and, for an unpack, keep it busy while it is converted).
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

package snapshot

import (
	"context"
	"fmt"
	"strings"

	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/core/snapshots/storage"
)

// Mounts returns the mounts of an active snapshot or a view.
func (s *Snapshotter) Mounts(ctx context.Context, key string) ([]mount.Mount, error) {
	var (
		snap storage.Snapshot
		info snapshots.Info
	)
	err := s.ms.WithTransaction(ctx, false, func(ctx context.Context) (err error) {
		if snap, err = storage.GetSnapshot(ctx, key); err != nil {
			return fmt.Errorf("mounts of snapshot %s: %w", key, err)
		}
		if _, info, _, err = storage.GetInfo(ctx, key); err != nil {
			return fmt.Errorf("mounts of snapshot %s: %w", key, err)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	if err := s.checkParents(snap.ParentIDs); err != nil {
		return nil, fmt.Errorf("mounts of snapshot %s: %w", key, err)
	}
	if err := s.checkRemote(ctx, snap.ParentIDs); err != nil {
		return nil, fmt.Errorf("mounts of snapshot %s: %w", key, err)
	}
	return s.mounts(snap, info), nil
}

// mounts builds the mount list: a bind mount when there is nothing to stack
// (no parent, or a view of a single parent), overlayfs otherwise.
func (s *Snapshotter) mounts(snap storage.Snapshot, info snapshots.Info) []mount.Mount {
	var options []string
	if s.remapIDs {
		if v, ok := info.Labels[snapshots.LabelSnapshotUIDMapping]; ok {
			options = append(options, "uidmap="+v)
		}
		if v, ok := info.Labels[snapshots.LabelSnapshotGIDMapping]; ok {
			options = append(options, "gidmap="+v)
		}
	}

	if len(snap.ParentIDs) == 0 {
		access := "rw"
		if snap.Kind == snapshots.KindView {
			access = "ro"
		}
		return []mount.Mount{{Type: "bind", Source: s.upperPath(snap.ID), Options: append(options, access, "rbind")}}
	}
	if snap.Kind == snapshots.KindView && len(snap.ParentIDs) == 1 {
		return []mount.Mount{{Type: "bind", Source: s.upperPath(snap.ParentIDs[0]), Options: append(options, "ro", "rbind")}}
	}

	if snap.Kind == snapshots.KindActive {
		options = append(options,
			"workdir="+s.workPath(snap.ID),
			"upperdir="+s.upperPath(snap.ID))
	}
	lowers := make([]string, len(snap.ParentIDs))
	for i, id := range snap.ParentIDs {
		lowers[i] = s.upperPath(id)
	}
	options = append(options, "lowerdir="+strings.Join(lowers, ":"))
	options = append(options, s.mountOptions...)
	return []mount.Mount{{Type: "overlay", Source: "overlay", Options: options}}
}

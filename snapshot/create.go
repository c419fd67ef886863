package snapshot

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"

	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/core/snapshots/storage"
	"github.com/containerd/continuity/fs"
	"github.com/containerd/errdefs"
	"github.com/containerd/log"
)

// Prepare creates an active snapshot on top of parent. When the labels ask
// for an unpack, the layer may instead be mounted in the lazy composefs
// form (a LazyComposefs), pulled into the composefs store (a Filler) or
// mounted from elsewhere (a Remote), tried in that order: then it is
// committed at once and ErrAlreadyExists returned.
func (s *Snapshotter) Prepare(ctx context.Context, key, parent string, opts ...snapshots.Opt) ([]mount.Mount, error) {
	var requested snapshots.Info
	for _, opt := range opts {
		if err := opt(&requested); err != nil {
			return nil, err
		}
	}
	target, unpack := requested.Labels[snapshots.LabelSnapshotRef]
	if (s.remote == nil && s.filler == nil) || !unpack || target == "" {
		return s.create(ctx, snapshots.KindActive, key, parent, opts)
	}

	// The mounts only if the layer is to be unpacked after all: for an
	// unpack onto composefs layers they are an overlay mounted here
	// (boundMounts), which a remote layer would not use.
	st, err := s.record(ctx, snapshots.KindActive, key, parent, opts)
	if err != nil {
		return nil, err
	}
	offered := requested.Labels
	if s.addContent != nil {
		offered = s.addContent(ctx, offered)
	}
	if s.lazy != nil {
		lbls, size, err := s.mountLazy(ctx, st.snap, offered)
		if err == nil {
			return nil, s.commitNew(ctx, target, key, "mounted lazily in the composefs form", func() error {
				return s.commitComposefs(ctx, target, key, lbls, size, opts)
			})
		}
		log.G(ctx).WithError(err).WithField("snapshot", target).Info("layer not mounted lazily in the composefs form")
		// However the layer comes, its snapshot says why not so.
		opts = append(opts[:len(opts):len(opts)], snapshots.WithLabels(map[string]string{LabelNotLazy: truncate(err.Error(), 1000)}))
	}
	if s.filler != nil {
		lbls, size, err := s.fill(ctx, st.snap, offered)
		if err == nil {
			return nil, s.commitNew(ctx, target, key, "pulled into the composefs store", func() error {
				return s.commitComposefs(ctx, target, key, lbls, size, opts)
			})
		}
		log.G(ctx).WithError(err).WithField("snapshot", target).Info("layer not pulled into the composefs store")
		if s.remote == nil {
			return s.unpackInstead(ctx, key, st, err)
		}
	}
	if err := s.remote.Mount(ctx, s.upperPath(st.snap.ID), offered); err != nil {
		log.G(ctx).WithError(err).WithField("snapshot", target).Info("layer not mounted remotely; it will be unpacked")
		return s.unpackInstead(ctx, key, st, err)
	}
	return nil, s.commitNew(ctx, target, key, "mounted remotely", func() error { return s.commitRemote(ctx, target, key, opts) })
}

// unpackInstead returns the mounts of the new active snapshot key for
// containerd to unpack its layer into, and keeps why it was not mounted
// or pulled another way for its commit's labels.
func (s *Snapshotter) unpackInstead(ctx context.Context, key string, st stack, why error) ([]mount.Mount, error) {
	s.fallbackMu.Lock()
	s.fallback[key] = why.Error()
	s.fallbackMu.Unlock()
	return s.mountsOfNew(ctx, key, st)
}

// commitNew commits the snapshot key, whose layer is in place (how says
// how it got there), as target, and returns the ErrAlreadyExists that
// tells containerd to skip the unpack; a snapshot that cannot be committed
// is removed.
func (s *Snapshotter) commitNew(ctx context.Context, target, key, how string, commit func() error) error {
	if err := commit(); err != nil {
		if rerr := s.Remove(ctx, key); rerr != nil {
			log.G(ctx).WithError(rerr).WithField("key", key).Warn("failed to remove a snapshot that could not be committed")
		}
		if errdefs.IsAlreadyExists(err) {
			// Another Prepare of the same layer won the race; its snapshot serves.
			return fmt.Errorf("target snapshot %q: %w", target, errdefs.ErrAlreadyExists)
		}
		return err
	}
	log.G(ctx).WithField("snapshot", target).Debug("layer " + how)
	return fmt.Errorf("target snapshot %q %s: %w", target, how, errdefs.ErrAlreadyExists)
}

// View creates a read-only snapshot of parent.
func (s *Snapshotter) View(ctx context.Context, key, parent string, opts ...snapshots.Opt) ([]mount.Mount, error) {
	return s.create(ctx, snapshots.KindView, key, parent, opts)
}

// Commit turns the active snapshot key into the committed snapshot name.
func (s *Snapshotter) Commit(ctx context.Context, name, key string, opts ...snapshots.Opt) error {
	s.fallbackMu.Lock()
	if why, ok := s.fallback[key]; ok {
		delete(s.fallback, key)
		opts = append(opts[:len(opts):len(opts)], snapshots.WithLabels(map[string]string{LabelUnpacked: truncate(why, 1000)}))
	}
	s.fallbackMu.Unlock()
	if err := s.unmountMerged(ctx, key); err != nil {
		return fmt.Errorf("commit snapshot %s: %w", key, err)
	}
	size, labels, err := s.convertOnCommit(ctx, key)
	if err != nil {
		return fmt.Errorf("commit snapshot %s: %w", key, err)
	}
	if labels != nil {
		opts = append(opts[:len(opts):len(opts)], snapshots.WithLabels(labels))
	}
	return s.ms.WithTransaction(ctx, true, func(ctx context.Context) error {
		id, _, _, err := storage.GetInfo(ctx, key)
		if err != nil {
			return err
		}
		usage := snapshots.Usage{Size: size, Inodes: 1}
		if size < 0 {
			du, err := fs.DiskUsage(ctx, s.upperPath(id))
			if err != nil {
				return fmt.Errorf("commit snapshot %s: %w", key, err)
			}
			usage = snapshots.Usage(du)
		}
		if _, err := storage.CommitActive(ctx, key, name, usage, opts...); err != nil {
			return fmt.Errorf("commit snapshot %s as %s: %w", key, name, err)
		}
		return nil
	})
}

// commitRemote commits a remotely mounted snapshot without walking its tree
// (that would stat every file of a lazily fetched layer).
func (s *Snapshotter) commitRemote(ctx context.Context, name, key string, opts []snapshots.Opt) error {
	opts = append(opts[:len(opts):len(opts)], snapshots.WithLabels(map[string]string{LabelRemote: "remote"}))
	return s.ms.WithTransaction(ctx, true, func(ctx context.Context) error {
		if _, err := storage.CommitActive(ctx, key, name, snapshots.Usage{}, opts...); err != nil {
			return fmt.Errorf("commit remote snapshot %s as %s: %w", key, name, err)
		}
		return nil
	})
}

// create records a snapshot (record) and returns its mounts.
func (s *Snapshotter) create(ctx context.Context, kind snapshots.Kind, key, parent string, opts []snapshots.Opt) ([]mount.Mount, error) {
	st, err := s.record(ctx, kind, key, parent, opts)
	if err != nil {
		return nil, err
	}
	return s.mountsOfNew(ctx, key, st)
}

// mountsOfNew returns the mounts of a snapshot just recorded, or removes it
// if they cannot be made: not left half made, the key stays free for
// another try.
func (s *Snapshotter) mountsOfNew(ctx context.Context, key string, st stack) ([]mount.Mount, error) {
	mounts, err := s.mounts(st)
	if err != nil {
		if rerr := s.Remove(ctx, key); rerr != nil {
			log.G(ctx).WithError(rerr).WithField("key", key).Warn("failed to remove snapshot that could not be mounted")
		}
		return nil, fmt.Errorf("create snapshot %s: %w", key, err)
	}
	return mounts, nil
}

// record makes the snapshot's directories under a temporary name, records
// the snapshot and renames the directories into place, all in one
// transaction so that Cleanup never sees a half-made snapshot.
func (s *Snapshotter) record(ctx context.Context, kind snapshots.Kind, key, parent string, opts []snapshots.Opt) (st stack, err error) {
	if s.remote != nil {
		ids, err := s.parentIDs(ctx, parent)
		if err != nil {
			return st, fmt.Errorf("create snapshot %s: parent %s: %w", key, parent, err)
		}
		if err := s.checkRemote(ctx, ids); err != nil {
			return st, fmt.Errorf("create snapshot %s: %w", key, err)
		}
	}
	err = s.ms.WithTransaction(ctx, true, func(ctx context.Context) (err error) {
		tmp, err := s.makeDirs(kind)
		if err != nil {
			return err
		}
		defer func() {
			if err != nil {
				if rerr := os.RemoveAll(tmp); rerr != nil {
					log.G(ctx).WithError(rerr).WithField("path", tmp).Warn("failed to remove temporary snapshot directory")
				}
			}
		}()

		if _, err = storage.CreateSnapshot(ctx, kind, key, parent, opts...); err != nil {
			return fmt.Errorf("create snapshot %s: %w", key, err)
		}
		if st, err = readStack(ctx, key); err != nil {
			return fmt.Errorf("create snapshot %s: %w", key, err)
		}
		snap, info := st.snap, st.info
		if err := s.checkParents(snap.ParentIDs); err != nil {
			return fmt.Errorf("create snapshot %s: %w", key, err)
		}
		if err := s.chownRoot(filepath.Join(tmp, "fs"), snap, info); err != nil {
			return fmt.Errorf("create snapshot %s: %w", key, err)
		}
		if err := os.Rename(tmp, filepath.Join(s.snapshotsDir(), snap.ID)); err != nil {
			return fmt.Errorf("create snapshot %s: %w", key, err)
		}
		return nil
	})
	return st, err
}

// makeDirs creates snapshots/new-*/fs (and work, for an active snapshot).
func (s *Snapshotter) makeDirs(kind snapshots.Kind) (string, error) {
	tmp, err := os.MkdirTemp(s.snapshotsDir(), "new-")
	if err != nil {
		return "", fmt.Errorf("create snapshot directory: %w", err)
	}
	err = os.Mkdir(filepath.Join(tmp, "fs"), 0o755)
	if err == nil && kind == snapshots.KindActive {
		err = os.Mkdir(filepath.Join(tmp, "work"), 0o711)
	}
	if err != nil {
		os.RemoveAll(tmp)
		return "", fmt.Errorf("create snapshot directory: %w", err)
	}
	return tmp, nil
}

// chownRoot gives the new snapshot's root directory the owner the container
// will see as root: the mapped root of the id-mapping labels, or else the
// owner of the parent's root, so that remapped images keep working.
func (s *Snapshotter) chownRoot(dir string, snap storage.Snapshot, info snapshots.Info) error {
	uid, gid := -1, -1
	var err error
	if v, ok := info.Labels[snapshots.LabelSnapshotUIDMapping]; ok {
		if uid, err = hostRootID(v); err != nil {
			return fmt.Errorf("label %s: %w", snapshots.LabelSnapshotUIDMapping, err)
		}
	}
	if v, ok := info.Labels[snapshots.LabelSnapshotGIDMapping]; ok {
		if gid, err = hostRootID(v); err != nil {
			return fmt.Errorf("label %s: %w", snapshots.LabelSnapshotGIDMapping, err)
		}
	}
	if (uid == -1 || gid == -1) && len(snap.ParentIDs) > 0 {
		fi, err := os.Stat(s.upperPath(snap.ParentIDs[0]))
		if err != nil {
			return fmt.Errorf("stat parent: %w", err)
		}
		st, ok := fi.Sys().(*syscall.Stat_t)
		if !ok {
			return errors.New("stat parent: no owner information")
		}
		if uid == -1 {
			uid = int(st.Uid)
		}
		if gid == -1 {
			gid = int(st.Gid)
		}
	}
	if uid == -1 && gid == -1 {
		return nil
	}
	return os.Lchown(dir, uid, gid)
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}

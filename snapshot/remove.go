package snapshot

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	"github.com/containerd/containerd/v2/core/snapshots/storage"
	"github.com/containerd/log"
	"golang.org/x/sys/unix"
)

// Remove drops a snapshot. Its directories go now, or on the next Cleanup
// with WithAsyncRemove.
func (s *Snapshotter) Remove(ctx context.Context, key string) error {
	s.fallbackMu.Lock()
	delete(s.fallback, key)
	s.fallbackMu.Unlock()
	var orphans []string
	err := s.ms.WithTransaction(ctx, true, func(ctx context.Context) (err error) {
		if _, _, err = storage.Remove(ctx, key); err != nil {
			return fmt.Errorf("remove snapshot %s: %w", key, err)
		}
		if !s.asyncRemove {
			orphans, err = s.orphanDirs(ctx)
		}
		return err
	})
	if err != nil {
		return err
	}
	// The metadata is gone and the key free: failures here are only logged,
	// and Cleanup tries again.
	s.removeDirs(ctx, orphans)
	return nil
}

// Cleanup removes the directories of removed snapshots.
func (s *Snapshotter) Cleanup(ctx context.Context) error {
	var orphans []string
	// A write transaction keeps snapshots from being created while we look.
	err := s.ms.WithTransaction(ctx, true, func(ctx context.Context) (err error) {
		orphans, err = s.orphanDirs(ctx)
		return err
	})
	if err != nil {
		return fmt.Errorf("cleanup: %w", err)
	}
	s.removeDirs(ctx, orphans)
	return nil
}

// orphanDirs lists the snapshot directories that no snapshot owns.
func (s *Snapshotter) orphanDirs(ctx context.Context) ([]string, error) {
	ids, err := storage.IDMap(ctx)
	if err != nil {
		return nil, err
	}
	dir, err := os.Open(s.snapshotsDir())
	if err != nil {
		return nil, err
	}
	defer dir.Close()
	names, err := dir.Readdirnames(-1)
	if err != nil {
		return nil, err
	}
	var orphans []string
	for _, name := range names {
		if _, ok := ids[name]; !ok {
			orphans = append(orphans, filepath.Join(s.snapshotsDir(), name))
		}
	}
	return orphans, nil
}

func (s *Snapshotter) removeDirs(ctx context.Context, dirs []string) {
	var released []string // composefs layers: their objects may go too
	for _, dir := range dirs {
		// The overlay boundMounts mounted first: it stacks on fs.
		if err := unmountAll(filepath.Join(dir, "merged")); err != nil {
			log.G(ctx).WithError(err).WithField("path", dir).Warn("failed to unmount snapshot; leaving it for the next cleanup")
			continue
		}
		if err := s.unmountDir(ctx, filepath.Join(dir, "fs")); err != nil {
			log.G(ctx).WithError(err).WithField("path", dir).Warn("failed to unmount snapshot; leaving it for the next cleanup")
			continue
		}
		// The snapshot is gone from the metadata: its objects may go
		// before its directory does (a directory that fails to go
		// would otherwise keep them forever).
		if id := filepath.Base(dir); s.isComposefs(id) {
			released = append(released, id)
		}
		if err := os.RemoveAll(dir); err != nil {
			log.G(ctx).WithError(err).WithField("path", dir).Warn("failed to remove snapshot directory")
		}
	}
	s.releaseComposefs(ctx, released)
}

// unmountDir releases whatever is mounted on a snapshot's fs directory, so
// that RemoveAll never descends into a remote layer.
func (s *Snapshotter) unmountDir(ctx context.Context, fsDir string) error {
	if s.remote != nil {
		if err := s.remote.Unmount(ctx, fsDir); err != nil {
			return err
		}
	}
	return unmountAll(fsDir)
}

// unmountAll releases whatever is mounted on dir.
func unmountAll(dir string) error {
	if !mayBeMounted(dir) {
		return nil // the common case; a failing umount(2) would cost more than the check
	}
	// Unmount until nothing is left: this also clears a stack of mounts and
	// a FUSE mount whose server is gone. EINVAL means "not a mountpoint".
	for {
		switch err := unix.Unmount(dir, unix.MNT_DETACH); err {
		case nil:
			continue
		case unix.EINVAL, unix.ENOENT:
			return nil
		default:
			return fmt.Errorf("unmount %s: %w", dir, err)
		}
	}
}

// mayBeMounted tells whether dir is the root of a mount, or cannot be looked
// at (a FUSE mount whose server died answers ENOTCONN).
func mayBeMounted(dir string) bool {
	var stx unix.Statx_t
	err := unix.Statx(unix.AT_FDCWD, dir, unix.AT_SYMLINK_NOFOLLOW, 0, &stx)
	switch {
	case err == unix.ENOENT:
		return false
	case err != nil:
		return true
	case stx.Attributes_mask&unix.STATX_ATTR_MOUNT_ROOT == 0:
		return true // the kernel cannot tell: try to unmount
	default:
		return stx.Attributes&unix.STATX_ATTR_MOUNT_ROOT != 0
	}
}

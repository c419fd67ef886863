package snapshot

import (
	"context"
	"errors"
	"fmt"
	"slices"

	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/core/snapshots/storage"
	"github.com/containerd/errdefs"
	"github.com/containerd/log"
)

// Restore mounts again every committed remote snapshot, as after a
// restart. A snapshot that cannot be restored is recorded as broken:
// Prepare, View and Mounts on top of it fail with its name and the reason,
// rather than stack containers on an empty directory. The returned error
// lists the broken snapshots.
func (s *Snapshotter) Restore(ctx context.Context) error {
	if s.remote == nil && s.composefs == nil {
		return nil
	}
	var (
		found     []remoteSnap
		composefs []string     // ids
		lazy      []remoteSnap // composefs ones in the lazy form
	)
	err := s.ms.WithTransaction(ctx, false, func(ctx context.Context) error {
		return storage.WalkInfo(ctx, func(ctx context.Context, info snapshots.Info) error {
			_, remote := info.Labels[LabelRemote]
			_, cfs := info.Labels[LabelComposefs]
			if !remote && !cfs || info.Kind != snapshots.KindCommitted {
				return nil
			}
			id, _, _, err := storage.GetInfo(ctx, info.Name)
			if err != nil {
				return err
			}
			if cfs {
				composefs = append(composefs, id)
				if _, ok := info.Labels[LabelLazy]; ok {
					lazy = append(lazy, remoteSnap{id, info})
				}
			} else {
				found = append(found, remoteSnap{id, info})
			}
			return nil
		})
	})
	if errdefs.IsNotFound(err) {
		return nil // a fresh root: no snapshots yet
	}
	if err != nil {
		return fmt.Errorf("list remote snapshots: %w", err)
	}
	// Lazy layers first: their images are written again (one written
	// unsynced before a crash may be torn), then mounted with the rest.
	errs, failed := s.restoreLazy(ctx, lazy)
	composefs = slices.DeleteFunc(composefs, func(id string) bool { return failed[id] })
	if len(composefs) > 0 {
		if s.composefs == nil {
			// Turned off since: containers cannot stack on them. Say
			// what to do rather than mount them wrong.
			err := fmt.Errorf("%d snapshots are in the composefs form but the composefs mode is off: turn it on again ([composefs] enable = true) to use them, or remove their images", len(composefs))
			for _, id := range composefs {
				s.markBroken(id, err)
			}
			errs = append(errs, err)
		} else if err := s.restoreComposefs(ctx, composefs); err != nil {
			errs = append(errs, err)
		}
	}
	if s.remote == nil {
		return errors.Join(errs...)
	}
	for _, r := range found {
		// The Remote keeps a mount it still serves (one that outlived the
		// daemon) and replaces a dead one.
		if err := s.remote.Mount(ctx, s.upperPath(r.id), r.info.Labels); err != nil {
			err = fmt.Errorf("snapshot %s: %w", r.info.Name, err)
			s.markBroken(r.id, err)
			errs = append(errs, err)
			continue
		}
		s.markBroken(r.id, nil) // mounted again: no longer broken
		log.G(ctx).WithField("snapshot", r.info.Name).Debug("remote snapshot restored")
	}
	return errors.Join(errs...)
}

// remoteSnap is a snapshot Restore serves again.
type remoteSnap struct {
	id   string
	info snapshots.Info
}

// markBroken records why remote snapshot id cannot be used; nil clears it.
func (s *Snapshotter) markBroken(id string, err error) {
	s.brokenMu.Lock()
	defer s.brokenMu.Unlock()
	if err == nil {
		delete(s.broken, id)
		return
	}
	if s.broken == nil {
		s.broken = make(map[string]error)
	}
	s.broken[id] = err
}

// checkParents fails if a snapshot stacks on a broken remote snapshot.
func (s *Snapshotter) checkParents(parentIDs []string) error {
	s.brokenMu.Lock()
	defer s.brokenMu.Unlock()
	for _, id := range parentIDs {
		if err, ok := s.broken[id]; ok {
			return fmt.Errorf("a parent layer could not be mounted after a restart, so the container cannot start: %w", err)
		}
	}
	return nil
}

// checkRemote asks the Remote, if it can tell, whether the remote layers
// among ids (a snapshot's parents) may still be used. It runs outside any
// metadata transaction: it may cost a call to another process.
func (s *Snapshotter) checkRemote(ctx context.Context, ids []string) error {
	c, ok := s.remote.(Checker)
	if !ok || len(ids) == 0 {
		return nil
	}
	mountpoints := make([]string, len(ids))
	for i, id := range ids {
		mountpoints[i] = s.upperPath(id)
	}
	if err := c.Check(ctx, mountpoints); err != nil {
		return fmt.Errorf("a parent layer may not be used: %w (remove the images that use it, e.g. `ctr images rm`, and pull them again)", err)
	}
	return nil
}

// parentIDs returns the ids of parent and of its parents.
func (s *Snapshotter) parentIDs(ctx context.Context, parent string) ([]string, error) {
	if parent == "" {
		return nil, nil
	}
	var ids []string
	err := s.ms.WithTransaction(ctx, false, func(ctx context.Context) error {
		for name := parent; name != ""; {
			id, info, _, err := storage.GetInfo(ctx, name)
			if err != nil {
				return err
			}
			ids = append(ids, id)
			name = info.Parent
		}
		return nil
	})
	return ids, err
}

// restoreLazy has the lazy composefs layers served again (their images are
// mounted by restoreComposefs after): the LazyComposefs keeps what it
// serves still, and serves again what a restart of its process lost. It
// returns the ids it could not serve, marked broken.
func (s *Snapshotter) restoreLazy(ctx context.Context, snaps []remoteSnap) (errs []error, failed map[string]bool) {
	failed = make(map[string]bool)
	for _, r := range snaps {
		if s.settled([]string{r.id}) {
			continue // all in the store: a composefs layer like any other
		}
		var err error
		if s.lazy == nil || s.composefs == nil {
			err = fmt.Errorf("snapshot %s is in the lazy composefs form but the lazy composefs mode is off: turn it on again ([composefs] lazy = true) to use it, or remove its image", r.info.Name)
		} else if err = s.lazy.MountComposefs(ctx, s.upperPath(r.id), s.imagePath(r.id), r.id, r.info.Labels); err != nil {
			err = fmt.Errorf("snapshot %s: %w", r.info.Name, err)
		}
		if err != nil {
			s.markBroken(r.id, err)
			errs = append(errs, err)
			failed[r.id] = true
			continue
		}
		log.G(ctx).WithField("snapshot", r.info.Name).Debug("lazy composefs snapshot restored")
	}
	return errs, failed
}

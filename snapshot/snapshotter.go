// Package snapshot is lazypull's containerd Snapshotter: snapshots are
// directories stacked with overlayfs, metadata lives in bbolt through
// containerd's core/snapshots/storage, and it behaves as containerd's own
// overlay snapshotter does.
//
// Layers that are mounted from elsewhere instead of unpacked (lazily pulled
// layers) come in through the Remote interface. This package knows mounts and
// snapshot metadata; it must not know registries, HTTP or layer formats.
package snapshot

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/core/snapshots/storage"
	"github.com/containerd/containerd/v2/plugins/snapshots/overlay/overlayutils"
	"github.com/containerd/continuity/fs"
	"github.com/containerd/log"
)

// LabelUpperdir is the optional label (see WithUpperdirLabel) that tells
// where a snapshot's changes are stored. containerd's overlay snapshotter
// uses the same key, and tools read it.
const LabelUpperdir = "containerd.io/snapshot/overlay.upperdir"

// Snapshotter is a snapshots.Snapshotter on overlayfs.
type Snapshotter struct {
	root          string
	ms            *storage.MetaStore
	asyncRemove   bool
	upperdirLabel bool
	remapIDs      bool
	mountOptions  []string      // appended to every overlay mount
	remote        Remote        // nil: every layer is unpacked
	composefs     Composefs     // nil: committed layers stay plain directories
	filler        Filler        // nil: no partial pulls into the composefs store
	lazy          LazyComposefs // nil: no layers in the lazy composefs form
	addContent    func(context.Context, map[string]string) map[string]string

	brokenMu sync.Mutex
	broken   map[string]error // remote snapshots Restore could not mount, by id

	fallbackMu sync.Mutex
	fallback   map[string]string // active key → why the Remote declined it
}

var _ snapshots.Snapshotter = (*Snapshotter)(nil)

// Opt configures a Snapshotter.
type Opt func(*Snapshotter) error

// WithAsyncRemove makes Remove drop only the metadata; the directories go on
// the next Cleanup. Removal is then quick and the key reusable at once.
func WithAsyncRemove(s *Snapshotter) error { s.asyncRemove = true; return nil }

// WithUpperdirLabel adds LabelUpperdir to the info of every snapshot.
func WithUpperdirLabel(s *Snapshotter) error { s.upperdirLabel = true; return nil }

// WithRemapIDs passes the snapshot's uid/gid mapping labels to the mount as
// uidmap=/gidmap= options, which containerd 2.x turns into idmapped lower
// layers. containerd 1.6 does not understand them: leave it off there.
func WithRemapIDs(s *Snapshotter) error { s.remapIDs = true; return nil }

// WithMountOptions adds options to every overlay mount (not to bind mounts).
func WithMountOptions(options ...string) Opt {
	return func(s *Snapshotter) error {
		s.mountOptions = append(s.mountOptions, options...)
		return nil
	}
}

// WithRemote lets r mount layers from elsewhere instead of having them
// unpacked (see Remote).
func WithRemote(r Remote) Opt {
	return func(s *Snapshotter) error { s.remote = r; return nil }
}

// WithImageContent has add extend the labels of a layer that is offered
// to the Remote or to the composefs modes (not the labels the snapshot
// keeps): with the image's manifest and config where containerd has them,
// so that they need not be fetched again.
func WithImageContent(add func(ctx context.Context, labels map[string]string) map[string]string) Opt {
	return func(s *Snapshotter) error { s.addContent = add; return nil }
}

// New opens (or creates) a snapshotter rooted at root: metadata.db holds the
// metadata and snapshots/<id>/{fs,work} the directories.
func New(root string, opts ...Opt) (*Snapshotter, error) {
	s := &Snapshotter{root: root, fallback: make(map[string]string)}
	for _, opt := range opts {
		if err := opt(s); err != nil {
			return nil, err
		}
	}
	if err := os.MkdirAll(filepath.Join(root, "snapshots"), 0o700); err != nil {
		return nil, fmt.Errorf("create snapshotter root %s: %w", root, err)
	}
	dtype, err := fs.SupportsDType(root)
	if err != nil {
		return nil, fmt.Errorf("check d_type support of %s: %w", root, err)
	}
	if !dtype {
		return nil, fmt.Errorf("%s is on a filesystem without d_type support, which overlayfs needs: "+
			"choose another root, or reformat it (xfs: mkfs.xfs -n ftype=1)", root)
	}

	if !hasOption(s.mountOptions, "userxattr") {
		// Inside a user namespace overlayfs ignores trusted.* xattrs (opaque
		// directories) unless mounted with userxattr.
		need, err := overlayutils.NeedsUserXAttr(root)
		if err != nil {
			log.L.WithError(err).Warnf("cannot tell whether overlay needs \"userxattr\" on %s; assuming %v", root, need)
		}
		if need {
			s.mountOptions = append(s.mountOptions, "userxattr")
		}
	}
	if s.lazy != nil && s.composefs == nil {
		return nil, fmt.Errorf("the lazy composefs mode needs the composefs mode ([composefs] enable = true)")
	}
	if s.composefs != nil && hasOption(s.mountOptions, "userxattr") {
		return nil, fmt.Errorf("the composefs mode needs real root: overlayfs refuses metacopy with \"userxattr\", which %s (in a user namespace) needs; turn composefs off", root)
	}
	// index=on would tie upper dirs to their lower dirs' file handles, which
	// breaks when lower layers are remounted (remote layers after a restart).
	if !hasOption(s.mountOptions, "index") && kernelHasOverlayIndex() {
		s.mountOptions = append(s.mountOptions, "index=off")
	}

	s.ms, err = storage.NewMetaStore(filepath.Join(root, "metadata.db"))
	if err != nil {
		return nil, fmt.Errorf("open snapshot metadata in %s: %w", root, err)
	}
	return s, nil
}

// Stat returns the info of an active or committed snapshot.
func (s *Snapshotter) Stat(ctx context.Context, key string) (snapshots.Info, error) {
	id, info, _, err := s.idOf(ctx, key)
	if err != nil {
		return snapshots.Info{}, err
	}
	return s.withUpperdirLabel(info, id), nil
}

// Update changes the labels of a snapshot.
func (s *Snapshotter) Update(ctx context.Context, info snapshots.Info, fieldpaths ...string) (snapshots.Info, error) {
	var (
		updated snapshots.Info
		id      string
	)
	err := s.ms.WithTransaction(ctx, true, func(ctx context.Context) (err error) {
		if updated, err = storage.UpdateInfo(ctx, info, fieldpaths...); err != nil {
			return err
		}
		id, _, _, err = storage.GetInfo(ctx, updated.Name)
		return err
	})
	if err != nil {
		return snapshots.Info{}, err
	}
	return s.withUpperdirLabel(updated, id), nil
}

// Usage returns the disk space a snapshot takes: counted now for an active
// snapshot, as recorded at commit for a committed one.
func (s *Snapshotter) Usage(ctx context.Context, key string) (snapshots.Usage, error) {
	id, info, usage, err := s.idOf(ctx, key)
	if err != nil {
		return snapshots.Usage{}, err
	}
	if info.Kind == snapshots.KindActive {
		du, err := fs.DiskUsage(ctx, s.upperPath(id))
		if err != nil {
			return snapshots.Usage{}, fmt.Errorf("disk usage of snapshot %s: %w", key, err)
		}
		usage = snapshots.Usage(du)
	}
	if r, ok := s.remote.(UsageReporter); ok && info.Labels[LabelRemote] != "" {
		if remote, err := r.Usage(ctx, s.upperPath(id)); err == nil {
			usage = remote
		} else {
			log.G(ctx).WithError(err).WithField("snapshot", key).Debug("no usage from the remote; reporting the directory's")
		}
	}
	return usage, nil
}

// Walk calls fn for every snapshot that matches one of the filters.
func (s *Snapshotter) Walk(ctx context.Context, fn snapshots.WalkFunc, filters ...string) error {
	return s.ms.WithTransaction(ctx, false, func(ctx context.Context) error {
		if !s.upperdirLabel {
			return storage.WalkInfo(ctx, fn, filters...)
		}
		return storage.WalkInfo(ctx, func(ctx context.Context, info snapshots.Info) error {
			id, _, _, err := storage.GetInfo(ctx, info.Name)
			if err != nil {
				return err
			}
			return fn(ctx, s.withUpperdirLabel(info, id))
		}, filters...)
	})
}

// Close closes the metadata store. Mounts stay as they are.
func (s *Snapshotter) Close() error {
	return s.ms.Close()
}

func (s *Snapshotter) withUpperdirLabel(info snapshots.Info, id string) snapshots.Info {
	if !s.upperdirLabel {
		return info
	}
	labels := make(map[string]string, len(info.Labels)+1)
	for k, v := range info.Labels {
		labels[k] = v
	}
	labels[LabelUpperdir] = s.upperPath(id)
	info.Labels = labels
	return info
}

func (s *Snapshotter) snapshotsDir() string { return filepath.Join(s.root, "snapshots") }
func (s *Snapshotter) upperPath(id string) string {
	return filepath.Join(s.root, "snapshots", id, "fs")
}
func (s *Snapshotter) workPath(id string) string {
	return filepath.Join(s.root, "snapshots", id, "work")
}

// hasOption tells whether options hold key, bare or as key=value.
func hasOption(options []string, key string) bool {
	for _, o := range options {
		if k, _, _ := strings.Cut(o, "="); k == key {
			return true
		}
	}
	return false
}

func kernelHasOverlayIndex() bool {
	_, err := os.Stat("/sys/module/overlay/parameters/index")
	return err == nil
}

// idOf returns the id, info and usage of the snapshot key.
func (s *Snapshotter) idOf(ctx context.Context, key string) (id string, info snapshots.Info, usage snapshots.Usage, err error) {
	err = s.ms.WithTransaction(ctx, false, func(ctx context.Context) error {
		id, info, usage, err = storage.GetInfo(ctx, key)
		return err
	})
	return id, info, usage, err
}

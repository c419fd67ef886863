package snapshot

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/core/snapshots/storage"

	"github.com/lazypull/lazypull/composefs"
)

// Mounts returns the mounts of an active snapshot or a view.
func (s *Snapshotter) Mounts(ctx context.Context, key string) ([]mount.Mount, error) {
	var st stack
	err := s.ms.WithTransaction(ctx, false, func(ctx context.Context) (err error) {
		st, err = readStack(ctx, key)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("mounts of snapshot %s: %w", key, err)
	}
	if err := s.checkParents(st.snap.ParentIDs); err != nil {
		return nil, fmt.Errorf("mounts of snapshot %s: %w", key, err)
	}
	if err := s.checkRemote(ctx, st.snap.ParentIDs); err != nil {
		return nil, fmt.Errorf("mounts of snapshot %s: %w", key, err)
	}
	return s.mounts(st)
}

// stack is what mounts needs to know of a snapshot, read in one metadata
// transaction (readStack).
type stack struct {
	snap storage.Snapshot
	info snapshots.Info
	// composefs: some layer under the snapshot is in the composefs form.
	composefs bool
	// lazy: the ids of those in the lazy composefs form (LabelLazy):
	// their objects come through the object filesystem until they settle.
	lazy []string
}

// readStack reads snapshot key's stack, in a metadata transaction. Whether
// a parent is in the composefs form is its commit label's to say
// (LabelComposefs), not its directory's: no file is looked up.
func readStack(ctx context.Context, key string) (st stack, err error) {
	if st.snap, err = storage.GetSnapshot(ctx, key); err != nil {
		return st, err
	}
	if _, st.info, _, err = storage.GetInfo(ctx, key); err != nil {
		return st, err
	}
	for name := st.info.Parent; name != ""; {
		id, parent, _, err := storage.GetInfo(ctx, name)
		if err != nil {
			return st, fmt.Errorf("parent %s: %w", name, err)
		}
		if _, ok := parent.Labels[LabelComposefs]; ok {
			st.composefs = true
		}
		if _, ok := parent.Labels[LabelLazy]; ok {
			st.lazy = append(st.lazy, id)
		}
		name = parent.Parent
	}
	return st, nil
}

// mounts builds the mount list: a bind mount when there is nothing to stack
// (no parent, or a view of a single parent), overlayfs otherwise, and a bind
// mount of an overlay mounted here for a composefs stack too deep for one
// mount(2) or unpacked into (boundMounts).
func (s *Snapshotter) mounts(st stack) ([]mount.Mount, error) {
	snap, info := st.snap, st.info
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
		return []mount.Mount{{Type: "bind", Source: s.upperPath(snap.ID), Options: append(options, access, "rbind")}}, nil
	}
	// A composefs layer's directory holds its metadata only: it needs the
	// overlay, even alone.
	if snap.Kind == snapshots.KindView && len(snap.ParentIDs) == 1 && !st.composefs {
		return []mount.Mount{{Type: "bind", Source: s.upperPath(snap.ParentIDs[0]), Options: append(options, "ro", "rbind")}}, nil
	}
	if st.composefs && s.composefs != nil { // else Restore marked them broken
		return s.composefsMounts(st, options)
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
	return []mount.Mount{{Type: "overlay", Source: "overlay", Options: options}}, nil
}

// composefsMounts is the overlay of a stack with composefs layers
// (composefs.Overlay: the object store a data-only lower layer, metacopy
// and redirects followed), after idmap, the options the idmapping labels
// ask for, or else a bind mount of the stack mounted here (boundMounts)
// when the options are too long for mount(2) or the snapshot is an unpack.
//
// Following a metacopy file above another layer takes metacopy=on (else
// EPERM, "refusing to follow metacopy origin"), which takes
// redirect_dir=on: an upper written through this mount may hold
// metadata-only copies and redirects of its own, so only unpacked layers
// are converted (see convertOnCommit).
func (s *Snapshotter) composefsMounts(st stack, idmap []string) ([]mount.Mount, error) {
	snap, info := st.snap, st.info
	stackOptions, err := s.overlay(st).Options()
	tooLong := errors.Is(err, composefs.ErrOptionsTooLong)
	if err != nil && !tooLong {
		return nil, fmt.Errorf("snapshot %s: %w", snap.ID, err)
	}
	// The snapshotter's own options first: the stack's verity= goes last.
	options := append(idmap, withoutOption(s.mountOptions, "index")...)
	options = append(options, stackOptions...)
	tooLong = tooLong || optionsTooLong(options)
	idmapped := len(idmap) > 0
	switch {
	case tooLong && idmapped:
		return nil, fmt.Errorf("snapshot %s: a composefs stack of %d layers is too long for one mount(2) and cannot be idmapped", snap.ID, len(snap.ParentIDs))
	case tooLong:
		return s.boundMounts(st)
	case snap.Kind == snapshots.KindActive && !idmapped && isUnpack(info):
		// containerd's applier would take implied directories'
		// attributes from the host's root (see bound.go).
		return s.boundMounts(st)
	}
	return []mount.Mount{{Type: "overlay", Source: "overlay", Options: options}}, nil
}

// overlay is st's composefs stack: its parents' directories over the
// object store (or, while a layer in the lazy composefs form among them
// has not settled, the object filesystem, which serves the store's
// objects and those yet to be fetched), and its own upper and work
// directories if it is active. It names verity=off, as the kernel's default: stacks that reach
// objects without fs-verity would fail every open with require.
func (s *Snapshotter) overlay(st stack) composefs.Overlay {
	snap := st.snap
	o := composefs.Overlay{
		Layers:  make([]string, len(snap.ParentIDs)),
		Objects: s.composefs.Objects(),
		Verity:  composefs.VerityOff,
	}
	if !s.settled(st.lazy) && s.lazy != nil { // else Restore marked them broken
		o.Objects = s.lazy.ObjectsDir()
	}
	for i, id := range snap.ParentIDs {
		o.Layers[i] = s.upperPath(id)
	}
	if snap.Kind == snapshots.KindActive {
		o.Upper, o.Work = s.upperPath(snap.ID), s.workPath(snap.ID)
	}
	return o
}

// withoutOption is options without those named key (key or key=…).
func withoutOption(options []string, key string) []string {
	var kept []string
	for _, o := range options {
		if k, _, _ := strings.Cut(o, "="); k != key {
			kept = append(kept, o)
		}
	}
	return kept
}

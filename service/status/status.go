// Package status reads what `lazypull status` shows of a running
// lazypull-snapshotter: its snapshots, through its socket, and the
// composefs object store under its root. It runs in the CLI, so it must
// not import the daemon (package service): the daemon's Kubernetes and
// CRI dependencies would add some 20 ms to the start of every lazypull
// command, `lazypull pull` included.
package status

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"

	snapshotsapi "github.com/containerd/containerd/api/services/snapshots/v1"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/core/snapshots/proxy"
	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	"github.com/sirupsen/logrus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/lazypull/lazypull/composefs"
	"github.com/lazypull/lazypull/composefs/objects"
	"github.com/lazypull/lazypull/snapshot"
)

// ComposefsStatus is what `lazypull status` says of the composefs mode:
// which snapshots are in the composefs form, and the object store they
// share.
type ComposefsStatus struct {
	// Snapshots are every snapshot the daemon has, by name.
	Snapshots []SnapshotStatus
	// Store is the object store's usage; nil when the root has none (the
	// mode was never turned on).
	Store *StoreStatus `json:",omitempty"`
	// Settled counts the lazy composefs layers whose objects are all in
	// the store (no FUSE in their containers' path any more).
	Settled int
}

// SnapshotStatus is one snapshot of the daemon.
type SnapshotStatus struct {
	Name   string
	Kind   string // Active, View, Committed (containerd's words)
	Parent string `json:",omitempty"`
	// Composefs is the snapshot's snapshot.LabelComposefs: "verity" or
	// "no-verity" for a layer in the composefs form, "" for a plain one.
	Composefs string `json:",omitempty"`
	// Lazy: in the lazy composefs form (snapshot.LabelLazy), its data
	// fetched on demand through the object filesystem until it settles.
	Lazy bool `json:",omitempty"`
}

// StoreStatus is the object store's usage and fs-verity.
type StoreStatus struct {
	Dir     string
	Objects int64
	Bytes   int64 // of content
	Disk    int64 // allocated on disk
	// Verity says whether the store's filesystem gives objects fs-verity
	// (objects.VerityStatus's words).
	Verity string
}

// The daemon's default socket and root (the service package's defaults),
// here for the commands that read them without the daemon.
const (
	DefaultAddress = "/run/lazypull/lazypull.sock"
	DefaultRoot    = "/var/lib/lazypull"
)

// StoreDir is where the daemon rooted at root keeps the composefs object
// store.
func StoreDir(root string) string { return filepath.Join(root, "composefs") }

// Composefs asks the daemon serving containerd's snapshots API on address
// for its snapshots, and reads the object store under root. The metadata
// is the daemon's (its bbolt file is locked while it runs); the object
// store may be opened by several processes.
func Composefs(ctx context.Context, root, address string) (ComposefsStatus, error) {
	var st ComposefsStatus
	conn, err := grpc.NewClient("unix://"+address, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return st, fmt.Errorf("connect to lazypull-snapshotter at %s: %w", address, err)
	}
	defer conn.Close()
	sn := proxy.NewSnapshotter(snapshotsapi.NewSnapshotsClient(conn), "lazypull")
	// A root that never had a snapshot has no bucket for them, and the
	// snapshots API answers a List with an error of unknown kind (not
	// NotFound over gRPC): look before asking.
	if names, _ := os.ReadDir(filepath.Join(root, "snapshots")); len(names) > 0 {
		if st.Snapshots, err = SnapshotsOf(ctx, sn); err != nil {
			return st, fmt.Errorf("snapshots of lazypull-snapshotter at %s: %w", address, err)
		}
	}
	settled, _ := filepath.Glob(composefs.SettledMarker(filepath.Join(root, "snapshots", "*", "layer.erofs")))
	st.Settled = len(settled)
	st.Store, err = storeStatus(ctx, StoreDir(root))
	return st, err
}

// SnapshotsOf lists sn's snapshots, by name, with their composefs form.
func SnapshotsOf(ctx context.Context, sn snapshots.Snapshotter) ([]SnapshotStatus, error) {
	var list []SnapshotStatus
	err := sn.Walk(ctx, func(_ context.Context, info snapshots.Info) error {
		list = append(list, SnapshotStatus{
			Name:      info.Name,
			Kind:      info.Kind.String(),
			Parent:    info.Parent,
			Composefs: info.Labels[snapshot.LabelComposefs],
			Lazy:      info.Labels[snapshot.LabelLazy] != "",
		})
		return nil
	})
	if errdefs.IsNotFound(err) {
		return nil, nil // a fresh root: no snapshots yet
	}
	if err != nil {
		return nil, err
	}
	sort.Slice(list, func(i, j int) bool { return list[i].Name < list[j].Name })
	return list, nil
}

// storeStatus reads the object store in dir, or returns nil if there is
// none: opening it would make one.
func storeStatus(ctx context.Context, dir string) (*StoreStatus, error) {
	if _, err := os.Stat(dir); errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	// Open says in the log when the filesystem has no fs-verity: the
	// status says it anyway.
	quiet := logrus.New()
	quiet.SetLevel(logrus.ErrorLevel)
	ctx = log.WithLogger(ctx, logrus.NewEntry(quiet))
	store, err := objects.Open(ctx, dir)
	if err != nil {
		return nil, fmt.Errorf("composefs object store %s: %w", dir, err)
	}
	defer store.Close()
	u, err := store.Usage(ctx)
	if err != nil {
		return nil, fmt.Errorf("composefs object store %s: %w", dir, err)
	}
	return &StoreStatus{Dir: dir, Objects: u.Objects, Bytes: u.Size, Disk: u.Disk, Verity: store.Verity().String()}, nil
}

// Summary is one line on the composefs mode: how many snapshots are in its
// form (and with fs-verity), and the object store's usage and fs-verity.
func (st ComposefsStatus) Summary(bytes func(int64) string) string {
	var n, verity, lazy int
	for _, s := range st.Snapshots {
		if s.Composefs != "" {
			n++
		}
		if s.Composefs == "verity" {
			verity++
		}
		if s.Lazy {
			lazy++
		}
	}
	var b strings.Builder
	fmt.Fprintf(&b, "composefs: %d of %d snapshots in the composefs form (%d with fs-verity", n, len(st.Snapshots), verity)
	if lazy > 0 {
		// Lazy layers' metacopy xattrs name no digest: verity=off.
		fmt.Fprintf(&b, "; %d lazy, without fs-verity, %d of them settled", lazy, st.Settled)
	}
	b.WriteString(")")
	if st.Store == nil {
		b.WriteString("; no object store (the mode was never on)")
		return b.String()
	}
	fmt.Fprintf(&b, "; object store %s: %d objects, %s (%s on disk), fs-verity %s",
		st.Store.Dir, st.Store.Objects, bytes(st.Store.Bytes), bytes(st.Store.Disk), st.Store.Verity)
	return b.String()
}

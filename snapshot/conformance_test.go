package snapshot

import (
	"context"
	"errors"
	"flag"
	"os"
	"path/filepath"
	"testing"

	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/core/snapshots/testsuite"

	"github.com/lazypull/lazypull/composefs"
	"github.com/lazypull/lazypull/internal/testenv"
)

func TestMain(m *testing.M) {
	flag.Parse()
	// containerd's suite skips unless -test.root is given; as root, it runs.
	if os.Geteuid() == 0 {
		flag.Set("test.root", "true")
	}
	os.Exit(m.Run())
}

// TestConformance runs containerd's own snapshotter suite against ours.
func TestConformance(t *testing.T) {
	testenv.NeedRoot(t)
	for _, tc := range []struct {
		name      string
		opts      []Opt
		composefs bool
	}{
		{"SyncRemove", nil, false},
		{"AsyncRemove", []Opt{WithAsyncRemove}, false},
		{"Composefs", nil, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// The suite's name picks the expected behaviour: ours is overlayfs's
			// (no directory renames across layers without redirect_dir).
			testsuite.SnapshotterSuite(t, "overlayfs", func(ctx context.Context, root string) (snapshots.Snapshotter, func() error, error) {
				opts := tc.opts
				var layers *composefs.Layers
				if tc.composefs {
					var err error
					if layers, err = composefs.OpenLayers(ctx, filepath.Join(root, "composefs")); err != nil {
						return nil, nil, err
					}
					opts = append(opts, WithComposefs(layers))
				}
				s, err := New(root, opts...)
				if err != nil {
					return nil, nil, err
				}
				return s, func() error {
					err := s.Close()
					if layers != nil {
						// The layers' images stay mounted past Close,
						// as they do past a daemon's exit.
						err = errors.Join(err, testenv.UnmountAll(testenv.MountsUnder(root)), layers.Close())
					}
					return err
				}, nil
			})
		})
	}
}

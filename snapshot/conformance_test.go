package snapshot

import (
	"context"
	"flag"
	"os"
	"testing"

	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/core/snapshots/testsuite"

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
		name string
		opts []Opt
	}{
		{"SyncRemove", nil},
		{"AsyncRemove", []Opt{WithAsyncRemove}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// The suite's name picks the expected behaviour: ours is overlayfs's
			// (no directory renames across layers without redirect_dir).
			testsuite.SnapshotterSuite(t, "overlayfs", func(ctx context.Context, root string) (snapshots.Snapshotter, func() error, error) {
				s, err := New(root, tc.opts...)
				if err != nil {
					return nil, nil, err
				}
				return s, s.Close, nil
			})
		})
	}
}

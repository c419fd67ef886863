package snapshot

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/containerd/v2/plugins/snapshots/overlay"
)

// BenchmarkVsOverlay times each snapshot operation on our snapshotter and on
// containerd's overlay snapshotter in the same run, interleaved so that both
// see the same machine state, and reports the ratio (ours / containerd's).
//
//	go test ./snapshot -run '^$' -bench VsOverlay
func BenchmarkVsOverlay(b *testing.B) {
	ctx := namespaces.WithNamespace(context.Background(), "bench")
	ours, err := New(b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	defer ours.Close()
	theirs, err := overlay.NewSnapshotter(b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	defer theirs.Close()
	for _, sn := range []snapshots.Snapshotter{ours, theirs} {
		if _, err := sn.Prepare(ctx, "base-active", ""); err != nil {
			b.Fatal(err)
		}
		if err := sn.Commit(ctx, "base", "base-active"); err != nil {
			b.Fatal(err)
		}
	}

	for _, op := range []string{"Prepare", "Mounts", "Commit", "Remove"} {
		b.Run(op, func(b *testing.B) {
			var elapsed [2]time.Duration
			for i := 0; b.Loop(); i++ {
				for n := range 2 {
					// Alternate who goes first, so neither always meets a warm cache.
					which := (i + n) % 2
					sn := []snapshots.Snapshotter{ours, theirs}[which]
					d, err := lifecycle(ctx, sn, fmt.Sprint(i), op)
					if err != nil {
						b.Fatal(err)
					}
					elapsed[which] += d
				}
			}
			n := float64(b.N)
			b.ReportMetric(float64(elapsed[0].Nanoseconds())/n, "lazypull-ns/op")
			b.ReportMetric(float64(elapsed[1].Nanoseconds())/n, "overlay-ns/op")
			b.ReportMetric(float64(elapsed[0])/float64(elapsed[1]), "lazypull/overlay")
		})
	}
}

// lifecycle runs Prepare, Mounts, Commit and Remove on one layer and returns
// how long the operation op took.
func lifecycle(ctx context.Context, sn snapshots.Snapshotter, suffix, op string) (time.Duration, error) {
	var took time.Duration
	timed := func(name string, fn func() error) error {
		start := time.Now()
		err := fn()
		if name == op {
			took = time.Since(start)
		}
		return err
	}
	key, name := "active-"+suffix, "layer-"+suffix
	err := timed("Prepare", func() error { _, err := sn.Prepare(ctx, key, "base"); return err })
	if err == nil {
		err = timed("Mounts", func() error { _, err := sn.Mounts(ctx, key); return err })
	}
	if err == nil {
		err = timed("Commit", func() error { return sn.Commit(ctx, name, key) })
	}
	if err == nil {
		err = timed("Remove", func() error { return sn.Remove(ctx, name) })
	}
	return took, err
}

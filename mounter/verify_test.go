package mounter

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containerd/errdefs"

	"github.com/lazypull/lazypull/labels"

	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/opencontainers/image-spec/identity"

	"github.com/lazypull/lazypull/cache"
	"github.com/lazypull/lazypull/internal/testenv"
	"github.com/lazypull/lazypull/layer"
)

// TestMountChecksTheLayerAgainstItsImage: a layer is mounted only under
// the chain ID its image's diff_ids make, and once fetched it is verified
// against its diff_id.
func TestMountChecksTheLayerAgainstItsImage(t *testing.T) {
	testenv.NeedFUSE(t)
	ctx := context.Background()
	dir := t.TempDir()
	reg := testenv.NewRegistry(t)
	layout, err := testenv.HelloLayout(dir)
	if err != nil {
		t.Fatal(err)
	}
	ref := reg.Host + "/hello:esgz"
	layers, diffIDs := convertTo(t, layout, ref)
	c, err := cache.New(filepath.Join(dir, "cache"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	m := New(c, Options{Layer: layer.Options{SpoolDir: filepath.Join(dir, "verify")}})
	defer m.Close()
	mp := filepath.Join(dir, "mnt")
	os.Mkdir(mp, 0o755)

	labels := labels.ForLayer(ref, "", layers[0], layers)
	labels[snapshots.LabelSnapshotRef] = identity.ChainID(diffIDs[1:2]).String() // not the first layer's chain
	err = m.Mount(ctx, mp, labels)
	if err == nil || !strings.Contains(err.Error(), "chain") {
		t.Fatalf("mount under another chain ID: err = %v, want a refusal naming the chain", err)
	}

	labels[snapshots.LabelSnapshotRef] = identity.ChainID(diffIDs[:1]).String()

	// One image's layers together are bounded: past the bound a layer
	// is declined (and unpacked).
	small := New(c, Options{MaxImageEntries: 1, NoBackground: true})
	defer small.Close()
	if err := small.Mount(ctx, mp, labels); !errors.Is(err, errNotLazy) || !strings.Contains(err.Error(), "max_image_entries") {
		t.Errorf("a layer over the image's entry bound: err = %v, want a decline naming max_image_entries", err)
	}

	if err := m.Mount(ctx, mp, labels); err != nil {
		t.Fatal(err)
	}
	defer m.Unmount(ctx, mp)
	if u, err := m.Usage(ctx, mp); err != nil || u.Inodes == 0 {
		t.Errorf("usage of a mounted layer: %+v, %v", u, err)
	}
	if _, err := m.Usage(ctx, filepath.Join(dir, "elsewhere")); !errdefs.IsNotFound(err) {
		t.Errorf("usage of a mountpoint not served: err = %v, want not found", err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for m.Layers()[mp].Verification != layer.Verified {
		if time.Now().After(deadline) {
			t.Fatalf("layer not verified: %+v", m.Layers()[mp])
		}
		time.Sleep(20 * time.Millisecond)
	}
}

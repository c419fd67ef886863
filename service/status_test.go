package service

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/pkg/namespaces"

	"github.com/lazypull/lazypull/internal/testenv"
	"github.com/lazypull/lazypull/service/status"
)

// TestComposefsStatus: the status of a daemon in the composefs mode names
// the layer it converted (and not the container's snapshot on top), and
// counts the object store's distinct contents once each.
func TestComposefsStatus(t *testing.T) {
	testenv.NeedRoot(t)
	cfg := testConfig(t)
	cfg.Composefs.Enable = true
	// Runs after the daemon stops: the layers' images stay mounted past
	// its exit.
	t.Cleanup(func() {
		if err := testenv.UnmountAll(testenv.MountsUnder(cfg.Root)); err != nil {
			t.Error(err)
		}
	})
	startDaemon(t, cfg)
	sn := dial(t, cfg.Address)
	ctx := namespaces.WithNamespace(context.Background(), "test")

	big, other := strings.Repeat("a", 10000), strings.Repeat("b", 3000) // beyond composefs.InlineMax: objects
	ms, err := sn.Prepare(ctx, "unpack", "", snapshots.WithLabels(map[string]string{snapshots.LabelSnapshotRef: "layer"}))
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := mount.All(ms, dir); err != nil {
		t.Fatal(err)
	}
	for p, data := range map[string]string{"big": big, "again/big": big, "other": other, "small": "inline\n"} {
		os.MkdirAll(filepath.Dir(filepath.Join(dir, p)), 0o755)
		if err := os.WriteFile(filepath.Join(dir, p), []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := mount.UnmountAll(dir, 0); err != nil {
		t.Fatal(err)
	}
	if err := sn.Commit(ctx, "layer", "unpack"); err != nil {
		t.Fatal(err)
	}
	if _, err := sn.Prepare(ctx, "container", "layer"); err != nil {
		t.Fatal(err)
	}

	st, err := status.Composefs(context.Background(), cfg.Root, cfg.Address)
	if err != nil {
		t.Fatal(err)
	}
	if st.Store == nil {
		t.Fatalf("no object store in the status: %+v", st)
	}
	wantLayer := "no-verity"
	if st.Store.Verity == "enabled" {
		wantLayer = "verity"
	}
	forms := map[string]string{}
	for _, s := range st.Snapshots {
		forms[s.Name] = s.Kind + " " + s.Composefs
	}
	if len(forms) != 2 || forms["layer"] != "Committed "+wantLayer || forms["container"] != "Active " {
		t.Errorf("snapshots: %+v; want layer committed in the composefs form (%s) and container active and plain", st.Snapshots, wantLayer)
	}
	if st.Store.Objects != 2 || st.Store.Bytes != int64(len(big)+len(other)) {
		t.Errorf("object store: %d objects, %d bytes; want 2 objects, %d bytes (the same content once)", st.Store.Objects, st.Store.Bytes, len(big)+len(other))
	}
	if st.Store.Disk < st.Store.Bytes {
		t.Errorf("object store: %d bytes on disk for %d of content", st.Store.Disk, st.Store.Bytes)
	}
	sum := st.Summary(func(n int64) string { return strconv.FormatInt(n, 10) })
	for _, want := range []string{"1 of 2 snapshots in the composefs form", "2 objects, 13000", "fs-verity " + st.Store.Verity} {
		if !strings.Contains(sum, want) {
			t.Errorf("summary %q does not say %q", sum, want)
		}
	}
}

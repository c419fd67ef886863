package snapshot

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"

	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/errdefs"
	"golang.org/x/sys/unix"

	"github.com/lazypull/lazypull/internal/testenv"
)

func newTestSnapshotter(t *testing.T, opts ...Opt) (*Snapshotter, context.Context) {
	t.Helper()
	return newTestSnapshotterAt(t, t.TempDir(), opts...)
}

func newTestSnapshotterAt(t *testing.T, root string, opts ...Opt) (*Snapshotter, context.Context) {
	t.Helper()
	s, err := New(root, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s, namespaces.WithNamespace(context.Background(), "test")
}

// commitLayer prepares a snapshot on parent, writes one file into it and
// commits it as name.
func commitLayer(t *testing.T, ctx context.Context, s *Snapshotter, name, parent, file string) {
	t.Helper()
	key := "active-" + name
	if _, err := s.Prepare(ctx, key, parent); err != nil {
		t.Fatal(err)
	}
	id, _, _, err := s.idOf(ctx, key)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(s.upperPath(id), file), []byte(name), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := s.Commit(ctx, name, key); err != nil {
		t.Fatal(err)
	}
}

func TestMountShapes(t *testing.T) {
	s, ctx := newTestSnapshotter(t)
	commitLayer(t, ctx, s, "base", "", "a")
	commitLayer(t, ctx, s, "top", "base", "b")

	check := func(what string, mounts []mount.Mount, err error, wantType string, wantOpts ...string) {
		t.Helper()
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		if len(mounts) != 1 || mounts[0].Type != wantType {
			t.Fatalf("%s: got mounts %+v, want one %s mount", what, mounts, wantType)
		}
		for _, o := range wantOpts {
			if !slices.Contains(mounts[0].Options, o) {
				t.Errorf("%s: options %v lack %q", what, mounts[0].Options, o)
			}
		}
	}
	m, err := s.Prepare(ctx, "no-parent", "")
	check("active without parent", m, err, "bind", "rw", "rbind")
	m, err = s.View(ctx, "view-no-parent", "")
	check("view without parent", m, err, "bind", "ro", "rbind")
	m, err = s.View(ctx, "view-one-parent", "base")
	check("view of one parent", m, err, "bind", "ro", "rbind")
	if !strings.HasSuffix(m[0].Source, "/fs") {
		t.Errorf("view of one parent: source %q is not the parent's fs directory", m[0].Source)
	}
	m, err = s.View(ctx, "view-two-parents", "top")
	check("view of two parents", m, err, "overlay")
	if slices.ContainsFunc(m[0].Options, func(o string) bool { return strings.HasPrefix(o, "upperdir=") }) {
		t.Errorf("a view has an upperdir: %v", m[0].Options)
	}
	m, err = s.Prepare(ctx, "container", "top")
	check("active on two parents", m, err, "overlay")
	var lower string
	for _, o := range m[0].Options {
		if v, ok := strings.CutPrefix(o, "lowerdir="); ok {
			lower = v
		}
	}
	topID, _, _, _ := s.idOf(ctx, "top")
	baseID, _, _, _ := s.idOf(ctx, "base")
	if want := s.upperPath(topID) + ":" + s.upperPath(baseID); lower != want {
		t.Errorf("lowerdir = %q, want %q (topmost first)", lower, want)
	}
	if kernelHasOverlayIndex() && !slices.Contains(m[0].Options, "index=off") {
		t.Errorf("overlay options %v lack index=off", m[0].Options)
	}
	again, err := s.Mounts(ctx, "container")
	if err != nil || !slices.Equal(again[0].Options, m[0].Options) {
		t.Errorf("Mounts = %v, %v; want what Prepare returned, %v", again, err, m)
	}
}

func TestConfiguredIndexOptionKept(t *testing.T) {
	s, ctx := newTestSnapshotter(t, WithMountOptions("index=on"))
	commitLayer(t, ctx, s, "base", "", "a")
	m, err := s.Prepare(ctx, "c", "base")
	if err != nil {
		t.Fatal(err)
	}
	if slices.Contains(m[0].Options, "index=off") {
		t.Errorf("configured index=on was overridden: %v", m[0].Options)
	}
}

func TestUpperdirLabel(t *testing.T) {
	s, ctx := newTestSnapshotter(t, WithUpperdirLabel)
	commitLayer(t, ctx, s, "base", "", "a")
	info, err := s.Stat(ctx, "base")
	if err != nil {
		t.Fatal(err)
	}
	dir := info.Labels[LabelUpperdir]
	if _, err := os.Stat(filepath.Join(dir, "a")); err != nil {
		t.Errorf("label %s = %q does not hold the layer's files: %v", LabelUpperdir, dir, err)
	}
	var walked int
	s.Walk(ctx, func(_ context.Context, info snapshots.Info) error {
		if info.Labels[LabelUpperdir] == dir {
			walked++
		}
		return nil
	})
	if walked != 1 {
		t.Errorf("Walk showed the upperdir label %d times, want 1", walked)
	}
}

func TestIDMapping(t *testing.T) {
	testenv.NeedRoot(t)
	s, ctx := newTestSnapshotter(t, WithRemapIDs)
	labels := map[string]string{
		snapshots.LabelSnapshotUIDMapping: "0:100000:65536",
		snapshots.LabelSnapshotGIDMapping: "0:200000:65536",
	}
	m, err := s.Prepare(ctx, "mapped", "", snapshots.WithLabels(labels))
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(m[0].Source)
	if err != nil {
		t.Fatal(err)
	}
	st := fi.Sys().(*syscall.Stat_t)
	if st.Uid != 100000 || st.Gid != 200000 {
		t.Errorf("root of mapped snapshot owned by %d:%d, want 100000:200000", st.Uid, st.Gid)
	}
	for _, want := range []string{"uidmap=0:100000:65536", "gidmap=0:200000:65536"} {
		if !slices.Contains(m[0].Options, want) {
			t.Errorf("options %v lack %s", m[0].Options, want)
		}
	}

	_, err = s.Prepare(ctx, "bad", "", snapshots.WithLabels(map[string]string{snapshots.LabelSnapshotUIDMapping: "1:2"}))
	if err == nil || !strings.Contains(err.Error(), snapshots.LabelSnapshotUIDMapping) {
		t.Errorf("bad uid mapping: err = %v, want one naming the label", err)
	}
}

func TestHostRootID(t *testing.T) {
	for label, want := range map[string]int{
		"0:1000:1":              1000,
		"1:5000:10,0:7000:1":    7000,
		"0:4294967295:1":        4294967295,
		"":                      -1,
		"1:1000:5":              -1,
		"0:x:1":                 -1,
		"0:1000:0":              -1,
		"0:1000":                -1,
		"0:1000:1:2":            -1,
		"0:99999999999999999:1": -1,
	} {
		got, err := hostRootID(label)
		if got != want || (want == -1) != (err != nil) {
			t.Errorf("hostRootID(%q) = %d, %v; want %d", label, got, err, want)
		}
	}
}

// bindRemote "mounts" a layer by bind-mounting a prepared directory: a real
// mount, so that the snapshotter's unmount and cleanup paths are exercised.
type bindRemote struct {
	source    string
	fail      error
	mu        sync.Mutex
	unmounted []string
}

func (r *bindRemote) Mount(ctx context.Context, mountpoint string, labels map[string]string) error {
	if r.fail != nil {
		return r.fail
	}
	return unix.Mount(r.source, mountpoint, "", unix.MS_BIND|unix.MS_RDONLY, "")
}

func (r *bindRemote) Unmount(ctx context.Context, mountpoint string) error {
	r.mu.Lock()
	r.unmounted = append(r.unmounted, mountpoint)
	r.mu.Unlock()
	return nil
}

// checkingRemote is a bindRemote that has refused the layers at some
// mountpoints (a lazily fetched layer found not to be its image's).
type checkingRemote struct {
	bindRemote
	rejected map[string]bool
}

// Usage reports what the layer "takes in the cache".
func (r *checkingRemote) Usage(ctx context.Context, mountpoint string) (snapshots.Usage, error) {
	return snapshots.Usage{Size: 4242, Inodes: 7}, nil
}

func (r *checkingRemote) Check(ctx context.Context, mountpoints []string) error {
	for _, mp := range mountpoints {
		if r.rejected[mp] {
			return fmt.Errorf("layer at %s is not its image's", mp)
		}
	}
	return nil
}

func TestRejectedRemoteLayerRefusesContainers(t *testing.T) {
	testenv.NeedRoot(t)
	remote := &checkingRemote{bindRemote: bindRemote{source: t.TempDir()}, rejected: map[string]bool{}}
	s, ctx := newTestSnapshotter(t, WithRemote(remote))
	unpack := func(chain string) snapshots.Opt {
		return snapshots.WithLabels(map[string]string{snapshots.LabelSnapshotRef: chain})
	}
	if _, err := s.Prepare(ctx, "extract-1", "", unpack("chain-1")); !errdefs.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	if _, err := s.Prepare(ctx, "extract-2", "chain-1", unpack("chain-2")); !errdefs.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	for _, chain := range []string{"chain-1", "chain-2"} {
		id, _, _, err := s.idOf(ctx, chain)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { unix.Unmount(s.upperPath(id), unix.MNT_DETACH) })
	}
	if _, err := s.Prepare(ctx, "before", "chain-2"); err != nil {
		t.Fatalf("a container before the rejection: %v", err)
	}
	// A remote snapshot's usage is what the Remote says it takes.
	if u, err := s.Usage(ctx, "chain-1"); err != nil || u != (snapshots.Usage{Size: 4242, Inodes: 7}) {
		t.Errorf("Usage of a remote snapshot = %+v, %v; want the Remote's", u, err)
	}

	// The lower layer is found wrong after the fact.
	id, _, _, err := s.idOf(ctx, "chain-1")
	if err != nil {
		t.Fatal(err)
	}
	remote.rejected[s.upperPath(id)] = true
	for what, err := range map[string]error{
		"Prepare": func() error { _, err := s.Prepare(ctx, "after", "chain-2"); return err }(),
		"View":    func() error { _, err := s.View(ctx, "view", "chain-2"); return err }(),
		"Mounts":  func() error { _, err := s.Mounts(ctx, "before"); return err }(),
	} {
		if err == nil || !strings.Contains(err.Error(), "is not its image's") || !strings.Contains(err.Error(), "pull them again") {
			t.Errorf("%s on a rejected layer: err = %v, want the reason and what to do", what, err)
		}
	}
	if _, err := s.Stat(ctx, "after"); !errdefs.IsNotFound(err) {
		t.Errorf("a refused Prepare left its snapshot: %v", err)
	}
}

func TestRemoteLayer(t *testing.T) {
	testenv.NeedRoot(t)
	layer := t.TempDir()
	if err := os.WriteFile(filepath.Join(layer, "remote-file"), []byte("from elsewhere"), 0o644); err != nil {
		t.Fatal(err)
	}
	remote := &bindRemote{source: layer}
	s, ctx := newTestSnapshotter(t, WithRemote(remote))
	unpack := snapshots.WithLabels(map[string]string{snapshots.LabelSnapshotRef: "chain-1"})

	_, err := s.Prepare(ctx, "extract-1", "", unpack)
	if !errdefs.IsAlreadyExists(err) {
		t.Fatalf("Prepare of a remote layer: err = %v, want ErrAlreadyExists", err)
	}
	info, err := s.Stat(ctx, "chain-1")
	if err != nil || info.Kind != snapshots.KindCommitted || info.Labels[LabelRemote] == "" {
		t.Fatalf("Stat(chain-1) = %+v, %v; want a committed snapshot labelled %s", info, err, LabelRemote)
	}
	if _, err := s.Stat(ctx, "extract-1"); !errdefs.IsNotFound(err) {
		t.Errorf("the extraction key survived the remote commit: %v", err)
	}
	// A second unpack of the same layer finds it there.
	if _, err := s.Prepare(ctx, "extract-2", "", unpack); !errdefs.IsAlreadyExists(err) {
		t.Errorf("second Prepare of the same layer: err = %v, want ErrAlreadyExists", err)
	}

	// A container on top sees the remote files through overlayfs.
	m, err := s.Prepare(ctx, "container", "chain-1")
	if err != nil {
		t.Fatal(err)
	}
	target := t.TempDir()
	if err := mount.All(m, target); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(filepath.Join(target, "remote-file"))
	if uerr := mount.UnmountAll(target, 0); uerr != nil {
		t.Error(uerr)
	}
	if err != nil || string(got) != "from elsewhere" {
		t.Errorf("reading a remote file in the container: %q, %v", got, err)
	}

	id, _, _, _ := s.idOf(ctx, "chain-1")
	fsDir := s.upperPath(id)
	if err := s.Remove(ctx, "container"); err != nil {
		t.Fatal(err)
	}
	if err := s.Remove(ctx, "chain-1"); err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(remote.unmounted, fsDir) {
		t.Errorf("Remove did not ask the remote to unmount %s (asked: %v)", fsDir, remote.unmounted)
	}
	if _, err := os.Stat(fsDir); !os.IsNotExist(err) {
		t.Errorf("remote snapshot directory %s left behind: %v", fsDir, err)
	}
	if _, err := os.Stat(filepath.Join(layer, "remote-file")); err != nil {
		t.Errorf("removing the snapshot reached into the remote layer's source: %v", err)
	}
}

func TestRemoteFailureFallsBackToUnpack(t *testing.T) {
	remote := &bindRemote{fail: errors.New("not a lazy layer")}
	s, ctx := newTestSnapshotter(t, WithRemote(remote))
	m, err := s.Prepare(ctx, "extract", "", snapshots.WithLabels(map[string]string{snapshots.LabelSnapshotRef: "chain"}))
	if err != nil {
		t.Fatalf("Prepare when the remote declines: %v, want ordinary mounts", err)
	}
	if len(m) != 1 || m[0].Type != "bind" {
		t.Errorf("mounts = %+v, want the ordinary bind mount", m)
	}
	if err := s.Commit(ctx, "chain", "extract"); err != nil {
		t.Fatal(err)
	}
	info, _ := s.Stat(ctx, "chain")
	if _, ok := info.Labels[LabelRemote]; ok {
		t.Errorf("an unpacked layer is labelled remote: %v", info.Labels)
	}
	if why := info.Labels[LabelUnpacked]; why != "not a lazy layer" {
		t.Errorf("label %s = %q, want the remote's reason", LabelUnpacked, why)
	}
}

func TestCleanupRemovesOrphans(t *testing.T) {
	s, ctx := newTestSnapshotter(t, WithAsyncRemove)
	commitLayer(t, ctx, s, "base", "", "a")
	id, _, _, _ := s.idOf(ctx, "base")
	if err := s.Remove(ctx, "base"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(s.upperPath(id)); err != nil {
		t.Fatalf("asynchronous Remove deleted the directory already: %v", err)
	}
	if err := s.Cleanup(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(s.snapshotsDir(), id)); !os.IsNotExist(err) {
		t.Errorf("Cleanup left %s: %v", id, err)
	}
}

func TestRestoreRemountsRemoteSnapshots(t *testing.T) {
	testenv.NeedRoot(t)
	layerDir := t.TempDir()
	os.WriteFile(filepath.Join(layerDir, "f"), []byte("remote"), 0o644)
	root := t.TempDir()
	ctx := namespaces.WithNamespace(context.Background(), "test")
	unpack := snapshots.WithLabels(map[string]string{snapshots.LabelSnapshotRef: "chain"})

	s, err := New(root, WithRemote(&bindRemote{source: layerDir}))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Prepare(ctx, "extract", "", unpack); !errdefs.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	id, _, _, _ := s.idOf(ctx, "chain")
	fsDir := s.upperPath(id)
	s.Close()
	unix.Unmount(fsDir, unix.MNT_DETACH) // the daemon died and its mount with it

	// A restart that can mount it again.
	s, err = New(root, WithRemote(&bindRemote{source: layerDir}))
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Restore(ctx); err != nil {
		t.Fatal(err)
	}
	if got, err := os.ReadFile(filepath.Join(fsDir, "f")); err != nil || string(got) != "remote" {
		t.Errorf("after Restore: %q, %v", got, err)
	}
	s.Close()
	unix.Unmount(fsDir, unix.MNT_DETACH)

	// A restart that cannot: the snapshot is reported, and nothing stacks on it.
	flaky := &bindRemote{source: layerDir, fail: errors.New("registry unreachable")}
	s, err = New(root, WithRemote(flaky))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if err := s.Restore(ctx); err == nil || !strings.Contains(err.Error(), "chain") || !strings.Contains(err.Error(), "registry unreachable") {
		t.Errorf("Restore with the registry gone: err = %v, want one naming the snapshot and the reason", err)
	}
	if _, err := s.Prepare(ctx, "container", "chain"); err == nil || !strings.Contains(err.Error(), "registry unreachable") {
		t.Errorf("Prepare on a broken remote snapshot: err = %v", err)
	}

	// The registry back, a later Restore (the FUSE manager restarted)
	// mounts it again, and it is no longer broken.
	flaky.fail = nil
	if err := s.Restore(ctx); err != nil {
		t.Fatal(err)
	}
	defer unix.Unmount(fsDir, unix.MNT_DETACH)
	if _, err := s.Prepare(ctx, "container", "chain"); err != nil {
		t.Errorf("Prepare after a successful Restore: %v", err)
	}
}

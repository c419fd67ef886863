package composefs

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	snapshotsapi "github.com/containerd/containerd/api/services/snapshots/v1"
	"github.com/containerd/containerd/v2/contrib/snapshotservice"
	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/plugins/snapshots/native"
	"google.golang.org/grpc"

	"github.com/lazypull/lazypull/internal/testenv"
)

// stubSnapshotter is containerd's native snapshotter, except that views
// and the mounts of the snapshot "top" are the composefs stacks a test
// sets: a proxy snapshotter handing a real containerd composefs mounts.
type stubSnapshotter struct {
	snapshots.Snapshotter
	mu          sync.Mutex
	view, upper []mount.Mount
}

func (s *stubSnapshotter) set(view, upper []mount.Mount) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.view, s.upper = view, upper
}

func (s *stubSnapshotter) View(ctx context.Context, key, parent string, opts ...snapshots.Opt) ([]mount.Mount, error) {
	if _, err := s.Snapshotter.View(ctx, key, parent, opts...); err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.view, nil
}

func (s *stubSnapshotter) Mounts(ctx context.Context, key string) ([]mount.Mount, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	// containerd names the backend's snapshots namespace/N/key.
	if strings.HasSuffix(key, "/top") && s.upper != nil {
		return s.upper, nil
	}
	return s.Snapshotter.Mounts(ctx, key)
}

// TestContainerdDiffsComposefs has the real containerd releases (Debian's
// 1.6 and the 2.x one) mount composefs stacks, as they do for a
// container's rootfs (the shim's mount.All) and for a diff (`ctr snapshots
// diff`, commit: the daemon's walking differ mounts both sides read-only,
// turning the upper directory into one more lower layer in front of
// "meta2:meta1::objects"). The diff's tar has what was read through the
// redirects: the bytes of objects. Over a page of options the daemon
// refuses the mount; a bind mount of a MountAt stack goes through.
func TestContainerdDiffsComposefs(t *testing.T) {
	for _, release := range testenv.ContainerdReleases {
		t.Run("containerd-"+release.Name, func(t *testing.T) { testContainerdDiffsComposefs(t, release) })
	}
}

func testContainerdDiffsComposefs(t *testing.T, release testenv.ContainerdRelease) {
	{
		root := needMounts(t)
		testenv.Need(t, "containerd "+release.Name, release.Installed())
		// No file here lacks its object: the differ opens unchanged
		// files too (below), and would fail on it.
		lo, up := newTree(t), newTree(t)
		lo.file("a", objectA)
		lo.file("dir/x", objectB)
		up.file("b", objectB)
		lower, upper := lo.image(), up.image()
		objects := filepath.Join(root, "objects")
		writeObjects(t, objects, objectA, objectB)
		meta1, meta2 := mountImage(t, root, lower), mountImage(t, root, upper)
		view := Overlay{Layers: []string{meta1}, Objects: objects, Verity: VerityOff}
		top := Overlay{Layers: []string{meta2, meta1}, Objects: objects, Verity: VerityOff, Upper: filepath.Join(root, "upper"), Work: filepath.Join(root, "work")}
		for _, d := range []string{top.Upper, top.Work} {
			if err := os.Mkdir(d, 0o755); err != nil {
				t.Fatal(err)
			}
		}
		// The container's changes: a metadata-only copy-up and a new file.
		rootfs := mountOverlay(t, root, top)
		if err := os.Chmod(filepath.Join(rootfs, "a"), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(rootfs, "c"), []byte("new file\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := Unmount(rootfs); err != nil {
			t.Fatal(err)
		}

		ctr := startStubContainerd(t, release)
		sn := ctr.sn
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		for _, args := range [][]string{{"prepare", "base"}, {"commit", "base-c", "base"}, {"prepare", "top", "base-c"}} {
			if _, err := ctr.Ctr(ctx, append([]string{"snapshots", "--snapshotter", "lazypull"}, args...)...); err != nil {
				t.Fatal(err)
			}
		}
		diff := func() (string, error) {
			return ctr.Ctr(ctx, "snapshots", "--snapshotter", "lazypull", "diff", "--media-type", "application/vnd.oci.image.layer.v1.tar", "top")
		}
		wantDiff := map[string]string{"a": string(objectA), "b": string(objectB), "c": "new file\n"}

		mv, err := view.Mount()
		if err != nil {
			t.Fatal(err)
		}
		mt, err := top.Mount()
		if err != nil {
			t.Fatal(err)
		}
		sn.set([]mount.Mount{mv}, []mount.Mount{mt})
		out, err := diff()
		if err != nil {
			t.Fatalf("containerd %s diffing composefs stacks: %v", ctr.Version, err)
		}
		checkDiff(t, out, wantDiff)

		// containerd's differ (continuity's fs.Changes) compares the
		// content of files whose size and mtime agree when the mtimes
		// have no nanoseconds, as a tar layer's have: it reads unchanged
		// files whole, on both sides, and one whose object is missing
		// (or not fetched yet, lazily) is read too, failing the diff.
		mi := newTree(t)
		mi.file("missing", objectMissing)
		metaM := mountImage(t, root, mi.image())
		mvM, err := Overlay{Layers: []string{metaM}, Objects: objects, Verity: VerityOff}.Mount()
		if err != nil {
			t.Fatal(err)
		}
		sn.set([]mount.Mount{mvM}, []mount.Mount{mvM})
		_, err = diff()
		if err == nil || !strings.Contains(err.Error(), "missing: no such file or directory") {
			t.Errorf("containerd %s diffing stacks that do not differ, over a missing object: %v; want it to open the file and fail (ENOENT)", ctr.Version, err)
		}

		// Over a page: 120 layers of 64-byte paths.
		long := top
		long.Layers = append([]string{}, top.Layers...)
		for i := range 118 {
			d := filepath.Join(root, strings.Repeat("x", 40)+"-"+string(rune('a'+i/26))+string(rune('a'+i%26)))
			if err := os.Mkdir(d, 0o755); err != nil {
				t.Fatal(err)
			}
			long.Layers = append(long.Layers, d)
		}
		raw := mount.Mount{Type: "overlay", Source: "overlay", Options: append([]string{
			"lowerdir=" + strings.Join(long.Layers, ":") + "::" + objects, "upperdir=" + long.Upper, "workdir=" + long.Work},
			mt.Options[3:]...)}
		sn.set([]mount.Mount{mv}, []mount.Mount{raw})
		_, err = diff()
		t.Logf("containerd %s, %d-byte lowerdir: %v", ctr.Version, len(raw.Options[0]), err)
		if err == nil || !strings.Contains(err.Error(), "mount options is too long") {
			t.Errorf("containerd %s mounting a lowerdir of %d bytes with a data-only layer: %v; want \"mount options is too long\"", ctr.Version, len(raw.Options[0]), err)
		}

		// The way around: the snapshotter mounts the stack, containerd
		// binds it.
		stack := filepath.Join(root, "stack")
		if err := os.Mkdir(stack, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := long.MountAt(stack); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			if err := Unmount(stack); err != nil {
				t.Error(err)
			}
		})
		sn.set([]mount.Mount{mv}, []mount.Mount{{Type: "bind", Source: stack, Options: []string{"rbind", "rw"}}})
		out, err = diff()
		if err != nil {
			t.Fatalf("containerd %s diffing a bound MountAt stack: %v", ctr.Version, err)
		}
		checkDiff(t, out, wantDiff)
	}
}

type stubContainerd struct {
	*testenv.Containerd
	sn *stubSnapshotter
}

// startStubContainerd starts containerd release r with a stubSnapshotter
// as its proxy snapshotter "lazypull".
func startStubContainerd(t *testing.T, r testenv.ContainerdRelease) stubContainerd {
	t.Helper()
	dir := t.TempDir()
	native, err := native.NewSnapshotter(filepath.Join(dir, "native"))
	if err != nil {
		t.Fatal(err)
	}
	sn := &stubSnapshotter{Snapshotter: native}
	socket := filepath.Join(dir, "sn.sock")
	lis, err := net.Listen("unix", socket)
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	snapshotsapi.RegisterSnapshotsServer(srv, snapshotservice.FromSnapshotter(sn))
	go srv.Serve(lis)
	t.Cleanup(func() { srv.Stop(); native.Close() })
	c, err := testenv.StartContainerd(r, dir, socket, nil)
	testenv.Need(t, "containerd "+r.Name, err)
	t.Cleanup(func() {
		if err := c.Stop(); err != nil {
			t.Log(err)
		}
	})
	return stubContainerd{Containerd: c, sn: sn}
}

// checkDiff checks a layer tar holds exactly the regular files of want,
// with their bytes.
func checkDiff(t *testing.T, layer string, want map[string]string) {
	t.Helper()
	got := map[string]string{}
	tr := tar.NewReader(strings.NewReader(layer))
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("the diff is no tar: %v", err)
		}
		if h.Typeflag != tar.TypeReg {
			continue
		}
		var b bytes.Buffer
		if _, err := io.Copy(&b, tr); err != nil {
			t.Fatal(err)
		}
		got[h.Name] = b.String()
	}
	if len(got) != len(want) {
		t.Errorf("the diff has files %v, want %d", keys(got), len(want))
	}
	for name, data := range want {
		if got[name] != data {
			t.Errorf("the diff's %s: %d bytes (%.20q), want %d", name, len(got[name]), got[name], len(data))
		}
	}
}

func keys(m map[string]string) []string {
	var k []string
	for name := range m {
		k = append(k, name)
	}
	return k
}

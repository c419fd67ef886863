package e2e

import (
	"context"
	"crypto/sha256"
	"fmt"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/lazypull/lazypull/internal/regproxy"
	"github.com/lazypull/lazypull/internal/testenv"
)

// fuseSuperMagic is statfs's f_type of a FUSE mount.
const fuseSuperMagic = 0x65735546

// TestLazyComposefs pulls an eStargz and a zstd:chunked image with the lazy
// composefs mode on: every layer's metadata image is written from its TOC
// and mounted on its snapshot's directory, and the containers read what
// the images hold. Once fetched and verified, the layers settle: their
// objects are in the store, new containers stack over the store's
// directory, the FUSE manager serves them no more, and neither the
// registry nor the manager is needed: with the registry gone, after the
// manager is killed and after a daemon restart, new containers run.
// Removing the images leaves no snapshot directory, refs, object or mount.
func TestLazyComposefs(t *testing.T) { testenv.ForEachContainerd(t, testLazyComposefs) }

func testLazyComposefs(t *testing.T, containerd testenv.Option) {
	env := testenv.New(t, containerd, testenv.WithDaemonConfig("[composefs]\nenable = true\nlazy = true\n"))
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	zstd, esgz := pushLazyFormats(t, ctx, env)
	ctr := env.Containerd.Ctr
	run := func(ref, name string) { t.Helper(); checkHello(t, ctx, env, ref, name) }

	for i, ref := range []string{esgz, zstd} {
		out, err := pullLazy(t, env, ref)
		if err != nil {
			t.Fatal(err)
		}
		if n := strings.Count(out, "mounted lazily in the composefs form"); n != 2 {
			t.Errorf("lazypull pull mounted %d of %s's 2 layers in the lazy composefs form:\n%s", n, ref, out)
		}
		run(ref, fmt.Sprintf("first-%d", i))
	}
	if images, dirs := metadataImages(t, env); images != 4 {
		t.Errorf("%d of the 2 images' 4 layers are metadata images (snapshot directories %v)", images, dirs)
	}
	waitUntil(t, ctx, "the 4 layers settle", func() error {
		settled, _ := filepath.Glob(filepath.Join(env.DaemonRoot, "snapshots", "*", "layer.erofs.settled"))
		if len(settled) != 4 {
			return fmt.Errorf("%d settled: %v", len(settled), settled)
		}
		return nil
	})
	if n := countObjects(t, env); n == 0 {
		t.Error("no objects in the store after the layers settled")
	}
	store := filepath.Join(env.DaemonRoot, "composefs", "objects")
	if lower := lowerdirOf(t, ctx, env, esgz, "settled"); !strings.HasSuffix(lower, "::"+store) {
		t.Errorf("a container's stack after its layers settled: lowerdir=%s, want the data-only lower %s", lower, store)
	}
	out, err := lazypull(t, env.BinDir, "status", "--root", env.DaemonRoot, "--address", env.DaemonSocket)
	if err != nil || !strings.Contains(out, "4 lazy, without fs-verity, 4 of them settled") {
		t.Errorf("lazypull status does not say the 4 lazy layers settled (%v):\n%s", err, out)
	}
	waitUntil(t, ctx, "the manager releases the settled layers", func() error {
		if st := managerStatus(t, env); len(st.Layers) != 0 {
			return fmt.Errorf("the manager serves %d settled layers", len(st.Layers))
		}
		if m := testenv.MountsUnder(filepath.Join(env.DaemonRoot, "objfs")); len(m) > 0 {
			return fmt.Errorf("the object filesystem is mounted with no layer to serve: %v", m)
		}
		return nil
	})

	if err := env.Registry.Stop(5 * time.Second); err != nil {
		t.Fatal(err)
	}
	run(esgz, "registry-gone")
	before := managerStatus(t, env)
	if err := syscall.Kill(before.PID, syscall.SIGKILL); err != nil {
		t.Fatalf("kill the fuse manager (pid %d): %v", before.PID, err)
	}
	waitUntil(t, ctx, "a new fuse manager", func() error {
		st, err := statusOf(t, env)
		if err != nil {
			return err
		}
		if st.PID == before.PID {
			return fmt.Errorf("manager pid %d", st.PID)
		}
		return nil
	})
	run(esgz, "after-manager")
	if err := env.RestartDaemon(); err != nil {
		t.Fatal(err)
	}
	run(zstd, "after-daemon")

	for _, ref := range []string{esgz, zstd} {
		if _, err := ctr(ctx, "images", "rm", "--sync", ref); err != nil {
			t.Fatal(err)
		}
	}
	if dirs := snapshotDirs(t, env); len(dirs) != 0 {
		t.Errorf("snapshot directories left after the images were removed: %v", dirs)
	}
	if n := countObjects(t, env); n != 0 {
		t.Errorf("%d objects left after the images were removed", n)
	}
	if refs, _ := filepath.Glob(filepath.Join(env.DaemonRoot, "composefs", "refs", "*")); len(refs) != 0 {
		t.Errorf("refs left after the images were removed: %v", refs)
	}
	if m := testenv.MountsUnder(env.Dir); len(m) > 0 {
		t.Errorf("mounts left after the images were removed: %v", m)
	}
}

// lowerdirOf creates container name of ref (not started) and returns the
// lowerdir= its snapshot's overlay mount names.
func lowerdirOf(t *testing.T, ctx context.Context, env *testenv.Env, ref, name string) string {
	t.Helper()
	ctr := env.Containerd.Ctr
	if out, err := ctr(ctx, "containers", "create", "--snapshotter", "lazypull", ref, name); err != nil {
		t.Fatalf("create container %s: %v\n%s", name, err, out)
	}
	defer func() {
		if out, err := ctr(ctx, "containers", "rm", name); err != nil {
			t.Errorf("remove container %s: %v\n%s", name, err, out)
		}
	}()
	out, err := ctr(ctx, "snapshots", "--snapshotter", "lazypull", "mounts", "/mnt", name)
	if err != nil {
		t.Fatalf("mounts of container %s: %v\n%s", name, err, out)
	}
	_, opts, ok := strings.Cut(out, "lowerdir=")
	if !ok {
		t.Fatalf("container %s's mounts name no lowerdir:\n%s", name, out)
	}
	lower, _, _ := strings.Cut(strings.TrimSpace(opts), ",")
	return lower
}

// TestLazyComposefsTree walks the hello image as the overlay snapshotter
// unpacks it and as the lazy composefs mode shows its eStargz and
// zstd:chunked conversions (metadata images over the object filesystem):
// every entry's type, mode, owner, times, content, link target, device,
// xattrs and hard links must be the same. Then the FUSE manager is
// killed: a new one serves the (unsettled) layers again.
func TestLazyComposefsTree(t *testing.T) { testenv.ForEachContainerd(t, testLazyComposefsTree) }

func testLazyComposefsTree(t *testing.T, containerd testenv.Option) {
	// No background fetch: the layers stay on the object filesystem.
	env := testenv.New(t, containerd, testenv.WithDaemonConfig("[composefs]\nenable = true\nlazy = true\n[fetch]\nbackground = false\n"))
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	zstd, esgz := pushLazyFormats(t, ctx, env)
	ref, err := env.PushHello(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// The images go after the views (cleanups run last first), and with
	// them the layers' mounts, which outlive the daemon.
	t.Cleanup(func() {
		for _, r := range []string{ref, esgz, zstd} {
			if out, err := env.Containerd.Ctr(context.Background(), "images", "rm", "--sync", r); err != nil {
				t.Errorf("remove %s: %v\n%s", r, err, out)
			}
		}
	})
	if out, err := env.Containerd.Ctr(ctx, "images", "pull", "--plain-http", "--snapshotter", "overlayfs", ref); err != nil {
		t.Fatalf("pull %s with overlayfs: %v\n%s", ref, err, out)
	}
	want := treeOf(t, mountedImage(t, ctx, env, "overlayfs", ref))
	if len(want) < 5 {
		t.Fatalf("the image as overlayfs unpacks it has %d entries", len(want))
	}
	for _, lazy := range []string{esgz, zstd} {
		out, err := pullLazy(t, env, lazy)
		if err != nil {
			t.Fatal(err)
		}
		if n := strings.Count(out, "mounted lazily in the composefs form"); n != 2 {
			t.Fatalf("lazypull pull mounted %d of %s's 2 layers in the lazy composefs form:\n%s", n, lazy, out)
		}
		compareTrees(t, want, treeOf(t, mountedImage(t, ctx, env, "lazypull", lazy)), "overlayfs", lazy)
	}
	objfs := filepath.Join(env.DaemonRoot, "objfs")
	var st unix.Statfs_t
	if err := unix.Statfs(objfs, &st); err != nil || st.Type != fuseSuperMagic {
		t.Errorf("%s is not the object filesystem's FUSE mount (%#x, %v)", objfs, st.Type, err)
	}
	if lower := lowerdirOf(t, ctx, env, esgz, "unsettled"); !strings.HasSuffix(lower, "::"+objfs) {
		t.Errorf("a container's stack of unsettled layers: lowerdir=%s, want the data-only lower %s", lower, objfs)
	}

	// A new manager serves every layer again, the object filesystem too.
	before := managerStatus(t, env)
	if len(before.Layers) != 4 {
		t.Fatalf("the manager serves %d layers, want 4", len(before.Layers))
	}
	if err := syscall.Kill(before.PID, syscall.SIGKILL); err != nil {
		t.Fatalf("kill the fuse manager (pid %d): %v", before.PID, err)
	}
	waitUntil(t, ctx, "a new fuse manager serves the images' layers", func() error {
		st, err := statusOf(t, env)
		if err != nil {
			return err
		}
		if st.PID == before.PID || len(st.Layers) != 4 {
			return fmt.Errorf("manager pid %d serves %d layers", st.PID, len(st.Layers))
		}
		return nil
	})
	checkHello(t, ctx, env, zstd, "after-manager")
}

// TestLazyComposefsSwitch: a container reading its files while its layers
// settle goes on reading the right bytes across the switch (its stack, over
// the object filesystem, stays as it was mounted), while a container
// started after it stacks over the store. The registry is reached through
// a link shaped to 20 Mbit/s, so that the layers settle seconds after the
// reader has started.
func TestLazyComposefsSwitch(t *testing.T) {
	testenv.Need(t, "containerd "+testenv.Containerd2.Name, testenv.Containerd2.Installed())
	env := testenv.New(t, testenv.WithContainerd(testenv.Containerd2), testenv.WithDaemonConfig("[composefs]\nenable = true\nlazy = true\n"))
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	pushed := pushLazyHello(t, ctx, env)
	proxy, err := regproxy.Start(env.Registry.Host, regproxy.WithBandwidth(20e6))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { proxy.Close() })
	lazy := proxy.Addr() + strings.TrimPrefix(pushed, env.Registry.Host)
	t.Cleanup(func() {
		if out, err := env.Containerd.Ctr(context.Background(), "images", "rm", "--sync", lazy); err != nil {
			t.Errorf("remove %s: %v\n%s", lazy, err, out)
		}
	})
	if out, err := pullLazy(t, env, lazy); err != nil || strings.Count(out, "mounted lazily in the composefs form") != 2 {
		t.Fatalf("pull: %v\n%s", err, out)
	}
	files := helloFiles(t, env)
	var watch []string
	for _, name := range []string{"hello", "data/keep.txt", "data/added.txt", "opt/unused.bin"} {
		watch = append(watch, fmt.Sprintf("/%s=%x", name, sha256.Sum256(files[name])))
	}
	v := startVictim(t, ctx, env, lazy, watch)
	v.waitRounds(t, ctx, 1)
	settled := func() int {
		m, _ := filepath.Glob(filepath.Join(env.DaemonRoot, "snapshots", "*", "layer.erofs.settled"))
		return len(m)
	}
	if n := settled(); n == 2 {
		t.Fatal("the layers settled before the reader's first round: the link is too fast for this test")
	}
	waitUntil(t, ctx, "the 2 layers settle", func() error {
		if n := settled(); n != 2 {
			return fmt.Errorf("%d settled", n)
		}
		return nil
	})
	v.waitRounds(t, ctx, v.rounds(t)+2)
	store := filepath.Join(env.DaemonRoot, "composefs", "objects")
	if lower := lowerdirOf(t, ctx, env, lazy, "after-switch"); !strings.HasSuffix(lower, "::"+store) {
		t.Errorf("a container started after the switch: lowerdir=%s, want the data-only lower %s", lower, store)
	}
	checkHello(t, ctx, env, lazy, "after")
	if out, err := v.stop(t); err != nil {
		t.Errorf("the container reading across the switch: %v\n%s", err, out)
	}
}

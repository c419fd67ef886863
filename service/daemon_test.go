package service

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	snapshotsapi "github.com/containerd/containerd/api/services/snapshots/v1"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/core/snapshots/proxy"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/errdefs"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/lazypull/lazypull/snapshot"
)

func testConfig(t *testing.T) Config {
	dir := t.TempDir()
	cfg := DefaultConfig()
	cfg.Root = filepath.Join(dir, "root")
	cfg.Address = filepath.Join(dir, "run", "lazypull.sock")
	inProcess := false // the test binary cannot be a FUSE manager
	cfg.FUSE.Manager = &inProcess
	return cfg
}

// startDaemon runs the daemon in the background and returns a function
// that stops it and returns Run's error.
func startDaemon(t *testing.T, cfg Config) (stop func() error) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan struct{})
	done := make(chan error, 1)
	go func() { done <- Run(ctx, cfg, ready) }()
	select {
	case <-ready:
	case err := <-done:
		cancel()
		t.Fatalf("daemon did not start: %v", err)
	}
	stopped := false
	var runErr error
	stop = func() error {
		if !stopped {
			stopped = true
			cancel()
			runErr = <-done
		}
		return runErr
	}
	t.Cleanup(func() { stop() })
	return stop
}

func dial(t *testing.T, address string) snapshots.Snapshotter {
	t.Helper()
	conn, err := grpc.NewClient("unix://"+address, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return proxy.NewSnapshotter(snapshotsapi.NewSnapshotsClient(conn), "lazypull")
}

func TestDaemonServesSnapshotsAPI(t *testing.T) {
	cfg := testConfig(t)
	stop := startDaemon(t, cfg)
	sn := dial(t, cfg.Address)
	ctx := namespaces.WithNamespace(context.Background(), "test")

	mounts, err := sn.Prepare(ctx, "active", "")
	if err != nil {
		t.Fatal(err)
	}
	if len(mounts) != 1 || mounts[0].Type != "bind" {
		t.Errorf("Prepare over gRPC: mounts %+v, want one bind mount", mounts)
	}
	if err := sn.Commit(ctx, "layer", "active"); err != nil {
		t.Fatal(err)
	}
	info, err := sn.Stat(ctx, "layer")
	if err != nil || info.Kind != snapshots.KindCommitted {
		t.Errorf("Stat over gRPC = %+v, %v", info, err)
	}

	if err := stop(); err != nil {
		t.Errorf("clean shutdown returned %v", err)
	}
	if _, err := os.Stat(cfg.Address); !os.IsNotExist(err) {
		t.Errorf("socket %s left after shutdown: %v", cfg.Address, err)
	}

	// The metadata survives a restart.
	startDaemon(t, cfg)
	sn = dial(t, cfg.Address)
	if _, err := sn.Stat(ctx, "layer"); err != nil {
		t.Errorf("snapshot lost across a restart: %v", err)
	}
}

func TestSecondInstanceOnSameRootRefused(t *testing.T) {
	cfg := testConfig(t)
	startDaemon(t, cfg)
	second := cfg
	second.Address = filepath.Join(t.TempDir(), "other.sock")
	err := Run(context.Background(), second, nil)
	if err == nil || !strings.Contains(err.Error(), cfg.Root) || !strings.Contains(err.Error(), "in use by") {
		t.Fatalf("second instance: err = %v, want one naming root %s and its holder", err, cfg.Root)
	}
	if !strings.Contains(err.Error(), "pid") {
		t.Errorf("second instance: err = %v, want the holder's pid", err)
	}
}

func TestSocketInUseRefused(t *testing.T) {
	cfg := testConfig(t)
	startDaemon(t, cfg)
	other := testConfig(t)
	other.Address = cfg.Address
	err := Run(context.Background(), other, nil)
	if err == nil || !strings.Contains(err.Error(), "another process serves on it") {
		t.Fatalf("second instance on a live socket: err = %v", err)
	}
}

func TestStaleSocketRemoved(t *testing.T) {
	cfg := testConfig(t)
	if err := os.MkdirAll(filepath.Dir(cfg.Address), 0o700); err != nil {
		t.Fatal(err)
	}
	// A listener closed without unlinking leaves the socket file, as a
	// killed daemon does.
	lis, err := net.Listen("unix", cfg.Address)
	if err != nil {
		t.Fatal(err)
	}
	lis.(*net.UnixListener).SetUnlinkOnClose(false)
	lis.Close()

	startDaemon(t, cfg)
	ctx, cancel := context.WithTimeout(namespaces.WithNamespace(context.Background(), "test"), 10*time.Second)
	defer cancel()
	if _, err := dial(t, cfg.Address).Prepare(ctx, "k", ""); err != nil {
		t.Errorf("daemon over a stale socket does not serve: %v", err)
	}
}

func TestRunRefusesBadConfig(t *testing.T) {
	cfg := testConfig(t)
	cfg.LogLevel = "loud"
	if err := Run(context.Background(), cfg, nil); err == nil || !strings.Contains(err.Error(), "log_level") {
		t.Errorf("Run with a bad log level: err = %v", err)
	}
}

// Whoever can reach the socket can mount anything: it is the owner's only.
func TestSocketIsPrivate(t *testing.T) {
	cfg := testConfig(t)
	startDaemon(t, cfg)
	if fi, err := os.Stat(cfg.Address); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("socket %s: %v, mode %v; want 0600", cfg.Address, err, fi.Mode().Perm())
	}
}

// fakeRemote mounts nothing; it fails when fail is set.
type fakeRemote struct{ fail error }

func (r *fakeRemote) Mount(context.Context, string, map[string]string) error { return r.fail }
func (r *fakeRemote) Unmount(context.Context, string) error                  { return nil }

// A fresh root has nothing to restore, and that is no error (operators
// alert on error lines); a layer that cannot be mounted again still is.
func TestRestore(t *testing.T) {
	remote := &fakeRemote{}
	sn, err := snapshot.New(t.TempDir(), snapshot.WithRemote(remote))
	if err != nil {
		t.Fatal(err)
	}
	defer sn.Close()
	ctx := namespaces.WithNamespace(context.Background(), "test")
	if err := restore(ctx, sn); err != nil {
		t.Errorf("restore on an empty root: %v", err)
	}

	_, err = sn.Prepare(ctx, "extract", "", snapshots.WithLabels(map[string]string{snapshots.LabelSnapshotRef: "layer"}))
	if !errdefs.IsAlreadyExists(err) {
		t.Fatalf("Prepare of a remote layer: %v", err)
	}
	remote.fail = errors.New("the registry is gone")
	if err := restore(ctx, sn); err == nil || !strings.Contains(err.Error(), "the registry is gone") {
		t.Errorf("restore of a layer that cannot be mounted: %v", err)
	}
}

// A Mount that waits for the whole layer must not be cut short by the
// bound meant for a TOC and a prefetch; neither may a slow request.
func TestMountTimeout(t *testing.T) {
	cfg := DefaultConfig()
	cfg.Fetch.RequestTimeout.Duration = 5 * time.Minute
	if got := mountTimeout(cfg); got < 5*time.Minute {
		t.Errorf("mount timeout %v is shorter than one request's", got)
	}
	cfg.Fetch.VerifyBeforeUse = true
	if got := mountTimeout(cfg); got < time.Hour {
		t.Errorf("mount timeout with verify_before_use: %v", got)
	}
}

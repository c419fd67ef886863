package service

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime/debug"
	"strconv"
	"strings"
	"time"

	snapshotsapi "github.com/containerd/containerd/api/services/snapshots/v1"
	"github.com/containerd/containerd/v2/contrib/snapshotservice"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc"

	"github.com/lazypull/lazypull/cache"
	"github.com/lazypull/lazypull/composefs"
	"github.com/lazypull/lazypull/composefs/objects"
	"github.com/lazypull/lazypull/fusemanager"
	"github.com/lazypull/lazypull/internal/unixsocket"
	"github.com/lazypull/lazypull/kubesecrets"
	"github.com/lazypull/lazypull/mounter"
	"github.com/lazypull/lazypull/service/status"
	"github.com/lazypull/lazypull/snapshot"
)

// openRemote returns what mounts lazy layers: the FUSE manager, a process
// of its own that outlives the daemon (started if it is not running), or
// in the daemon itself when fuse.manager is off.
func openRemote(ctx context.Context, cfg Config) (snapshot.Remote, func(), error) {
	if enabled(cfg.FUSE.Manager) {
		exe, err := os.Executable()
		if err != nil {
			return nil, nil, err
		}
		command := []string{exe, fusemanager.Subcommand, "--root", cfg.Root, "--log-level", cfg.LogLevel}
		if cfg.Path != "" {
			command = append(command, "--config", cfg.Path)
		}
		if cfg.MetricsAddress != "" {
			command = append(command, "--metrics-address", cfg.MetricsAddress)
		}
		// What flags set for the daemon holds for its manager too.
		command = append(command, "--containerd-address="+cfg.ContainerdAddress, "--cri-image-service-address="+cfg.CRIImageServiceAddress)
		client, err := fusemanager.Connect(ctx, cfg.Root, command, fusemanager.WithMountTimeout(mountTimeout(cfg)))
		if err != nil {
			return nil, nil, err
		}
		// The manager keeps serving the mounted layers: running
		// containers keep them while the daemon restarts.
		return client, func() { client.Close() }, nil
	}
	mnt, c, closeMounter, err := newMounter(cfg)
	if err != nil {
		return nil, nil, err
	}
	if err := serveMetrics(ctx, cfg, c); err != nil {
		closeMounter()
		return nil, nil, err
	}
	if err := serveCRI(ctx, cfg); err != nil {
		closeMounter()
		return nil, nil, err
	}
	return mnt, closeMounter, nil
}

// mountTimeout bounds one Mount by the manager, so that a registry that
// stalls fails the Prepare (containerd then downloads the layer) rather
// than hang it: a manifest, a TOC and the prefetch take a few requests,
// each bounded by fetch.request_timeout. Verifying a whole layer before
// use takes as long as downloading it.
func mountTimeout(cfg Config) time.Duration {
	if cfg.Fetch.VerifyBeforeUse {
		return time.Hour
	}
	request := cmp.Or(cfg.Fetch.RequestTimeout.Duration, 60*time.Second)
	prefetch := cmp.Or(cfg.Fetch.PrefetchTimeout.Duration, 10*time.Second)
	return max(2*time.Minute, 3*request+prefetch)
}

// newMounter opens the cache and the mounter that serves lazy layers.
func newMounter(cfg Config) (*mounter.Mounter, *cache.Cache, func(), error) {
	cacheDir := cfg.Cache.Dir
	if cacheDir == "" {
		cacheDir = filepath.Join(cfg.Root, "cache")
	}
	c, err := cache.New(cacheDir, cfg.Cache.cacheOptions()...)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("open cache: %w", err)
	}
	opts := cfg.mounterOptions()
	var keychain *kubesecrets.Keychain
	if kc := cfg.KubeconfigKeychain; kc.Enable {
		if keychain, err = kubesecrets.Watch(context.Background(), kubesecrets.Options{Kubeconfig: kc.KubeconfigPath, Namespaces: kc.Namespaces}); err != nil {
			c.Close()
			return nil, nil, nil, fmt.Errorf("kubeconfig_keychain: %w", err)
		}
		opts.Registry.Keychain = keychain
	}
	var store *objects.Store
	if cfg.Composefs.Enable && cfg.Composefs.Lazy {
		// The lazy composefs mode's objects are claimed and served by
		// the process that serves the layers: the store is safe to
		// share with the daemon's.
		if store, err = objects.Open(context.Background(), status.StoreDir(cfg.Root), objects.WithBatchSync()); err != nil {
			if keychain != nil {
				keychain.Close()
			}
			c.Close()
			return nil, nil, nil, fmt.Errorf("composefs: open the object store: %w", err)
		}
		opts.Composefs = mounter.ComposefsOptions{Store: store, Mountpoint: fusemanager.ObjectsPath(cfg.Root)}
	}
	mnt := mounter.New(c, opts)
	return mnt, c, func() {
		if err := mnt.Close(); err != nil {
			log.L.WithError(err).Error("failed to unmount layers")
		}
		if store != nil {
			store.Close()
		}
		if keychain != nil {
			keychain.Close()
		}
		c.Close()
	}, nil
}

// RunFUSEManager serves lazy layers for the daemon until ctx is done (see
// package fusemanager), then unmounts them.
func RunFUSEManager(ctx context.Context, cfg Config) error {
	if err := cfg.Validate(); err != nil {
		return err
	}
	tuneGC()
	mnt, c, closeMounter, err := newMounter(cfg)
	if err != nil {
		return err
	}
	defer closeMounter()
	if err := serveMetrics(ctx, cfg, c); err != nil {
		return err
	}
	if err := serveCRI(ctx, cfg); err != nil {
		return err
	}
	return fusemanager.Serve(ctx, cfg.Root, mnt, nil)
}

// restore mounts again the snapshotter's lazy layers. A root that was
// never written to has no snapshot bucket, and Restore's listing says
// "bucket does not exist" (NotFound): nothing to restore, and no error
// (operators alert on error lines).
func restore(ctx context.Context, sn *snapshot.Snapshotter) error {
	err := sn.Walk(ctx, func(context.Context, snapshots.Info) error { return errStopWalk })
	if errdefs.IsNotFound(err) {
		return nil
	}
	return sn.Restore(ctx)
}

var errStopWalk = errors.New("one snapshot is enough")

// shutdownGrace bounds how long a stopping daemon waits for calls in flight.
const shutdownGrace = 10 * time.Second

// Run serves the snapshotter until ctx is done, then shuts down cleanly: it
// stops serving, closes the metadata store and removes its socket. ready, if
// not nil, is closed once the socket accepts calls.
func Run(ctx context.Context, cfg Config, ready chan<- struct{}) error {
	if err := cfg.Validate(); err != nil {
		return err
	}
	tuneGC()
	if err := os.MkdirAll(cfg.Root, 0o700); err != nil {
		return fmt.Errorf("create root: %w", err)
	}
	unlock, err := lockRoot(cfg.Root)
	if err != nil {
		return err
	}
	defer unlock()

	remote, closeRemote, err := openRemote(ctx, cfg)
	if err != nil {
		return err
	}
	// Release the layers after the snapshotter stops serving (defers run
	// in reverse).
	defer closeRemote()
	serving := false
	if client, ok := remote.(*fusemanager.Client); ok {
		defer func() {
			// A daemon that failed to start (a configuration the
			// snapshotter refuses, a socket in use) stops the manager it
			// started: no container can have used it, and it would
			// serve on, unseen, until the next daemon on this root.
			if !serving && client.Started() {
				if err := fusemanager.Stop(cfg.Root, 10*time.Second); err != nil {
					log.G(ctx).WithError(err).Error("failed to stop the FUSE manager this daemon started")
				}
			}
		}()
	}

	opts := append(cfg.Snapshotter.snapshotOpts(), snapshot.WithRemote(remote))
	if cfg.ContainerdAddress != "" {
		content := newImageContent(cfg.ContainerdAddress)
		defer content.Close()
		opts = append(opts, snapshot.WithImageContent(content.add))
	}
	if cfg.Composefs.Enable {
		layers, err := composefs.OpenLayers(ctx, status.StoreDir(cfg.Root))
		if err != nil {
			return err
		}
		defer layers.Close()
		opts = append(opts, snapshot.WithComposefs(layers))
		if cfg.Composefs.Lazy {
			lazy, ok := remote.(snapshot.LazyComposefs)
			if !ok {
				return fmt.Errorf("[composefs] lazy: the layers' mounter cannot serve the lazy composefs form")
			}
			opts = append(opts, snapshot.WithLazyComposefs(lazy))
		}
		if enabled(cfg.Composefs.PartialPull) {
			filler := mounter.NewFiller(layers.Store(), cfg.mounterOptions())
			defer filler.Close()
			opts = append(opts, snapshot.WithComposefsFill(composefsFiller{filler}))
		}
	}
	sn, err := snapshot.New(cfg.Root, opts...)
	if err != nil {
		return err
	}
	defer func() {
		if err := sn.Close(); err != nil {
			log.G(ctx).WithError(err).Error("failed to close snapshot metadata")
		}
	}()
	if err := restore(ctx, sn); err != nil {
		log.G(ctx).WithError(err).Error("some lazily pulled layers could not be mounted again; containers on them cannot start until they are removed and pulled again")
	}
	if client, ok := remote.(*fusemanager.Client); ok {
		// Watch the manager until the snapshotter closes: if it dies, a
		// new one mounts every lazy layer again.
		superviseCtx, stopSupervising := context.WithCancel(ctx)
		supervised := make(chan struct{})
		go func() {
			defer close(supervised)
			client.Supervise(superviseCtx, func(ctx context.Context) error { return restore(ctx, sn) })
		}()
		defer func() { stopSupervising(); <-supervised }()
	}

	// Mode 0600 (whoever reaches it can mount anything); a socket a
	// killed daemon left is replaced, a live one refused.
	lis, err := unixsocket.Listen(cfg.Address)
	if err != nil {
		return err
	}
	srv := grpc.NewServer()
	snapshotsapi.RegisterSnapshotsServer(srv, snapshotservice.FromSnapshotter(sn))

	served := make(chan error, 1)
	go func() { served <- srv.Serve(lis) }()
	log.G(ctx).WithField("address", cfg.Address).WithField("root", cfg.Root).Info("lazypull-snapshotter is serving")
	serving = true
	if ready != nil {
		close(ready)
	}

	select {
	case err = <-served:
		err = fmt.Errorf("serve %s: %w", cfg.Address, err)
	case <-ctx.Done():
		log.G(ctx).Info("shutting down")
		stopGracefully(srv)
		<-served
	}
	return err
}

func stopGracefully(srv *grpc.Server) {
	done := make(chan struct{})
	go func() { srv.GracefulStop(); close(done) }()
	select {
	case <-done:
	case <-time.After(shutdownGrace):
		srv.Stop()
	}
}

// lockRoot takes an exclusive lock on root so that two daemons never share
// one state directory. The lock file holds the holder's pid for the message.
func lockRoot(root string) (unlock func(), err error) {
	path := filepath.Join(root, "lock")
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open lock %s: %w", path, err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		holder := "another process"
		if b, rerr := os.ReadFile(path); rerr == nil {
			if pid, perr := strconv.Atoi(strings.TrimSpace(string(b))); perr == nil {
				holder = fmt.Sprintf("another lazypull-snapshotter (pid %d)", pid)
			}
		}
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, fmt.Errorf("root %s is in use by %s: stop it, or give this daemon another --root", root, holder)
		}
		return nil, fmt.Errorf("lock root %s: %w", root, err)
	}
	if err := f.Truncate(0); err == nil {
		f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	}
	return func() { f.Truncate(0); f.Close() }, nil
}

// gcPercent is the daemons' GOGC unless the environment sets one: they run
// on every node beside the workloads, where memory counts more than the
// little CPU a more frequent collection costs. Measured on python's cold
// start (daemon and FUSE manager, peak RSS): 141-148 MiB at Go's 100,
// 115-119 MiB at 50, with the same time to first output.
const gcPercent = 50

func tuneGC() {
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(gcPercent)
	}
}

// composefsFiller is the mounter's Filler as the snapshotter calls it.
type composefsFiller struct{ f *mounter.Filler }

func (c composefsFiller) Fill(ctx context.Context, id, image string, labels map[string]string) (int64, error) {
	st, err := c.f.Fill(ctx, id, image, labels)
	if err != nil {
		return 0, err
	}
	log.G(ctx).WithField("snapshot id", id).WithField("fetched", st.Fetched).WithField("present", st.Present).
		WithField("bytes read", st.Read).Info("layer pulled into the composefs store")
	return st.Bytes, nil
}

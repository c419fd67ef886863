// Command containerd-stargz-grpc runs stargz-snapshotter, the incumbent
// lazy-pulling snapshotter, as a containerd proxy snapshotter, for the
// benchmark's side-by-side scenarios (bench/scenarios/stargz-snapshotter*.toml).
//
// stargz-snapshotter's own daemon lives in its cmd module, which the Go
// module proxy does not serve to this project's machines; its library
// module is served, and this is the few lines of wiring the daemon does
// around it: the same flags, its TOML configuration, the Docker config
// keychain, the snapshots API on a unix socket. Its filesystem, prefetch,
// background fetch, cache and resolver are the library's, with their
// defaults, as the real daemon runs them. Its metrics, CRI and kubeconfig
// keychains and FUSE manager mode are left out: no benchmark uses them.
//
// It is a module of its own so that lazypull's go.mod does not carry the
// incumbent's dependencies. Build it with `make incumbent`.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"

	snapshotsapi "github.com/containerd/containerd/api/services/snapshots/v1"
	"github.com/containerd/containerd/v2/contrib/snapshotservice"
	"github.com/containerd/log"
	"github.com/containerd/stargz-snapshotter/service"
	"github.com/containerd/stargz-snapshotter/service/keychain/dockerconfig"
	"github.com/pelletier/go-toml/v2"
	"google.golang.org/grpc"
)

func main() {
	address := flag.String("address", "/run/containerd-stargz-grpc/containerd-stargz-grpc.sock", "address for the snapshotter's GRPC server")
	root := flag.String("root", "/var/lib/containerd-stargz-grpc", "path to the root directory for this snapshotter")
	configPath := flag.String("config", "/etc/containerd-stargz-grpc/config.toml", "path to the configuration file")
	logLevel := flag.String("log-level", "info", "set the logging level [trace, debug, info, warn, error, fatal, panic]")
	flag.Parse()
	if err := log.SetLevel(*logLevel); err != nil {
		fmt.Fprintf(os.Stderr, "containerd-stargz-grpc: --log-level %q: %v\n", *logLevel, err)
		os.Exit(2)
	}
	if err := run(*address, *root, *configPath); err != nil {
		log.L.WithError(err).Error("containerd-stargz-grpc failed")
		os.Exit(1)
	}
}

func run(address, root, configPath string) error {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()

	var cfg service.Config
	if b, err := os.ReadFile(configPath); err == nil {
		if err := toml.Unmarshal(b, &cfg); err != nil {
			return fmt.Errorf("configuration %s: %w", configPath, err)
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return err
	}
	if err := service.Supported(root); err != nil {
		return fmt.Errorf("snapshotter root %s: %w", root, err)
	}
	rs, err := service.NewStargzSnapshotterService(ctx, root, &cfg,
		service.WithCredsFuncs(dockerconfig.NewDockerconfigKeychain(ctx)))
	if err != nil {
		return err
	}
	defer func() {
		if err := rs.Close(); err != nil {
			log.L.WithError(err).Warn("closing the snapshotter")
		}
	}()

	if err := os.MkdirAll(filepath.Dir(address), 0o700); err != nil {
		return err
	}
	if err := os.Remove(address); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("stale socket %s: %w", address, err)
	}
	l, err := net.Listen("unix", address)
	if err != nil {
		return err
	}
	rpc := grpc.NewServer()
	snapshotsapi.RegisterSnapshotsServer(rpc, snapshotservice.FromSnapshotter(rs))
	served := make(chan error, 1)
	go func() { served <- rpc.Serve(l) }()
	log.L.WithField("address", address).Info("serving")
	select {
	case err := <-served:
		return err
	case <-ctx.Done():
		log.L.Info("stopping")
		rpc.GracefulStop()
		return nil
	}
}

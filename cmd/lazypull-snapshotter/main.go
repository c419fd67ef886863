// Command lazypull-snapshotter is the lazypull daemon: it serves containerd's
// snapshots API on a unix socket, for containerd's proxy_plugins. Run as
// `lazypull-snapshotter fuse-manager`, it is the long-lived process that the
// daemon starts to serve lazily mounted layers.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/containerd/log"

	"github.com/lazypull/lazypull/fusemanager"
	"github.com/lazypull/lazypull/remote"
	"github.com/lazypull/lazypull/service"
	"github.com/lazypull/lazypull/version"
)

const usage = `Usage: lazypull-snapshotter [flags]

Serves the lazypull snapshotter to containerd over a unix socket. Lazily
mounted layers are served by a FUSE manager process that the daemon starts
and that outlives it, so running containers survive a daemon restart.
While the daemon runs, it starts a new manager if the manager dies, and
mounts the lazy layers again for new containers (running ones lose them).
To stop both, stop the daemon, then: lazypull-snapshotter --stop-fuse-manager.

Examples:
  # with the defaults (config %[1]s)
  lazypull-snapshotter

  # a private instance, chatty
  lazypull-snapshotter --root /tmp/lp --address /tmp/lp.sock --log-level debug

  # after containerd stopped: unmount every lazy layer, stop the manager
  lazypull-snapshotter --stop-fuse-manager

Tell containerd about it in /etc/containerd/config.toml:
  [proxy_plugins.lazypull]
    type = "snapshot"
    address = "%[2]s"

Flags:
`

func main() {
	manager := len(os.Args) > 1 && os.Args[1] == fusemanager.Subcommand
	args := os.Args[1:]
	if manager {
		args = os.Args[2:]
	}
	fs := flag.NewFlagSet("lazypull-snapshotter", flag.ExitOnError)
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), usage, service.DefaultConfigPath, service.DefaultAddress)
		fs.PrintDefaults()
	}
	configPath := fs.String("config", service.DefaultConfigPath, "configuration `file` (TOML); a missing file means the defaults")
	address := fs.String("address", service.DefaultAddress, "unix `socket` to serve on (overrides the config's address)")
	root := fs.String("root", service.DefaultRoot, "state `directory` (overrides the config's root)")
	logLevel := fs.String("log-level", service.DefaultLogLevel, "trace, debug, info, warn or error (overrides the config's log_level)")
	metricsAddress := fs.String("metrics-address", "", "serve Prometheus metrics on `ADDR` (host:port or socket path; overrides the config's metrics_address)")
	containerdAddress := fs.String("containerd-address", service.DefaultContainerd, "containerd's `socket`, where manifests and configs being pulled are read (overrides the config's containerd_address; \"\" for none)")
	criAddress := fs.String("cri-image-service-address", "", "serve the CRI image service for the kubelet's --image-service-endpoint on this unix `socket`, forwarded to containerd; pull secrets then reach lazy layers (overrides the config's cri_image_service_address)")
	stopManager := fs.Bool("stop-fuse-manager", false, "stop the FUSE manager serving the root (its lazy layers are unmounted: running containers lose them), wait until it exited, and exit")
	showVersion := fs.Bool("version", false, "print the version and exit")
	fs.Parse(args)
	if fs.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "lazypull-snapshotter: unexpected argument %q (it takes flags only; see --help)\n", fs.Arg(0))
		os.Exit(2)
	}
	if *showVersion {
		fmt.Println("lazypull-snapshotter", version.String())
		return
	}

	cfg, err := service.LoadConfig(*configPath)
	if err != nil {
		fatal(err)
	}
	// Flags given on the command line win over the file.
	fs.Visit(func(f *flag.Flag) {
		switch f.Name {
		case "address":
			cfg.Address = *address
		case "root":
			cfg.Root = *root
		case "log-level":
			cfg.LogLevel = *logLevel
		case "metrics-address":
			cfg.MetricsAddress = *metricsAddress
		case "containerd-address":
			cfg.ContainerdAddress = *containerdAddress
		case "cri-image-service-address":
			cfg.CRIImageServiceAddress = *criAddress
		}
	})
	if err := cfg.Validate(); err != nil {
		fatal(err)
	}
	if *stopManager {
		// Its layers unmount as it exits; a minute is ample.
		if err := fusemanager.Stop(cfg.Root, time.Minute); err != nil {
			fatal(err)
		}
		return
	}
	if err := log.SetLevel(cfg.LogLevel); err != nil {
		fatal(err)
	}
	// Nanosecond timestamps, as containerd's: a fetch takes milliseconds.
	if err := log.SetFormat(log.TextFormat); err != nil {
		fatal(err)
	}
	// Errors of containerd's resolver, which it logs itself, can name
	// signed blob-store URLs.
	remote.RedactLogs(log.L.Logger)

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if manager {
		err = service.RunFUSEManager(ctx, cfg)
	} else {
		err = service.Run(ctx, cfg, nil)
	}
	if err != nil {
		fatal(err)
	}
}

func fatal(err error) {
	fmt.Fprintln(os.Stderr, "lazypull-snapshotter:", err)
	os.Exit(1)
}

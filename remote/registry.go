// Package remote is lazypull's access to OCI registries: resolving image
// references, credentials from the docker config, containerd-style
// hosts.toml mirrors, and the resolvers that fetch and push through them.
// It knows HTTP and the distribution API; it must not know layer formats,
// caches or mounts.
package remote

import (
	"context"
	"os"

	"github.com/containerd/containerd/v2/core/remotes"
	"github.com/containerd/containerd/v2/core/remotes/docker"
	"github.com/containerd/containerd/v2/core/remotes/docker/config"
)

// DefaultHostsDir is where containerd keeps per-registry hosts.toml files.
const DefaultHostsDir = "/etc/containerd/certs.d"

// Options configure registry access.
type Options struct {
	// PlainHTTP talks HTTP to every registry. Loopback registries with a
	// port get HTTP without it, as containerd does.
	PlainHTTP bool
	// HostsDir holds <host>/hosts.toml mirror and TLS configuration
	// (default DefaultHostsDir; a missing directory means none).
	HostsDir string
	// DockerConfigDir holds config.json with credentials (default
	// $DOCKER_CONFIG, else ~/.docker).
	DockerConfigDir string
}

// NewResolver returns a containerd resolver that fetches and pushes with
// the configured hosts, mirrors and credentials. Authentication follows the
// registry's WWW-Authenticate challenge: basic or bearer token.
func NewResolver(ctx context.Context, opts Options) remotes.Resolver {
	return docker.NewResolver(docker.ResolverOptions{Hosts: config.ConfigureHosts(ctx, hostOptions(opts))})
}

// hostOptions turns Options into containerd's host configuration, shared
// by the resolver and ranged blob reads.
func hostOptions(opts Options) config.HostOptions {
	hostsDir := opts.HostsDir
	if hostsDir == "" {
		hostsDir = DefaultHostsDir
	}
	hostOpts := config.HostOptions{
		HostDir:     config.HostDirFromRoot(hostsDir),
		Credentials: NewCredentials(opts.DockerConfigDir).Lookup,
	}
	if opts.PlainHTTP {
		hostOpts.DefaultScheme = "http"
	}
	return hostOpts
}

func dockerConfigDir(dir string) string {
	if dir != "" {
		return dir
	}
	if env := os.Getenv("DOCKER_CONFIG"); env != "" {
		return env
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return ""
	}
	return home + "/.docker"
}

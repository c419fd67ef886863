// Package remote is lazypull's access to OCI registries: resolving image
// references, credentials from the docker config, containerd-style
// hosts.toml mirrors, and the resolvers that fetch and push through them.
// It knows HTTP and the distribution API; it must not know layer formats,
// caches or mounts.
package remote

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"sync"
	"time"

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
// registry's WWW-Authenticate challenge: basic or bearer token. Its errors
// never show a URL's query or userinfo.
func NewResolver(ctx context.Context, opts Options) remotes.Resolver {
	return redactingResolver{docker.NewResolver(docker.ResolverOptions{Hosts: configureHosts(ctx, opts)})}
}

// configureHosts returns the hosts to reach a registry through (mirrors
// first), as containerd configures them, with redirects that keep
// credentials on the host they were configured for. The hosts of a
// registry are built once per hostsTTL and shared in the process (see
// sharedHosts).
func configureHosts(ctx context.Context, opts Options) docker.RegistryHosts {
	return func(host string) ([]docker.RegistryHost, error) {
		return sharedHosts.get(ctx, opts, host, false)
	}
}

// hostsTTL is how long a registry's configured hosts are shared before
// hosts.toml is read again: long enough for a pull's requests (resolve,
// manifest, config, referrers, every layer's TOC) to share connections,
// TLS sessions and tokens, short enough that an edited hosts.toml counts
// for the next pulls.
const hostsTTL = time.Minute

// idleConnsPerHost keeps enough connections open to a registry for the
// ranged reads of several layers in flight (net/http keeps 2).
const idleConnsPerHost = 32

// sharedHosts holds each registry's hosts for hostsTTL. containerd builds
// them, with a new HTTP transport and authorizer, at every resolve and
// every fetcher: each request of a pull then opened its own connection and
// TLS session and fetched its own token, a round trip or three each.
var sharedHosts = &hostsCache{byKey: make(map[hostsKey]cachedHosts)}

type hostsKey struct {
	opts Options
	host string
}

type cachedHosts struct {
	hosts []docker.RegistryHost
	built time.Time
}

type hostsCache struct {
	mu    sync.Mutex
	byKey map[hostsKey]cachedHosts
}

// get returns the hosts of a registry, built anew when they are older than
// hostsTTL or fresh is set (fresh authorizers: an expired token an
// authorizer still trusts); those are shared from then on.
func (c *hostsCache) get(ctx context.Context, opts Options, host string, fresh bool) ([]docker.RegistryHost, error) {
	key := hostsKey{opts: opts, host: host}
	c.mu.Lock()
	defer c.mu.Unlock()
	if e, ok := c.byKey[key]; ok && !fresh && time.Since(e.built) < hostsTTL {
		return e.hosts, nil
	}
	hosts, err := buildHosts(ctx, opts, host)
	if err != nil {
		return nil, err
	}
	for k, e := range c.byKey {
		if time.Since(e.built) >= hostsTTL {
			delete(c.byKey, k)
		}
	}
	c.byKey[key] = cachedHosts{hosts: hosts, built: time.Now()}
	return hosts, nil
}

func buildHosts(ctx context.Context, opts Options, host string) ([]docker.RegistryHost, error) {
	hosts, err := config.ConfigureHosts(ctx, hostOptions(opts))(host)
	if err != nil {
		return nil, err
	}
	for i := range hosts {
		c := http.Client{}
		if hosts[i].Client != nil {
			c = *hosts[i].Client
		}
		c.CheckRedirect = keepHeadersOnHost(hosts[i].Header, c.CheckRedirect)
		hosts[i].Client = &c
	}
	return hosts, nil
}

// maxRedirects is net/http's own limit, which a CheckRedirect of ours
// replaces.
const maxRedirects = 10

// keepHeadersOnHost returns a CheckRedirect that, when a redirect leaves
// the host first asked (a registry sending blob reads to a blob store),
// drops the headers that hosts.toml configured for that host and the
// credentials (net/http keeps Authorization on another port of the same
// host and on subdomains, and keeps every custom header everywhere). A
// signed blob-store URL needs none of them. next, if not nil, is the
// client's own CheckRedirect.
func keepHeadersOnHost(configured http.Header, next func(*http.Request, []*http.Request) error) func(*http.Request, []*http.Request) error {
	return func(req *http.Request, via []*http.Request) error {
		if len(via) >= maxRedirects {
			return fmt.Errorf("stopped after %d redirects", maxRedirects)
		}
		if req.URL.Host != via[0].URL.Host {
			for k := range configured {
				req.Header.Del(k)
			}
			req.Header.Del("Authorization")
			req.Header.Del("Cookie")
		}
		if next != nil {
			return next(req, via)
		}
		return nil
	}
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
		UpdateClient: func(c *http.Client) error {
			if tr, ok := c.Transport.(*http.Transport); ok {
				tr.MaxIdleConnsPerHost = idleConnsPerHost
				tr.MaxIdleConns = max(tr.MaxIdleConns, 4*idleConnsPerHost)
			}
			return nil
		},
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

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
	"github.com/containerd/containerd/v2/pkg/reference"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
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
	// Keychain, if not nil, is asked for a host's credentials when the
	// docker config has none (a cluster's pull secrets: kubesecrets).
	Keychain Keychain
}

// Keychain is a source of registry credentials by host.
type Keychain interface {
	// Lookup returns host's username and secret (an identity token with
	// no username), and whether it has any.
	Lookup(host string) (user, secret string, found bool)
}

// NewResolver returns a containerd resolver that fetches and pushes with
// the configured hosts, mirrors and credentials. Authentication follows the
// registry's WWW-Authenticate challenge: basic or bearer token. Its errors
// never show a URL's query or userinfo.
func NewResolver(ctx context.Context, opts Options) remotes.Resolver {
	return redactingResolver{&resolver{ctx: ctx, opts: opts, tracker: docker.NewInMemoryTracker()}}
}

// resolver is containerd's, made for each reference it is asked about:
// the credentials of a registry's hosts may be the ones kept for the
// reference's repository (KeepCredentials).
type resolver struct {
	ctx     context.Context
	opts    Options
	tracker docker.StatusTracker // one for all its pushers, as containerd's
}

func (r *resolver) forRef(ref string) remotes.Resolver {
	return docker.NewResolver(docker.ResolverOptions{Hosts: configureHosts(r.ctx, r.opts, locatorOf(ref)), Tracker: r.tracker})
}

func (r *resolver) Resolve(ctx context.Context, ref string) (string, ocispec.Descriptor, error) {
	return r.forRef(ref).Resolve(ctx, ref)
}

func (r *resolver) Fetcher(ctx context.Context, ref string) (remotes.Fetcher, error) {
	return r.forRef(ref).Fetcher(ctx, ref)
}

func (r *resolver) Pusher(ctx context.Context, ref string) (remotes.Pusher, error) {
	return r.forRef(ref).Pusher(ctx, ref)
}

// locatorOf is ref's host/repository, or "" if ref is none.
func locatorOf(ref string) string {
	spec, err := reference.Parse(ref)
	if err != nil {
		return ""
	}
	return spec.Locator
}

// configureHosts returns the hosts to reach a registry through (mirrors
// first), as containerd configures them, with redirects that keep
// credentials on the host they were configured for. The hosts of a
// registry are built once per hostsTTL and shared in the process (see
// sharedHosts); those of a repository with kept credentials are its own.
func configureHosts(ctx context.Context, opts Options, locator string) docker.RegistryHosts {
	return func(host string) ([]docker.RegistryHost, error) {
		return sharedHosts.get(ctx, opts, host, locator, false)
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
	opts    Options
	host    string
	locator string // set when credentials are kept for the repository
}

type cachedHosts struct {
	hosts []docker.RegistryHost
	built time.Time
}

type hostsCache struct {
	mu    sync.Mutex
	byKey map[hostsKey]cachedHosts
}

// get returns the hosts of a registry, for the repository locator,
// built anew when they are older than hostsTTL or fresh is set (fresh
// authorizers: an expired token an authorizer still trusts); those are
// shared from then on.
func (c *hostsCache) get(ctx context.Context, opts Options, host, locator string, fresh bool) ([]docker.RegistryHost, error) {
	key := hostsKey{opts: opts, host: host}
	if kept.has(locator) {
		key.locator = locator
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if e, ok := c.byKey[key]; ok && !fresh && time.Since(e.built) < hostsTTL {
		return e.hosts, nil
	}
	hosts, err := buildHosts(ctx, opts, host, key.locator)
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

func buildHosts(ctx context.Context, opts Options, host, locator string) ([]docker.RegistryHost, error) {
	hostOpts := hostOptions(opts)
	hostOpts.Credentials = credentialsFor(opts, host, locator)
	hosts, err := config.ConfigureHosts(ctx, hostOpts)(host)
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

// hostOptions turns Options into containerd's host configuration, but for
// credentials (credentialsFor).
func hostOptions(opts Options) config.HostOptions {
	hostsDir := opts.HostsDir
	if hostsDir == "" {
		hostsDir = DefaultHostsDir
	}
	hostOpts := config.HostOptions{
		HostDir: config.HostDirFromRoot(hostsDir),
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

package remote

import (
	"fmt"
	"sync"
	"time"

	"github.com/containerd/containerd/v2/pkg/reference"
)

// Kept credentials are those a pull was given for one repository (a
// Kubernetes pull secret, handed over by the CRI image-service proxy): the
// lazy layers of its images read with them long after the pull, and
// re-authenticate with them when a token expires. They live in this
// process's memory only, never on disk or in a log, and serve only the
// repository they were given for: on a node of many tenants one tenant's
// secret must not open another's image on the same registry.
var kept = &keptCredentials{byRepo: make(map[string]keptCredential)}

// maxKeptRepositories bounds what a stream of pulls can make us hold; the
// least recently given go first.
const maxKeptRepositories = 4096

type keptCredential struct {
	user, secret string
	given        time.Time
}

type keptCredentials struct {
	mu     sync.Mutex
	byRepo map[string]keptCredential // by reference locator: host/repository
}

// KeepCredentials keeps user and secret (a password, or with no user an
// identity token) for the repository of ref, replacing what was kept for
// it; empty ones forget it. undo puts back what was kept before.
func KeepCredentials(ref, user, secret string) (undo func(), err error) {
	spec, err := reference.Parse(ref)
	if err != nil {
		return nil, fmt.Errorf("keep credentials for %q: %w", ref, err)
	}
	kept.mu.Lock()
	defer kept.mu.Unlock()
	before, had := kept.byRepo[spec.Locator]
	undo = func() {
		kept.mu.Lock()
		defer kept.mu.Unlock()
		if had {
			kept.byRepo[spec.Locator] = before
		} else {
			delete(kept.byRepo, spec.Locator)
		}
	}
	if user == "" && secret == "" {
		delete(kept.byRepo, spec.Locator)
		return undo, nil
	}
	if !had && len(kept.byRepo) >= maxKeptRepositories {
		var oldest string
		for k, c := range kept.byRepo {
			if oldest == "" || c.given.Before(kept.byRepo[oldest].given) {
				oldest = k
			}
		}
		delete(kept.byRepo, oldest)
	}
	kept.byRepo[spec.Locator] = keptCredential{user: user, secret: secret, given: time.Now()}
	return undo, nil
}

// has tells whether credentials are kept for locator (host/repository).
func (k *keptCredentials) has(locator string) bool {
	k.mu.Lock()
	defer k.mu.Unlock()
	_, ok := k.byRepo[locator]
	return ok
}

// lookup returns the credentials kept for locator, if any.
func (k *keptCredentials) lookup(locator string) (string, string, bool) {
	k.mu.Lock()
	defer k.mu.Unlock()
	c, ok := k.byRepo[locator]
	return c.user, c.secret, ok
}

// credentialsFor is the credentials lookup of the hosts of registry when
// they serve repository locator: the credentials kept for it, given only
// to the registry itself (not to a mirror hosts.toml puts in front of
// it), else the docker config's, else the keychain's.
func credentialsFor(opts Options, registry, locator string) func(host string) (string, string, error) {
	fromConfig := NewCredentials(opts.DockerConfigDir).Lookup
	return func(host string) (string, string, error) {
		if locator != "" && sameRegistry(host, registry) {
			if user, secret, ok := kept.lookup(locator); ok {
				return user, secret, nil
			}
		}
		user, secret, err := fromConfig(host)
		if err != nil || user != "" || secret != "" || opts.Keychain == nil {
			return user, secret, err
		}
		user, secret, _ = opts.Keychain.Lookup(host)
		return user, secret, nil
	}
}

// sameRegistry tells whether a request to host goes to registry itself:
// Docker Hub's API lives on another name than its references use.
func sameRegistry(host, registry string) bool {
	if host == registry {
		return true
	}
	return registry == "docker.io" && (host == "registry-1.docker.io" || host == "index.docker.io")
}

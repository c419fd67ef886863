package testenv

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// Registry is Debian's docker-registry (Distribution 2.8) serving plain
// HTTP on a free loopback port.
type Registry struct {
	Host string // host:port, as in image references
	*Process
}

// StartRegistry starts a registry that stores its blobs under dir.
func StartRegistry(dir string) (*Registry, error) {
	bin, err := lookPath("docker-registry")
	if err != nil {
		return nil, err
	}
	addr, err := FreeLoopbackAddr()
	if err != nil {
		return nil, err
	}
	config := fmt.Sprintf(`version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: %s
  delete:
    enabled: true
http:
  addr: %s
`, filepath.Join(dir, "data"), addr)
	configPath := filepath.Join(dir, "registry.yml")
	if err := os.WriteFile(configPath, []byte(config), 0o644); err != nil {
		return nil, err
	}
	p, err := startProcess(dir, bin, "serve", configPath)
	if err != nil {
		return nil, err
	}
	if err := p.waitUntil(30*time.Second, func() error { return httpOK("http://" + addr + "/v2/") }); err != nil {
		p.Stop(5 * time.Second)
		return nil, err
	}
	return &Registry{Host: addr, Process: p}, nil
}

// NewRegistry starts a registry for a test and stops it when the test ends.
func NewRegistry(t testing.TB) *Registry {
	t.Helper()
	NeedBinary(t, "docker-registry")
	reg, err := StartRegistry(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := reg.Stop(5 * time.Second); err != nil {
			t.Error(err)
		}
	})
	return reg
}

package testenv

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// Namespace is the containerd namespace the environment works in.
const Namespace = "lazypull-test"

// Containerd is Debian's containerd with a root, state and socket of its own,
// and our daemon registered as the proxy snapshotter "lazypull".
type Containerd struct {
	Address string // the gRPC socket
	dir     string
	*Process
}

// StartContainerd starts containerd under dir with a proxy snapshot plugin
// named lazypull at snapshotterSocket, and one for each of others (name →
// socket): other snapshotters a benchmark compares.
func StartContainerd(dir, snapshotterSocket string, others map[string]string) (*Containerd, error) {
	bin, err := lookPath("containerd")
	if err != nil {
		return nil, err
	}
	if _, err := lookPath("runc"); err != nil {
		return nil, err
	}
	address := filepath.Join(dir, "containerd.sock")
	// Version 2 is the format containerd 1.6 reads and 2.x still accepts.
	config := fmt.Sprintf(`version = 2
root = %q
state = %q
disabled_plugins = ["io.containerd.grpc.v1.cri"]

[grpc]
  address = %q

[plugins."io.containerd.internal.v1.opt"]
  path = %q

[proxy_plugins.lazypull]
  type = "snapshot"
  address = %q
`, filepath.Join(dir, "root"), filepath.Join(dir, "state"), address, filepath.Join(dir, "opt"), snapshotterSocket)
	for name, socket := range others {
		config += fmt.Sprintf("\n[proxy_plugins.%q]\n  type = \"snapshot\"\n  address = %q\n", name, socket)
	}
	configPath := filepath.Join(dir, "containerd.toml")
	if err := os.WriteFile(configPath, []byte(config), 0o644); err != nil {
		return nil, err
	}
	p, err := startProcess(dir, bin, "--config", configPath, "--log-level", "info")
	if err != nil {
		return nil, err
	}
	c := &Containerd{Address: address, dir: dir, Process: p}
	if err := p.waitUntil(60*time.Second, func() error { return dialUnix(address) }); err != nil {
		c.Stop()
		return nil, err
	}
	return c, nil
}

// Ctr runs Debian's ctr against this containerd in Namespace and returns
// its standard output; the error carries standard error.
func (c *Containerd) Ctr(ctx context.Context, args ...string) (string, error) {
	bin, err := lookPath("ctr")
	if err != nil {
		return "", err
	}
	full := append([]string{"--address", c.Address, "--namespace", Namespace}, args...)
	cmd := exec.CommandContext(ctx, bin, full...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String(), fmt.Errorf("ctr %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return stdout.String(), nil
}

// Stop removes every container and task (so that their shims exit), stops
// containerd and kills any shim still running for it.
func (c *Containerd) Stop() error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if exited, _ := c.Exited(); !exited {
		if out, err := c.Ctr(ctx, "containers", "ls", "-q"); err == nil {
			for _, id := range strings.Fields(out) {
				c.Ctr(ctx, "tasks", "kill", "-s", "SIGKILL", id)
				c.Ctr(ctx, "tasks", "delete", "-f", id)
				c.Ctr(ctx, "containers", "delete", id)
			}
		}
	}
	err := c.Process.Stop(15 * time.Second)
	// A shim is started with -address <our socket>; one left behind would
	// keep the container's mounts alive.
	killProcessesMentioning(c.Address)
	return err
}

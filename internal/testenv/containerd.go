package testenv

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/containerd/platforms"
)

// Namespace is the containerd namespace the environment works in.
const Namespace = "lazypull-test"

// Containerd2Version is the containerd 2.x release that
// scripts/install-deps.sh builds from containerd's Go module (keep the two
// in step: TestContainerd2MatchesInstallScript checks).
const Containerd2Version = "v2.2.9"

// A ContainerdRelease is a containerd the environment can start: where its
// programs are and which configuration format it reads.
type ContainerdRelease struct {
	Name string // "1.6", "2.2.9": names subtests; the daemon's version must start with it
	// BinDir holds its containerd, ctr and containerd-shim-runc-v2; empty
	// for the ones on PATH (Debian's package).
	BinDir string
	Major  int // 1 or 2: which configuration it reads, whether ctr pulls through the transfer service
}

var (
	// Containerd16 is Debian 12's containerd package (1.6, out of support).
	Containerd16 = ContainerdRelease{Name: "1.6", Major: 1}
	// Containerd2 is the 2.x release that users run, built by
	// scripts/install-deps.sh into a cache outside the tree.
	Containerd2 = ContainerdRelease{
		Name:   strings.TrimPrefix(Containerd2Version, "v"),
		BinDir: filepath.Join("/var/cache/lazypull", "containerd-"+Containerd2Version, "bin"),
		Major:  2,
	}
	// ContainerdReleases are the releases the e2e suite runs against.
	ContainerdReleases = []ContainerdRelease{Containerd16, Containerd2}
)

// ContainerdByName returns the release of that name ("1.6" or "2" for the
// 2.x one, or its full name), for a command-line flag.
func ContainerdByName(name string) (ContainerdRelease, error) {
	for _, r := range ContainerdReleases {
		if name == r.Name || strings.HasPrefix(r.Name, name+".") {
			return r, nil
		}
	}
	var names []string
	for _, r := range ContainerdReleases {
		names = append(names, r.Name)
	}
	return ContainerdRelease{}, fmt.Errorf("no containerd release %q: choose one of %s", name, strings.Join(names, ", "))
}

// program finds one of the release's programs.
func (r ContainerdRelease) program(name string) (string, error) {
	if r.BinDir == "" {
		return lookPath(name)
	}
	path := filepath.Join(r.BinDir, name)
	if _, err := os.Stat(path); err != nil {
		return "", &missingError{program: "containerd " + r.Name, err: fmt.Errorf("containerd %s: %s not found in %s: build it with scripts/install-deps.sh (make test does)", r.Name, name, r.BinDir)}
	}
	return path, nil
}

// Installed tells whether the release's programs are all there; the error
// says how to install what is missing.
func (r ContainerdRelease) Installed() error {
	names := []string{"containerd", "ctr"}
	if r.BinDir != "" {
		names = append(names, "containerd-shim-runc-v2")
	}
	for _, name := range names {
		if _, err := r.program(name); err != nil {
			return err
		}
	}
	return nil
}

// config is containerd's configuration in the release's format: a root,
// state and socket under dir, and a proxy snapshot plugin for each of
// snapshotters (name → socket); the CRI plugin off, unless cri is not nil.
func (r ContainerdRelease) config(dir string, snapshotters map[string]string, cri *CRI) string {
	names := slices.Sorted(maps.Keys(snapshotters))
	// The CRI plugin stays off unless a test drives containerd as the
	// kubelet does: it wants CNI and slows the start, and the other tests
	// drive containerd through its own API.
	var off []string
	if cri == nil {
		off = append(off, `"io.containerd.grpc.v1.cri"`)
	}
	version := 2 // what 1.6 reads
	if r.Major >= 2 {
		version = 3
		// 2.x split CRI in three, and its pod sandbox controller needs
		// it.
		if cri == nil {
			off = append(off, `"io.containerd.cri.v1.images"`, `"io.containerd.cri.v1.runtime"`, `"io.containerd.podsandbox.controller.v1.podsandbox"`)
		}
		// Its NRI plugin would listen on one socket for the whole
		// machine.
		off = append(off, `"io.containerd.nri.v1.nri"`)
	}
	disabled := strings.Join(off, ", ")
	config := fmt.Sprintf(`version = %d
root = %q
state = %q
disabled_plugins = [%s]

[grpc]
  address = %q

[plugins."io.containerd.internal.v1.opt"]
  path = %q
`, version, filepath.Join(dir, "root"), filepath.Join(dir, "state"), disabled,
		filepath.Join(dir, "containerd.sock"), filepath.Join(dir, "opt"))
	if r.Major >= 2 {
		// 2.x's ctr pulls through the transfer service, which unpacks
		// only into the snapshotters listed here (else: "no unpack
		// platforms defined").
		for _, name := range append([]string{"overlayfs"}, names...) {
			config += fmt.Sprintf("\n[[plugins.\"io.containerd.transfer.v1.local\".unpack_config]]\n  platform = %q\n  snapshotter = %q\n",
				platforms.DefaultString(), name)
		}
	}
	if cri != nil {
		config += cri.config(r)
	}
	for _, name := range names {
		if snapshotters[name] == "" {
			continue // containerd's own
		}
		config += fmt.Sprintf("\n[proxy_plugins.%q]\n  type = \"snapshot\"\n  address = %q\n", name, snapshotters[name])
		if r.Major >= 2 {
			// The transfer service then gives the snapshotter the CRI
			// labels (image, layer, manifest), so that `ctr image pull`
			// mounts lazily too; 1.6 has no such switch.
			config += fmt.Sprintf("  [proxy_plugins.%q.exports]\n    enable_remote_snapshot_annotations = \"true\"\n", name)
		}
	}
	return config
}

// WithContainerd starts this containerd release rather than the default,
// Containerd2.
func WithContainerd(r ContainerdRelease) Option {
	return func(e *Env) error {
		e.ContainerdRelease = r
		return nil
	}
}

// ForEachContainerd runs test once for each of ContainerdReleases, as a
// subtest named after it ("containerd-1.6"), with the Option that makes New
// start that release. A release that is not installed fails its subtest in
// CI and skips it elsewhere.
func ForEachContainerd(t *testing.T, test func(t *testing.T, containerd Option)) {
	for _, r := range ContainerdReleases {
		t.Run("containerd-"+r.Name, func(t *testing.T) {
			Need(t, "containerd "+r.Name, r.Installed())
			test(t, WithContainerd(r))
		})
	}
}

// Containerd is a containerd with a root, state and socket of its own, and
// our daemon registered as the proxy snapshotter "lazypull".
type Containerd struct {
	Address string // the gRPC socket
	Release ContainerdRelease
	Version string // as the running daemon reports it
	CtrPath string // the release's ctr, which Ctr runs
	dir     string
	inside  []string // the command prefix that runs ctr rootless, if containerd is
	*Process
}

// StartContainerd starts containerd release r under dir with a proxy
// snapshot plugin named lazypull at snapshotterSocket, and one for each of
// others (name → socket): other snapshotters a benchmark compares. An
// empty socket names one of containerd's own snapshotters (erofs), which
// 2.x is then told to unpack into.
func StartContainerd(r ContainerdRelease, dir, snapshotterSocket string, others map[string]string) (*Containerd, error) {
	return startContainerd(r, dir, snapshotterSocket, others, nil, nil)
}

// startContainerd is StartContainerd with the CRI plugin on, if cri is not
// nil, and rootless if rl is not nil.
func startContainerd(r ContainerdRelease, dir, snapshotterSocket string, others map[string]string, cri *CRI, rl *Rootless) (*Containerd, error) {
	if err := r.Installed(); err != nil {
		return nil, err
	}
	bin, _ := r.program("containerd")
	ctr, _ := r.program("ctr")
	if _, err := lookPath("runc"); err != nil {
		return nil, err
	}
	snapshotters := map[string]string{"lazypull": snapshotterSocket}
	for name, socket := range others {
		snapshotters[name] = socket
	}
	configPath := filepath.Join(dir, "containerd.toml")
	if err := os.WriteFile(configPath, []byte(r.config(dir, snapshotters, cri)), 0o644); err != nil {
		return nil, err
	}
	// containerd finds its shim on PATH: the release's own comes first.
	var env []string
	if r.BinDir != "" {
		env = []string{"PATH=" + r.BinDir + string(os.PathListSeparator) + os.Getenv("PATH")}
	}
	var wrap []string
	if rl != nil {
		wrap = rl.rootlesskit()
	}
	p, err := startWrapped(dir, env, wrap, bin, "--config", configPath, "--log-level", "info")
	if err != nil {
		return nil, err
	}
	c := &Containerd{Address: filepath.Join(dir, "containerd.sock"), Release: r, CtrPath: ctr, dir: dir, Process: p}
	if err := p.waitUntil(60*time.Second, func() error { return dialUnix(c.Address) }); err != nil {
		c.Stop()
		return nil, err
	}
	if rl != nil {
		// ctr runs in its namespaces, as the user: its FIFOs are
		// where the shims look.
		if c.inside, err = rl.inside(); err != nil {
			c.Stop()
			return nil, err
		}
	}
	if err := c.check(); err != nil {
		c.Stop()
		return nil, err
	}
	return c, nil
}

// check asks the daemon its version: a test named for a release must run
// against that release, whatever else is on PATH. 2.x also says what in its
// configuration is deprecated: nothing must be, so that a newer release
// finds the configuration as current as this one did.
func (c *Containerd) check() error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := c.Ctr(ctx, "version")
	if err != nil {
		return err
	}
	// Server:\n  Version:  1.6.20~ds1\n …
	_, server, _ := strings.Cut(out, "Server:")
	if fields := strings.Fields(server); len(fields) >= 2 && fields[0] == "Version:" {
		c.Version = strings.TrimPrefix(fields[1], "v")
	}
	// 1.6.20~ds1 is 1.6; 2.2.9+unknown (a build from the module) is 2.2.9.
	rest, ok := strings.CutPrefix(c.Version, c.Release.Name)
	if !ok || rest != "" && rest[0] >= '0' && rest[0] <= '9' {
		return fmt.Errorf("started containerd %s from %s, but it reports version %q:\n%s", c.Release.Name, c.Process.cmd.Path, c.Version, out)
	}
	if c.Release.Major < 2 {
		return nil
	}
	if out, err = c.Ctr(ctx, "deprecations", "list", "--format", "json"); err != nil {
		return err
	}
	var warnings []struct{ ID, Message string }
	if strings.TrimSpace(out) != "" {
		if err := json.Unmarshal([]byte(out), &warnings); err != nil {
			return fmt.Errorf("ctr deprecations list: %w: %q", err, out)
		}
	}
	for _, w := range warnings {
		// cgroup v1 is the machine's, not the configuration's.
		if w.ID != "io.containerd.deprecation/cgroup-v1" {
			return fmt.Errorf("containerd %s deprecates what testenv configured (%s): %s; update ContainerdRelease.config", c.Version, w.ID, w.Message)
		}
	}
	return nil
}

// CtrCommand is the release's ctr with args against this containerd in
// Namespace, for a caller that reads its output as it comes.
func (c *Containerd) CtrCommand(ctx context.Context, args ...string) *exec.Cmd {
	full := slices.Concat(c.inside, []string{c.CtrPath, "--address", c.Address, "--namespace", Namespace}, args)
	cmd := exec.CommandContext(ctx, full[0], full[1:]...)
	// 2.x's ctr prints containerd's deprecations (cgroup v1 on this
	// machine) before every error; check says them once.
	cmd.Env = append(os.Environ(), "CONTAINERD_SUPPRESS_DEPRECATION_WARNINGS=1")
	return cmd
}

// Ctr runs the release's ctr against this containerd in Namespace and
// returns its standard output; the error carries standard error.
func (c *Containerd) Ctr(ctx context.Context, args ...string) (string, error) {
	cmd := c.CtrCommand(ctx, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String(), fmt.Errorf("ctr %s (containerd %s): %w: %s", strings.Join(args, " "), c.Release.Name, err, strings.TrimSpace(stderr.String()))
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
	// keep the container's mounts alive. Our FUSE manager names the socket
	// too (--containerd-address): it stops by itself, unmounting its
	// layers, and a SIGKILL would leave them mounted.
	killProcessesMentioning("containerd-shim", c.Address)
	return err
}

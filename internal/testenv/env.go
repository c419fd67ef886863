package testenv

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/lazypull/lazypull/fusemanager"
)

// Env is a private stack under one directory: a registry, our daemon, and a
// containerd that uses it as the proxy snapshotter "lazypull".
type Env struct {
	Dir        string
	BinDir     string // our binaries, built from this source tree
	Registry   *Registry
	Daemon     *Process
	Containerd *Containerd

	// ContainerdRelease is the containerd it starts: Containerd2 unless
	// WithContainerd says otherwise.
	ContainerdRelease ContainerdRelease

	DaemonRoot   string
	DaemonSocket string

	// Snapshotters besides ours and overlayfs that containerd is told of,
	// by name: their sockets (WithProxySnapshotter), "" for containerd's
	// own (WithBuiltinSnapshotter).
	Snapshotters map[string]string

	// CRI, if not nil, turns containerd's CRI plugin on (WithCRI).
	CRI *CRI
	// Rootless, if not nil, runs containerd and our daemon as an
	// unprivileged user (WithRootless).
	Rootless *Rootless
}

// New starts an Env for a test and tears it down when the test ends. It
// needs root, Debian's runc, docker-registry and skopeo, and the containerd
// release it starts (ForEachContainerd runs a test against each).
func New(t testing.TB, opts ...Option) *Env {
	t.Helper()
	NeedRoot(t)
	for _, prog := range []string{"runc", "docker-registry", "skopeo"} {
		NeedBinary(t, prog)
	}
	env, err := Start("", opts...)
	var missing *missingError
	if errors.As(err, &missing) {
		Need(t, missing.program, err)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := env.Close(); err != nil {
			t.Error(err)
		}
	})
	return env
}

// Start builds our binaries and starts the stack under a new directory in
// parent (the system's temporary directory when empty).
func Start(parent string, opts ...Option) (_ *Env, err error) {
	// Short paths: unix socket paths must fit in 108 bytes.
	dir, err := os.MkdirTemp(parent, "lazypull-")
	if err != nil {
		return nil, err
	}
	e := &Env{
		Dir:          dir,
		BinDir:       filepath.Join(dir, "bin"),
		DaemonRoot:   filepath.Join(dir, "lazypull"),
		DaemonSocket: filepath.Join(dir, "lazypull.sock"),
		// What users run; the demo and the benchmark start it by default.
		ContainerdRelease: Containerd2,
	}
	defer func() {
		if err != nil {
			if cerr := e.Close(); cerr != nil {
				err = fmt.Errorf("%w (and tearing down: %v)", err, cerr)
			}
		}
	}()
	if err := BuildCommands(e.BinDir); err != nil {
		return e, err
	}
	for _, o := range opts {
		if err := o(e); err != nil {
			return e, err
		}
	}
	for _, sub := range []string{"registry", "containerd"} {
		if err := os.MkdirAll(filepath.Join(dir, sub), 0o700); err != nil {
			return e, err
		}
	}
	if e.Registry, err = StartRegistry(filepath.Join(dir, "registry")); err != nil {
		return e, err
	}
	if e.CRI != nil {
		if err := e.CRI.setUp(e); err != nil {
			return e, err
		}
	}
	if e.Rootless != nil {
		// The daemon joins containerd's namespaces: containerd first.
		if err := e.Rootless.setUp(e); err != nil {
			return e, err
		}
		if e.Containerd, err = startContainerd(e.ContainerdRelease, filepath.Join(dir, "containerd"), e.DaemonSocket, e.Snapshotters, e.CRI, e.Rootless); err != nil {
			return e, err
		}
		return e, e.StartDaemon()
	}
	if err := e.StartDaemon(); err != nil {
		return e, err
	}
	if e.Containerd, err = startContainerd(e.ContainerdRelease, filepath.Join(dir, "containerd"), e.DaemonSocket, e.Snapshotters, e.CRI, nil); err != nil {
		return e, err
	}
	return e, nil
}

// Option sets the Env up before it starts.
type Option func(*Env) error

// WithBuiltinSnapshotter has containerd (2.x) unpack into one of its own
// snapshotters other than overlayfs, such as erofs, when a pull names it.
func WithBuiltinSnapshotter(name string) Option {
	return func(e *Env) error { e.addSnapshotter(name, ""); return nil }
}

func (e *Env) addSnapshotter(name, socket string) {
	if e.Snapshotters == nil {
		e.Snapshotters = make(map[string]string)
	}
	e.Snapshotters[name] = socket
}

// WithProxySnapshotter tells containerd of another snapshotter, name,
// served on the socket Env.Dir/name.sock by a daemon the caller starts.
func WithProxySnapshotter(name string) Option {
	return func(e *Env) error { e.addSnapshotter(name, filepath.Join(e.Dir, name+".sock")); return nil }
}

// WithDaemonConfig gives our daemon (and its FUSE manager) this TOML
// configuration.
func WithDaemonConfig(toml string) Option {
	return func(e *Env) error { return os.WriteFile(e.ConfigPath(), []byte(toml), 0o644) }
}

// StartDaemon starts lazypull-snapshotter on the Env's root and socket.
// Once containerd runs, it returns only when containerd's calls reach the
// new daemon.
func (e *Env) StartDaemon(extraArgs ...string) error {
	args := append([]string{
		"--root", e.DaemonRoot,
		"--address", e.DaemonSocket,
		"--config", e.ConfigPath(),
		"--log-level", "debug",
		// Where StartContainerd puts it (it starts after the daemon).
		"--containerd-address", filepath.Join(e.Dir, "containerd", "containerd.sock"),
	}, extraArgs...)
	if e.CRI != nil {
		args = append(args, "--cri-image-service-address", e.CRI.ImageService)
	}
	var env, wrap []string
	if e.Rootless != nil {
		var err error
		if wrap, err = e.Rootless.inside(); err != nil {
			return err
		}
		// Its docker config is its own (root's home is closed to it).
		env = []string{"HOME=" + e.Dir}
	}
	p, err := startWrapped(e.Dir, env, wrap, filepath.Join(e.BinDir, "lazypull-snapshotter"), args...)
	if err != nil {
		return err
	}
	ready := func() error { return dialUnix(e.DaemonSocket) }
	if e.Containerd != nil {
		// Once a call to a proxy snapshotter has failed (it was down),
		// containerd redials it only after a backoff (about 1 s, growing
		// to 3 s), during which every call fails though our socket
		// serves: ready once a call reaches the daemon.
		ready = e.reachDaemon
	}
	if err := p.waitUntil(30*time.Second, ready); err != nil {
		p.Stop(5 * time.Second)
		return err
	}
	e.Daemon = p
	return nil
}

// reachDaemon makes a call that containerd passes on to our daemon: it
// answers listing snapshots from its own database, so this prepares an
// empty snapshot and removes it.
func (e *Env) reachDaemon() error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	const key = "testenv-reach-daemon"
	if _, err := e.Containerd.Ctr(ctx, "snapshots", "--snapshotter", "lazypull", "prepare", key); err != nil {
		return err
	}
	_, err := e.Containerd.Ctr(ctx, "snapshots", "--snapshotter", "lazypull", "rm", key)
	return err
}

// RestartDaemon stops our daemon (SIGTERM) and starts it again, and
// returns once containerd reaches the new one. Its FUSE manager keeps
// running, with the configuration it started with.
func (e *Env) RestartDaemon() error {
	if e.Daemon != nil {
		if err := e.Daemon.Stop(15 * time.Second); err != nil {
			return err
		}
	}
	return e.StartDaemon()
}

// ConfigPath is the daemon's configuration file (absent unless a test
// writes it).
func (e *Env) ConfigPath() string { return filepath.Join(e.Dir, "lazypull.toml") }

// Close stops everything the Env started, by PID, unmounts whatever is left
// under its directory and removes it. It reports leaked mounts as errors.
func (e *Env) Close() error {
	var errs []error
	if e.Containerd != nil {
		errs = append(errs, e.Containerd.Stop())
	}
	if e.Daemon != nil {
		errs = append(errs, e.Daemon.Stop(15*time.Second))
	}
	// The daemon's FUSE manager outlives it by design: stop it by its pid.
	errs = append(errs, fusemanager.Stop(e.DaemonRoot, 15*time.Second))
	if e.Registry != nil {
		errs = append(errs, e.Registry.Stop(5*time.Second))
	}
	if e.Rootless != nil {
		errs = append(errs, e.Rootless.close())
	}
	if leaked := MountsUnder(e.Dir); len(leaked) > 0 {
		errs = append(errs, fmt.Errorf("mounts left under %s after shutdown (now unmounted): %s", e.Dir, strings.Join(leaked, ", ")))
		errs = append(errs, UnmountAll(leaked))
	}
	errs = append(errs, os.RemoveAll(e.Dir))
	return errors.Join(errs...)
}

// MountsUnder lists the mountpoints at or below dir, deepest first.
func MountsUnder(dir string) []string {
	// mountinfo has real paths: resolve /tmp links and relative names.
	if abs, err := filepath.Abs(dir); err == nil {
		dir = abs
	}
	if real, err := filepath.EvalSymlinks(dir); err == nil {
		dir = real
	}
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil
	}
	defer f.Close()
	var found []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 5 {
			continue
		}
		mp := unescapeMountinfo(fields[4])
		if mp == dir || strings.HasPrefix(mp, dir+"/") {
			found = append(found, mp)
		}
	}
	sort.Slice(found, func(i, j int) bool { return len(found[i]) > len(found[j]) })
	return found
}

// unescapeMountinfo undoes the octal escapes (\040 for a space) of mountinfo.
func unescapeMountinfo(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			var c byte
			if _, err := fmt.Sscanf(s[i+1:i+4], "%03o", &c); err == nil {
				b.WriteByte(c)
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// UnmountAll detaches every mountpoint given (MountsUnder's list).
func UnmountAll(mountpoints []string) error {
	var errs []error
	for _, mp := range mountpoints {
		if err := unix.Unmount(mp, unix.MNT_DETACH); err != nil && err != unix.EINVAL {
			errs = append(errs, fmt.Errorf("unmount %s: %w", mp, err))
		}
	}
	return errors.Join(errs...)
}

// SourceRoot is the root of lazypull's source tree (the module).
func SourceRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..")
}

// BuildCommands builds lazypull's commands (cmd/...) into dir.
func BuildCommands(dir string) error {
	return goBuild(dir+"/", "./cmd/...", nil) // the slash: a directory even for one command
}

// BuildHello builds the test image's static hello program into dir.
func BuildHello(dir string) (string, error) {
	out := filepath.Join(dir, "hello")
	return out, goBuild(out, "./internal/testenv/hello", []string{"CGO_ENABLED=0"})
}

func goBuild(out, pkg string, env []string) error {
	cmd := exec.Command("go", "build", "-o", out, pkg)
	cmd.Dir = SourceRoot()
	cmd.Env = append(os.Environ(), env...)
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go build %s: %w: %s", pkg, err, b)
	}
	return nil
}

// KillDaemon kills our daemon with SIGKILL, as the OOM killer would.
func (e *Env) KillDaemon() {
	if e.Daemon != nil {
		e.Daemon.Kill()
		e.Daemon = nil
	}
}

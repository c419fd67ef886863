package runner

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/pelletier/go-toml/v2"

	"github.com/lazypull/lazypull/internal/testenv"
)

var scenarioName = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]*$`)

// LoadScenario reads a scenario file (see Scenario), refusing unknown keys.
func LoadScenario(path string) (Scenario, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return Scenario{}, err
	}
	var sc Scenario
	dec := toml.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&sc); err != nil {
		var unknown *toml.StrictMissingError
		if errors.As(err, &unknown) {
			var keys []string
			for _, e := range unknown.Errors {
				keys = append(keys, strings.Join(e.Key(), "."))
			}
			return Scenario{}, fmt.Errorf("scenario %s: unknown keys %s (see Scenario in bench/runner/config.go)", path, strings.Join(keys, ", "))
		}
		return Scenario{}, fmt.Errorf("scenario %s: %w", path, err)
	}
	switch {
	case !scenarioName.MatchString(sc.Name):
		return Scenario{}, fmt.Errorf("scenario %s: name %q: want lower-case letters, digits, '.', '_' or '-'", path, sc.Name)
	case sc.Format != "" && sc.Format != "estargz" && sc.Format != "zstdchunked":
		return Scenario{}, fmt.Errorf("scenario %s: format %q: want \"\", estargz or zstdchunked", path, sc.Format)
	case sc.external() && (sc.Snapshotter == "" || sc.Snapshotter == "lazypull" || sc.Snapshotter == "overlayfs"):
		return Scenario{}, fmt.Errorf("scenario %s: a daemon needs a snapshotter name of its own (not %q)", path, sc.Snapshotter)
	case len(sc.Args) > 0 && len(sc.Images) == 0:
		return Scenario{}, fmt.Errorf("scenario %s: args are one image's workload: say which in images", path)
	case sc.Optimized && sc.Format != "estargz":
		return Scenario{}, fmt.Errorf("scenario %s: optimized needs format = \"estargz\" (only eStargz has a prefetch landmark)", path)
	case len(sc.ProfileArgs) > 0 && !sc.Profiled:
		return Scenario{}, fmt.Errorf("scenario %s: profile_args without profiled = true", path)
	}
	return sc, nil
}

// expand replaces {key} in each argument.
func expand(args []string, vars map[string]string) []string {
	out := make([]string, len(args))
	for i, a := range args {
		for k, v := range vars {
			a = strings.ReplaceAll(a, "{"+k+"}", v)
		}
		out[i] = a
	}
	return out
}

// daemon is a scenario's snapshotter daemon, which the runner runs: one
// instance at a time, each started on an empty root of its own for a cold
// run.
//
// containerd reaches it through the scenario's socket path, which is a
// symlink to the current instance's socket. A restart starts the new
// instance, points the symlink at it once it serves, and only then stops
// the old one, so that containerd never finds the path without a daemon
// behind it. containerd 1.6 redials a proxy snapshotter as soon as its
// connection drops and, failing while no daemon serves, waits out a
// backoff (about 1 s, growing to 3 s) during which every call fails with
// "connection refused": with a stop-then-start restart, the pull that
// follows the restart did.
type daemon struct {
	sc     Scenario
	bin    string // lazypull's binaries, for {bin}
	dir    string // instances, config and log live here
	socket string // the path containerd dials: a symlink to cur's socket
	cur    *instance
	count  int // instances started
}

// instance is one process of a daemon, with its own root and socket.
type instance struct {
	n      int
	dir    string
	cmd    *exec.Cmd
	exited chan struct{} // closed once cmd has been waited for
}

func (in *instance) root() string   { return filepath.Join(in.dir, "root") }
func (in *instance) socket() string { return filepath.Join(in.dir, "d.sock") }

func newDaemon(sc Scenario, env *testenv.Env) *daemon {
	return &daemon{sc: sc, bin: env.BinDir, dir: filepath.Join(env.Dir, "scenario-"+sc.Name), socket: env.Snapshotters[sc.Snapshotter]}
}

func (d *daemon) logPath() string { return filepath.Join(d.dir, "daemon.log") }

// start starts a new instance on an empty root, waits for its socket,
// points the scenario's socket at it, then stops the previous instance (if
// any) and removes its state.
func (d *daemon) start() error {
	d.count++
	in := &instance{n: d.count, dir: filepath.Join(d.dir, strconv.Itoa(d.count))}
	if err := os.MkdirAll(in.root(), 0o700); err != nil {
		return err
	}
	config := filepath.Join(d.dir, "config.toml")
	if err := os.WriteFile(config, []byte(d.sc.Config), 0o644); err != nil {
		return err
	}
	args := expand(d.sc.Daemon, map[string]string{"socket": in.socket(), "root": in.root(), "config": config, "bin": d.bin})
	// Every instance appends to one log; the runner's own lines there say
	// which instance wrote what, as the old one's shutdown follows the new
	// one's start.
	log, err := os.OpenFile(d.logPath(), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer log.Close() // the child has its own copy
	in.cmd = exec.Command(args[0], args[1:]...)
	in.cmd.Stdout, in.cmd.Stderr = log, log
	in.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := in.cmd.Start(); err != nil {
		return fmt.Errorf("scenario %s: start %s: %w", d.sc.Name, args[0], err)
	}
	fmt.Fprintf(log, "--- bench: instance %d (pid %d) started on %s\n", in.n, in.cmd.Process.Pid, in.root())
	in.exited = make(chan struct{})
	go func() { in.cmd.Wait(); close(in.exited) }()
	if err := d.waitServing(in, args[0]); err != nil {
		d.stopInstance(in)
		return err
	}
	if err := pointSymlink(d.socket, in.socket()); err != nil {
		d.stopInstance(in)
		return fmt.Errorf("scenario %s: %w", d.sc.Name, err)
	}
	old := d.cur
	d.cur = in
	if old == nil {
		return nil
	}
	if err := d.stopInstance(old); err != nil {
		return err
	}
	return os.RemoveAll(old.dir)
}

// waitServing waits until the instance accepts connections on its socket.
func (d *daemon) waitServing(in *instance, prog string) error {
	deadline := time.Now().Add(60 * time.Second)
	for {
		if c, err := net.Dial("unix", in.socket()); err == nil {
			c.Close()
			return nil
		}
		select {
		case <-in.exited:
			return fmt.Errorf("scenario %s: %s exited before serving %s (log: %s)", d.sc.Name, prog, in.socket(), d.logPath())
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("scenario %s: %s did not serve %s within a minute (log: %s)", d.sc.Name, prog, in.socket(), d.logPath())
		}
	}
}

// pointSymlink makes link a symlink to target, replacing what was there
// in one rename, so that a client dialing link never finds it missing.
func pointSymlink(link, target string) error {
	tmp := link + ".new"
	os.Remove(tmp)
	if err := os.Symlink(target, tmp); err != nil {
		return err
	}
	if err := os.Rename(tmp, link); err != nil {
		os.Remove(tmp)
		return err
	}
	return nil
}

// stopInstance ends an instance (SIGTERM, then SIGKILL to its process
// group), and unmounts whatever it left mounted under its directory.
func (d *daemon) stopInstance(in *instance) error {
	var errs []error
	if log, err := os.OpenFile(d.logPath(), os.O_WRONLY|os.O_APPEND, 0o644); err == nil {
		fmt.Fprintf(log, "--- bench: stopping instance %d (pid %d)\n", in.n, in.cmd.Process.Pid)
		log.Close()
	}
	in.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-in.exited:
	case <-time.After(15 * time.Second):
		syscall.Kill(-in.cmd.Process.Pid, syscall.SIGKILL)
		<-in.exited
		errs = append(errs, fmt.Errorf("scenario %s: the daemon ignored SIGTERM for 15 s; killed", d.sc.Name))
	}
	errs = append(errs, testenv.UnmountAll(testenv.MountsUnder(in.dir)))
	return errors.Join(errs...)
}

// stop ends the current instance.
func (d *daemon) stop() error {
	if d.cur == nil {
		return nil
	}
	in := d.cur
	d.cur = nil
	return d.stopInstance(in)
}

// reset gives the daemon a cold start: a new instance on an empty root,
// the old one stopped and its state removed.
func (d *daemon) reset() error { return d.start() }

// alive tells whether the current instance is still running, and if not
// how it ended, for a run that fails to reach it.
func (d *daemon) alive() error {
	if d.cur == nil {
		return fmt.Errorf("scenario %s: no daemon running", d.sc.Name)
	}
	select {
	case <-d.cur.exited:
		return fmt.Errorf("scenario %s: its daemon (pid %d) has exited: %v (log: %s)", d.sc.Name, d.cur.cmd.Process.Pid, d.cur.cmd.ProcessState, d.logPath())
	default:
		return nil
	}
}

func (d *daemon) pid() int {
	if d.cur == nil {
		return 0
	}
	return d.cur.cmd.Process.Pid
}

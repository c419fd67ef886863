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
		return Scenario{}, fmt.Errorf("scenario %s: %w", path, err)
	}
	switch {
	case !scenarioName.MatchString(sc.Name):
		return Scenario{}, fmt.Errorf("scenario %s: name %q: want lower-case letters, digits, '.', '_' or '-'", path, sc.Name)
	case sc.Format != "" && sc.Format != "estargz" && sc.Format != "zstdchunked":
		return Scenario{}, fmt.Errorf("scenario %s: format %q: want \"\", estargz or zstdchunked", path, sc.Format)
	case sc.external() && (sc.Snapshotter == "" || sc.Snapshotter == "lazypull" || sc.Snapshotter == "overlayfs"):
		return Scenario{}, fmt.Errorf("scenario %s: a daemon needs a snapshotter name of its own (not %q)", path, sc.Snapshotter)
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

// daemon is a scenario's snapshotter daemon, which the runner runs.
type daemon struct {
	sc      Scenario
	bin     string // lazypull's binaries, for {bin}
	dir     string // its root, config and log live here
	socket  string
	cmd     *exec.Cmd
	exited  chan struct{}
	logFile *os.File
}

func newDaemon(sc Scenario, env *testenv.Env) *daemon {
	return &daemon{sc: sc, bin: env.BinDir, dir: filepath.Join(env.Dir, "scenario-"+sc.Name), socket: env.Snapshotters[sc.Snapshotter]}
}

func (d *daemon) root() string    { return filepath.Join(d.dir, "root") }
func (d *daemon) logPath() string { return filepath.Join(d.dir, "daemon.log") }

// start writes the config and starts the daemon, waiting for its socket.
func (d *daemon) start() error {
	if err := os.MkdirAll(d.root(), 0o700); err != nil {
		return err
	}
	config := filepath.Join(d.dir, "config.toml")
	if err := os.WriteFile(config, []byte(d.sc.Config), 0o644); err != nil {
		return err
	}
	os.Remove(d.socket)
	args := expand(d.sc.Daemon, map[string]string{"socket": d.socket, "root": d.root(), "config": config, "bin": d.bin})
	log, err := os.OpenFile(d.logPath(), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	d.logFile = log
	d.cmd = exec.Command(args[0], args[1:]...)
	d.cmd.Stdout, d.cmd.Stderr = log, log
	d.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := d.cmd.Start(); err != nil {
		log.Close()
		return fmt.Errorf("scenario %s: start %s: %w", d.sc.Name, args[0], err)
	}
	d.exited = make(chan struct{})
	go func() { d.cmd.Wait(); close(d.exited) }()
	deadline := time.Now().Add(60 * time.Second)
	for {
		if c, err := net.Dial("unix", d.socket); err == nil {
			c.Close()
			return nil
		}
		select {
		case <-d.exited:
			return fmt.Errorf("scenario %s: %s exited before serving %s (log: %s)", d.sc.Name, args[0], d.socket, d.logPath())
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			d.stop()
			return fmt.Errorf("scenario %s: %s did not serve %s within a minute (log: %s)", d.sc.Name, args[0], d.socket, d.logPath())
		}
	}
}

// stop ends the daemon (SIGTERM, then SIGKILL), and unmounts whatever it
// left mounted under its root.
func (d *daemon) stop() error {
	var errs []error
	if d.cmd != nil && d.cmd.Process != nil {
		d.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-d.exited:
		case <-time.After(15 * time.Second):
			syscall.Kill(-d.cmd.Process.Pid, syscall.SIGKILL)
			<-d.exited
			errs = append(errs, fmt.Errorf("scenario %s: the daemon ignored SIGTERM for 15 s; killed", d.sc.Name))
		}
		d.cmd = nil
	}
	if d.logFile != nil {
		d.logFile.Close()
		d.logFile = nil
	}
	errs = append(errs, testenv.UnmountAll(testenv.MountsUnder(d.dir)))
	return errors.Join(errs...)
}

// reset gives the daemon a cold start: stopped, its state removed, started.
func (d *daemon) reset() error {
	if err := d.stop(); err != nil {
		return err
	}
	if err := os.RemoveAll(d.root()); err != nil {
		return err
	}
	return d.start()
}

func (d *daemon) pid() int {
	if d.cmd == nil || d.cmd.Process == nil {
		return 0
	}
	return d.cmd.Process.Pid
}

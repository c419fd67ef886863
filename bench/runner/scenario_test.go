package runner

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/lazypull/lazypull/internal/testenv"
)

// standInArg makes the test binary a stand-in scenario daemon (see
// standInDaemon) instead of running the tests.
const standInArg = "stand-in-daemon"

func TestMain(m *testing.M) {
	if len(os.Args) == 3 && os.Args[1] == standInArg {
		os.Exit(standInDaemon(os.Args[2]))
	}
	os.Exit(m.Run())
}

// standInDaemon listens on socket and answers every connection with its
// pid, until SIGTERM, after which it exits with status 0.
func standInDaemon(socket string) int {
	term := make(chan os.Signal, 1)
	signal.Notify(term, syscall.SIGTERM)
	l, err := net.Listen("unix", socket)
	if err != nil {
		fmt.Fprintln(os.Stderr, "stand-in daemon:", err)
		return 1
	}
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			fmt.Fprintf(c, "%d\n", os.Getpid())
			c.Close()
		}
	}()
	<-term
	l.Close()
	return 0
}

// askPID asks the daemon behind socket for its pid.
func askPID(socket string) (int, error) {
	c, err := net.Dial("unix", socket)
	if err != nil {
		return 0, err
	}
	defer c.Close()
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(strings.TrimSpace(line))
}

// TestDaemonRestarts restarts a scenario daemon for several cold runs,
// with this test binary as a stand-in daemon, while a client dials the
// scenario's socket over and over as containerd may. Every dial must reach
// a daemon (containerd backs off from a proxy snapshotter it once failed
// to reach, and the run's pull then fails); after each restart the new
// instance answers and stays up, and the previous one was stopped by
// SIGTERM and its state removed.
func TestDaemonRestarts(t *testing.T) {
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	// Short paths: unix socket paths must fit in 108 bytes.
	dir, err := os.MkdirTemp("", "bench-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	sc := Scenario{Name: "stand-in", Snapshotter: "stand-in", Daemon: []string{exe, standInArg, "{socket}"}}
	socket := filepath.Join(dir, "stand-in.sock")
	d := newDaemon(sc, &testenv.Env{Dir: dir, Snapshotters: map[string]string{sc.Snapshotter: socket}})
	if err := d.start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := d.stop(); err != nil {
			t.Error(err)
		}
	})

	stop, done := make(chan struct{}), make(chan struct{})
	var dials int
	var failed []error
	go func() {
		defer close(done)
		for {
			select {
			case <-stop:
				return
			default:
			}
			// One connection at a time, read to its end: a flood would
			// fill the listener's backlog (EAGAIN), which is not the point.
			// A connection the previous instance took but did not answer
			// before it stopped is not a failure: containerd reconnects.
			dials++
			c, err := net.Dial("unix", socket)
			if err != nil {
				failed = append(failed, err)
				continue
			}
			io.Copy(io.Discard, c)
			c.Close()
		}
	}()
	for i := 1; i <= 4; i++ {
		prev := d.cur
		if err := d.reset(); err != nil {
			t.Fatalf("restart %d: %v", i, err)
		}
		select {
		case <-prev.exited:
			if code := prev.cmd.ProcessState.ExitCode(); code != 0 {
				t.Errorf("restart %d: the previous instance ended with %v, not by its SIGTERM", i, prev.cmd.ProcessState)
			}
		default:
			t.Errorf("restart %d: the previous instance (pid %d) still runs", i, prev.cmd.Process.Pid)
		}
		if _, err := os.Stat(prev.dir); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("restart %d: the previous instance's state is still there (%v)", i, err)
		}
		if pid, err := askPID(socket); err != nil || pid != d.pid() || pid == prev.cmd.Process.Pid {
			t.Errorf("restart %d: the scenario's socket answered pid %d (%v); the new instance is %d, the previous %d", i, pid, err, d.pid(), prev.cmd.Process.Pid)
		}
		if err := d.alive(); err != nil {
			t.Errorf("restart %d: %v", i, err)
		}
	}
	close(stop)
	<-done
	if len(failed) > 0 {
		t.Errorf("%d of %d dials of the scenario's socket during the restarts failed; the first: %v", len(failed), dials, failed[0])
	}
	// Each instance is still up when the next restart, or the end, comes.
	if err := d.alive(); err != nil {
		t.Error(err)
	}
}

// TestLoadScenario: the scenario files in bench/scenarios load, and one
// that says what cannot be run is refused with what is wrong.
func TestLoadScenario(t *testing.T) {
	files, err := filepath.Glob("../scenarios/*.toml")
	if err != nil || len(files) == 0 {
		t.Fatalf("no scenario files: %v", err)
	}
	for _, f := range files {
		if _, err := LoadScenario(f); err != nil {
			t.Error(err)
		}
	}
	for _, c := range []struct{ doc, want string }{
		{`name = "Upper"`, "lower-case"},
		{"name = \"x\"\nformat = \"tar\"", "format"},
		{"name = \"x\"\nargs = [\"python3\"]", "say which in images"},
		{"name = \"x\"\nprofile_args = [[]]", "profile_args without profiled"},
		{"name = \"x\"\nformat = \"zstdchunked\"\noptimized = true", "optimized needs format"},
		{"name = \"x\"\nunknown = 1", "unknown"},
	} {
		path := filepath.Join(t.TempDir(), "s.toml")
		os.WriteFile(path, []byte(c.doc), 0o644)
		if _, err := LoadScenario(path); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("LoadScenario(%q) = %v; want an error with %q", c.doc, err, c.want)
		}
	}
}

// Scenarios pull the same image exactly when they pull the same form:
// an optimized form or one with other convert flags is an image of its
// own, recorded on (and named apart from) its plain form.
func TestScenarioForms(t *testing.T) {
	esgz := Scenario{Name: "a", Format: "estargz"}
	opt := Scenario{Name: "b", Format: "estargz", Optimized: true, ConvertArgs: []string{"--chunk-size", "4194304"}}
	optOther := Scenario{Name: "c", Format: "estargz", Optimized: true, ConvertArgs: []string{"--chunk-size", "65536"}}
	forms := map[string]string{}
	for _, sc := range []Scenario{Overlayfs, esgz, opt, optOther, LazypullZstd} {
		if other, ok := forms[sc.form()]; ok {
			t.Errorf("scenarios %s and %s share the form %q", other, sc.Name, sc.form())
		}
		forms[sc.form()] = sc.Name
	}
	if got := (Scenario{Name: "d", Format: "estargz", Profiled: true}).form(); got != esgz.form() {
		t.Errorf("a profiled scenario's form = %q; want the plain %q", got, esgz.form())
	}
	if got := opt.plain().form(); got != esgz.form() {
		t.Errorf("the optimized scenario's plain form = %q; want %q", got, esgz.form())
	}
}

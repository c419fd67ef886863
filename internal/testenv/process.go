package testenv

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Process is a daemon the environment started. It is stopped by its PID:
// SIGTERM, then SIGKILL if it does not exit in time.
type Process struct {
	Name    string
	Log     string // file holding its stdout and stderr
	cmd     *exec.Cmd
	done    chan struct{} // closed when the process has exited
	waitErr error         // how it exited, once done is closed
}

// startProcess runs name with args, logging to dir/<name>.log.
func startProcess(dir, name string, args ...string) (*Process, error) {
	return startProcessEnv(dir, nil, name, args...)
}

// startProcessEnv is startProcess with env (KEY=value) added to ours.
func startProcessEnv(dir string, env []string, name string, args ...string) (*Process, error) {
	return startWrapped(dir, env, nil, name, args...)
}

// startWrapped is startProcessEnv for name run through wrap (a command
// prefix such as nsenter's), logged under name.
func startWrapped(dir string, env, wrap []string, name string, args ...string) (*Process, error) {
	logPath := filepath.Join(dir, filepath.Base(name)+".log")
	logFile, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	argv := slices.Concat(wrap, []string{name}, args)
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	if env != nil {
		cmd.Env = append(os.Environ(), env...)
	}
	// Its own process group, so that a Ctrl-C meant for the test does not
	// reach it before the test has cleaned up.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		logFile.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &Process{Name: filepath.Base(name), Log: logPath, cmd: cmd, done: make(chan struct{})}
	go func() { p.waitErr = cmd.Wait(); logFile.Close(); close(p.done) }()
	return p, nil
}

// PID is the process id.
func (p *Process) PID() int { return p.cmd.Process.Pid }

// Exited reports whether the process has ended, and how.
func (p *Process) Exited() (bool, error) {
	select {
	case <-p.done:
		return true, p.waitErr
	default:
		return false, nil
	}
}

// Stop ends the process: SIGTERM, and SIGKILL after grace.
func (p *Process) Stop(grace time.Duration) error {
	if exited, _ := p.Exited(); exited {
		return nil
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
		return nil
	case <-time.After(grace):
	}
	p.cmd.Process.Kill()
	<-p.done
	return fmt.Errorf("%s (pid %d) ignored SIGTERM for %v and was killed", p.Name, p.PID(), grace)
}

// Kill ends the process with SIGKILL, as the OOM killer would.
func (p *Process) Kill() {
	p.cmd.Process.Kill()
	<-p.done
}

// LogTail returns the end of the process's log, for error messages.
func (p *Process) LogTail() string {
	b, _ := os.ReadFile(p.Log)
	if len(b) > 4000 {
		b = b[len(b)-4000:]
	}
	return string(b)
}

// waitUntil polls ready until it succeeds, the process exits or the timeout
// passes; the error then carries the process's log.
func (p *Process) waitUntil(timeout time.Duration, ready func() error) error {
	deadline := time.Now().Add(timeout)
	for {
		err := ready()
		if err == nil {
			return nil
		}
		if exited, werr := p.Exited(); exited {
			return fmt.Errorf("%s exited while starting (%v); its log:\n%s", p.Name, werr, p.LogTail())
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s not ready after %v: %v; its log:\n%s", p.Name, timeout, err, p.LogTail())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func dialUnix(path string) error {
	conn, err := net.DialTimeout("unix", path, time.Second)
	if err == nil {
		conn.Close()
	}
	return err
}

func httpOK(url string) error {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	return nil
}

// FreeLoopbackAddr returns a 127.0.0.1 address with a port nobody listens on.
func FreeLoopbackAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

// killProcessesMentioning kills (SIGKILL) every process whose command line
// contains all the markers: the shims containerd leaves running name its
// socket (and so does our FUSE manager, which must not be killed).
func killProcessesMentioning(markers ...string) []int {
	entries, _ := os.ReadDir("/proc")
	var killed []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		cmdline, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil || !containsAll(string(cmdline), markers) {
			continue
		}
		if err := syscall.Kill(pid, syscall.SIGKILL); err == nil || !errors.Is(err, syscall.ESRCH) {
			killed = append(killed, pid)
		}
	}
	return killed
}

func containsAll(s string, subs []string) bool {
	for _, sub := range subs {
		if !strings.Contains(s, sub) {
			return false
		}
	}
	return true
}

package fusemanager

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/rpc"
	"net/rpc/jsonrpc"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"github.com/containerd/containerd/v2/core/snapshots"

	"golang.org/x/sys/unix"
)

// Client talks to the manager; it is the snapshotter's Remote. Each call
// has a connection of its own, so that giving up on one call (its
// context ended) closes that connection and touches no other call.
type Client struct {
	root    string
	command []string
	opts    options

	mu  sync.Mutex
	mgr manager // the manager last connected to
}

// manager is a manager process the client connected to.
type manager struct {
	pid   int
	since time.Time // when the client connected to it
	child *child    // set when this client started it
}

// child is a manager this client started: how it ended is known exactly.
type child struct {
	pid    int
	exited chan struct{}
	err    error // cmd.Wait's, once exited is closed
}

type options struct {
	mountTimeout time.Duration
	callTimeout  time.Duration
	startTimeout time.Duration
}

// Option configures a Client.
type Option func(*options)

// WithMountTimeout bounds one Mount: fetching the manifest and the TOC,
// and the prefetch (default 2 minutes).
func WithMountTimeout(d time.Duration) Option { return func(o *options) { o.mountTimeout = d } }

// WithCallTimeout bounds one Unmount or Status (default 30 seconds).
func WithCallTimeout(d time.Duration) Option { return func(o *options) { o.callTimeout = d } }

// WithStartTimeout bounds how long a manager the client starts may take
// to listen (default 30 seconds).
func WithStartTimeout(d time.Duration) Option { return func(o *options) { o.startTimeout = d } }

// Connect connects to the manager serving root, or starts one with
// command (the daemon's own binary and the arguments that make it a
// manager) and connects to that; with no command it only connects. The
// manager is started in a session of its own, so that it outlives the
// daemon.
func Connect(ctx context.Context, root string, command []string, opts ...Option) (*Client, error) {
	c := &Client{root: root, command: command, opts: options{
		mountTimeout: 2 * time.Minute,
		callTimeout:  30 * time.Second,
		startTimeout: 30 * time.Second,
	}}
	for _, o := range opts {
		o(&c.opts)
	}
	err := c.attach(ctx, nil)
	if err == nil {
		return c, nil
	}
	if len(command) == 0 {
		return nil, fmt.Errorf("no fuse manager on %s: %w", SocketPath(root), err)
	}
	if err := c.startManager(ctx); err != nil {
		return nil, err
	}
	return c, nil
}

// attach asks the manager on the socket for its pid and makes it the
// client's manager; ch is the manager this client just started, if any.
func (c *Client) attach(ctx context.Context, ch *child) error {
	ctx, cancel := context.WithTimeout(ctx, c.opts.callTimeout)
	defer cancel()
	var st StatusReply
	if err := c.call(ctx, "Manager.Status", Empty{}, &st); err != nil {
		return err
	}
	m := manager{pid: st.PID, since: time.Now()}
	if ch != nil && ch.pid == st.PID {
		m.child = ch
	}
	c.mu.Lock()
	c.mgr = m
	c.mu.Unlock()
	return nil
}

// startManager starts a manager and waits until it serves.
func (c *Client) startManager(ctx context.Context) error {
	ch, err := start(c.root, c.command)
	if err != nil {
		return err
	}
	logPath := filepath.Join(c.root, logName)
	deadline := time.NewTimer(c.opts.startTimeout)
	defer deadline.Stop()
	// The manager says nothing when it listens: try its socket until it
	// answers, it exits or the time is up.
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		err := c.attach(ctx, ch)
		if err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-ch.exited:
			// It may have lost the race for the lock to another manager,
			// which serves now.
			if c.attach(ctx, nil) == nil {
				return nil
			}
			return fmt.Errorf("fuse manager exited while starting (%s); see %s", exitStatus(ch.err), logPath)
		case <-deadline.C:
			syscall.Kill(ch.pid, syscall.SIGKILL) // ours, and stuck
			return fmt.Errorf("fuse manager (pid %d) did not come up on %s in %v and was killed (see %s): %w", ch.pid, SocketPath(c.root), c.opts.startTimeout, logPath, err)
		case <-tick.C:
		}
	}
}

func start(root string, command []string) (*child, error) {
	logFile, err := os.OpenFile(filepath.Join(root, logName), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, err
	}
	defer logFile.Close()
	cmd := exec.Command(command[0], command[1:]...)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true} // not killed with the daemon
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start fuse manager: %w", err)
	}
	ch := &child{pid: cmd.Process.Pid, exited: make(chan struct{})}
	go func() { ch.err = cmd.Wait(); close(ch.exited) }() // reaped whenever it exits
	return ch, nil
}

// exitStatus says how a child ended, from cmd.Wait's error.
func exitStatus(err error) string {
	var exit *exec.ExitError
	switch {
	case err == nil:
		return "exit status 0"
	case errors.As(err, &exit):
		return exit.ProcessState.String() // "signal: killed", "exit status 1"
	default:
		return err.Error()
	}
}

// call makes one call on a connection of its own, and gives up when ctx
// ends (net/rpc has no deadlines: closing the connection is how a call is
// abandoned; the manager bounds its side with the Timeout in the args).
func (c *Client) call(ctx context.Context, method string, args, reply any) error {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", SocketPath(c.root))
	if err != nil {
		return fmt.Errorf("fuse manager on %s: %w", SocketPath(c.root), err)
	}
	r := rpc.NewClientWithCodec(jsonrpc.NewClientCodec(conn))
	defer r.Close()
	call := r.Go(method, args, reply, make(chan *rpc.Call, 1))
	select {
	case <-call.Done:
		if dl, ok := ctx.Deadline(); ok && call.Error != nil && !time.Now().Before(dl) {
			// The manager gave up at our deadline (it was sent along)
			// before our own timer fired: say so as ctx would.
			return fmt.Errorf("fuse manager: %s: %w (%v)", method, context.DeadlineExceeded, call.Error)
		}
		return call.Error
	case <-ctx.Done():
		return fmt.Errorf("fuse manager: %s gave no answer: %w", method, ctx.Err())
	}
}

// remaining is the time left before ctx's deadline, sent to the manager.
func remaining(ctx context.Context) time.Duration {
	if dl, ok := ctx.Deadline(); ok {
		return time.Until(dl)
	}
	return 0
}

// Mount asks the manager to mount a layer.
func (c *Client) Mount(ctx context.Context, mountpoint string, labels map[string]string) error {
	ctx, cancel := context.WithTimeout(ctx, c.opts.mountTimeout)
	defer cancel()
	return c.call(ctx, "Manager.Mount", MountArgs{Mountpoint: mountpoint, Labels: labels, Timeout: remaining(ctx)}, &Empty{})
}

// MountComposefs asks the manager to serve a layer in the lazy composefs
// form (Mounter.MountComposefs).
func (c *Client) MountComposefs(ctx context.Context, mountpoint, image, owner string, labels map[string]string) error {
	ctx, cancel := context.WithTimeout(ctx, c.opts.mountTimeout)
	defer cancel()
	return c.call(ctx, "Manager.Mount", MountArgs{Mountpoint: mountpoint, Labels: labels, Image: image, Owner: owner, Timeout: remaining(ctx)}, &Empty{})
}

// ObjectsDir is where the manager mounts the object filesystem.
func (c *Client) ObjectsDir() string { return ObjectsPath(c.root) }

// Unmount asks the manager to release a mountpoint.
func (c *Client) Unmount(ctx context.Context, mountpoint string) error {
	ctx, cancel := context.WithTimeout(ctx, c.opts.callTimeout)
	defer cancel()
	return c.call(ctx, "Manager.Unmount", UnmountArgs{Mountpoint: mountpoint, Timeout: remaining(ctx)}, &Empty{})
}

// Check asks the manager whether the layers at mountpoints may still be
// used; it implements snapshot.Checker.
func (c *Client) Check(ctx context.Context, mountpoints []string) error {
	ctx, cancel := context.WithTimeout(ctx, c.opts.callTimeout)
	defer cancel()
	return c.call(ctx, "Manager.Check", CheckArgs{Mountpoints: mountpoints, Timeout: remaining(ctx)}, &Empty{})
}

// Usage asks the manager what the layer at mountpoint takes; it
// implements snapshot.UsageReporter.
func (c *Client) Usage(ctx context.Context, mountpoint string) (snapshots.Usage, error) {
	ctx, cancel := context.WithTimeout(ctx, c.opts.callTimeout)
	defer cancel()
	var u snapshots.Usage
	err := c.call(ctx, "Manager.Usage", UnmountArgs{Mountpoint: mountpoint, Timeout: remaining(ctx)}, &u)
	return u, err
}

// Status lists the manager's layers.
func (c *Client) Status(ctx context.Context) (StatusReply, error) {
	ctx, cancel := context.WithTimeout(ctx, c.opts.callTimeout)
	defer cancel()
	var reply StatusReply
	err := c.call(ctx, "Manager.Status", Empty{}, &reply)
	return reply, err
}

// PID is the pid of the manager the client last connected to.
func (c *Client) PID() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.mgr.pid
}

// Started tells whether the manager the client is connected to is one it
// started.
func (c *Client) Started() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.mgr.child != nil
}

// Close releases the client; the manager keeps serving.
func (c *Client) Close() error { return nil }

// Stop stops the manager serving root, unmounting its layers, and waits
// for it to exit. Running containers lose their lazily mounted layers.
func Stop(root string, timeout time.Duration) error {
	pid, err := readPID(PIDPath(root))
	if err != nil || !isManager(pid) {
		return nil // none runs
	}
	if err := syscall.Kill(pid, syscall.SIGTERM); err != nil {
		return nil // gone already
	}
	deadline := time.Now().Add(timeout)
	for isManager(pid) {
		if time.Now().After(deadline) {
			syscall.Kill(pid, syscall.SIGKILL)
			return fmt.Errorf("fuse manager (pid %d) did not stop in %v and was killed", pid, timeout)
		}
		time.Sleep(20 * time.Millisecond)
	}
	return nil
}

// isManager tells whether pid is a live fuse manager (not a zombie, not a
// process that reused the pid).
func isManager(pid int) bool {
	cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil || !bytes.Contains(cmdline, []byte(Subcommand)) {
		return false
	}
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	// The state follows the parenthesised command name.
	if i := bytes.LastIndexByte(stat, ')'); i >= 0 && i+2 < len(stat) {
		return stat[i+2] != 'Z'
	}
	return true
}

// watchPID returns a channel closed when process pid exits, and a function
// that stops watching. It needs no child relation: a manager that outlived
// an earlier daemon is watched as well as one this daemon started.
func watchPID(pid int) (<-chan struct{}, func(), error) {
	fd, err := unix.PidfdOpen(pid, unix.PIDFD_NONBLOCK)
	if err != nil {
		return nil, nil, fmt.Errorf("watch fuse manager (pid %d): %w", pid, err)
	}
	f := os.NewFile(uintptr(fd), fmt.Sprintf("pidfd %d", pid))
	rc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return nil, nil, err
	}
	exited := make(chan struct{})
	go func() {
		// A pidfd turns readable when its process exits; the runtime's
		// poller waits for that without holding a thread.
		err := rc.Read(func(fd uintptr) bool {
			n, _ := unix.Poll([]unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}, 0)
			return n > 0
		})
		if err == nil {
			close(exited)
		}
	}()
	return exited, func() { f.Close() }, nil
}

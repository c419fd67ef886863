package fusemanager

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/rpc"
	"net/rpc/jsonrpc"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"time"
)

// Client talks to the manager; it is the snapshotter's Remote.
type Client struct {
	root string
	mu   sync.Mutex
	rpc  *rpc.Client
}

// Connect connects to the manager serving root, or starts one with
// command (the daemon's own binary and the arguments that make it a
// manager) and connects to that; with no command it only connects. The manager is started in a session of
// its own, so that it outlives the daemon.
func Connect(ctx context.Context, root string, command []string) (*Client, error) {
	c := &Client{root: root}
	if err := c.dial(); err == nil {
		return c, nil
	} else if len(command) == 0 {
		return nil, fmt.Errorf("no fuse manager on %s: %w", SocketPath(root), err)
	}
	if err := start(root, command); err != nil {
		return nil, err
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		err := c.dial()
		if err == nil {
			return c, nil
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("fuse manager did not come up on %s (see %s): %w", SocketPath(root), filepath.Join(root, logName), err)
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func (c *Client) dial() error {
	conn, err := net.DialTimeout("unix", SocketPath(c.root), time.Second)
	if err != nil {
		return err
	}
	c.mu.Lock()
	if c.rpc != nil {
		c.rpc.Close()
	}
	c.rpc = rpc.NewClientWithCodec(jsonrpc.NewClientCodec(conn))
	c.mu.Unlock()
	return nil
}

func start(root string, command []string) error {
	logFile, err := os.OpenFile(filepath.Join(root, logName), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	defer logFile.Close()
	cmd := exec.Command(command[0], command[1:]...)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true} // not killed with the daemon
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start fuse manager: %w", err)
	}
	go cmd.Wait() // reap it if it exits while we run
	return nil
}

// call makes one call, reconnecting once if the connection broke.
func (c *Client) call(method string, args, reply any) error {
	c.mu.Lock()
	r := c.rpc
	c.mu.Unlock()
	err := r.Call(method, args, reply)
	if errors.Is(err, rpc.ErrShutdown) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) {
		if derr := c.dial(); derr != nil {
			return fmt.Errorf("fuse manager: %w (reconnect: %v)", err, derr)
		}
		c.mu.Lock()
		r = c.rpc
		c.mu.Unlock()
		err = r.Call(method, args, reply)
	}
	return err
}

// Mount asks the manager to mount a layer.
func (c *Client) Mount(ctx context.Context, mountpoint string, labels map[string]string) error {
	return c.call("Manager.Mount", MountArgs{Mountpoint: mountpoint, Labels: labels}, &Empty{})
}

// Unmount asks the manager to release a mountpoint.
func (c *Client) Unmount(ctx context.Context, mountpoint string) error {
	return c.call("Manager.Unmount", UnmountArgs{Mountpoint: mountpoint}, &Empty{})
}

// Status lists the manager's layers.
func (c *Client) Status() (StatusReply, error) {
	var reply StatusReply
	err := c.call("Manager.Status", Empty{}, &reply)
	return reply, err
}

// Close closes the connection; the manager keeps serving.
func (c *Client) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.rpc == nil {
		return nil
	}
	return c.rpc.Close()
}

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

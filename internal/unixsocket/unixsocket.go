// Package unixsocket listens on unix sockets that only their owner can
// connect to, replacing the sockets that dead processes left behind. It
// knows sockets and files, nothing of what is served on them.
package unixsocket

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"syscall"
	"time"
)

// Listen listens on a unix socket at path that only this user can connect
// to, whatever the umask: it is bound in a private directory, given mode
// 0600 and then moved into place, so no one can connect while it has
// another mode. A socket left at path by a process that died is replaced;
// one that a live process serves is not. Closing the listener removes the
// socket, unless another has taken its path since.
func Listen(path string) (net.Listener, error) {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("listen on %s: %w", path, err)
	}
	if err := removeStale(path); err != nil {
		return nil, err
	}
	private, err := os.MkdirTemp(dir, ".socket-")
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", path, err)
	}
	defer os.RemoveAll(private)
	bound := filepath.Join(private, "s")
	lis, err := net.ListenUnix("unix", &net.UnixAddr{Name: bound, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", path, err)
	}
	// It is removed under its new name, by socketListener.Close.
	lis.SetUnlinkOnClose(false)
	if err := os.Chmod(bound, 0o600); err != nil {
		lis.Close()
		return nil, fmt.Errorf("listen on %s: %w", path, err)
	}
	if err := os.Rename(bound, path); err != nil {
		lis.Close()
		return nil, fmt.Errorf("listen on %s: %w", path, err)
	}
	fi, err := os.Lstat(path)
	if err != nil {
		lis.Close()
		return nil, fmt.Errorf("listen on %s: %w", path, err)
	}
	return &socketListener{UnixListener: lis, path: path, file: fi}, nil
}

// removeStale removes a socket at path that nothing listens on.
func removeStale(path string) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("listen on %s: %w", path, err)
	}
	if fi.Mode().Type() != os.ModeSocket {
		return fmt.Errorf("listen on %s: it exists and is not a socket; remove it or choose another path", path)
	}
	conn, err := net.DialTimeout("unix", path, time.Second)
	if err == nil {
		conn.Close()
		return fmt.Errorf("listen on %s: another process serves on it; stop it or choose another path", path)
	}
	if !errors.Is(err, syscall.ECONNREFUSED) {
		return fmt.Errorf("listen on %s: cannot tell whether a process serves on it: %w", path, err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("listen on %s: remove the stale socket: %w", path, err)
	}
	return nil
}

// socketListener removes its socket when closed, unless another one has
// taken its path since.
type socketListener struct {
	*net.UnixListener
	path string
	file os.FileInfo
}

// Addr is the socket's path, not the name it was bound under.
func (l *socketListener) Addr() net.Addr { return &net.UnixAddr{Name: l.path, Net: "unix"} }

func (l *socketListener) Close() error {
	err := l.UnixListener.Close()
	if fi, serr := os.Lstat(l.path); serr == nil && os.SameFile(fi, l.file) {
		os.Remove(l.path)
	}
	return err
}

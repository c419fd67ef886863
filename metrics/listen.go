package metrics

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"path/filepath"

	"github.com/lazypull/lazypull/internal/unixsocket"
)

// ErrRemote is the error of an address that other hosts can reach.
var ErrRemote = errors.New("reachable from other hosts")

// CheckLocal says whether only this host can reach addr: the absolute path
// of a unix socket, or host:port with a loopback IP address or "localhost"
// as the host. An empty host means every interface.
func CheckLocal(addr string) error {
	if filepath.IsAbs(addr) {
		return nil
	}
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("address %q: want host:port or the absolute path of a unix socket", addr)
	}
	if host == "localhost" {
		return nil
	}
	if ip, err := netip.ParseAddr(host); err == nil && ip.IsLoopback() {
		return nil
	}
	return fmt.Errorf("address %q is %w (want a loopback address such as 127.0.0.1:PORT, or a unix socket path)", addr, ErrRemote)
}

// listen listens on addr: a unix socket if it is an absolute path, else
// TCP, refused beyond loopback unless allowRemote.
func listen(addr string, allowRemote bool) (net.Listener, error) {
	if filepath.IsAbs(addr) {
		return unixsocket.Listen(addr)
	}
	if !allowRemote {
		if err := CheckLocal(addr); err != nil {
			return nil, err
		}
	}
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", addr, err)
	}
	return lis, nil
}

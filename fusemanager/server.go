package fusemanager

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/rpc"
	"net/rpc/jsonrpc"
	"os"
	"sort"
	"strconv"

	"github.com/containerd/log"
	"golang.org/x/sys/unix"

	"github.com/lazypull/lazypull/layer"
)

// Mounter mounts lazy layers (mounter.Mounter does).
type Mounter interface {
	Mount(ctx context.Context, mountpoint string, labels map[string]string) error
	Unmount(ctx context.Context, mountpoint string) error
	Layers() map[string]layer.Stats
	Close() error
}

// Serve runs the manager for root until ctx is done: it takes root's
// manager lock, serves the protocol on root's socket and mounts layers
// with m. When ctx ends it unmounts everything.
func Serve(ctx context.Context, root string, m Mounter, ready chan<- struct{}) error {
	lock, err := lockFile(PIDPath(root))
	if err != nil {
		return err
	}
	defer lock.Close()

	sock := SocketPath(root)
	os.Remove(sock) // we hold the lock: a socket there is a dead manager's
	lis, err := net.Listen("unix", sock)
	if err != nil {
		return fmt.Errorf("fuse manager: listen on %s: %w", sock, err)
	}
	os.Chmod(sock, 0o600)
	srv := rpc.NewServer()
	if err := srv.RegisterName("Manager", &service{m: m}); err != nil {
		return err
	}
	go func() {
		for {
			conn, err := lis.Accept()
			if err != nil {
				return
			}
			go srv.ServeCodec(jsonrpc.NewServerCodec(conn))
		}
	}()
	log.G(ctx).WithField("socket", sock).Info("fuse manager is serving")
	if ready != nil {
		close(ready)
	}
	<-ctx.Done()
	lis.Close()
	os.Remove(sock)
	log.G(ctx).Info("fuse manager stopping: unmounting its layers")
	return m.Close()
}

// service is the RPC face of the mounter.
type service struct{ m Mounter }

func (s *service) Mount(args MountArgs, _ *Empty) error {
	return s.m.Mount(context.Background(), args.Mountpoint, args.Labels)
}

func (s *service) Unmount(args UnmountArgs, _ *Empty) error {
	return s.m.Unmount(context.Background(), args.Mountpoint)
}

func (s *service) Status(_ Empty, reply *StatusReply) error {
	reply.PID = os.Getpid()
	for mp, st := range s.m.Layers() {
		reply.Layers = append(reply.Layers, LayerStatus{
			Mountpoint: mp, Digest: st.Digest.String(), Size: st.Size, DataSize: st.DataSize,
			FetchedBytes: st.FetchedBytes, CachedBytes: st.CachedBytes, Requests: st.Requests,
			ChunksFetched: st.ChunksFetched, Errors: st.Errors, LastError: st.LastError,
		})
	}
	sort.Slice(reply.Layers, func(i, j int) bool { return reply.Layers[i].Mountpoint < reply.Layers[j].Mountpoint })
	return nil
}

// lockFile takes an exclusive lock on path and writes our pid in it.
func lockFile(path string) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, err
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			pid, _ := readPID(path)
			return nil, fmt.Errorf("a fuse manager (pid %d) already serves this root", pid)
		}
		return nil, err
	}
	f.Truncate(0)
	f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	return f, nil
}

// readPID reads the pid a lock file holds.
func readPID(path string) (int, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	var pid int
	_, err = fmt.Sscan(string(b), &pid)
	return pid, err
}

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
	"sync"
	"time"

	"github.com/containerd/containerd/v2/core/snapshots"

	"github.com/containerd/log"
	"golang.org/x/sys/unix"

	"github.com/lazypull/lazypull/internal/unixsocket"
	"github.com/lazypull/lazypull/layer"
)

// Mounter mounts lazy layers (mounter.Mounter does).
type Mounter interface {
	Mount(ctx context.Context, mountpoint string, labels map[string]string) error
	MountComposefs(ctx context.Context, mountpoint, image, owner string, labels map[string]string) error
	Unmount(ctx context.Context, mountpoint string) error
	Layers() map[string]layer.Stats
	PassthroughNote() string
	Check(ctx context.Context, mountpoints []string) error
	Usage(ctx context.Context, mountpoint string) (snapshots.Usage, error)
	Close() error
}

// defaultCallTime bounds the manager's work on a call that carries no
// Timeout: a call nobody waits for must not run on forever.
const defaultCallTime = 10 * time.Minute

// drainGrace bounds how long a stopping manager waits for the calls in
// flight (their context is cancelled) before it unmounts everything.
const drainGrace = 10 * time.Second

// Serve runs the manager for root until ctx is done: it takes root's
// manager lock, serves the protocol on root's socket and mounts layers
// with m. When ctx ends it stops taking connections and calls, waits
// (bounded) for the calls in flight, then unmounts everything.
func Serve(ctx context.Context, root string, m Mounter, ready chan<- struct{}) error {
	lock, err := lockFile(PIDPath(root))
	if err != nil {
		return err
	}
	defer lock.Close()

	// Mode 0600; a socket a killed manager left is replaced (we hold the
	// lock, so no manager serves it).
	sock := SocketPath(root)
	lis, err := unixsocket.Listen(sock)
	if err != nil {
		return fmt.Errorf("fuse manager: %w", err)
	}
	srv := rpc.NewServer()
	if err := srv.RegisterName("Manager", &service{ctx: ctx, m: m}); err != nil {
		lis.Close()
		return err
	}
	conns := &connSet{open: make(map[net.Conn]bool)}
	accepting := make(chan struct{})
	go func() {
		defer close(accepting)
		for {
			conn, err := lis.Accept()
			if err != nil {
				return
			}
			conns.serve(conn, srv)
		}
	}()
	log.G(ctx).WithField("socket", sock).Info("fuse manager is serving")
	if ready != nil {
		close(ready)
	}
	<-ctx.Done()
	lis.Close() // and removes the socket
	<-accepting
	if !conns.close(drainGrace) {
		log.G(ctx).Warnf("fuse manager stopping: calls still running after %v; unmounting anyway", drainGrace)
	}
	log.G(ctx).Info("fuse manager stopping: unmounting its layers")
	return m.Close()
}

// connSet tracks the open connections, so that a stopping manager can
// close them and wait for the calls they are serving.
type connSet struct {
	mu      sync.Mutex
	open    map[net.Conn]bool
	closed  bool
	serving sync.WaitGroup
}

// serve serves conn's calls, unless the set is closed.
func (s *connSet) serve(conn net.Conn, srv *rpc.Server) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		conn.Close()
		return
	}
	s.open[conn] = true
	s.serving.Add(1)
	go func() {
		defer s.serving.Done()
		// ServeCodec returns once the connection is closed and the calls
		// it read have returned.
		srv.ServeCodec(jsonrpc.NewServerCodec(conn))
		s.mu.Lock()
		delete(s.open, conn)
		s.mu.Unlock()
	}()
}

// close closes every connection and waits up to grace for their calls;
// it tells whether they all returned.
func (s *connSet) close(grace time.Duration) bool {
	s.mu.Lock()
	s.closed = true
	for conn := range s.open {
		conn.Close()
	}
	s.mu.Unlock()
	done := make(chan struct{})
	go func() { s.serving.Wait(); close(done) }()
	select {
	case <-done:
		return true
	case <-time.After(grace):
		return false
	}
}

// service is the RPC face of the mounter. Its calls run on ctx, the
// manager's lifetime, bounded by the deadline the caller sent.
type service struct {
	ctx context.Context
	m   Mounter
}

// bound is the context of one call that the caller gives up on after d.
func (s *service) bound(d time.Duration) (context.Context, context.CancelFunc) {
	if d <= 0 {
		d = defaultCallTime
	}
	return context.WithTimeout(s.ctx, d)
}

func (s *service) Mount(args MountArgs, _ *Empty) error {
	ctx, cancel := s.bound(args.Timeout)
	defer cancel()
	if args.Image != "" {
		return s.m.MountComposefs(ctx, args.Mountpoint, args.Image, args.Owner, args.Labels)
	}
	return s.m.Mount(ctx, args.Mountpoint, args.Labels)
}

func (s *service) Unmount(args UnmountArgs, _ *Empty) error {
	ctx, cancel := s.bound(args.Timeout)
	defer cancel()
	return s.m.Unmount(ctx, args.Mountpoint)
}

func (s *service) Check(args CheckArgs, _ *Empty) error {
	ctx, cancel := s.bound(args.Timeout)
	defer cancel()
	return s.m.Check(ctx, args.Mountpoints)
}

func (s *service) Usage(args UnmountArgs, reply *snapshots.Usage) error {
	ctx, cancel := s.bound(args.Timeout)
	defer cancel()
	u, err := s.m.Usage(ctx, args.Mountpoint)
	*reply = u
	return err
}

func (s *service) Status(_ Empty, reply *StatusReply) error {
	reply.PID = os.Getpid()
	reply.PassthroughNote = s.m.PassthroughNote()
	for mp, st := range s.m.Layers() {
		reply.Layers = append(reply.Layers, LayerStatus{
			Mountpoint: mp, Digest: st.Digest.String(), Size: st.Size, DataSize: st.DataSize,
			FetchedBytes: st.FetchedBytes, CachedBytes: st.CachedBytes, Requests: st.Requests,
			ChunksFetched: st.ChunksFetched, Errors: st.Errors, LastError: st.LastError,
			Verification: string(st.Verification), ProfiledBytes: st.ProfiledBytes,
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

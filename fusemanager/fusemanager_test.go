package fusemanager

import (
	"context"
	"errors"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/core/snapshots"

	"go.uber.org/goleak"

	"github.com/lazypull/lazypull/layer"
)

// managerRootEnv makes the test binary a manager (with a fakeMounter) for
// the root it names, so that Supervise has a real process to watch,
// kill and start again.
const managerRootEnv = "LAZYPULL_TEST_MANAGER_ROOT"

func TestMain(m *testing.M) {
	if root := os.Getenv(managerRootEnv); root != "" {
		ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
		defer stop()
		if err := Serve(ctx, root, newFake(), nil); err != nil {
			os.Stderr.WriteString(err.Error() + "\n")
			os.Exit(1)
		}
		return
	}
	// Every goroutine a client or a manager starts ends with it.
	goleak.VerifyTestMain(m)
}

// fakeMounter records calls; a Mount of a mountpoint named "block" waits
// for its context to end.
type fakeMounter struct {
	mu      sync.Mutex
	mounted map[string]bool
	events  []string
	blocked chan context.Context // the contexts of blocked Mounts
}

func newFake() *fakeMounter {
	return &fakeMounter{mounted: make(map[string]bool), blocked: make(chan context.Context, 10)}
}

func (f *fakeMounter) record(ev string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.events = append(f.events, ev)
}

func (f *fakeMounter) Mount(ctx context.Context, mp string, _ map[string]string) error {
	if mp == "block" {
		f.blocked <- ctx
		<-ctx.Done()
		f.record("mount block returned")
		return ctx.Err()
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.mounted[mp] = true
	return nil
}

func (f *fakeMounter) MountComposefs(ctx context.Context, mp, image, owner string, _ map[string]string) error {
	f.record("composefs " + mp + " " + image + " " + owner)
	return f.Mount(ctx, mp, nil)
}

func (f *fakeMounter) Unmount(_ context.Context, mp string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.mounted, mp)
	return nil
}

func (f *fakeMounter) Check(ctx context.Context, mountpoints []string) error { return nil }

func (f *fakeMounter) Usage(ctx context.Context, mountpoint string) (snapshots.Usage, error) {
	return snapshots.Usage{}, nil
}

func (f *fakeMounter) PassthroughNote() string { return "off in the fake" }

func (f *fakeMounter) Layers() map[string]layer.Stats {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make(map[string]layer.Stats)
	for mp := range f.mounted {
		out[mp] = layer.Stats{}
	}
	return out
}

func (f *fakeMounter) Close() error {
	f.record("close")
	return nil
}

// serve runs a manager in this process and returns a function that stops
// it and returns Serve's error.
func serve(t *testing.T, root string, m Mounter) (stop func() error) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan struct{})
	done := make(chan error, 1)
	go func() { done <- Serve(ctx, root, m, ready) }()
	select {
	case <-ready:
	case err := <-done:
		cancel()
		t.Fatalf("manager did not start: %v", err)
	}
	var once sync.Once
	var err error
	stop = func() error {
		once.Do(func() { cancel(); err = <-done })
		return err
	}
	t.Cleanup(func() { stop() })
	return stop
}

// A manager killed with SIGKILL leaves its socket: the next one serves
// anyway, on a socket only its owner can reach.
func TestStaleSocketAndMode(t *testing.T) {
	root := t.TempDir()
	lis, err := net.Listen("unix", SocketPath(root))
	if err != nil {
		t.Fatal(err)
	}
	lis.(*net.UnixListener).SetUnlinkOnClose(false)
	lis.Close()

	serve(t, root, newFake())
	c, err := Connect(context.Background(), root, nil)
	if err != nil {
		t.Fatalf("manager over a stale socket: %v", err)
	}
	if err := c.Mount(context.Background(), "a", nil); err != nil {
		t.Errorf("Mount: %v", err)
	}
	fi, err := os.Stat(SocketPath(root))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("socket %s: %v, mode %v; want 0600", SocketPath(root), err, fi.Mode().Perm())
	}
}

func TestSecondManagerRefused(t *testing.T) {
	root := t.TempDir()
	serve(t, root, newFake())
	err := Serve(context.Background(), root, newFake(), nil)
	if err == nil || !strings.Contains(err.Error(), "already serves") {
		t.Errorf("second manager on one root: %v", err)
	}
	if c, err := Connect(context.Background(), root, nil); err != nil {
		t.Errorf("the first manager stopped answering: %v", err)
	} else if st, err := c.Status(context.Background()); err != nil || st.PID != os.Getpid() {
		t.Errorf("Status = %+v, %v", st, err)
	}
}

// A call whose context ends returns with the context's error, and the
// manager's work on it is cancelled too.
func TestCallHonoursContext(t *testing.T) {
	root := t.TempDir()
	f := newFake()
	serve(t, root, f)
	c, err := Connect(context.Background(), root, nil, WithMountTimeout(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Mount(ctx, "block", nil) }()
	serverCtx := <-f.blocked
	if _, ok := serverCtx.Deadline(); !ok {
		t.Error("the manager's Mount has no deadline")
	}
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Errorf("Mount after its context ended: %v, want context.Canceled", err)
	}
	// Other calls are not disturbed by the abandoned one.
	if err := c.Mount(context.Background(), "b", nil); err != nil {
		t.Errorf("Mount after an abandoned call: %v", err)
	}
}

// The per-call timeout reaches the manager: its work ends with the
// deadline although the caller's context has none.
func TestCallTimeout(t *testing.T) {
	root := t.TempDir()
	f := newFake()
	serve(t, root, f)
	c, err := Connect(context.Background(), root, nil, WithMountTimeout(time.Second))
	if err != nil {
		t.Fatal(err)
	}
	err = c.Mount(context.Background(), "block", nil)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Mount past its timeout: %v, want context.DeadlineExceeded", err)
	}
	serverCtx := <-f.blocked
	<-serverCtx.Done()
	if !errors.Is(serverCtx.Err(), context.DeadlineExceeded) {
		t.Errorf("the manager's Mount ended with %v, want its deadline", serverCtx.Err())
	}
}

// Stopping the manager ends the calls in flight and closes connections
// before it unmounts anything.
func TestCloseDrainsBeforeUnmount(t *testing.T) {
	root := t.TempDir()
	f := newFake()
	stop := serve(t, root, f)
	c, err := Connect(context.Background(), root, nil, WithMountTimeout(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- c.Mount(context.Background(), "block", nil) }()
	<-f.blocked
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err == nil {
		t.Error("a Mount cut short by the manager's stop succeeded")
	}
	f.mu.Lock()
	events := strings.Join(f.events, ", ")
	f.mu.Unlock()
	if events != "mount block returned, close" {
		t.Errorf("events: %s; want the call in flight to return before close", events)
	}
	if _, err := os.Stat(SocketPath(root)); !os.IsNotExist(err) {
		t.Errorf("socket left after stop: %v", err)
	}
	if _, err := c.Status(context.Background()); err == nil {
		t.Error("a stopped manager answered")
	}
}

// managerCommand is how Supervise starts the test binary as a manager for
// root. The argument makes it look like a manager to isManager.
func managerCommand(t *testing.T, root string) []string {
	t.Setenv(managerRootEnv, root)
	return []string{os.Args[0], Subcommand}
}

func TestSuperviseRestartsStartedManager(t *testing.T) {
	root := t.TempDir()
	c, err := Connect(context.Background(), root, managerCommand(t, root))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { Stop(root, 10*time.Second) })
	testSupervise(t, root, c)
}

// A manager that outlived an earlier daemon (not this client's child) is
// watched and restarted as well.
func TestSuperviseRestartsAdoptedManager(t *testing.T) {
	root := t.TempDir()
	command := managerCommand(t, root)
	if _, err := Connect(context.Background(), root, command); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { Stop(root, 10*time.Second) })
	c, err := Connect(context.Background(), root, command)
	if err != nil {
		t.Fatal(err)
	}
	if c.mgr.child != nil {
		t.Fatal("the second client took the manager for its own child")
	}
	testSupervise(t, root, c)
}

// testSupervise kills c's manager twice and checks that a new one serves
// each time, after restore was called on it.
func testSupervise(t *testing.T, root string, c *Client) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	restored := make(chan int, 1)
	supervised := make(chan struct{})
	go func() {
		defer close(supervised)
		c.Supervise(ctx, func(ctx context.Context) error {
			st, err := c.Status(ctx)
			if err != nil {
				t.Errorf("restore: the new manager does not answer: %v", err)
			}
			restored <- st.PID
			return nil
		})
	}()
	defer func() { cancel(); <-supervised }()

	pid := c.PID()
	for range 2 { // the second restart comes after a backoff
		if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		var next int
		select {
		case next = <-restored:
		case <-ctx.Done():
			t.Fatalf("no new manager after pid %d was killed", pid)
		}
		if next == pid || next == 0 || next != c.PID() {
			t.Fatalf("after killing pid %d: restored on pid %d, client on %d", pid, next, c.PID())
		}
		if got, err := readPID(PIDPath(root)); err != nil || got != next {
			t.Errorf("lock file holds pid %d (%v), want %d", got, err, next)
		}
		if err := c.Mount(ctx, "after-restart", nil); err != nil {
			t.Errorf("Mount on the new manager: %v", err)
		}
		pid = next
	}
}

func TestWatchPID(t *testing.T) {
	root := t.TempDir()
	if _, err := Connect(context.Background(), root, managerCommand(t, root)); err != nil {
		t.Fatal(err)
	}
	pid, err := readPID(PIDPath(root))
	if err != nil {
		t.Fatal(err)
	}
	exited, stop, err := watchPID(pid)
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	select {
	case <-exited:
		t.Fatal("a live manager was reported exited")
	default:
	}
	if err := Stop(root, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	<-exited // the test's deadline bounds this
}

// A manager that died before Supervise watched it is restarted too.
func TestSuperviseRestartsManagerDeadBeforeWatch(t *testing.T) {
	root := t.TempDir()
	command := managerCommand(t, root)
	first, err := Connect(context.Background(), root, command)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { Stop(root, 10*time.Second) })
	c, err := Connect(context.Background(), root, command)
	if err != nil {
		t.Fatal(err)
	}
	pid := c.PID()
	syscall.Kill(pid, syscall.SIGKILL)
	<-first.mgr.child.exited // reaped: its pid is free

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	restored := make(chan struct{})
	supervised := make(chan struct{})
	go func() {
		defer close(supervised)
		c.Supervise(ctx, func(context.Context) error { close(restored); return nil })
	}()
	defer func() { cancel(); <-supervised }()
	select {
	case <-restored:
	case <-ctx.Done():
		t.Fatalf("no new manager after pid %d died unwatched", pid)
	}
	if c.PID() == pid {
		t.Errorf("the client still names the dead manager %d", pid)
	}
}

// A lazy composefs layer reaches the manager's MountComposefs with its
// image and owner; an ordinary one its Mount.
func TestMountComposefsReachesTheManager(t *testing.T) {
	root := t.TempDir()
	f := newFake()
	serve(t, root, f)
	c, err := Connect(context.Background(), root, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.MountComposefs(context.Background(), "/s/1/fs", "/s/1/layer.erofs", "1", nil); err != nil {
		t.Fatal(err)
	}
	if err := c.Mount(context.Background(), "/s/2/fs", nil); err != nil {
		t.Fatal(err)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if want := []string{"composefs /s/1/fs /s/1/layer.erofs 1"}; !slices.Equal(f.events, want) {
		t.Errorf("events %q, want %q", f.events, want)
	}
	if !f.mounted["/s/1/fs"] || !f.mounted["/s/2/fs"] {
		t.Errorf("mounted %v", f.mounted)
	}
	if got, want := c.ObjectsDir(), filepath.Join(root, "objfs"); got != want {
		t.Errorf("ObjectsDir %s, want %s", got, want)
	}
}

package images

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/containerd/containerd/v2/core/mount"
	"golang.org/x/sys/unix"
)

// chrootMounts mounts what programs in the tree at root expect: /proc, and
// a /dev of its own with the few device nodes they use. The returned undo
// unmounts both; callers defer it.
//
// /dev is a fresh tmpfs rather than a bind mount of the host's: nothing done
// inside the tree, or a RemoveAll that went wrong, can touch the host's
// devices.
func chrootMounts(root string) (undo func() error, err error) {
	var mounted []string
	undo = func() error {
		var errs []error
		for i := len(mounted) - 1; i >= 0; i-- {
			if err := mount.UnmountAll(mounted[i], 0); err != nil {
				errs = append(errs, fmt.Errorf("unmount %s: %w", mounted[i], err))
			}
		}
		mounted = nil
		return errors.Join(errs...)
	}
	defer func() {
		if err != nil {
			undo()
		}
	}()

	proc := filepath.Join(root, "proc")
	if err := os.MkdirAll(proc, 0o555); err != nil {
		return nil, err
	}
	if err := unix.Mount("proc", proc, "proc", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, ""); err != nil {
		return nil, fmt.Errorf("mount proc at %s: %w", proc, err)
	}
	mounted = append(mounted, proc)

	dev := filepath.Join(root, "dev")
	if err := os.MkdirAll(dev, 0o755); err != nil {
		return nil, err
	}
	if err := unix.Mount("tmpfs", dev, "tmpfs", unix.MS_NOSUID|unix.MS_NOEXEC, "mode=0755,size=1m"); err != nil {
		return nil, fmt.Errorf("mount tmpfs at %s: %w", dev, err)
	}
	mounted = append(mounted, dev)
	nodes := []struct {
		name         string
		major, minor uint32
	}{{"null", 1, 3}, {"zero", 1, 5}, {"full", 1, 7}, {"random", 1, 8}, {"urandom", 1, 9}, {"tty", 5, 0}}
	for _, n := range nodes {
		p := filepath.Join(dev, n.name)
		if err := unix.Mknod(p, unix.S_IFCHR|0o666, int(unix.Mkdev(n.major, n.minor))); err != nil {
			return nil, fmt.Errorf("mknod %s: %w", p, err)
		}
		if err := os.Chmod(p, 0o666); err != nil { // past the umask
			return nil, err
		}
	}
	for name, target := range map[string]string{"fd": "/proc/self/fd", "stdin": "/proc/self/fd/0", "stdout": "/proc/self/fd/1", "stderr": "/proc/self/fd/2"} {
		if err := os.Symlink(target, filepath.Join(dev, name)); err != nil {
			return nil, err
		}
	}
	return undo, nil
}

// chrootRun runs args in the tree at root (chroot, working directory /,
// environment env) and returns what it printed. args[0] without a slash is
// looked up in the tree's PATH. Cancelling ctx kills the whole process
// group, so that no dpkg child is left holding the mounts.
func chrootRun(ctx context.Context, root string, env []string, args ...string) (string, error) {
	prog, err := lookPathIn(root, env, args[0])
	if err != nil {
		return "", err
	}
	cmd := exec.CommandContext(ctx, prog, args[1:]...)
	cmd.Args[0] = args[0]
	cmd.Dir = "/"
	cmd.Env = env
	cmd.SysProcAttr = &syscall.SysProcAttr{Chroot: root, Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 10 * time.Second
	out := &tailBuffer{max: 16 << 10}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Run(); err != nil {
		if ctx.Err() != nil {
			err = fmt.Errorf("%w (%v)", ctx.Err(), err)
		}
		return out.String(), fmt.Errorf("in chroot %s: %s: %w; it printed:\n%s", root, strings.Join(args, " "), err, out)
	}
	return out.String(), nil
}

// lookPathIn finds name in the PATH of env inside the tree at root. It
// only checks that an entry exists: a symlink there is resolved by the
// kernel inside the chroot, not here.
func lookPathIn(root string, env []string, name string) (string, error) {
	if strings.Contains(name, "/") {
		return name, nil
	}
	pathVar := ""
	for _, kv := range env {
		if v, ok := strings.CutPrefix(kv, "PATH="); ok {
			pathVar = v
		}
	}
	for _, dir := range filepath.SplitList(pathVar) {
		p := path.Join(dir, name)
		if _, err := os.Lstat(filepath.Join(root, p)); err == nil {
			return p, nil
		}
	}
	return "", fmt.Errorf("%s: not found in PATH=%s under %s", name, pathVar, root)
}

// tailBuffer keeps the last max bytes written to it: enough of apt's
// output to see why it failed, without holding all of it.
type tailBuffer struct {
	max int
	buf []byte
}

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.buf = append(t.buf, p...)
	if over := len(t.buf) - t.max; over > 0 {
		t.buf = append(t.buf[:0], t.buf[over:]...)
	}
	return len(p), nil
}

func (t *tailBuffer) String() string { return string(t.buf) }

package composefs

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/containerd/containerd/v2/core/mount"
	"golang.org/x/sys/unix"
)

// MountOption changes how MountImage mounts an image.
type MountOption func(*mountConfig)

type mountConfig struct {
	acl  bool
	loop bool
}

// WithACL mounts the image with POSIX ACLs honoured. Without it the mount
// is noacl: metadata images carry no ACLs unless the layer had them, and
// noacl spares the kernel looking for them on every permission check.
func WithACL() MountOption { return func(c *mountConfig) { c.acl = true } }

// WithLoopDevice mounts through a loop device even where the kernel can
// mount the image file directly: the path kernels before 6.12 take, forced
// so that it can be tested on newer ones.
func WithLoopDevice() MountOption { return func(c *mountConfig) { c.loop = true } }

// Loop device flags (linux/loop.h), not in x/sys/unix.
const (
	loFlagsReadOnly  = 1
	loFlagsAutoclear = 4
	loFlagsDirectIO  = 16
)

// MountImage mounts the EROFS image read-only at mountpoint. It mounts the
// file itself (kernel ≥ 6.12); where the kernel answers ENOTBLK (it needs a
// block device) it attaches the image to a read-only, direct-I/O loop
// device that clears itself when the mount goes (autoclear), so Unmount
// leaves no loop device behind.
//
// It calls mount(2) with the file as the source, the simplest call that
// works: fsopen/fsconfig/fsmount/move_mount mounts the same way and reports
// no more (EROFS logs why an image is bad to the kernel log only), and
// mount(8) would set up a loop device of its own.
func MountImage(image, mountpoint string, opts ...MountOption) error {
	var cfg mountConfig
	for _, o := range opts {
		o(&cfg)
	}
	if !cfg.loop {
		err := mountErofs(image, mountpoint, cfg.acl)
		if !errors.Is(err, unix.ENOTBLK) {
			return err
		}
	}
	return mountLoop(image, mountpoint, cfg.acl)
}

// mountErofs mounts source (an image file or a block device) read-only at
// mountpoint.
func mountErofs(source, mountpoint string, acl bool) error {
	data := "noacl"
	if acl {
		data = "acl"
	}
	err := unix.Mount(source, mountpoint, "erofs", unix.MS_RDONLY, data)
	switch {
	case err == nil:
		return nil
	case errors.Is(err, unix.EINVAL), errors.Is(err, unix.EFSCORRUPTED):
		// EROFS says what is wrong with an image in the kernel log only,
		// not in the errno (nor, with the new mount API, in the
		// filesystem context's messages).
		return fmt.Errorf("mount EROFS image %s at %s (%s): %w (the kernel log says why)", source, mountpoint, data, err)
	default:
		return fmt.Errorf("mount EROFS image %s at %s (%s): %w", source, mountpoint, data, err)
	}
}

// mountLoop attaches image to a free loop device (read-only, direct I/O,
// autoclear) and mounts that device. The loop device is held open only
// until the mount holds it: autoclear then detaches it at the mount's end,
// or right here if the mount fails.
func mountLoop(image, mountpoint string, acl bool) error {
	img, err := os.Open(image)
	if err != nil {
		return fmt.Errorf("mount EROFS image %s through a loop device: %w", image, err)
	}
	defer img.Close()
	dev, err := attachLoop(img)
	if err != nil {
		return fmt.Errorf("mount EROFS image %s through a loop device: %w", image, err)
	}
	defer dev.Close()
	if err := mountErofs(dev.Name(), mountpoint, acl); err != nil {
		return fmt.Errorf("image %s: %w", image, err)
	}
	return nil
}

// attachLoop configures a free loop device with img as its read-only
// backing file and returns the device, open. Another process may take the
// free device between LOOP_CTL_GET_FREE and LOOP_CONFIGURE (EBUSY): ask
// again, a few times.
func attachLoop(img *os.File) (*os.File, error) {
	ctl, err := os.OpenFile("/dev/loop-control", os.O_RDWR, 0)
	if err != nil {
		return nil, err
	}
	defer ctl.Close()
	var lastErr error
	for range 16 {
		n, err := unix.IoctlRetInt(int(ctl.Fd()), unix.LOOP_CTL_GET_FREE)
		if err != nil {
			return nil, fmt.Errorf("find a free loop device: %w", err)
		}
		name := fmt.Sprintf("/dev/loop%d", n)
		dev, err := os.OpenFile(name, os.O_RDONLY, 0)
		if err != nil {
			return nil, err
		}
		cfg := unix.LoopConfig{Fd: uint32(img.Fd())}
		cfg.Info.Flags = loFlagsReadOnly | loFlagsAutoclear | loFlagsDirectIO
		err = unix.IoctlLoopConfigure(int(dev.Fd()), &cfg)
		if errors.Is(err, unix.EINVAL) {
			// The backing filesystem cannot do direct I/O: buffered
			// reads through the page cache are still correct.
			cfg.Info.Flags &^= loFlagsDirectIO
			err = unix.IoctlLoopConfigure(int(dev.Fd()), &cfg)
		}
		if err == nil {
			return dev, nil
		}
		dev.Close()
		if !errors.Is(err, unix.EBUSY) {
			return nil, fmt.Errorf("configure %s: %w", name, err)
		}
		lastErr = fmt.Errorf("configure %s: %w", name, err)
	}
	return nil, lastErr
}

// MountedImage returns the image file mounted at mountpoint (through its
// loop device, if it has one), or "" when no EROFS image is mounted there.
// EROFS mounts outlive the daemon that made them: after a restart this is
// how to tell which are still up, and of which image.
func MountedImage(mountpoint string) (string, error) {
	real, err := filepath.EvalSymlinks(mountpoint)
	if errors.Is(err, os.ErrNotExist) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("image mounted at %s: %w", mountpoint, err)
	}
	info, err := mount.Lookup(real)
	if err != nil {
		return "", fmt.Errorf("image mounted at %s: %w", mountpoint, err)
	}
	if info.Mountpoint != real || info.FSType != "erofs" {
		return "", nil
	}
	dev, ok := strings.CutPrefix(info.Source, "/dev/")
	if !ok || !strings.HasPrefix(dev, "loop") {
		return info.Source, nil
	}
	b, err := os.ReadFile(filepath.Join("/sys/block", dev, "loop", "backing_file"))
	if err != nil {
		return "", fmt.Errorf("image mounted at %s through %s: %w", mountpoint, info.Source, err)
	}
	return strings.TrimSpace(string(b)), nil
}

// Unmount unmounts a metadata image (or an overlay of them). It does not
// detach lazily: a busy mount is an error (EBUSY) to be seen, not a mount
// left to linger. A mountpoint that is not mounted, or does not exist, is
// success, so that cleanup can be repeated. A loop device under the mount
// clears itself (autoclear).
func Unmount(mountpoint string) error {
	switch err := unix.Unmount(mountpoint, 0); {
	case err == nil, errors.Is(err, unix.EINVAL), errors.Is(err, unix.ENOENT):
		return nil
	default:
		return fmt.Errorf("unmount %s: %w", mountpoint, err)
	}
}

// MountAt mounts the stack at target itself, with the new mount API. A
// stack whose Options are too long for mount(2) (ErrOptionsTooLong) gives
// each layer its own fsconfig lowerdir+ (and the objects datadir+), so
// there is no one-page limit on the options, only overlayfs's own (500
// layers, each path shorter than PATH_MAX): kernel ≥ 6.8. Where the kernel
// has no lowerdir+, a stack whose Options fit is mounted with mount(2), as
// containerd would mount it (≥ 6.6). The
// snapshotter mounts stacks too deep for Mount, and those containerd
// unpacks into, and hands containerd a bind mount of target, which every
// containerd release mounts as it is.
func (o Overlay) MountAt(target string) error {
	params, err := o.params()
	if err != nil {
		return err
	}
	fsfd, err := unix.Fsopen("overlay", unix.FSOPEN_CLOEXEC)
	if err != nil {
		return fmt.Errorf("mount composefs overlay at %s: fsopen: %w", target, err)
	}
	defer unix.Close(fsfd)
	fail := func(step string, err error) error {
		err = fmt.Errorf("mount composefs overlay of %d layers at %s: %s: %w", len(o.Layers), target, step, err)
		// overlayfs says why in the filesystem context's messages.
		if msg := fsContextMessages(fsfd); msg != "" {
			err = fmt.Errorf("%w (kernel: %s)", err, msg)
		}
		return err
	}
	for i, p := range params {
		err := unix.FsconfigSetString(fsfd, p[0], p[1])
		if i == 0 && errors.Is(err, unix.EINVAL) {
			// No lowerdir+ before 6.8: mount(2), if the options fit.
			if options, oerr := o.Options(); oerr == nil {
				return o.mountOptions(target, options, fail(p[0]+"="+p[1], err))
			}
		}
		if err != nil {
			return fail(p[0]+"="+p[1], err)
		}
	}
	if err := unix.FsconfigCreate(fsfd); err != nil {
		return fail("create", err)
	}
	var attrs int
	if o.Upper == "" {
		attrs = unix.MOUNT_ATTR_RDONLY
	}
	mfd, err := unix.Fsmount(fsfd, unix.FSMOUNT_CLOEXEC, attrs)
	if err != nil {
		return fail("fsmount", err)
	}
	defer unix.Close(mfd)
	if err := unix.MoveMount(mfd, "", unix.AT_FDCWD, target, unix.MOVE_MOUNT_F_EMPTY_PATH); err != nil {
		return fail("move_mount", err)
	}
	return nil
}

// mountOptions mounts the stack at target with mount(2) and options, as
// containerd would: where the kernel has no lowerdir+ (why).
func (o Overlay) mountOptions(target string, options []string, why error) error {
	var flags uintptr
	if o.Upper == "" {
		flags = unix.MS_RDONLY
	}
	if err := unix.Mount("overlay", target, "overlay", flags, strings.Join(options, ",")); err != nil {
		return fmt.Errorf("mount composefs overlay of %d layers at %s with mount(2): %w (the kernel log says why; the new mount API: %v)", len(o.Layers), target, err, why)
	}
	return nil
}

// fsContextMessages reads what the kernel logged into a filesystem context
// ("e overlay: ..."), one message a read, until there are no more.
func fsContextMessages(fsfd int) string {
	var msgs []string
	buf := make([]byte, 4096)
	for range 16 {
		n, err := unix.Read(fsfd, buf)
		if err != nil || n <= 0 {
			break
		}
		msgs = append(msgs, strings.TrimSpace(string(buf[:n])))
	}
	return strings.Join(msgs, "; ")
}

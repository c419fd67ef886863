package composefs

import (
	"errors"
	"fmt"
	"os"

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
	if err := unix.Mount(source, mountpoint, "erofs", unix.MS_RDONLY, data); err != nil {
		// EROFS says what is wrong with an image in the kernel log only,
		// not in the errno (nor, with the new mount API, in the
		// filesystem context's messages).
		return fmt.Errorf("mount EROFS image %s at %s (%s): %w (the kernel log says why)", source, mountpoint, data, err)
	}
	return nil
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

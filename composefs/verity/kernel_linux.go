package verity

import (
	"errors"
	"fmt"
	"os"
	"unsafe"

	"golang.org/x/sys/unix"
)

// ErrNotSupported says the file's filesystem (or the kernel) cannot do
// fs-verity: a property of the machine, to be said once and lived with
// (overlayfs then mounts with verity=off), not a failure of the file.
var ErrNotSupported = errors.New("fs-verity is not supported by this file's filesystem or kernel")

// ErrNoVerity says the file has no fs-verity enabled.
var ErrNoVerity = errors.New("no fs-verity on this file")

// Enable turns fs-verity on for f with SHA-256 and 4 KiB blocks, the
// parameters Digest computes, so a later Measure reports what Digest
// computed. f must be open read-only and no one may hold it open for
// writing (the kernel says ETXTBSY). A file that has fs-verity already is
// success: objects shared through hard links are enabled once. Where the
// filesystem cannot do it the error is ErrNotSupported (wrapping the
// errno).
func Enable(f *os.File) error {
	arg := unix.FsverityEnableArg{
		Version:        1,
		Hash_algorithm: algSHA256,
		Block_size:     BlockSize,
	}
	err := ioctl(f, unix.FS_IOC_ENABLE_VERITY, unsafe.Pointer(&arg))
	switch {
	case err == nil, errors.Is(err, unix.EEXIST):
		return nil
	case notSupported(f, err):
		return fmt.Errorf("enable fs-verity on %s: %w (%w)", f.Name(), ErrNotSupported, err)
	default:
		return fmt.Errorf("enable fs-verity on %s: %w", f.Name(), err)
	}
}

// Measure returns the fs-verity digest the kernel keeps for f: the one
// Digest computes from its content, if the content is what it was when
// verity was enabled (the kernel checks every read against it). A file
// without fs-verity gives ErrNoVerity; a filesystem without it,
// ErrNotSupported.
func Measure(f *os.File) (Sum, error) {
	// struct fsverity_digest: __u16 algorithm, __u16 size (in: room for
	// the digest; out: its length), then the digest. Room for SHA-512,
	// so a file enabled with it reports that rather than EOVERFLOW.
	var buf struct {
		unix.FsverityDigest
		digest [64]byte
	}
	buf.Size = uint16(len(buf.digest))
	err := ioctl(f, unix.FS_IOC_MEASURE_VERITY, unsafe.Pointer(&buf))
	switch {
	case err == nil:
	case errors.Is(err, unix.ENODATA):
		return Sum{}, fmt.Errorf("measure fs-verity of %s: %w", f.Name(), ErrNoVerity)
	case notSupported(f, err):
		return Sum{}, fmt.Errorf("measure fs-verity of %s: %w (%w)", f.Name(), ErrNotSupported, err)
	default:
		return Sum{}, fmt.Errorf("measure fs-verity of %s: %w", f.Name(), err)
	}
	if buf.Algorithm != algSHA256 || buf.Size != Size {
		return Sum{}, fmt.Errorf("measure fs-verity of %s: hash algorithm %d with %d-byte digests, want SHA-256 (1, 32 bytes)", f.Name(), buf.Algorithm, buf.Size)
	}
	var s Sum
	copy(s[:], buf.digest[:Size])
	return s, nil
}

// notSupported tells whether err from a verity ioctl on f means the
// filesystem cannot do fs-verity: EOPNOTSUPP (a kernel without
// CONFIG_FS_VERITY, or ext4/f2fs without the verity feature), ENOTTY (a
// filesystem that knows no verity ioctl: tmpfs, xfs, overlayfs, FUSE), or
// EINVAL on a regular file, which our fixed, valid arguments draw only
// from a filesystem that cannot use 4 KiB Merkle blocks.
func notSupported(f *os.File, err error) bool {
	if errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.ENOTTY) {
		return true
	}
	if errors.Is(err, unix.EINVAL) {
		fi, serr := f.Stat()
		return serr == nil && fi.Mode().IsRegular()
	}
	return false
}

// ioctl runs an ioctl whose argument is a pointer, on f's descriptor.
func ioctl(f *os.File, req uint, arg unsafe.Pointer) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var errno unix.Errno
	if cerr := rc.Control(func(fd uintptr) {
		_, _, errno = unix.Syscall(unix.SYS_IOCTL, fd, uintptr(req), uintptr(arg))
	}); cerr != nil {
		return cerr
	}
	if errno != 0 {
		return errno
	}
	return nil
}

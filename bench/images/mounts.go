package images

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/containerd/containerd/v2/core/mount"
	"golang.org/x/sys/unix"
)

// overlay is an overlayfs mount of a writable upper directory over a
// read-only lower tree. Whatever changes in merged lands in upper, which is
// then the layer those changes make.
type overlay struct {
	lower, upper, work, merged string
}

// mountOverlay mounts upper over lower at dir/merged, with upper and work
// made in dir. redirect_dir and metacopy are off so that upper holds every
// changed file whole and a renamed directory is copied rather than
// redirected: the upper directory must make a layer on its own.
func mountOverlay(lower, dir string) (*overlay, error) {
	o := &overlay{
		lower:  lower,
		upper:  filepath.Join(dir, "upper"),
		work:   filepath.Join(dir, "work"),
		merged: filepath.Join(dir, "merged"),
	}
	for _, d := range []string{o.upper, o.work, o.merged} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, fmt.Errorf("overlay: %w", err)
		}
	}
	opts := fmt.Sprintf("lowerdir=%s,upperdir=%s,workdir=%s,redirect_dir=off,metacopy=off,index=off", o.lower, o.upper, o.work)
	if err := unix.Mount("overlay", o.merged, "overlay", 0, opts); err != nil {
		return nil, fmt.Errorf("mount overlay at %s (%s): %w", o.merged, opts, err)
	}
	return o, nil
}

// unmount unmounts the overlay and anything still mounted inside it.
func (o *overlay) unmount() error {
	if err := mount.UnmountRecursive(o.merged, 0); err != nil {
		return fmt.Errorf("unmount overlay %s: %w", o.merged, err)
	}
	return nil
}

// removeTemp removes a work directory, first unmounting whatever is still
// mounted under it (lazily if it is busy). While anything stays mounted it
// removes nothing: RemoveAll must never reach into a mounted /proc or into
// an overlay's lower tree.
func removeTemp(dir string) error {
	if err := mount.UnmountRecursive(dir, 0); err != nil {
		mount.UnmountRecursive(dir, unix.MNT_DETACH)
	}
	left, err := mountsUnder(dir)
	if err != nil {
		return err
	}
	if len(left) > 0 {
		return fmt.Errorf("not removing %s: still mounted there: %s", dir, strings.Join(left, ", "))
	}
	if err := os.RemoveAll(dir); err != nil {
		return fmt.Errorf("remove work directory: %w", err)
	}
	return nil
}

// mountsUnder lists the mount points at or under dir in this mount
// namespace.
func mountsUnder(dir string) ([]string, error) {
	dir, err := filepath.Abs(dir)
	if err != nil {
		return nil, err
	}
	if real, err := filepath.EvalSymlinks(dir); err == nil {
		dir = real
	} else if !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var under []string
	s := bufio.NewScanner(f)
	s.Buffer(nil, 1<<20)
	for s.Scan() {
		// "36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw": the fifth field is the mount point.
		fields := strings.Fields(s.Text())
		if len(fields) < 5 {
			continue
		}
		mp := unescapeMountinfo(fields[4])
		if mp == dir || strings.HasPrefix(mp, dir+"/") {
			under = append(under, mp)
		}
	}
	return under, s.Err()
}

// unescapeMountinfo undoes the octal escapes (\040 for a space) the kernel
// writes in /proc/self/mountinfo.
func unescapeMountinfo(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

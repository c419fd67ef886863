package images

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/containerd/containerd/v2/core/mount"
	"golang.org/x/sys/unix"

	"github.com/lazypull/lazypull/internal/testenv"
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
	if left := testenv.MountsUnder(dir); len(left) > 0 {
		return fmt.Errorf("not removing %s: still mounted there: %s", dir, strings.Join(left, ", "))
	}
	if err := os.RemoveAll(dir); err != nil {
		return fmt.Errorf("remove work directory: %w", err)
	}
	return nil
}

package images

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// Verify runs img's workload as a container would see it, minus the
// namespaces: its layers unpacked in order into a temporary root (applying
// whiteouts), the command run there in a chroot. It fails unless the
// workload prints img.Ready on a line of its own. It needs root and as much
// temporary space as the image unpacked.
func Verify(ctx context.Context, img Image) (err error) {
	tmp, err := os.MkdirTemp("", "lazypull-verify-"+img.Name+"-")
	if err != nil {
		return err
	}
	defer func() {
		if rerr := removeTemp(tmp); rerr != nil && err == nil {
			err = rerr
		}
	}()
	root := filepath.Join(tmp, "rootfs")
	for _, l := range img.Layers {
		blob := filepath.Join(img.Layout, "blobs", l.Digest.Algorithm().String(), l.Digest.Encoded())
		if err := unpackLayer(ctx, blob, root); err != nil {
			return fmt.Errorf("verify %s: %w", img.Name, err)
		}
	}
	undo, err := chrootMounts(root)
	if err != nil {
		return fmt.Errorf("verify %s: %w", img.Name, err)
	}
	defer func() {
		if uerr := undo(); uerr != nil && err == nil {
			err = uerr
		}
	}()
	out, err := chrootRun(ctx, root, imageEnv, img.Cmd...)
	if err != nil {
		return fmt.Errorf("verify %s: %w", img.Name, err)
	}
	if !slices.Contains(strings.Split(out, "\n"), img.Ready) {
		return fmt.Errorf("verify %s: %q printed %q, not the line %q", img.Name, img.Cmd, out, img.Ready)
	}
	return nil
}

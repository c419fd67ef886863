package images

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/containerd/containerd/v2/pkg/archive"
	"github.com/klauspost/compress/gzip"
)

// aptEnv is the environment apt-get runs in, inside the chroot.
var aptEnv = append([]string{"DEBIAN_FRONTEND=noninteractive", "LC_ALL=C", "HOME=/root"}, imageEnv...)

// installLayer makes r's application layer: the base tree unpacked, an
// overlay over it, apt-get install of r.Packages and r.Files in the merged
// tree, and the overlay's upper directory written as the layer, its
// whiteouts made OCI ones.
func (b *Builder) installLayer(ctx context.Context, r recipe, lw *layoutWriter, baseBlob, tmp string) (_ layer, err error) {
	lower := filepath.Join(tmp, "lower")
	if err := unpackLayer(ctx, baseBlob, lower); err != nil {
		return layer{}, err
	}
	ov, err := mountOverlay(lower, tmp)
	if err != nil {
		return layer{}, err
	}
	defer func() {
		if uerr := ov.unmount(); uerr != nil && err == nil {
			err = uerr
		}
	}()

	start := time.Now()
	b.logf("%s: apt-get install %s", r.Name, strings.Join(r.Packages, " "))
	if err := aptInstall(ctx, ov.merged, r.Packages); err != nil {
		return layer{}, err
	}
	for name, data := range r.Files {
		p := filepath.Join(ov.merged, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return layer{}, err
		}
		if err := os.WriteFile(p, data, 0o644); err != nil {
			return layer{}, err
		}
	}
	if err := ov.unmount(); err != nil { // the upper directory is the layer only once the overlay is gone
		return layer{}, err
	}
	b.logf("%s: installed in %v; writing the application layer", r.Name, time.Since(start).Round(time.Second))
	ly, err := lw.writeLayer(func(tw *tar.Writer) error { return writeUpper(tw, ov.upper, lower) })
	if err != nil {
		return layer{}, fmt.Errorf("application layer from %s: %w", ov.upper, err)
	}
	return ly, nil
}

// aptInstall installs packages (without recommends) into the tree at root,
// then removes apt's caches and lists, as a Dockerfile would. While apt runs,
// the tree has /proc, /dev, the host's resolv.conf (to reach the mirror) and
// a policy-rc.d that keeps packages from starting services; all are gone
// afterwards.
func aptInstall(ctx context.Context, root string, packages []string) (err error) {
	undoMounts, err := chrootMounts(root)
	if err != nil {
		return err
	}
	defer func() {
		if uerr := undoMounts(); uerr != nil && err == nil {
			err = uerr
		}
	}()
	resolv, err := os.ReadFile("/etc/resolv.conf")
	if err != nil {
		return fmt.Errorf("DNS for apt in the chroot: %w", err)
	}
	for _, f := range []struct {
		name string
		data []byte
		mode os.FileMode
	}{
		{"etc/resolv.conf", resolv, 0o644},
		{"usr/sbin/policy-rc.d", []byte("#!/bin/sh\nexit 101\n"), 0o755},
	} {
		cleanup, err := placeTemporarily(filepath.Join(root, f.name), f.data, f.mode)
		if err != nil {
			return err
		}
		defer func() {
			if cerr := cleanup(); cerr != nil && err == nil {
				err = cerr
			}
		}()
	}

	steps := [][]string{
		{"apt-get", "update", "-q"},
		append([]string{"apt-get", "install", "-y", "-q", "--no-install-recommends"}, packages...),
		{"/bin/sh", "-c", "apt-get clean && rm -rf /var/lib/apt/lists/*"},
	}
	for _, args := range steps {
		if _, err := chrootRun(ctx, root, aptEnv, args...); err != nil {
			return err
		}
	}
	return nil
}

// placeTemporarily writes a file that only the build needs, unless the
// tree already has one, and returns what removes it again.
func placeTemporarily(p string, data []byte, mode os.FileMode) (cleanup func() error, err error) {
	if _, err := os.Lstat(p); err == nil {
		return func() error { return nil }, nil
	}
	if err := os.WriteFile(p, data, mode); err != nil {
		return nil, err
	}
	return func() error {
		if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
		return nil
	}, nil
}

// unpackLayer unpacks the gzip layer blob into dir with containerd's
// applier, which keeps owners, modes, xattrs, device nodes and hard links.
func unpackLayer(ctx context.Context, blob, dir string) error {
	f, err := os.Open(blob)
	if err != nil {
		return err
	}
	defer f.Close()
	zr, err := gzip.NewReader(f)
	if err != nil {
		return fmt.Errorf("unpack %s: %w", blob, err)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	if _, err := archive.Apply(ctx, dir, zr); err != nil {
		return fmt.Errorf("unpack %s into %s: %w", blob, dir, err)
	}
	return nil
}

package images

import (
	"archive/tar"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// OCI whiteout names (image-spec layer.md): ".wh.<name>" deletes <name> from
// the layers below, ".wh..wh..opq" in a directory hides all they have there.
const (
	whiteoutPrefix = ".wh."
	opaqueWhiteout = ".wh..wh..opq"
)

// overlayfs marks in an upper directory (Documentation/filesystems/overlayfs.rst).
const (
	overlayXattrPrefix = "trusted.overlay."
	overlayOpaque      = "trusted.overlay.opaque"   // "y": the directory hides the lower ones
	overlayWhiteout    = "trusted.overlay.whiteout" // on a regular file: an "xwhiteout"
	overlayRedirect    = "trusted.overlay.redirect" // a renamed directory: its data is below
	overlayMetacopy    = "trusted.overlay.metacopy" // metadata only: its data is below
)

// writeTree writes the tree under root to tw, parents before children and
// each directory's entries sorted by name, so that the same tree gives the
// same tar. root itself is not an entry.
func writeTree(tw *tar.Writer, root string) error {
	w := treeWriter{tw: tw, root: root, links: map[inode]string{}}
	return w.dir("")
}

// writeUpper writes the overlayfs upper directory upper, mounted over the
// tree lower, as the layer it makes over lower, in writeTree's order.
// Whiteouts (character devices 0/0, or files marked trusted.overlay.whiteout)
// become ".wh." entries, an opaque directory that hides one in lower gets a
// ".wh..wh..opq" entry, and overlayfs's own xattrs are dropped. Entries that
// would need data from lower (a redirected directory, a metacopy file) are
// an error: mount with redirect_dir=off,metacopy=off.
func writeUpper(tw *tar.Writer, upper, lower string) error {
	w := treeWriter{tw: tw, root: upper, lower: lower, upper: true, links: map[inode]string{}}
	return w.dir("")
}

type inode struct{ dev, ino uint64 }

type treeWriter struct {
	tw    *tar.Writer
	root  string
	upper bool             // root is an overlayfs upper directory
	lower string           // what it was mounted over
	links map[inode]string // first tar name of each multiply-linked file
	buf   []byte
}

func (w *treeWriter) dir(rel string) error {
	entries, err := os.ReadDir(filepath.Join(w.root, rel))
	if err != nil {
		return err
	}
	for _, e := range entries { // os.ReadDir sorts by name
		if err := w.entry(path.Join(rel, e.Name())); err != nil {
			return err
		}
	}
	return nil
}

func (w *treeWriter) entry(rel string) error {
	full := filepath.Join(w.root, rel)
	fi, err := os.Lstat(full)
	if err != nil {
		return err
	}
	st := fi.Sys().(*syscall.Stat_t)
	xattrs, err := readXattrs(full)
	if err != nil {
		return err
	}

	if w.upper {
		if _, ok := xattrs[overlayRedirect]; ok {
			return fmt.Errorf("%s: overlayfs redirected directory; its contents are in the lower layer (mount with redirect_dir=off)", full)
		}
		if _, ok := xattrs[overlayMetacopy]; ok {
			return fmt.Errorf("%s: overlayfs metacopy file; its data is in the lower layer (mount with metacopy=off)", full)
		}
		_, xwhiteout := xattrs[overlayWhiteout]
		if (fi.Mode()&os.ModeCharDevice != 0 && st.Rdev == 0) || (fi.Mode().IsRegular() && xwhiteout) {
			return w.whiteout(path.Join(path.Dir(rel), whiteoutPrefix+path.Base(rel)), fi)
		}
	}
	if strings.HasPrefix(path.Base(rel), whiteoutPrefix) {
		return fmt.Errorf("%s: a file named like an OCI whiteout cannot be put in a layer", full)
	}

	if fi.Mode()&os.ModeSocket != 0 {
		return nil // a tar cannot hold a socket, and a socket outlives no process
	}
	link := ""
	if fi.Mode()&os.ModeSymlink != 0 {
		if link, err = os.Readlink(full); err != nil {
			return err
		}
	}
	hdr, err := tar.FileInfoHeader(fi, link)
	if err != nil {
		return fmt.Errorf("%s: %w", full, err)
	}
	hdr.Name = rel
	// Names would come from the build host's passwd; ids are what the image has.
	hdr.Uname, hdr.Gname = "", ""
	hdr.ModTime = fi.ModTime().Truncate(time.Second)
	hdr.AccessTime, hdr.ChangeTime = time.Time{}, time.Time{}
	for name, value := range xattrs {
		if strings.HasPrefix(name, overlayXattrPrefix) {
			continue
		}
		if hdr.PAXRecords == nil {
			hdr.PAXRecords = map[string]string{}
		}
		hdr.PAXRecords["SCHILY.xattr."+name] = value
	}

	switch {
	case fi.IsDir():
		hdr.Name += "/"
	case fi.Mode().IsRegular() && st.Nlink > 1:
		id := inode{uint64(st.Dev), st.Ino}
		if first, ok := w.links[id]; ok {
			hdr.Typeflag, hdr.Linkname, hdr.Size = tar.TypeLink, first, 0
		} else {
			w.links[id] = rel
		}
	}
	if err := w.tw.WriteHeader(hdr); err != nil {
		return fmt.Errorf("%s: %w", full, err)
	}

	switch {
	case fi.IsDir():
		if w.upper && xattrs[overlayOpaque] == "y" && w.lowerHasDir(rel) {
			if err := w.whiteout(path.Join(rel, opaqueWhiteout), fi); err != nil {
				return err
			}
		}
		return w.dir(rel)
	case hdr.Typeflag == tar.TypeReg:
		return w.contents(full, hdr.Size)
	}
	return nil
}

// lowerHasDir says whether lower has a directory at rel. overlayfs marks
// directories it creates opaque even where lower has nothing to hide; an
// image builder would not write a marker there, so neither do we.
func (w *treeWriter) lowerHasDir(rel string) bool {
	fi, err := os.Lstat(filepath.Join(w.lower, rel))
	return err == nil && fi.IsDir()
}

func (w *treeWriter) whiteout(name string, fi os.FileInfo) error {
	err := w.tw.WriteHeader(&tar.Header{
		Typeflag: tar.TypeReg, Name: name, Mode: 0o644,
		ModTime: fi.ModTime().Truncate(time.Second),
	})
	if err != nil {
		return fmt.Errorf("whiteout %s: %w", name, err)
	}
	return nil
}

func (w *treeWriter) contents(full string, size int64) error {
	f, err := os.Open(full)
	if err != nil {
		return err
	}
	defer f.Close()
	if w.buf == nil {
		w.buf = make([]byte, 1<<20)
	}
	// A file that shrank since Lstat would leave the tar short; say which.
	n, err := io.CopyBuffer(w.tw, io.LimitReader(f, size), w.buf)
	if err != nil {
		return fmt.Errorf("%s: %w", full, err)
	}
	if n != size {
		return fmt.Errorf("%s: read %d bytes, want %d: it changed while it was written", full, n, size)
	}
	return nil
}

// readXattrs returns the extended attributes of p itself (not of a
// symlink's target).
func readXattrs(p string) (map[string]string, error) {
	size, err := unix.Llistxattr(p, nil)
	if err != nil {
		if errors.Is(err, unix.ENOTSUP) {
			return nil, nil
		}
		return nil, fmt.Errorf("list xattrs of %s: %w", p, err)
	}
	if size == 0 {
		return nil, nil
	}
	names := make([]byte, size)
	if size, err = unix.Llistxattr(p, names); err != nil {
		return nil, fmt.Errorf("list xattrs of %s: %w", p, err)
	}
	xattrs := map[string]string{}
	for _, name := range bytes.Split(names[:size], []byte{0}) {
		if len(name) == 0 {
			continue
		}
		value, err := lgetxattr(p, string(name))
		if err != nil {
			return nil, err
		}
		xattrs[string(name)] = string(value)
	}
	return xattrs, nil
}

func lgetxattr(p, name string) ([]byte, error) {
	for {
		size, err := unix.Lgetxattr(p, name, nil)
		if err != nil {
			return nil, fmt.Errorf("read xattr %s of %s: %w", name, p, err)
		}
		value := make([]byte, size)
		n, err := unix.Lgetxattr(p, name, value)
		if errors.Is(err, unix.ERANGE) {
			continue // it grew between the two calls
		}
		if err != nil {
			return nil, fmt.Errorf("read xattr %s of %s: %w", name, p, err)
		}
		return value[:n], nil
	}
}

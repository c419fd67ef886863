// Package tocimage writes a lazy-format layer's composefs metadata image
// from its TOC alone: the layer's tree without file data, each regular
// file pointing into the object store by the digest of its content,
// whiteouts and opaque directories as the overlay snapshotter's layers
// have them. Nothing of the layer is fetched to write it, so the image can
// be mounted before any file is: the objects come later, or are there.
//
// It knows the TOC (format/toc) and the image's entries (composefs,
// composefs/erofs); not registries, mounts, or which objects the store has.
package tocimage

import (
	"context"
	"fmt"
	"strings"

	"github.com/opencontainers/go-digest"
	"golang.org/x/sys/unix"

	"github.com/lazypull/lazypull/composefs"
	"github.com/lazypull/lazypull/composefs/erofs"
	"github.com/lazypull/lazypull/composefs/verity"
	"github.com/lazypull/lazypull/format/toc"
)

// Stats says what an image holds.
type Stats struct {
	Entries int   // the image's entries, the root and hard links included
	Files   int   // regular files with content (hard links counted once)
	Objects int   // distinct objects they name
	Bytes   int64 // the objects' bytes
	Size    int64 // the image's bytes
}

// Options adjust the image.
type Options struct {
	// Verity, if set, gives the fs-verity digest of the object named d
	// when it is known (the object is in the store); the file's metacopy
	// xattr then names it, and overlayfs checks it with verity=require.
	Verity func(d digest.Digest) (verity.Sum, bool)
	// Unsynced leaves the image in the page cache (composefs.WriteImage):
	// for a caller that writes it again from the TOC after a crash.
	Unsynced bool
}

// Write writes the image of the layer t describes to path (replacing it
// whole, or leaving what was there).
func Write(ctx context.Context, t *toc.TOC, path string, opts Options) (Stats, error) {
	w := erofs.NewWriter()
	w.Grow(t.Len() + 1) // the root too
	st, err := add(ctx, w, t, opts)
	if err != nil {
		return st, err
	}
	st.Size, err = composefs.WriteImage(w, path, !opts.Unsynced)
	return st, err
}

// add adds every entry of t to w.
func add(ctx context.Context, w *erofs.Writer, t *toc.TOC, opts Options) (Stats, error) {
	var st Stats
	objects := make(map[digest.Digest]struct{})
	root, err := entry(t, t.Root(), "", opts)
	if err != nil {
		return st, err
	}
	if err := w.Add(root); err != nil {
		return st, fmt.Errorf("layer root: %w", err)
	}
	st.Entries++
	for i, e := range t.Entries() {
		if i%1024 == 0 {
			if err := ctx.Err(); err != nil {
				return st, err
			}
		}
		var ie erofs.Entry
		switch {
		case e.IsOpaqueMarker():
			continue // its directory's xattr
		case e.IsLandmark():
			continue // not a file of the image, as in the FUSE mode
		case e.IsWhiteout():
			ie, err = whiteout(t, e)
		default:
			ie, err = entry(t, e, e.Path(), opts)
		}
		if err != nil {
			return st, err
		}
		if ie.Path == "" {
			continue // a whiteout of a name the layer itself has
		}
		if err := w.Add(ie); err != nil {
			return st, fmt.Errorf("layer file %q: %w", ie.Path, err)
		}
		st.Entries++
		if e.Type == toc.TypeReg && e.Size > 0 {
			st.Files++
			if _, ok := objects[e.Digest()]; !ok {
				objects[e.Digest()] = struct{}{}
				st.Objects++
				st.Bytes += e.Size
			}
		}
	}
	return st, nil
}

// entry is e (at path in the image) as the image holds it. A hard link
// to a regular file shares its inode; one to anything else (which EROFS
// cannot share) is a copy of it.
func entry(t *toc.TOC, e *toc.Entry, path string, opts Options) (erofs.Entry, error) {
	if e.Type == toc.TypeHardlink {
		target := t.HardlinkTarget(e)
		if target == e {
			return erofs.Entry{}, fmt.Errorf("layer file %q: hard link to %q, which the layer does not have", path, e.LinkName())
		}
		if target.Type == toc.TypeReg {
			return erofs.Entry{Path: path, Link: target.Path()}, nil
		}
		e = target
	}
	ie := erofs.Entry{Path: path, UID: e.UID, GID: e.GID}
	if mt := e.ModTime(); !mt.IsZero() {
		ie.Mtime, ie.MtimeNsec = mt.Unix(), uint32(mt.Nanosecond())
	}
	dir := e.Type == toc.TypeDir
	for name, value := range e.Xattrs() {
		if composefs.KeepXattr(name, value, dir) {
			if ie.Xattrs == nil {
				ie.Xattrs = make(map[string][]byte)
			}
			ie.Xattrs[name] = value
		}
	}
	mode := uint32(e.Mode)
	switch e.Type {
	case toc.TypeDir:
		ie.Mode = unix.S_IFDIR | mode
		if _, ok := t.Child(e, toc.OpaqueWhiteout); ok {
			composefs.MarkOpaque(&ie)
		}
	case toc.TypeReg:
		ie.Mode = unix.S_IFREG | mode
		ie.Size = uint64(e.Size)
		if e.Size == 0 {
			break // no object: an empty file
		}
		d := e.Digest()
		if d == "" {
			return ie, fmt.Errorf("layer file %q: the TOC gives no digest of its content, which the image needs to name its object", path)
		}
		var sum *verity.Sum
		if opts.Verity != nil {
			if s, ok := opts.Verity(d); ok {
				sum = &s
			}
		}
		if err := composefs.PointAt(&ie, d, sum); err != nil {
			return ie, fmt.Errorf("layer file %q: %w", path, err)
		}
	case toc.TypeSymlink:
		ie.Mode = unix.S_IFLNK | 0o777
		ie.Target = e.LinkName()
	case toc.TypeChar, toc.TypeBlock:
		ie.Mode = unix.S_IFCHR | mode
		if e.Type == toc.TypeBlock {
			ie.Mode = unix.S_IFBLK | mode
		}
		ie.DevMajor, ie.DevMinor = e.Dev()
	case toc.TypeFifo:
		ie.Mode = unix.S_IFIFO | mode
	default:
		return ie, fmt.Errorf("layer file %q: type %s has no place in an image", path, e.Type)
	}
	return ie, nil
}

// whiteout is the 0/0 character device overlayfs takes for the deletion
// whiteout e (".wh.name") stands for, or no entry (Path "") when the
// layer also has name itself: that file hides the lower one already.
func whiteout(t *toc.TOC, e *toc.Entry) (erofs.Entry, error) {
	name := strings.TrimPrefix(e.Base(), toc.WhiteoutPrefix)
	if name == "." || name == ".." || e.Type == toc.TypeDir {
		return erofs.Entry{}, fmt.Errorf("layer file %q: not a whiteout overlayfs can take", e.Path())
	}
	if _, ok := t.Child(e.Parent(), name); ok {
		return erofs.Entry{}, nil
	}
	path := name
	if dir := e.Parent().Path(); dir != "" {
		path = dir + "/" + name
	}
	ie := erofs.Entry{Path: path, Mode: unix.S_IFCHR, UID: e.UID, GID: e.GID}
	if mt := e.ModTime(); !mt.IsZero() {
		ie.Mtime, ie.MtimeNsec = mt.Unix(), uint32(mt.Nanosecond())
	}
	return ie, nil
}

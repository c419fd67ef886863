package composefs

import (
	"errors"
	"fmt"
	"path/filepath"
	"strings"

	"github.com/containerd/containerd/v2/core/mount"
)

// Verity is how overlayfs checks the objects it serves against the
// fs-verity digests in the metadata images' trusted.overlay.metacopy.
type Verity string

const (
	// VerityOff serves objects unchecked: some object has no fs-verity
	// (objects on a filesystem or kernel without it, lazy objects served
	// by FUSE, which overlayfs cannot measure), so checking would fail.
	VerityOff Verity = "off"
	// VerityRequire refuses to open a file whose metacopy names no digest
	// or whose object's fs-verity digest differs (EIO at open).
	VerityRequire Verity = "require"
)

// VerityFor is the policy for a stack: require verity only when every
// object it can reach has fs-verity enabled, since one without it would
// fail every open (EIO), and there is nothing in between worth having
// (verity=on fails the same way for an object without fs-verity).
func VerityFor(everyObjectHasVerity bool) Verity {
	if everyObjectHasVerity {
		return VerityRequire
	}
	return VerityOff
}

// MaxOptionsLength is the longest overlay option string mount(2) takes:
// the kernel copies one page of options and ends it with a NUL. containerd
// hands options to mount(2) (and refuses more than a page itself); its
// trick for long lowerdirs (chdir to their common prefix, relative paths)
// never applies to a lowerdir with a data-only layer, whose empty element
// between "::" leaves no common prefix.
const MaxOptionsLength = 4095

// ErrOptionsTooLong says an overlay's options do not fit in one mount(2)
// call: its layers' paths must be shorter, or fewer.
var ErrOptionsTooLong = errors.New("overlay options longer than mount(2) takes")

// Overlay is a composefs stack: metadata images mounted read-only, over
// the object directory as a data-only lower layer, and for a container's
// writable snapshot an upper and a work directory.
type Overlay struct {
	// Layers are the mountpoints of the metadata images, top first.
	Layers []string
	// Objects is the object directory, into which the images' redirects
	// point (/ab/cdef… is Objects/ab/cdef…).
	Objects string
	// Verity is the fs-verity policy (VerityFor).
	Verity Verity
	// Upper and Work, both or neither, make the overlay writable.
	Upper, Work string
}

// Options are the stack's overlay options as mount(2) takes them, what
// Mount returns and a snapshotter hands containerd:
//
//   - lowerdir=metaN:…:meta1::objects: the objects a data-only lower layer
//     (kernel ≥ 6.5), reached only through redirects, never listed;
//   - upperdir=, workdir=, for a writable stack;
//   - metacopy=on, redirect_dir=on: follow the images' metacopy and
//     redirect xattrs (a data-only layer implies both; saying so makes the
//     mount refuse where they are turned off or unsupported);
//   - index=off: overlay's inode index ties an upper directory to its lower
//     layers by file handle; the same images are stacked under many
//     snapshots and remounted after restarts, as containerd's overlay
//     snapshotter turns it off for its own reasons;
//   - verity=off|require (kernel ≥ 6.6).
//
// verity comes last: mount(2) keeps 4095 bytes of options and drops the
// rest silently, and a cut verity value fails the mount (EINVAL, "Bad value
// for 'verity'") where a cut path could name another directory. A caller
// adding options of its own puts them before these.
//
// They never have userxattr: overlayfs refuses it with redirect_dir=on and
// metacopy=on (EINVAL, "conflicting options"), so the composefs mode needs
// real root (rootless uses the FUSE mode). Nor may a caller add
// uidmap=/gidmap= for containerd 2.x to idmap the layers: its idmapped
// overlay rewrite looks for the layers' common parent, finds none in the
// empty element of "::" and fails the mount ("no common prefix found");
// idmap each image's mount and the object directory instead. A view of a
// single layer is still an overlay: the image alone has no data.
//
// Options longer than MaxOptionsLength are ErrOptionsTooLong: give the
// layers shorter paths, or mount the stack with MountAt and hand
// containerd a bind mount of it.
func (o Overlay) Options() ([]string, error) {
	params, err := o.params()
	if err != nil {
		return nil, err
	}
	// The parameters in mount(2)'s form: the layers and the objects in
	// one lowerdir, first.
	var layers []string
	options := []string{""}
	for _, p := range params {
		switch p[0] {
		case "lowerdir+":
			layers = append(layers, p[1])
		case "datadir+":
			options[0] = "::" + p[1]
		default:
			options = append(options, p[0]+"="+p[1])
		}
	}
	options[0] = "lowerdir=" + strings.Join(layers, ":") + options[0]
	if n := len(strings.Join(options, ",")); n > MaxOptionsLength {
		return nil, fmt.Errorf("composefs overlay of %d layers: %d bytes of options, at most %d: %w", len(o.Layers), n, MaxOptionsLength, ErrOptionsTooLong)
	}
	return options, nil
}

// Mount is the overlay mount of the stack, with its Options.
func (o Overlay) Mount() (mount.Mount, error) {
	options, err := o.Options()
	if err != nil {
		return mount.Mount{}, err
	}
	return mount.Mount{Type: "overlay", Source: "overlay", Options: options}, nil
}

// params are the stack's overlay parameters (see Options) as the new mount
// API takes them, one fsconfig call each: a lowerdir+ a layer, top first,
// and datadir+ for the objects; Options folds these into mount(2)'s
// lowerdir. It checks everything but the length.
func (o Overlay) params() ([][2]string, error) {
	if len(o.Layers) == 0 {
		return nil, errors.New("composefs overlay: no metadata layers")
	}
	if o.Verity != VerityOff && o.Verity != VerityRequire {
		return nil, fmt.Errorf("composefs overlay: verity mode %q is neither %q nor %q", o.Verity, VerityOff, VerityRequire)
	}
	if (o.Upper == "") != (o.Work == "") {
		return nil, fmt.Errorf("composefs overlay: upper %q and work %q: both or neither", o.Upper, o.Work)
	}
	paths := append(append([]string{}, o.Layers...), o.Objects)
	if o.Upper != "" {
		paths = append(paths, o.Upper, o.Work)
	}
	for _, p := range paths {
		if err := checkOverlayPath(p); err != nil {
			return nil, fmt.Errorf("composefs overlay: %w", err)
		}
	}

	var params [][2]string
	for _, l := range o.Layers {
		params = append(params, [2]string{"lowerdir+", l})
	}
	params = append(params, [2]string{"datadir+", o.Objects})
	if o.Upper != "" {
		params = append(params, [2]string{"upperdir", o.Upper}, [2]string{"workdir", o.Work})
	}
	return append(params,
		[2]string{"metacopy", "on"}, [2]string{"redirect_dir", "on"},
		[2]string{"index", "off"}, [2]string{"verity", string(o.Verity)}), nil
}

// checkOverlayPath refuses what overlayfs's option syntax cannot carry as
// it is: relative paths (resolved against whatever directory the mounting
// process is in), ':' (the layer separator), ',' (the option separator)
// and '\' (overlayfs's escape).
func checkOverlayPath(p string) error {
	if p == "" || !filepath.IsAbs(p) || filepath.Clean(p) != p {
		return fmt.Errorf("path %q is not absolute and clean", p)
	}
	if strings.ContainsAny(p, ":,\\\n") {
		return fmt.Errorf("path %q has a character overlayfs options cannot carry (: , \\ or newline)", p)
	}
	return nil
}

// SettledMarker is the file beside a lazily mounted layer's metadata image
// that says every object the image names is in the object store: stacks
// of such layers may then take the store's directory as their data-only
// lower layer, rather than the object filesystem that fetches on demand.
func SettledMarker(image string) string { return image + ".settled" }

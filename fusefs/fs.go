// Package fusefs serves one lazily fetched layer as a FUSE filesystem to be
// an overlayfs lower layer: the TOC's tree with its modes, owners, times,
// links and xattrs; whiteouts and opaque directories as overlayfs expects
// them; file contents read through the layer, or through FUSE passthrough
// once a file is cached. It also serves the lazy composefs mode's object
// filesystem (MountObjects): the files of many layers by the digest of
// their content, as overlayfs's data-only lower layer. It knows layers and
// an object store's interface, not a registry.
package fusefs

import (
	"cmp"
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/containerd/log"
	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"

	"github.com/lazypull/lazypull/format/toc"
	"github.com/lazypull/lazypull/layer"
)

// Layer is what the filesystem needs of a lazily fetched layer.
type Layer interface {
	TOC() *toc.TOC
	ReadAt(ctx context.Context, e *toc.Entry, p []byte, off int64) (int, error)
	CachedFile(e *toc.Entry) (*os.File, bool)
	Stats() layer.Stats
	// Rejected tells whether the layer turned out not to be its image's:
	// then the filesystem shows nothing of it (EIO), names included.
	Rejected() bool
}

// The overlayfs opaque-directory xattrs; which one overlayfs reads depends
// on the userxattr mount option.
const (
	TrustedOpaque = "trusted.overlay.opaque"
	UserOpaque    = "user.overlay.opaque"
)

// StateDirName is the hidden directory (absent from readdir, reachable by
// path) whose <layer-digest>.json tells the layer's fetch progress.
const StateDirName = ".lazypull"

// Options configure a mount.
type Options struct {
	// OpaqueXattrs are the xattrs an opaque directory shows (default
	// TrustedOpaque). Exposing one overlayfs does not read gets it copied
	// up as an ordinary xattr: match the overlay mount.
	OpaqueXattrs []string
	// Passthrough serves cached files with FUSE passthrough (needs root
	// and a kernel with it; falls back to reads through the daemon).
	Passthrough bool
	// ReadAheadKiB is the kernel's read-ahead on the mount, in KiB
	// (default DefaultReadAheadKiB).
	ReadAheadKiB int
	// Debug logs every FUSE operation.
	Debug bool
}

// MountedLayer is a layer mounted with Mount.
type MountedLayer struct {
	server     *fuse.Server
	mountpoint string
	fsys       *filesystem
}

type filesystem struct {
	layer       Layer
	toc         *toc.TOC
	opaque      []string
	passthrough bool
	stateIno    uint64
	mountStats  // read errors, passthrough fallbacks
	opens       pageCacheOpens
	mountedAt   time.Time
	// noXattrs: no entry has an xattr and no directory is opaque. Then
	// getxattr answers ENOSYS, and the kernel stops asking this mount:
	// overlayfs asks for its xattrs at every lookup of a lower entry, and
	// each question would cost a round trip to this process.
	noXattrs bool
}

// hasXattrs tells whether any entry of t has an xattr or is an opaque
// directory's marker.
func hasXattrs(t *toc.TOC) bool {
	for _, e := range t.Entries() {
		if len(e.Xattrs()) > 0 || e.Base() == toc.OpaqueWhiteout {
			return true
		}
	}
	return false
}

// Mount mounts the layer at mountpoint, as root with mount(2), readable by
// every user with permissions checked by the kernel.
func Mount(mountpoint string, l Layer, opts Options) (*MountedLayer, error) {
	if len(opts.OpaqueXattrs) == 0 {
		opts.OpaqueXattrs = []string{TrustedOpaque}
	}
	fsys := &filesystem{layer: l, toc: l.TOC(), opaque: opts.OpaqueXattrs, passthrough: opts.Passthrough, mountedAt: time.Now()}
	fsys.noXattrs = !hasXattrs(fsys.toc)
	// Stable inode numbers: the TOC's (a hard link shares its target's),
	// then the state directory's and its file's.
	fsys.stateIno = uint64(fsys.toc.Len()) + 2

	forever := 24 * time.Hour // the tree never changes
	server, err := mountRO(mountpoint, &dirNode{node{fsys: fsys, e: fsys.toc.Root()}}, "lazypull", forever, opts)
	if err != nil {
		return nil, fmt.Errorf("mount layer at %s: %w", mountpoint, err)
	}
	return &MountedLayer{server: server, mountpoint: mountpoint, fsys: fsys}, nil
}

// mountRO mounts root read-only at mountpoint, as root with mount(2),
// readable by every user with permissions checked by the kernel; entries
// and attributes cached forever, names found absent for negative.
func mountRO(mountpoint string, root fs.InodeEmbedder, fsName string, negative time.Duration, opts Options) (*fuse.Server, error) {
	forever := 24 * time.Hour
	server, err := fs.Mount(mountpoint, root, &fs.Options{
		EntryTimeout:    &forever,
		AttrTimeout:     &forever,
		NegativeTimeout: &negative,
		MountOptions: fuse.MountOptions{
			AllowOther:  true,
			DirectMount: true,
			FsName:      fsName,
			Name:        "lazypull",
			Options:     []string{"ro", "default_permissions"},
			// MaxWrite caps every request (reads too), and each
			// goroutine reading /dev/fuse holds a buffer that large for
			// as long as the mount lives: 256 KiB reads served from the
			// page cache were as fast as 1 MiB ones (BenchmarkCachedRead,
			// no passthrough) at a quarter of the memory per mount.
			MaxWrite:     256 << 10,
			MaxReadAhead: 1 << 20,
			// Splicing large reads needs a pipe larger than Linux's
			// default maximum; our reads are in memory anyway.
			DisableSplice: true,
			Debug:         opts.Debug,
		},
	})
	if err != nil {
		return nil, err
	}
	setReadAhead(mountpoint, cmp.Or(opts.ReadAheadKiB, DefaultReadAheadKiB))
	return server, nil
}

// DefaultReadAheadKiB is the read-ahead of a mount unless set. A page
// fault in a mapped file that is not cached reads this much around the
// page (half of it before), and a workload profile records those reads,
// so its start fetches them: with 64 KiB chunks, 64 KiB instead of the
// 1 MiB used before cut the bytes gcc's and java's starts fetch by a
// quarter to a third (docs/benchmarks/2026-12-03/small-chunks). Files
// read whole through the daemon (no passthrough) pay with more, smaller
// requests.
const DefaultReadAheadKiB = 64

// setReadAhead sets the kernel's read-ahead on the FUSE mount at
// mountpoint to kib KiB.
func setReadAhead(mountpoint string, kib int) {
	path, err := readAheadFile(mountpoint)
	if err == nil {
		err = os.WriteFile(path, []byte(strconv.Itoa(kib)), 0o644)
	}
	if err != nil {
		log.L.WithError(err).Debugf("cannot set the FUSE read-ahead of %s to %d KiB", mountpoint, kib)
	}
}

// readAheadFile is the sysfs file that holds the read-ahead of the mount
// at mountpoint: its backing device's read_ahead_kb.
func readAheadFile(mountpoint string) (string, error) {
	var st unix.Stat_t
	if err := unix.Stat(mountpoint, &st); err != nil {
		return "", err
	}
	return fmt.Sprintf("/sys/class/bdi/%d:%d/read_ahead_kb", unix.Major(st.Dev), unix.Minor(st.Dev)), nil
}

// detachWait bounds how long Unmount waits for the users of a busy layer
// it detached: the kernel ends the session only when the last one lets
// go, and a container may hold it for as long as it runs.
const detachWait = 5 * time.Second

// Unmount unmounts the layer and waits for the server to stop. A layer
// still in use is detached: it is served until its last user lets go,
// and Unmount returns after detachWait at most.
func (m *MountedLayer) Unmount() error { return unmount(m.server, m.mountpoint) }

// unmount unmounts server's mount at mountpoint, or detaches it if it is
// in use (see MountedLayer.Unmount).
func unmount(server *fuse.Server, mountpoint string) error {
	if err := server.Unmount(); err != nil {
		// A busy mount (a container still uses it): detach it. EINVAL:
		// detached already, by an earlier Unmount.
		if derr := unix.Unmount(mountpoint, unix.MNT_DETACH); derr != nil && derr != unix.EINVAL {
			return fmt.Errorf("unmount %s: %w (and detach: %v)", mountpoint, err, derr)
		}
		stopped := make(chan struct{})
		go func() { server.Wait(); close(stopped) }()
		select {
		case <-stopped:
		case <-time.After(detachWait):
			log.L.WithField("mountpoint", mountpoint).Warn("FUSE mount detached while in use: it is served until its last user lets go")
		}
		return nil
	}
	server.Wait()
	return nil
}

// PassthroughFallbacks counts reads of cached files that came to the daemon
// although passthrough was meant to serve them: go-fuse turns passthrough
// off for the whole mount after one failed registration.
func (m *MountedLayer) PassthroughFallbacks() int64 { return m.fsys.fallbacks.Load() }

// isWhiteout tells the name a whiteout entry hides, if it is one.
func whiteoutTarget(base string) (string, bool) {
	if base == toc.OpaqueWhiteout {
		return "", false
	}
	return strings.CutPrefix(base, toc.WhiteoutPrefix)
}

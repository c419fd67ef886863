package runner

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"
	"unsafe"

	"github.com/lazypull/lazypull/internal/testenv"
	"golang.org/x/sys/unix"
)

// Footprint is what a scenario's snapshotter keeps of all the run's images
// at once, pulled one after the other (and, for a lazy pull, fetched in
// the background to the end): bytes on disk under its root, and
// the page cache its files hold once every image's workload has run from a
// dropped cache. Images that share files in different layers (python and
// gcc share their Debian base layer, which containerd stores once either
// way, and a few MB of identical files in their application layers, which
// only an object store shares) show what the composefs mode saves.
type Footprint struct {
	Scenario string   `json:"scenario"`
	Images   []string `json:"images"`
	// DiskBytes is the blocks allocated under the snapshotter's roots
	// (Roots), each inode counted once however many links it has, mounts
	// below them left out.
	DiskBytes int64    `json:"diskBytes"`
	Roots     []string `json:"roots"` // relative to the snapshotter's state directory
	// ObjectBytes is the part of DiskBytes in the composefs object
	// store's files (its 256 fan-out directories, there in every lazypull
	// root, left out).
	ObjectBytes int64 `json:"objectBytes,omitempty"`
	// PageCacheBytes is the resident pages (mincore) of the regular files
	// under the roots after every image's workload ran once from a dropped
	// page cache. It counts file data only: directory blocks, inodes and
	// EROFS's own metadata cache are not file pages, nor are the FUSE
	// mode's pages of files it served without passthrough.
	PageCacheBytes int64 `json:"pageCacheBytes"`
	Files          int   `json:"files"` // regular files under the roots
}

// footprintScenario tells whether Footprint measures sc: containerd's own
// snapshotters' and lazypull's scenarios (the lazy ones once their
// background fetch has ended, their disk the chunk cache), not other
// daemons', whose roots it does not know, nor those of one image's
// workload (Images), which do not run every image.
func footprintScenario(sc Scenario) bool { return !sc.external() && len(sc.Images) == 0 }

// footprint pulls every image in sc from a cold state, measures the disk
// its snapshotter uses, runs each image's workload once from a dropped page
// cache and measures the page cache the snapshotter's files hold.
func (r *bench) footprint(ctx context.Context, imgs []Image, sc Scenario) (Footprint, error) {
	fp := Footprint{Scenario: sc.Name}
	if err := r.coldState(ctx, nil, sc); err != nil {
		return fp, fmt.Errorf("cold state: %w", err)
	}
	ctx, cancel := context.WithTimeout(ctx, r.cfg.RunTimeout*time.Duration(len(imgs)))
	defer cancel()
	r.proxy.ResetStats()
	var imageBytes int64
	for _, img := range imgs {
		fp.Images = append(fp.Images, img.Name)
		if err := r.pull(ctx, sc, r.proxy.Addr()+"/"+repo(img, sc)); err != nil {
			return fp, err
		}
		imageBytes += r.imageSizes[repo(img, sc)]
	}
	// A lazy pull's layers are whole once the background fetch has ended.
	r.settle(ctx, imageBytes)
	base, roots := r.snapshotterRoots(sc)
	for _, root := range roots {
		rel, _ := filepath.Rel(base, root)
		fp.Roots = append(fp.Roots, rel)
	}
	du, err := diskUsage(roots...)
	if err != nil {
		return fp, err
	}
	fp.DiskBytes = du.bytes
	if sc.Snapshotter == "lazypull" {
		objects, err := diskUsage(filepath.Join(base, "composefs", "objects"))
		if err != nil {
			return fp, err
		}
		fp.ObjectBytes = objects.fileBytes
	}
	if err := testenv.DropCaches(); err != nil {
		return fp, err
	}
	for _, img := range imgs {
		wait, err := r.runUntilReady(ctx, sc, r.proxy.Addr()+"/"+repo(img, sc), "bench-footprint-"+img.Name+"-"+sc.Name, img.Ready)
		if err != nil {
			return fp, err
		}
		if err := wait(); err != nil {
			return fp, err
		}
	}
	cached, err := diskUsage(roots...)
	if err != nil {
		return fp, err
	}
	fp.PageCacheBytes, fp.Files = cached.resident, cached.files
	return fp, nil
}

// snapshotterRoots are the directories where sc's snapshotter keeps its
// layers: a containerd snapshotter's own root (overlayfs, erofs), or
// lazypull's snapshot directories, object store and chunk cache, under
// base.
func (r *bench) snapshotterRoots(sc Scenario) (base string, roots []string) {
	if sc.Snapshotter == "" || sc.builtin() {
		name := cmp.Or(sc.Snapshotter, "overlayfs")
		// testenv starts containerd in <Env.Dir>/containerd with its
		// root in root/ there; the plugin's directory is containerd's.
		base = filepath.Join(r.env.Dir, "containerd", "root", "io.containerd.snapshotter.v1."+name)
		return base, []string{filepath.Join(base, "snapshots")}
	}
	base = r.env.DaemonRoot
	for _, d := range []string{"snapshots", "composefs", "cache"} {
		roots = append(roots, filepath.Join(base, d))
	}
	return base, roots
}

// usage is what diskUsage found.
type usage struct {
	bytes     int64 // allocated blocks, each inode once
	fileBytes int64 // of bytes, the regular files'
	resident  int64 // page-cache-resident bytes of regular files
	files     int
}

// diskUsage walks the roots (missing ones are empty) without entering
// mounts below them, and sums the blocks allocated to each inode once, as
// `du` does, and the resident pages of every regular file.
func diskUsage(roots ...string) (usage, error) {
	type inode struct{ dev, ino uint64 }
	seen := map[inode]bool{}
	var u usage
	page := int64(os.Getpagesize())
	for _, root := range roots {
		var rootSt unix.Stat_t
		if err := unix.Lstat(root, &rootSt); err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				continue
			}
			return u, fmt.Errorf("disk usage of %s: %w", root, err)
		}
		err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				if errors.Is(err, fs.ErrNotExist) {
					return nil
				}
				return err
			}
			var st unix.Stat_t
			if err := unix.Lstat(p, &st); err != nil {
				// containerd's garbage collector removes the directories
				// of removed snapshots (a container's, after ctr run --rm)
				// when it gets to them: what goes is not the images'.
				if errors.Is(err, unix.ENOENT) {
					if d.IsDir() {
						return fs.SkipDir
					}
					return nil
				}
				return fmt.Errorf("stat %s: %w", p, err)
			}
			if st.Dev != rootSt.Dev {
				// A mount (an EROFS image on snapshots/<id>/fs): its
				// blocks are its image file's, counted where it lies.
				if d.IsDir() {
					return fs.SkipDir
				}
				return nil
			}
			k := inode{uint64(st.Dev), st.Ino}
			if seen[k] {
				return nil
			}
			seen[k] = true
			u.bytes += st.Blocks * 512
			if d.Type().IsRegular() {
				u.files++
				u.fileBytes += st.Blocks * 512
				n, err := residentPages(p, st.Size)
				if err != nil {
					return err
				}
				u.resident += n * page
			}
			return nil
		})
		if err != nil {
			return u, fmt.Errorf("disk usage of %s: %w", root, err)
		}
	}
	return u, nil
}

// residentPages counts the pages of a file that are in the page cache,
// mapping it (which reads nothing) and asking mincore, as fincore(1) does.
func residentPages(path string, size int64) (int64, error) {
	if size == 0 {
		return 0, nil
	}
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return 0, nil // removed since the walk listed it
	} else if err != nil {
		return 0, err
	}
	defer f.Close()
	m, err := unix.Mmap(int(f.Fd()), 0, int(size), unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		return 0, fmt.Errorf("map %s: %w", path, err)
	}
	defer unix.Munmap(m)
	page := os.Getpagesize()
	vec := make([]byte, (len(m)+page-1)/page)
	// x/sys/unix has no wrapper for mincore(2).
	if _, _, errno := unix.Syscall(unix.SYS_MINCORE, uintptr(unsafe.Pointer(&m[0])), uintptr(len(m)), uintptr(unsafe.Pointer(&vec[0]))); errno != 0 {
		return 0, fmt.Errorf("mincore %s: %w", path, errno)
	}
	var n int64
	for _, v := range vec {
		n += int64(v & 1)
	}
	return n, nil
}

// footprintLine is the progress line of a Footprint.
func (fp Footprint) progressLine() string {
	return fmt.Sprintf("footprint %-17s %s: disk %.1f MB (objects %.1f MB) in %d files, page cache %.1f MB",
		fp.Scenario, strings.Join(fp.Images, "+"), mb(fp.DiskBytes), mb(fp.ObjectBytes), fp.Files, mb(fp.PageCacheBytes))
}

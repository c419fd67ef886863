package composefs

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/containerd/containerd/v2/core/mount"
	"golang.org/x/sys/unix"

	"github.com/lazypull/lazypull/internal/testenv"
)

// The objects the test stacks serve: named by the sha256 of their content.
var (
	objectA = []byte("the contents of object A\n")
	objectB = bytes.Repeat([]byte("B"), 5000) // more than a block
)

func objectName(data []byte) string {
	sum := sha256.Sum256(data)
	h := hex.EncodeToString(sum[:])
	return h[:2] + "/" + h[2:]
}

// writeObjects makes an object directory holding the given contents.
func writeObjects(t *testing.T, dir string, contents ...[]byte) {
	t.Helper()
	for _, c := range contents {
		p := filepath.Join(dir, objectName(c))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, c, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// tree builds a directory for mkfs.erofs as the composefs writer lays out
// a layer: regular files empty (sparse) of their object's size, with
// metacopy and redirect xattrs; whiteouts; opaque directories.
type tree struct {
	t   *testing.T
	dir string
}

func newTree(t *testing.T) *tree { return &tree{t: t, dir: t.TempDir()} }

func (tr *tree) path(name string) string {
	p := filepath.Join(tr.dir, name)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		tr.t.Fatal(err)
	}
	return p
}

// file is a metadata-only file whose data is the object of content data
// (which the object directory may or may not hold).
func (tr *tree) file(name string, data []byte) {
	tr.t.Helper()
	p := tr.path(name)
	if err := os.WriteFile(p, nil, 0o644); err != nil {
		tr.t.Fatal(err)
	}
	if err := os.Truncate(p, int64(len(data))); err != nil {
		tr.t.Fatal(err)
	}
	tr.xattr(name, "trusted.overlay.metacopy", "")
	tr.xattr(name, "trusted.overlay.redirect", "/"+objectName(data))
}

func (tr *tree) whiteout(name string) {
	tr.t.Helper()
	if err := unix.Mknod(tr.path(name), unix.S_IFCHR|0o000, 0); err != nil {
		tr.t.Fatal(err)
	}
}

func (tr *tree) opaqueDir(name string) {
	tr.t.Helper()
	if err := os.MkdirAll(filepath.Join(tr.dir, name), 0o755); err != nil {
		tr.t.Fatal(err)
	}
	tr.xattr(name, "trusted.overlay.opaque", "y")
}

func (tr *tree) xattr(name, key, value string) {
	tr.t.Helper()
	if err := unix.Lsetxattr(filepath.Join(tr.dir, name), key, []byte(value), 0); err != nil {
		tr.t.Fatalf("set %s on %s: %v", key, name, err)
	}
}

// image writes the tree as an EROFS image with Debian's mkfs.erofs.
func (tr *tree) image() string {
	tr.t.Helper()
	mkfs := testenv.NeedBinary(tr.t, "mkfs.erofs")
	img := filepath.Join(tr.t.TempDir(), "layer.erofs")
	if out, err := exec.Command(mkfs, "--quiet", "-T0", img, tr.dir).CombinedOutput(); err != nil {
		tr.t.Fatalf("mkfs.erofs %s: %v\n%s", tr.dir, err, out)
	}
	return img
}

// needMounts checks the test can mount, and when it ends that it left no
// mount under root and no loop device behind.
func needMounts(t *testing.T) string {
	t.Helper()
	testenv.NeedRoot(t)
	root := t.TempDir()
	// Every t.TempDir of this test is under this one: the images too.
	all := filepath.Dir(root)
	t.Cleanup(func() {
		if left := testenv.MountsUnder(all); len(left) > 0 {
			t.Errorf("mounts left behind: %v", left)
			_ = testenv.UnmountAll(left)
		}
		if devs := loopDevicesBacking(t, all); len(devs) > 0 {
			t.Errorf("loop devices left behind: %v", devs)
		}
	})
	return root
}

// loopDevicesBacking lists the loop devices whose backing file is under
// dir (/sys/block/loopN/loop/backing_file, present while one is attached).
func loopDevicesBacking(t *testing.T, dir string) []string {
	t.Helper()
	files, err := filepath.Glob("/sys/block/loop*/loop/backing_file")
	if err != nil {
		t.Fatal(err)
	}
	real, err := filepath.EvalSymlinks(dir)
	if err != nil {
		real = dir
	}
	var devs []string
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			continue // detached meanwhile
		}
		if backing := strings.TrimSpace(string(b)); strings.HasPrefix(backing, real+"/") || strings.HasPrefix(backing, dir+"/") {
			devs = append(devs, filepath.Base(filepath.Dir(filepath.Dir(f)))+"="+backing)
		}
	}
	return devs
}

// mountinfoOf returns the filesystem type, source and super options of the
// mount at mountpoint.
func mountinfoOf(t *testing.T, mountpoint string) (fstype, source, superOpts string) {
	t.Helper()
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		pre, post, ok := strings.Cut(line, " - ")
		fields, pf := strings.Fields(pre), strings.Fields(post)
		if !ok || len(fields) < 5 || len(pf) < 3 || fields[4] != mountpoint {
			continue
		}
		fstype, source, superOpts = pf[0], pf[1], pf[2]
	}
	if fstype == "" {
		t.Fatalf("%s is not mounted", mountpoint)
	}
	return fstype, source, superOpts
}

// mountImage mounts img at a new directory under root, unmounted when the
// test ends.
func mountImage(t *testing.T, root, img string, opts ...MountOption) string {
	t.Helper()
	mp, err := os.MkdirTemp(root, "meta")
	if err != nil {
		t.Fatal(err)
	}
	if err := MountImage(img, mp, opts...); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := Unmount(mp); err != nil {
			t.Error(err)
		}
	})
	return mp
}

var mechanisms = []struct {
	name string
	opts []MountOption
}{
	{"file", nil},
	{"loop", []MountOption{WithLoopDevice()}},
}

func TestMountImage(t *testing.T) {
	for _, m := range mechanisms {
		t.Run(m.name, func(t *testing.T) {
			root := needMounts(t)
			tr := newTree(t)
			tr.file("dir/a", objectA)
			img := tr.image()
			// The image under root, so the leak check sees its loop device.
			local := filepath.Join(root, "layer.erofs")
			copyFile(t, img, local)

			mp := filepath.Join(root, "mnt")
			if err := os.Mkdir(mp, 0o755); err != nil {
				t.Fatal(err)
			}
			if err := MountImage(local, mp, m.opts...); err != nil {
				t.Fatal(err)
			}
			fstype, source, superOpts := mountinfoOf(t, mp)
			if fstype != "erofs" || !strings.HasPrefix(superOpts, "ro") || strings.Contains(superOpts, ",acl") {
				t.Errorf("mounted as %s %s: want erofs, ro, noacl", fstype, superOpts)
			}
			devs := loopDevicesBacking(t, root)
			if m.name == "file" && (source != local || len(devs) != 0) {
				t.Errorf("file-backed mount: source %s, loop devices %v; want %s and none", source, devs, local)
			}
			if m.name == "loop" && (!strings.HasPrefix(source, "/dev/loop") || len(devs) != 1) {
				t.Errorf("loop mount: source %s, loop devices %v; want /dev/loopN backed by %s", source, devs, local)
			}
			if m.name == "loop" {
				sys := filepath.Join("/sys/block", filepath.Base(source))
				for file, want := range map[string]string{"ro": "1", "loop/autoclear": "1", "loop/dio": "1"} {
					if b, err := os.ReadFile(filepath.Join(sys, file)); err != nil || strings.TrimSpace(string(b)) != want {
						t.Errorf("%s/%s: %q, %v; want %s", sys, file, b, err, want)
					}
				}
			}
			t.Logf("%s %s %s", fstype, source, superOpts)

			if got, err := MountedImage(mp); err != nil || got != local {
				t.Errorf("MountedImage(%s) = %q, %v; want %s", mp, got, err, local)
			}
			st, err := os.Stat(filepath.Join(mp, "dir/a"))
			if err != nil || st.Size() != int64(len(objectA)) {
				t.Fatalf("stat dir/a in the image: %v, %v; want size %d", st, err, len(objectA))
			}
			redirect := make([]byte, 128)
			n, err := unix.Getxattr(filepath.Join(mp, "dir/a"), "trusted.overlay.redirect", redirect)
			if err != nil || string(redirect[:n]) != "/"+objectName(objectA) {
				t.Errorf("redirect of dir/a: %q, %v", redirect[:n], err)
			}
			if err := unix.Mkdir(filepath.Join(mp, "new"), 0o755); !errors.Is(err, unix.EROFS) {
				t.Errorf("mkdir in the image: %v, want EROFS", err)
			}

			if err := Unmount(mp); err != nil {
				t.Fatal(err)
			}
			// Autoclear: the loop device is gone with the mount, at once.
			if devs := loopDevicesBacking(t, root); len(devs) != 0 {
				t.Errorf("after unmount, loop devices %v remain", devs)
			}
			if err := Unmount(mp); err != nil {
				t.Errorf("second unmount: %v, want success", err)
			}
			for _, p := range []string{mp, root, filepath.Join(root, "nothing")} {
				if got, err := MountedImage(p); err != nil || got != "" {
					t.Errorf("MountedImage(%s) with nothing mounted = %q, %v; want \"\"", p, got, err)
				}
			}
		})
	}
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestMountImageErrors(t *testing.T) {
	for _, m := range mechanisms {
		t.Run(m.name, func(t *testing.T) {
			root := needMounts(t)
			mp := filepath.Join(root, "mnt")
			if err := os.Mkdir(mp, 0o755); err != nil {
				t.Fatal(err)
			}
			junk := filepath.Join(root, "junk.erofs")
			if err := os.WriteFile(junk, bytes.Repeat([]byte{0x5a}, 8192), 0o644); err != nil {
				t.Fatal(err)
			}
			err := MountImage(junk, mp, m.opts...)
			t.Logf("junk image: %v", err)
			if !errors.Is(err, unix.EINVAL) || !strings.Contains(err.Error(), junk) {
				t.Errorf("junk image: %v; want EINVAL naming the image", err)
			}
			err = MountImage(filepath.Join(root, "missing.erofs"), mp, m.opts...)
			if !errors.Is(err, fs.ErrNotExist) {
				t.Errorf("missing image: %v; want ENOENT", err)
			}
			if left := testenv.MountsUnder(mp); len(left) != 0 {
				t.Errorf("failed mounts left %v", left)
			}
		})
	}
}

func TestUnmount(t *testing.T) {
	root := needMounts(t)
	if err := Unmount(root); err != nil {
		t.Errorf("unmount of a directory that is no mountpoint: %v, want success", err)
	}
	if err := Unmount(filepath.Join(root, "nothing")); err != nil {
		t.Errorf("unmount of a missing path: %v, want success", err)
	}

	tr := newTree(t)
	tr.file("a", objectA)
	mp := mountImage(t, root, tr.image())
	f, err := os.Open(filepath.Join(mp, "a"))
	if err != nil {
		t.Fatal(err)
	}
	err = Unmount(mp)
	f.Close()
	if !errors.Is(err, unix.EBUSY) {
		t.Errorf("unmount of a busy mount: %v, want EBUSY (no lazy detach)", err)
	}
	if err := Unmount(mp); err != nil {
		t.Errorf("unmount once no longer busy: %v", err)
	}
}

var objectMissing = []byte("no object directory holds this\n")

// stackImages writes the two metadata images of the test stack: a lower
// layer, and an upper one that adds, deletes (whiteout) and replaces a
// directory (opaque).
func stackImages(t *testing.T) (lower, upper string) {
	t.Helper()
	lo := newTree(t)
	lo.file("a", objectA)
	lo.file("dir/x", objectB)
	lo.file("gone", objectA)
	lo.file("opq/y", objectB)
	lo.file("missing", objectMissing)
	up := newTree(t)
	up.file("b", objectB)
	up.whiteout("gone")
	up.opaqueDir("opq")
	up.file("opq/z", objectA)
	return lo.image(), up.image()
}

// mountStack mounts the test stack's images (with opts) and the overlay
// Overlay.Mount describes, through containerd's mount.All, as the shim
// mounts a container's rootfs. It returns the overlay's mountpoint.
func mountStack(t *testing.T, root string, verity Verity, writable bool, opts ...MountOption) string {
	t.Helper()
	lower, upper := stackImages(t)
	objects := filepath.Join(root, "objects")
	writeObjects(t, objects, objectA, objectB)
	o := Overlay{
		Layers:  []string{mountImage(t, root, upper, opts...), mountImage(t, root, lower, opts...)},
		Objects: objects,
		Verity:  verity,
	}
	if writable {
		o.Upper, o.Work = filepath.Join(root, "upper"), filepath.Join(root, "work")
		for _, d := range []string{o.Upper, o.Work} {
			if err := os.Mkdir(d, 0o755); err != nil {
				t.Fatal(err)
			}
		}
	}
	return mountOverlay(t, root, o)
}

func mountOverlay(t *testing.T, root string, o Overlay) string {
	t.Helper()
	m, err := o.Mount()
	if err != nil {
		t.Fatal(err)
	}
	target, err := os.MkdirTemp(root, "rootfs")
	if err != nil {
		t.Fatal(err)
	}
	if err := mount.All([]mount.Mount{m}, target); err != nil {
		t.Fatalf("containerd's mount.All of %v: %v", m, err)
	}
	t.Cleanup(func() {
		if err := Unmount(target); err != nil {
			t.Error(err)
		}
	})
	return target
}

func readDirNames(t *testing.T, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	return names
}

func TestOverlay(t *testing.T) {
	for _, m := range mechanisms {
		for _, writable := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/writable=%v", m.name, writable), func(t *testing.T) {
				root := needMounts(t)
				rootfs := mountStack(t, root, VerityOff, writable, m.opts...)

				for name, want := range map[string][]byte{"a": objectA, "b": objectB, "dir/x": objectB, "opq/z": objectA} {
					got, err := os.ReadFile(filepath.Join(rootfs, name))
					if err != nil || !bytes.Equal(got, want) {
						t.Errorf("%s: read %d bytes (%.20q), %v; want the %d bytes of its object", name, len(got), got, err, len(want))
					}
				}
				if got, want := readDirNames(t, rootfs), []string{"a", "b", "dir", "missing", "opq"}; !slices.Equal(got, want) {
					t.Errorf("root lists %v, want %v (no whiteout, no object directories)", got, want)
				}
				if _, err := os.Lstat(filepath.Join(rootfs, "gone")); !errors.Is(err, fs.ErrNotExist) {
					t.Errorf("whited-out file: %v, want ENOENT", err)
				}
				if got := readDirNames(t, filepath.Join(rootfs, "opq")); !slices.Equal(got, []string{"z"}) {
					t.Errorf("opaque directory lists %v, want [z]", got)
				}

				// A missing object: the metadata is there, the data is not,
				// and only opening says so.
				st, err := os.Stat(filepath.Join(rootfs, "missing"))
				if err != nil || st.Size() != int64(len(objectMissing)) {
					t.Errorf("stat of a file whose object is missing: %v, %v; want size %d", st, err, len(objectMissing))
				}
				_, err = os.Open(filepath.Join(rootfs, "missing"))
				t.Logf("open of a file whose object is missing: %v", err)
				// Measured on 6.18: ENOENT, the data-only layer's lookup's.
				if !errors.Is(err, unix.ENOENT) {
					t.Errorf("open of a file whose object is missing: %v, want ENOENT", err)
				}

				if !writable {
					if err := os.WriteFile(filepath.Join(rootfs, "new"), nil, 0o644); !errors.Is(err, unix.EROFS) {
						t.Errorf("write to a read-only stack: %v, want EROFS", err)
					}
					return
				}
				// A metadata copy-up keeps the data where it is.
				if err := os.Chmod(filepath.Join(rootfs, "a"), 0o600); err != nil {
					t.Fatal(err)
				}
				if got, err := os.ReadFile(filepath.Join(rootfs, "a")); err != nil || !bytes.Equal(got, objectA) {
					t.Errorf("a after chmod: %q, %v", got, err)
				}
				upperA := filepath.Join(root, "upper", "a")
				if st, err := os.Stat(upperA); err != nil || st.Mode().Perm() != 0o600 {
					t.Errorf("upper a after chmod: %v, %v; want mode 0600", st, err)
				}
				if _, err := unix.Lgetxattr(upperA, "trusted.overlay.metacopy", nil); err != nil {
					t.Errorf("upper a after chmod has no metacopy xattr (%v): its data was copied up", err)
				}
				if err := os.WriteFile(filepath.Join(rootfs, "dir/x"), []byte("new"), 0o644); err != nil {
					t.Fatal(err)
				}
				if got, err := os.ReadFile(filepath.Join(rootfs, "dir/x")); err != nil || string(got) != "new" {
					t.Errorf("dir/x after writing: %q, %v", got, err)
				}
			})
		}
	}
}

func TestOverlayVerityRequire(t *testing.T) {
	root := needMounts(t)
	// A metacopy naming an fs-verity digest (36 bytes: version 0, length
	// 36, flags 0, sha256, then the digest) over an object without
	// fs-verity: what this kernel, which has none, would always have.
	tr := newTree(t)
	tr.file("a", objectA)
	tr.file("b", objectB)
	digest := sha256.Sum256([]byte("any digest: the kernel finds no fs-verity to compare it with"))
	tr.xattr("b", "trusted.overlay.metacopy", string(append([]byte{0, 36, 0, 1}, digest[:]...)))
	objects := filepath.Join(root, "objects")
	writeObjects(t, objects, objectA, objectB)
	rootfs := mountOverlay(t, root, Overlay{Layers: []string{mountImage(t, root, tr.image())}, Objects: objects, Verity: VerityRequire})

	for _, name := range []string{"a", "b"} {
		st, err := os.Stat(filepath.Join(rootfs, name))
		if err != nil || !st.Mode().IsRegular() {
			t.Errorf("stat of %s under verity=require: %v, %v; want it to work", name, st, err)
		}
		// The kernel refuses the data at open: a says "metacopy file 'a'
		// has no digest specified", b "lower file 'b' has no fs-verity
		// digest" (kernel log).
		_, err = os.ReadFile(filepath.Join(rootfs, name))
		t.Logf("open of %s under verity=require: %v", name, err)
		if !errors.Is(err, unix.EIO) {
			t.Errorf("open of %s under verity=require, object without fs-verity: %v, want EIO", name, err)
		}
	}
}

// TestContainerdLowerdirs: what containerd's mount.All (core/mount, as
// the shim mounts a container's rootfs) does with a composefs overlay's
// lowerdir, whose "::" leaves an empty element: under a page it is passed
// as it is, even where containerd tries its compaction (options over a
// page less 512 bytes); over a page its compaction (chdir to the layers'
// common prefix) never applies, and the mount fails, where the same
// layers without a data-only layer would have been compacted and mounted.
// Overlay.Mount refuses such a stack (ErrOptionsTooLong), and MountAt
// mounts it, to be handed to containerd as a bind mount.
func TestContainerdLowerdirs(t *testing.T) {
	root := needMounts(t)
	tr := newTree(t)
	tr.file("a", objectA)
	top := mountImage(t, root, tr.image())
	objects := filepath.Join(root, "objects")
	writeObjects(t, objects, objectA)

	// fillers are empty directories standing for metadata layers, under
	// root, each path pathLen bytes long, as a snapshotter's are
	// (/var/lib/containerd/io.containerd.snapshotter.v1.lazypull/snapshots/123/fs
	// is 71).
	var made int
	fillers := func(n, pathLen int) []string {
		var dirs []string
		for range n {
			made++
			name := fmt.Sprintf("%s/layer%04d-", root, made)
			name += strings.Repeat("x", max(pathLen-len(name), 1))
			if err := os.Mkdir(name, 0o755); err != nil {
				t.Fatal(err)
			}
			dirs = append(dirs, name)
		}
		return dirs
	}
	readA := func(t *testing.T, rootfs string) {
		t.Helper()
		if got, err := os.ReadFile(filepath.Join(rootfs, "a")); err != nil || !bytes.Equal(got, objectA) {
			t.Errorf("a read %q, %v; want its object's bytes", got, err)
		}
	}

	t.Run("under a page, over containerd's compaction threshold", func(t *testing.T) {
		o := Overlay{Layers: []string{top}, Objects: objects, Verity: VerityOff}
		for {
			m, err := o.Mount()
			if err != nil {
				t.Fatal(err)
			}
			n := len(strings.Join(m.Options, ","))
			if n > 4096-512+100 {
				t.Logf("%d layers, %d bytes of options", len(o.Layers), n)
				break
			}
			o.Layers = append(o.Layers, fillers(1, 60)...)
		}
		readA(t, mountOverlay(t, root, o))
	})

	long := Overlay{Layers: append([]string{top}, fillers(119, 64)...), Objects: objects, Verity: VerityOff}
	t.Run("over a page", func(t *testing.T) {
		if _, err := long.Mount(); !errors.Is(err, ErrOptionsTooLong) {
			t.Fatalf("Mount of 120 layers of 64-byte paths: %v, want ErrOptionsTooLong", err)
		}
		target := filepath.Join(root, "long")
		if err := os.Mkdir(target, 0o755); err != nil {
			t.Fatal(err)
		}
		// What containerd does with it, had Mount not refused it.
		raw := mount.Mount{Type: "overlay", Source: "overlay", Options: []string{
			"lowerdir=" + strings.Join(long.Layers, ":") + "::" + objects, "metacopy=on", "redirect_dir=on", "index=off", "verity=off",
		}}
		err := mount.All([]mount.Mount{raw}, target)
		t.Logf("containerd's mount.All of a %d-byte lowerdir with a data-only layer: %v", len(raw.Options[0]), err)
		if err == nil {
			Unmount(target)
			t.Fatal("containerd mounted a lowerdir over a page with a data-only layer: its compaction handles \"::\" now; Overlay.Mount can stop refusing")
		}
		// The same layers without the data-only layer: containerd
		// compacts them, and they mount.
		plain := mount.Mount{Type: "overlay", Source: "overlay", Options: []string{"lowerdir=" + strings.Join(long.Layers, ":")}}
		if err := mount.All([]mount.Mount{plain}, target); err != nil {
			t.Fatalf("containerd's mount.All of the same lowerdir without a data-only layer: %v", err)
		}
		if err := Unmount(target); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("120 layers of short paths", func(t *testing.T) {
		// The same stack, each layer named by a short symbolic link, as
		// a snapshotter can name its mounts (/var/lib/lazypull/m/1234).
		short, err := os.MkdirTemp("/tmp", "cfs")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.RemoveAll(short) })
		o := Overlay{Objects: objects, Verity: VerityOff}
		for i, l := range long.Layers {
			link := fmt.Sprintf("%s/%d", short, i)
			if err := os.Symlink(l, link); err != nil {
				t.Fatal(err)
			}
			o.Layers = append(o.Layers, link)
		}
		readA(t, mountOverlay(t, root, o))
	})

	t.Run("over a page, mounted by MountAt and bound", func(t *testing.T) {
		o := long
		o.Upper, o.Work = filepath.Join(root, "upper"), filepath.Join(root, "work")
		stack := filepath.Join(root, "stack")
		for _, d := range []string{o.Upper, o.Work, stack} {
			if err := os.Mkdir(d, 0o755); err != nil {
				t.Fatal(err)
			}
		}
		if err := o.MountAt(stack); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			if err := Unmount(stack); err != nil {
				t.Error(err)
			}
		})
		target := filepath.Join(root, "bound")
		if err := os.Mkdir(target, 0o755); err != nil {
			t.Fatal(err)
		}
		bind := mount.Mount{Type: "bind", Source: stack, Options: []string{"rbind", "rw"}}
		if err := mount.All([]mount.Mount{bind}, target); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			if err := Unmount(target); err != nil {
				t.Error(err)
			}
		})
		readA(t, target)
		if err := os.WriteFile(filepath.Join(target, "new"), []byte("new"), 0o644); err != nil {
			t.Errorf("write through the bound stack: %v", err)
		}

	})
}

func TestOverlayMountOptions(t *testing.T) {
	o := Overlay{Layers: []string{"/m/2", "/m/1"}, Objects: "/objects", Verity: VerityRequire, Upper: "/s/fs", Work: "/s/work"}
	m, err := o.Mount()
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"lowerdir=/m/2:/m/1::/objects", "upperdir=/s/fs", "workdir=/s/work", "metacopy=on", "redirect_dir=on", "index=off", "verity=require"}
	if m.Type != "overlay" || m.Source != "overlay" || !slices.Equal(m.Options, want) {
		t.Errorf("Mount() = %+v, want overlay with %v", m, want)
	}
	o.Upper, o.Work, o.Verity = "", "", VerityOff
	if m, err := o.Mount(); err != nil || !slices.Equal(m.Options, []string{"lowerdir=/m/2:/m/1::/objects", "metacopy=on", "redirect_dir=on", "index=off", "verity=off"}) {
		t.Errorf("read-only Mount() = %v, %v", m.Options, err)
	}
	if VerityFor(true) != VerityRequire || VerityFor(false) != VerityOff {
		t.Error("VerityFor: require only when every object has fs-verity")
	}

	for name, bad := range map[string]Overlay{
		"no layers":         {Objects: "/o", Verity: VerityOff},
		"no verity mode":    {Layers: []string{"/m"}, Objects: "/o"},
		"verity=on":         {Layers: []string{"/m"}, Objects: "/o", Verity: "on"},
		"upper, no work":    {Layers: []string{"/m"}, Objects: "/o", Verity: VerityOff, Upper: "/u"},
		"no objects":        {Layers: []string{"/m"}, Verity: VerityOff},
		"relative layer":    {Layers: []string{"m"}, Objects: "/o", Verity: VerityOff},
		"unclean layer":     {Layers: []string{"/m/../x"}, Objects: "/o", Verity: VerityOff},
		"colon in layer":    {Layers: []string{"/m:x"}, Objects: "/o", Verity: VerityOff},
		"comma in objects":  {Layers: []string{"/m"}, Objects: "/o,upperdir=/x", Verity: VerityOff},
		"backslash in work": {Layers: []string{"/m"}, Objects: "/o", Verity: VerityOff, Upper: "/u", Work: `/w\`},
		"too long":          {Layers: slices.Repeat([]string{"/" + strings.Repeat("m", 99)}, 41), Objects: "/o", Verity: VerityOff},
	} {
		if m, err := bad.Mount(); err == nil {
			t.Errorf("%s: Mount() = %v, want an error", name, m.Options)
		}
	}
}

func TestOverlayRefusesUserxattr(t *testing.T) {
	root := needMounts(t)
	tr := newTree(t)
	tr.file("a", objectA)
	o := Overlay{Layers: []string{mountImage(t, root, tr.image())}, Objects: t.TempDir(), Verity: VerityOff}
	m, err := o.Mount()
	if err != nil {
		t.Fatal(err)
	}
	m.Options = append(m.Options, "userxattr")
	target := t.TempDir()
	err = mount.All([]mount.Mount{m}, target)
	if err == nil {
		Unmount(target)
	}
	// What keeps the composefs mode out of user namespaces.
	if !errors.Is(err, unix.EINVAL) {
		t.Errorf("composefs overlay with userxattr: %v, want EINVAL (conflicting options)", err)
	}
}

// TestMountImageLoopConcurrent: mounts racing for the same free loop
// device (LOOP_CTL_GET_FREE gives them the same one) all get one.
func TestMountImageLoopConcurrent(t *testing.T) {
	root := needMounts(t)
	tr := newTree(t)
	tr.file("a", objectA)
	img := tr.image()
	const n = 8
	mps := make([]string, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		mps[i] = filepath.Join(root, fmt.Sprint(i))
		if err := os.Mkdir(mps[i], 0o755); err != nil {
			t.Fatal(err)
		}
		wg.Go(func() { errs[i] = MountImage(img, mps[i], WithLoopDevice()) })
	}
	wg.Wait()
	devices := map[string]bool{}
	for i, mp := range mps {
		if errs[i] != nil {
			t.Errorf("mount %d: %v", i, errs[i])
			continue
		}
		_, source, _ := mountinfoOf(t, mp)
		devices[source] = true
		if st, err := os.Stat(filepath.Join(mp, "a")); err != nil || st.Size() != int64(len(objectA)) {
			t.Errorf("%s/a: %v, %v", mp, st, err)
		}
	}
	if len(devices) != n {
		t.Errorf("%d mounts on %d loop devices (%v), want one each", n, len(devices), devices)
	}
	for _, mp := range mps {
		if err := Unmount(mp); err != nil {
			t.Error(err)
		}
	}
}

func TestMountAtErrors(t *testing.T) {
	root := needMounts(t)
	target := t.TempDir()
	o := Overlay{Layers: []string{filepath.Join(root, "no-such-layer")}, Objects: root, Verity: VerityOff}
	err := o.MountAt(target)
	t.Logf("MountAt with a missing layer: %v", err)
	if !errors.Is(err, fs.ErrNotExist) || !strings.Contains(err.Error(), "no-such-layer") {
		t.Errorf("MountAt with a missing layer: %v, want ENOENT naming it", err)
	}
	o.Layers[0] = "relative"
	if err := o.MountAt(target); err == nil || errors.Is(err, unix.EINVAL) {
		t.Errorf("MountAt with a relative layer: %v, want refused before the kernel sees it", err)
	}
	if left := testenv.MountsUnder(target); len(left) != 0 {
		t.Errorf("failed MountAt left %v", left)
	}
}

// TestMountAtWithoutLowerdirPlus: where the kernel has no lowerdir+ (before
// 6.8), MountAt mounts a stack whose options fit with mount(2); this kernel
// has lowerdir+, so the fallback is called as MountAt calls it.
func TestMountAtWithoutLowerdirPlus(t *testing.T) {
	root := needMounts(t)
	tr := newTree(t)
	tr.file("a", objectA)
	objects := filepath.Join(root, "objects")
	writeObjects(t, objects, objectA)
	o := Overlay{Layers: []string{mountImage(t, root, tr.image())}, Objects: objects, Verity: VerityOff}
	options, err := o.Options()
	if err != nil {
		t.Fatal(err)
	}
	target := t.TempDir()
	if err := o.mountOptions(target, options, unix.EINVAL); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := Unmount(target); err != nil {
			t.Error(err)
		}
	})
	if got, err := os.ReadFile(filepath.Join(target, "a")); err != nil || !bytes.Equal(got, objectA) {
		t.Errorf("a read %q, %v; want its object's bytes", got, err)
	}
	if err := os.WriteFile(filepath.Join(target, "b"), nil, 0o644); !errors.Is(err, unix.EROFS) {
		t.Errorf("write to a stack without an upper: %v, want EROFS", err)
	}
}

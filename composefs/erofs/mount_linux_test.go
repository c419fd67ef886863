package erofs

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/lazypull/lazypull/internal/testenv"
)

// mountImage mounts an image file read-only (a file-backed EROFS mount,
// Linux 6.12+) and unmounts it when the test ends.
func mountImage(t *testing.T, imgPath string) string {
	t.Helper()
	testenv.NeedRoot(t)
	dir := t.TempDir()
	if err := unix.Mount(imgPath, dir, "erofs", unix.MS_RDONLY, ""); err != nil {
		t.Fatalf("mount -t erofs %s: %v (file-backed EROFS mounts need Linux 6.12+ with CONFIG_EROFS_FS_BACKED_BY_FILE)", imgPath, err)
	}
	t.Cleanup(func() {
		if err := unix.Unmount(dir, 0); err != nil {
			t.Errorf("unmount %s: %v", dir, err)
		}
	})
	return dir
}

// unreadable marks an xattr the kernel lists but will not return.
const unreadable = "\x00unreadable: "

func listXattrs(t *testing.T, p string) map[string]string {
	t.Helper()
	got := map[string]string{}
	buf := make([]byte, 1<<20)
	n, err := unix.Llistxattr(p, buf)
	if err != nil {
		t.Errorf("%s: listxattr: %v", p, err)
		return got
	}
	for name := range strings.SplitSeq(strings.TrimSuffix(string(buf[:n]), "\x00"), "\x00") {
		if name == "" {
			continue
		}
		v := make([]byte, MaxXattrValueLen+1)
		m, err := unix.Lgetxattr(p, name, v)
		if err != nil {
			got[name] = unreadable + err.Error()
			continue
		}
		got[name] = string(v[:m])
	}
	return got
}

// kernelMayRefuse tells whether the kernel may list an xattr but refuse
// its value, by its own policy rather than the image's: user.* on what is
// neither a file nor a directory, and POSIX ACLs and capabilities whose
// values it cannot parse.
func kernelMayRefuse(name string, mode uint32) bool {
	switch {
	case strings.HasPrefix(name, "user."):
		return mode&sIFMT != sIFREG && mode&sIFMT != sIFDIR
	case name == "system.posix_acl_access", name == "system.posix_acl_default", name == "security.capability":
		return true
	}
	return false
}

// checkMounted compares what the kernel shows of a mounted image with
// the entries.
func checkMounted(t *testing.T, mnt string, entries []Entry) {
	t.Helper()
	wants := expect(entries)
	bt, bns := minTime(entries)
	inodes := map[uint64]string{}
	for _, p := range slices.Sorted(maps.Keys(wants)) {
		w := wants[p]
		in := wants[w.inode]
		full := filepath.Join(mnt, p)
		var st unix.Stat_t
		if err := unix.Lstat(full, &st); err != nil {
			t.Errorf("%q: lstat: %v", p, err)
			continue
		}
		if other, ok := inodes[st.Ino]; ok && wants[other].inode != w.inode {
			t.Errorf("%q: inode %d is also %q's", p, st.Ino, other)
		}
		inodes[st.Ino] = p
		if st.Mode != in.Mode || st.Uid != in.UID || st.Gid != in.GID || int(st.Nlink) != in.nlink {
			t.Errorf("%q: mode %#o owner %d:%d nlink %d, want %#o %d:%d %d", p, st.Mode, st.Uid, st.Gid, st.Nlink, in.Mode, in.UID, in.GID, in.nlink)
		}
		wantSec, wantNsec := in.Mtime, int64(in.MtimeNsec)
		if !slices.ContainsFunc(entries, func(e Entry) bool { return e.Path == w.inode }) {
			wantSec, wantNsec = bt, int64(bns)
		}
		if st.Mtim.Sec != wantSec || st.Mtim.Nsec != wantNsec {
			t.Errorf("%q: mtime %d.%09d, want %d.%09d", p, st.Mtim.Sec, st.Mtim.Nsec, wantSec, wantNsec)
		}
		wantX := map[string]string{}
		for k, v := range in.Xattrs {
			wantX[k] = string(v)
		}
		got := listXattrs(t, full)
		for name, v := range got {
			if strings.HasPrefix(v, unreadable) && kernelMayRefuse(name, in.Mode) {
				if _, ok := wantX[name]; ok {
					wantX[name] = v
				}
			}
		}
		if !maps.Equal(got, wantX) {
			t.Errorf("%q: xattrs differ: %s", p, diffXattrs(got, wantX))
		}
		// An absent name must read as absent (the name filter says so
		// for most; the rest are looked up).
		if _, err := unix.Lgetxattr(full, "trusted.overlay.absent", nil); !errors.Is(err, unix.ENODATA) {
			t.Errorf("%q: getxattr of an absent name: %v", p, err)
		}
		switch in.Mode & sIFMT {
		case sIFREG:
			if uint64(st.Size) != in.Size {
				t.Errorf("%q: size %d, want %d", p, st.Size, in.Size)
			}
			checkContents(t, full, in.Entry)
		case sIFLNK:
			if target, err := os.Readlink(full); err != nil || target != in.Target {
				t.Errorf("%q: readlink %q, %v; want %d bytes %.20q", p, target, err, len(in.Target), in.Target)
			}
		case sIFCHR, sIFBLK:
			if unix.Major(st.Rdev) != in.DevMajor || unix.Minor(st.Rdev) != in.DevMinor {
				t.Errorf("%q: device %d:%d, want %d:%d", p, unix.Major(st.Rdev), unix.Minor(st.Rdev), in.DevMajor, in.DevMinor)
			}
		case sIFDIR:
			ents, err := os.ReadDir(full)
			if err != nil {
				t.Errorf("%q: readdir: %v", p, err)
				continue
			}
			var names []string
			for _, e := range ents {
				names = append(names, e.Name())
			}
			slices.Sort(w.children)
			if !slices.Equal(names, w.children) {
				t.Errorf("%q: entries %q, want %q", p, names, w.children)
			}
			// Lookups go through the kernel's binary search of the
			// sorted dirents.
			for _, c := range w.children {
				if _, err := os.Lstat(filepath.Join(full, c)); err != nil {
					t.Errorf("%q: lookup %q: %v", p, c, err)
				}
			}
		}
	}
}

// checkContents reads a regular file: its data, or zeros for a hole (the
// first and last blocks of a large one).
func checkContents(t *testing.T, p string, e Entry) {
	t.Helper()
	f, err := os.Open(p)
	if err != nil {
		t.Errorf("%s: open: %v", p, err)
		return
	}
	defer f.Close()
	if e.Data != nil || e.Size <= 64<<10 {
		got, err := io.ReadAll(f)
		want := e.Data
		if want == nil {
			want = make([]byte, e.Size)
		}
		if err != nil || !bytes.Equal(got, want) {
			t.Errorf("%s: read %d bytes (%v), want %d bytes of contents", p, len(got), err, len(want))
		}
		return
	}
	buf := make([]byte, blkSize)
	for _, off := range []int64{0, int64(e.Size) - blkSize} {
		if n, err := f.ReadAt(buf, off); err != nil && err != io.EOF || n != blkSize || !bytes.Equal(buf, make([]byte, blkSize)) {
			t.Errorf("%s: at %d: read %d bytes (%v), want zeros", p, off, n, err)
		}
	}
}

func TestKernelMountsSampleTree(t *testing.T) {
	testenv.NeedRoot(t)
	es := sampleTree()
	mnt := mountImage(t, saveImage(t, writeImage(t, es)))
	checkMounted(t, mnt, es)
}

// TestKernelSymlinksNearBlockEnds puts symlinks of many lengths after
// inodes of many sizes, so that some targets would cross a block: kernels
// before 6.12 reject those, and every kernel must read them whole.
func TestKernelSymlinksNearBlockEnds(t *testing.T) {
	testenv.NeedRoot(t)
	es := symlinkTree()
	w := NewWriter()
	for _, e := range es {
		if err := w.Add(e); err != nil {
			t.Fatal(err)
		}
	}
	var buf bytes.Buffer
	if _, err := w.WriteTo(&buf); err != nil {
		t.Fatal(err)
	}
	img := buf.Bytes()
	// The tree must have made the cases: a symlink moved to a new block
	// so that its target does not cross one, and one too large to inline.
	var moved, plain int
	for i := range w.nodes {
		n := &w.nodes[i]
		if n.mode&sIFMT != sIFLNK {
			continue
		}
		if n.layout == layoutFlatPlain {
			plain++
		} else if uint64(n.nid)*slotSize%blkSize == 0 {
			moved++
		}
		if start := uint64(n.nid) * slotSize; n.layout == layoutFlatInline && start/blkSize != (start+uint64(inodeSize(n))+uint64(n.xsize)+n.size-1)/blkSize {
			t.Errorf("%s: inode, xattrs and target cross a block", n.path)
		}
	}
	if moved == 0 || plain == 0 {
		t.Errorf("%d symlinks moved to a new block, %d not inlined: want some of each", moved, plain)
	}
	imgPath := saveImage(t, img)
	checkWithGoErofs(t, img, es)
	checkWithErofsUtils(t, imgPath)
	checkMounted(t, mountImage(t, imgPath), es)
}

func inodeSize(n *node) int {
	if n.flags&flagCompact != 0 {
		return inodeCompactSize
	}
	return inodeExtendedSize
}

// TestKernelManySubdirs: a directory with more links than a compact
// inode holds (and a directory of many blocks).
func TestKernelManySubdirs(t *testing.T) {
	testenv.NeedRoot(t)
	es := []Entry{{Path: "d", Mode: sIFDIR | 0o755, Mtime: t0}}
	for i := range 70000 {
		es = append(es, Entry{Path: fmt.Sprintf("d/%05d", i), Mode: sIFDIR | 0o700, Mtime: t0})
	}
	mnt := mountImage(t, saveImage(t, writeImage(t, es)))
	var st unix.Stat_t
	if err := unix.Stat(filepath.Join(mnt, "d"), &st); err != nil || st.Nlink != 70002 {
		t.Errorf("d: nlink %d, %v; want 70002", st.Nlink, err)
	}
	ents, err := os.ReadDir(filepath.Join(mnt, "d"))
	if err != nil || len(ents) != 70000 || ents[0].Name() != "00000" || ents[69999].Name() != "69999" {
		t.Errorf("d: %d entries, %v", len(ents), err)
	}
	for _, name := range []string{"00000", "12345", "69999"} {
		if err := unix.Stat(filepath.Join(mnt, "d", name), &st); err != nil || st.Mode != sIFDIR|0o700 {
			t.Errorf("d/%s: mode %#o, %v", name, st.Mode, err)
		}
	}
}

func symlinkTree() []Entry {
	var es []Entry
	for i := range 120 {
		es = append(es, Entry{Path: fmt.Sprintf("l%03d", i), Mode: sIFLNK | 0o777, Mtime: t0, Target: strings.Repeat(string(rune('a'+i%26)), 1+i*33)})
		if i%3 == 0 {
			es[len(es)-1].Xattrs = map[string][]byte{"trusted.pad": bytes.Repeat([]byte("p"), i*7)}
		}
		es = append(es, Entry{Path: fmt.Sprintf("l%03d-f", i), Mode: sIFREG | 0o644, Mtime: t0 + int64(i%2), Size: uint64(i), Data: bytes.Repeat([]byte("d"), i)})
	}
	return es
}

// TestKernelOverlayRedirect mounts an image as the metadata layer of an
// overlay whose data-only lower layer is an object directory: the file's
// metacopy and redirect xattrs send reads to the object.
func TestKernelOverlayRedirect(t *testing.T) {
	testenv.NeedRoot(t)
	object := "ab" + strings.Repeat("cd", 31)
	content := []byte("the object's bytes, read through the image's path\n")
	objects := t.TempDir()
	if err := os.MkdirAll(filepath.Join(objects, object[:2]), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(objects, object[:2], object[2:]), content, 0o644); err != nil {
		t.Fatal(err)
	}
	es := []Entry{
		{Path: "usr/bin/tool", Mode: sIFREG | 0o755, UID: 12, Mtime: t0, Size: uint64(len(content)), Xattrs: metacopy(object)},
		{Path: "usr/bin/alias", Link: "usr/bin/tool"},
	}
	meta := mountImage(t, saveImage(t, writeImage(t, es)))
	merged := t.TempDir()
	opts := fmt.Sprintf("lowerdir=%s::%s,metacopy=on,redirect_dir=on", meta, objects)
	if err := unix.Mount("overlay", merged, "overlay", unix.MS_RDONLY, opts); err != nil {
		t.Fatalf("mount overlay %s: %v", opts, err)
	}
	// Registered after mountImage's cleanup, so it runs first.
	t.Cleanup(func() {
		if err := unix.Unmount(merged, 0); err != nil {
			t.Errorf("unmount %s: %v", merged, err)
		}
	})
	for _, p := range []string{"usr/bin/tool", "usr/bin/alias"} {
		got, err := os.ReadFile(filepath.Join(merged, p))
		if err != nil || !bytes.Equal(got, content) {
			t.Errorf("%s through the overlay: %q, %v; want the object's %q", p, got, err, content)
		}
		var st unix.Stat_t
		if err := unix.Stat(filepath.Join(merged, p), &st); err != nil || st.Mode != sIFREG|0o755 || st.Uid != 12 || st.Size != int64(len(content)) {
			t.Errorf("%s through the overlay: stat %+v, %v: want the image's metadata", p, st, err)
		}
	}
}

// checkKernel mounts an image and compares what the kernel shows with the
// entries, when the test runs as root (FuzzWrite's seeds: the kernel
// tests proper require root).
func checkKernel(t *testing.T, imgPath string, entries []Entry) {
	t.Helper()
	if os.Geteuid() != 0 {
		return
	}
	checkMounted(t, mountImage(t, imgPath), entries)
}

// diffXattrs says which xattrs differ, briefly (values can be 64 KiB).
func diffXattrs(got, want map[string]string) string {
	var d []string
	for _, name := range slices.Sorted(maps.Keys(maps.Collect(func(yield func(string, string) bool) {
		for k, v := range got {
			yield(k, v)
		}
		for k, v := range want {
			yield(k, v)
		}
	}))) {
		g, gok := got[name]
		w, wok := want[name]
		if g != w || gok != wok {
			d = append(d, fmt.Sprintf("%.40q: got %v %d bytes %.20q, want %v %d bytes %.20q", name, gok, len(g), g, wok, len(w), w))
		}
	}
	return strings.Join(d, "; ")
}

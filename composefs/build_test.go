package composefs

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"maps"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/containerd/v2/pkg/archive"
	"github.com/opencontainers/go-digest"
	"golang.org/x/sys/unix"

	"github.com/lazypull/lazypull/composefs/objects"
	"github.com/lazypull/lazypull/internal/testenv"
)

// tarEntry is one member of a test layer: a header and, for a regular
// file, its content; xattrs go in as PAX SCHILY.xattr records, as
// image builders write them.
type tarEntry struct {
	hdr    tar.Header
	data   []byte
	xattrs map[string]string
}

var layerTime = time.Date(2024, 5, 6, 7, 8, 9, 123456789, time.UTC)

func tdir(name string, mode int64) tarEntry {
	return tarEntry{hdr: tar.Header{Typeflag: tar.TypeDir, Name: name + "/", Mode: mode}}
}

func tfile(name string, mode int64, data []byte) tarEntry {
	return tarEntry{hdr: tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: mode, Size: int64(len(data))}, data: data}
}

// tlink is a hard link to target, its header carrying the target's
// metadata as image builders write it (containerd applies a link's
// owner, mode and xattrs to the inode it shares).
func tlink(name string, target tarEntry) tarEntry {
	e := target
	e.hdr.Typeflag, e.hdr.Name, e.hdr.Linkname, e.hdr.Size, e.data = tar.TypeLink, name, target.hdr.Name, 0, nil
	return e
}

func tsymlink(name, target string) tarEntry {
	return tarEntry{hdr: tar.Header{Typeflag: tar.TypeSymlink, Name: name, Linkname: target, Mode: 0o777}}
}

func (e tarEntry) owner(uid, gid int) tarEntry { e.hdr.Uid, e.hdr.Gid = uid, gid; return e }
func (e tarEntry) mtime(t time.Time) tarEntry  { e.hdr.ModTime = t; return e }
func (e tarEntry) xattr(k, v string) tarEntry {
	m := map[string]string{k: v}
	for k, v := range e.xattrs {
		m[k] = v
	}
	e.xattrs = m
	return e
}

// tarLayer writes the entries as an uncompressed layer tar (PAX, so
// nanosecond mtimes and xattrs survive).
func tarLayer(t testing.TB, entries []tarEntry) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		h := e.hdr
		if h.ModTime.IsZero() {
			h.ModTime = layerTime
		}
		h.Format = tar.FormatPAX
		for k, v := range e.xattrs {
			if h.PAXRecords == nil {
				h.PAXRecords = map[string]string{}
			}
			h.PAXRecords["SCHILY.xattr."+k] = v
		}
		if err := tw.WriteHeader(&h); err != nil {
			t.Fatalf("tar %s: %v", h.Name, err)
		}
		if _, err := tw.Write(e.data); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// unpack applies a layer tar to dir as containerd's differ does into an
// overlay snapshot's upper directory (core/diff/apply on Linux): whiteouts
// become 0/0 character devices, opaque markers trusted.overlay.opaque=y,
// parents made implicitly copy their metadata from the lower layers.
func unpack(t testing.TB, layer []byte, dir string, parents ...string) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	opts := []archive.ApplyOpt{archive.WithConvertWhiteout(archive.OverlayConvertWhiteout)}
	if len(parents) > 0 {
		opts = append(opts, archive.WithParents(parents))
	}
	if _, err := archive.Apply(context.Background(), dir, bytes.NewReader(layer), opts...); err != nil {
		t.Fatalf("unpack into %s: %v", dir, err)
	}
	// The applier leaves the root alone (the snapshotter made it): an
	// mtime of its own, not the time of this unpack, so two unpacks
	// compare equal.
	if err := os.Chtimes(dir, layerTime, layerTime); err != nil {
		t.Fatal(err)
	}
}

// fileCapability is a security.capability value (VFS_CAP_REVISION_2,
// effective) granting cap_net_bind_service.
func fileCapability() string {
	var v [20]byte
	binary.LittleEndian.PutUint32(v[0:], 0x02000001)
	binary.LittleEndian.PutUint32(v[4:], 1<<10) // permitted
	return string(v[:])
}

func blob(size int, seed uint64) []byte {
	b := make([]byte, size)
	var key [32]byte
	key[0], key[1] = byte(seed), byte(seed>>8)
	rand.NewChaCha8(key).Read(b)
	return b
}

// The two layers of TestBuildDirMatchesOverlay: the lower a small root
// filesystem, the upper changing it in every way a layer can.
var (
	shared   = blob(4000, 1) // in both layers: one object
	tool     = tfile("bin/tool", 0o4755, blob(5000, 2)).xattr("security.capability", fileCapability())
	tiny     = tfile("bin/tiny", 0o755, []byte("#!/bin/sh\n"))
	newX     = tfile("new/x", 0o644, blob(1000, 12)).owner(7, 8).xattr("user.x", "y")
	layerOne = []tarEntry{
		tdir("etc", 0o755),
		tfile("etc/passwd", 0o644, bytes.Repeat([]byte("root:x:0:0:root:/root:/bin/sh\n"), 8)),
		tfile("etc/hostname", 0o644, []byte("box\n")),
		tfile("etc/empty", 0o600, nil),
		tdir("bin", 0o755),
		tool,
		tlink("bin/tool-alias", tool),
		tiny,
		tlink("bin/tiny-alias", tiny),
		tdir("usr", 0o755), tdir("usr/lib", 0o755),
		tfile("usr/lib/libx.so.1", 0o644, blob(100<<10, 3)),
		tsymlink("usr/lib/libx.so", "libx.so.1"),
		tsymlink("usr/lib/long", strings.Repeat("very/long/", 100)+"target"),
		tdir("home", 0o755),
		tdir("home/user", 0o700).owner(1000, 1000).mtime(layerTime.Add(time.Hour)),
		tfile("home/user/notes", 0o640, blob(100, 4)).owner(1000, 1000).
			mtime(time.Date(2020, 1, 2, 3, 4, 5, 999, time.UTC)).xattr("user.comment", "hello"),
		tdir("opaq", 0o755).xattr("user.dir", "kept"),
		tfile("opaq/a", 0o644, blob(300, 5)),
		tdir("opaq/sub", 0o755), tfile("opaq/sub/b", 0o644, blob(301, 6)),
		tdir("del", 0o751).mtime(layerTime.Add(-time.Hour)).xattr("user.del", "parent"),
		tfile("del/gone", 0o644, blob(150, 7)),
		tfile("del/kept", 0o644, blob(151, 8)),
		tdir("replace", 0o755), tfile("replace/me", 0o644, blob(500, 9)),
		tdir("dev", 0o755),
		{hdr: tar.Header{Typeflag: tar.TypeChar, Name: "dev/null", Mode: 0o666, Devmajor: 1, Devminor: 3}},
		{hdr: tar.Header{Typeflag: tar.TypeBlock, Name: "dev/disk", Mode: 0o660, Devmajor: 8, Devminor: 17}},
		{hdr: tar.Header{Typeflag: tar.TypeFifo, Name: "dev/fifo", Mode: 0o600}},
		tdir("shared", 0o755), tfile("shared/one", 0o644, shared),
	}
	layerTwo = []tarEntry{
		// Every directory written to has its entry (as image builders
		// write layers): else its mtime would be the time of unpacking.
		tdir("del", 0o751).mtime(layerTime.Add(-time.Hour)).xattr("user.del", "parent"),
		{hdr: tar.Header{Typeflag: tar.TypeReg, Name: "del/.wh.gone"}},
		tdir("opaq", 0o750).xattr("user.dir", "upper"),
		{hdr: tar.Header{Typeflag: tar.TypeReg, Name: "opaq/.wh..wh..opq"}},
		tfile("opaq/c", 0o644, blob(70, 10)),
		tdir("replace", 0o755),
		tfile("replace/me", 0o600, blob(500, 11)).owner(2, 3),
		tdir("new", 0o755),
		newX,
		tlink("new/y", newX),
		tsymlink("new/link", "../etc/passwd"),
		tfile("new/same", 0o444, shared).owner(5, 5),
		tdir("etc", 0o755).mtime(layerTime.Add(2 * time.Hour)),
		tfile("etc/motd", 0o644, []byte("hello\n")),
		tdir("bin", 0o755),
		tfile("bin/tool2", 0o2755, blob(6000, 13)).owner(0, 50).xattr("security.capability", fileCapability()),
		tdir("usr", 0o755), tdir("usr/lib", 0o755),
		{hdr: tar.Header{Typeflag: tar.TypeReg, Name: "usr/lib/.wh.libx.so"}},
		tfile("usr/lib/acl", 0o640, blob(80, 14)).xattr("system.posix_acl_access", posixACL()),
	}
)

// posixACL is a system.posix_acl_access value: user::rw-, user:1000:r--,
// group::r--, mask::r--, other::---.
func posixACL() string {
	var b bytes.Buffer
	binary.Write(&b, binary.LittleEndian, uint32(2))
	for _, e := range []struct {
		tag, perm uint16
		id        uint32
	}{{0x01, 6, 0xFFFFFFFF}, {0x02, 4, 1000}, {0x04, 4, 0xFFFFFFFF}, {0x10, 4, 0xFFFFFFFF}, {0x20, 0, 0xFFFFFFFF}} {
		binary.Write(&b, binary.LittleEndian, e)
	}
	return b.String()
}

// node is what the comparison sees of a path in a mounted tree.
type node struct {
	Mode     uint32
	UID, GID uint32
	Nlink    uint64
	Size     int64
	Mtime    string
	Rdev     uint64
	Target   string
	Xattrs   map[string]string
	Content  string // sha256 of a regular file's bytes
}

// snapshot walks a mounted tree (without following symlinks) and
// records every path's metadata, xattrs (as listed: overlayfs lists no
// trusted.overlay.*) and content digest, and which paths share an inode.
func snapshot(t *testing.T, root string) (map[string]node, [][]string) {
	t.Helper()
	out := map[string]node{}
	inodes := map[uint64][]string{}
	err := filepath.Walk(root, func(p string, _ os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			return err
		}
		n := node{
			Mode: st.Mode, UID: st.Uid, GID: st.Gid, Nlink: st.Nlink,
			Mtime: fmt.Sprintf("%d.%09d", st.Mtim.Sec, st.Mtim.Nsec),
		}
		switch st.Mode & unix.S_IFMT {
		case unix.S_IFREG:
			n.Size = st.Size
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			sum := sha256.Sum256(b)
			n.Content = hex.EncodeToString(sum[:])
			if st.Nlink > 1 {
				inodes[st.Ino] = append(inodes[st.Ino], rel)
			}
		case unix.S_IFLNK:
			n.Size = st.Size
			n.Target, err = os.Readlink(p)
			if err != nil {
				return err
			}
		case unix.S_IFCHR, unix.S_IFBLK:
			n.Rdev = st.Rdev
		case unix.S_IFDIR:
			n.Nlink = 0 // overlayfs counts a merged directory's links its own way
		}
		n.Xattrs = listXattrs(t, p)
		out[rel] = n
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	var groups [][]string
	for _, g := range inodes {
		slices.Sort(g)
		groups = append(groups, g)
	}
	slices.SortFunc(groups, func(a, b []string) int { return strings.Compare(a[0], b[0]) })
	return out, groups
}

func listXattrs(t *testing.T, p string) map[string]string {
	t.Helper()
	buf := make([]byte, 64<<10)
	n, err := unix.Llistxattr(p, buf)
	if err != nil {
		t.Fatalf("list xattrs of %s: %v", p, err)
	}
	var m map[string]string
	for name := range strings.SplitSeq(string(buf[:n]), "\x00") {
		if name == "" {
			continue
		}
		v := make([]byte, 64<<10)
		vn, err := unix.Lgetxattr(p, name, v)
		if err != nil {
			t.Fatalf("xattr %s of %s: %v", name, p, err)
		}
		if m == nil {
			m = map[string]string{}
		}
		m[name] = string(v[:vn])
	}
	return m
}

func getXattr(p, name string) (string, error) {
	v := make([]byte, 64<<10)
	n, err := unix.Lgetxattr(p, name, v)
	if err != nil {
		return "", err
	}
	return string(v[:n]), nil
}

func openStore(t testing.TB, root string) *objects.Store {
	t.Helper()
	s, err := objects.Open(context.Background(), root)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func build(t testing.TB, dir string, s *objects.Store, owner, image string, opts ...BuildOption) BuildStats {
	t.Helper()
	st, err := BuildDir(context.Background(), dir, s, owner, image, opts...)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// fsckImage checks an image with erofs-utils, an independent reader.
func fsckImage(t *testing.T, image string) {
	t.Helper()
	fsck := testenv.NeedBinary(t, "fsck.erofs")
	if out, err := exec.Command(fsck, image).CombinedOutput(); err != nil {
		t.Errorf("fsck.erofs %s: %v\n%s", image, err, out)
	}
}

// TestBuildDirMatchesOverlay: two layers unpacked by containerd's own
// applier, converted by BuildDir and mounted as a composefs stack, look
// and read exactly as the same layers unpacked the overlay snapshotter's
// way under plain overlayfs: every path, type, mode, owner, size, mtime,
// symlink target, device, xattr, hard link and byte.
func TestBuildDirMatchesOverlay(t *testing.T) {
	root := needMounts(t)
	one, two := tarLayer(t, layerOne), tarLayer(t, layerTwo)

	// The overlay snapshotter's way.
	ref1, ref2 := filepath.Join(root, "ref1"), filepath.Join(root, "ref2")
	unpack(t, one, ref1)
	unpack(t, two, ref2, ref1)
	want := filepath.Join(root, "want")
	os.Mkdir(want, 0o755)
	ref := mount.Mount{Type: "overlay", Source: "overlay", Options: []string{"lowerdir=" + ref2 + ":" + ref1}}
	if err := mount.All([]mount.Mount{ref}, want); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := Unmount(want); err != nil {
			t.Error(err)
		}
	})

	// composefs: each layer unpacked into its own directory, converted,
	// and the next one unpacked with the previous image as its parent,
	// as the snapshotter's active snapshot over a composefs stack.
	store := openStore(t, filepath.Join(root, "store"))
	dir1, dir2 := filepath.Join(root, "dir1"), filepath.Join(root, "dir2")
	img1, img2 := filepath.Join(root, "1.erofs"), filepath.Join(root, "2.erofs")
	unpack(t, one, dir1)
	st1 := build(t, dir1, store, "layer1", img1)
	mp1 := mountImage(t, root, img1, WithACL())
	unpack(t, two, dir2, mp1)
	st2 := build(t, dir2, store, "layer2", img2)
	mp2 := mountImage(t, root, img2, WithACL())
	t.Logf("layer 1: %+v", st1)
	t.Logf("layer 2: %+v", st2)
	fsckImage(t, img1)
	fsckImage(t, img2)
	got := mountOverlay(t, root, Overlay{
		Layers:  []string{mp2, mp1},
		Objects: store.ObjectsDir(),
		Verity:  VerityFor(st1.Verity && st2.Verity),
	})

	// What the builds did. Layer 1: 13 files (hard links once), 2 of
	// them inlined (hostname, tiny), 1 empty, 10 objects.
	if st1.Files != 13 || st1.Inlined != 2 || st1.Objects != 10 || st1.NewObjects != 10 || st1.NewBytes != st1.Bytes || st1.Verity {
		t.Errorf("layer 1: %+v; want 13 files, 2 inlined, 10 new objects, no verity on this kernel", st1)
	}
	// Layer 2: 7 files, motd inlined; new/same is shared/one, present.
	if st2.Files != 7 || st2.Inlined != 1 || st2.Objects != 6 || st2.NewObjects != 5 || st2.NewBytes != st2.Bytes-int64(len(shared)) {
		t.Errorf("layer 2: %+v; want 7 files, 1 inlined, 6 objects, 5 new (all but new/same)", st2)
	}

	wantTree, wantLinks := snapshot(t, want)
	gotTree, gotLinks := snapshot(t, got)
	for _, p := range []string{"del/gone", "opaq/a", "opaq/sub", "usr/lib/libx.so"} {
		if _, ok := wantTree[p]; ok {
			t.Errorf("%s is in the reference overlay: the test's layers do not delete it", p)
		}
	}
	for _, p := range []string{"del/kept", "opaq/c", "bin/tool-alias", "new/y", "home/user/notes"} {
		if _, ok := wantTree[p]; !ok {
			t.Errorf("%s is not in the reference overlay", p)
		}
	}
	if n := wantTree["bin/tool"]; n.Mode != unix.S_IFREG|0o4755 || n.Xattrs["security.capability"] != fileCapability() {
		t.Errorf("the reference's bin/tool: %+v; want setuid with a capability", n)
	}
	for _, p := range sortedKeys(wantTree, gotTree) {
		w, wok := wantTree[p]
		g, gok := gotTree[p]
		switch {
		case !gok:
			t.Errorf("%s: missing from the composefs stack (overlay: %+v)", p, w)
		case !wok:
			t.Errorf("%s: only in the composefs stack: %+v", p, g)
		case fmt.Sprint(w) != fmt.Sprint(g):
			t.Errorf("%s:\n composefs %+v\n overlay   %+v", p, g, w)
		}
	}
	if fmt.Sprint(wantLinks) != fmt.Sprint(gotLinks) || len(wantLinks) != 3 {
		t.Errorf("hard links: composefs %v, overlay %v; want the same 3 groups", gotLinks, wantLinks)
	}
	// The files are served from the store, and the images name them
	// with their fs-verity digests.
	redirect, err := getXattr(filepath.Join(mp1, "usr/lib/libx.so.1"), xattrRedirect)
	if err != nil || !strings.HasPrefix(redirect, "/") {
		t.Fatalf("redirect of usr/lib/libx.so.1: %q, %v", redirect, err)
	}
	obj, err := os.ReadFile(filepath.Join(store.ObjectsDir(), redirect))
	if err != nil || !bytes.Equal(obj, blob(100<<10, 3)) {
		t.Errorf("the object %s: %d bytes, %v; want libx.so.1's", redirect, len(obj), err)
	}
	mc, err := getXattr(filepath.Join(mp1, "usr/lib/libx.so.1"), xattrMetacopy)
	d := "sha256:" + strings.ReplaceAll(strings.TrimPrefix(redirect, "/"), "/", "")
	info, serr := store.Stat(context.Background(), digest.Digest(d))
	if err != nil || serr != nil || mc != string(metacopy(info.Verity)) {
		t.Errorf("metacopy of usr/lib/libx.so.1: %x, %v; want %x (%v)", mc, err, metacopy(info.Verity), serr)
	}
	for _, p := range []string{"etc/hostname", "etc/empty"} {
		if _, err := getXattr(filepath.Join(mp1, p), xattrRedirect); err != unix.ENODATA {
			t.Errorf("%s (inline or empty) has a redirect: %v", p, err)
		}
	}
	for _, p := range []string{"del/gone", "usr/lib/libx.so"} {
		var st unix.Stat_t
		if err := unix.Lstat(filepath.Join(mp2, p), &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFCHR || st.Rdev != 0 {
			t.Errorf("%s in layer 2's image: %+v, %v; want a 0/0 whiteout", p, st, err)
		}
	}
	if v, err := getXattr(filepath.Join(mp2, "opaq"), xattrOpaque); err != nil || v != "y" {
		t.Errorf("opaq in layer 2's image: opaque %q, %v; want y", v, err)
	}
}

func sortedKeys(ms ...map[string]node) []string {
	var keys []string
	for _, m := range ms {
		for k := range m {
			keys = append(keys, k)
		}
	}
	slices.Sort(keys)
	return slices.Compact(keys)
}

// TestBuildDirDedup: the same file in two layers is one object, written
// once; it lives while either layer's owner names it, and GC removes it
// once both are released. The same tree gives the same image, and a
// build that fails records nothing.
func TestBuildDirDedup(t *testing.T) {
	testenv.NeedRoot(t) // the applier chowns and makes devices
	ctx := context.Background()
	root := t.TempDir()
	store := openStore(t, filepath.Join(root, "store"))
	data := blob(70000, 20)
	layer := tarLayer(t, []tarEntry{
		tdir("a", 0o755), tfile("a/file", 0o644, data), tfile("a/small", 0o644, []byte("small")),
	})
	d1, d2, d3 := filepath.Join(root, "d1"), filepath.Join(root, "d2"), filepath.Join(root, "d3")
	for _, d := range []string{d1, d2, d3} {
		unpack(t, layer, d)
	}
	img1, img2, img3 := filepath.Join(root, "1.erofs"), filepath.Join(root, "2.erofs"), filepath.Join(root, "3.erofs")
	st1 := build(t, d1, store, "one", img1)
	st2 := build(t, d2, store, "two", img2, WithCopy())
	if st1.Objects != 1 || st1.NewObjects != 1 || st1.NewBytes != int64(len(data)) {
		t.Errorf("first build: %+v; want 1 new object of %d bytes", st1, len(data))
	}
	if st2.Objects != 1 || st2.NewObjects != 0 || st2.NewBytes != 0 || st2.Bytes != int64(len(data)) {
		t.Errorf("second build: %+v; want its 1 object present", st2)
	}
	i1, _ := os.ReadFile(img1)
	i2, _ := os.ReadFile(img2)
	if !bytes.Equal(i1, i2) || int64(len(i1)) != st1.ImageBytes {
		t.Errorf("the same tree built twice: images of %d and %d bytes differ (stats say %d)", len(i1), len(i2), st1.ImageBytes)
	}
	// WithCopy left its directory as it was; adopting took d1's file.
	var st unix.Stat_t
	unix.Stat(filepath.Join(d2, "a/file"), &st)
	if st.Nlink != 1 || st.Mode&0o777 != 0o644 {
		t.Errorf("WithCopy changed the file: nlink %d mode %#o", st.Nlink, st.Mode&0o777)
	}
	unix.Stat(filepath.Join(d1, "a/file"), &st)
	if st.Nlink != 2 {
		t.Errorf("the adopted file has nlink %d, want 2 (its name and the object's)", st.Nlink)
	}

	d := digest.FromBytes(data)
	for _, owner := range []string{"one", "two"} {
		if refs, err := store.Refs(owner); err != nil || len(refs) != 1 || refs[0] != d {
			t.Errorf("refs of %s: %v, %v; want [%s]", owner, refs, err, d)
		}
	}
	// A build whose image cannot be written records nothing.
	if _, err := BuildDir(ctx, d3, store, "three", filepath.Join(root, "no/such/dir/3.erofs")); err == nil || !strings.Contains(err.Error(), d3) {
		t.Errorf("build into a missing directory: %v; want an error naming %s", err, d3)
	}
	if _, err := store.Refs("three"); err == nil {
		t.Error("a failed build recorded refs")
	}
	if _, err := os.Stat(img3); err == nil {
		t.Error("a failed build left an image")
	}

	gc := func(wantRemoved int, wantHas bool) {
		t.Helper()
		res, err := store.GC(ctx)
		if err != nil {
			t.Fatal(err)
		}
		has, _ := store.Has(d)
		if res.Objects != wantRemoved || has != wantHas {
			t.Errorf("GC removed %d objects, the object present: %v; want %d, %v", res.Objects, has, wantRemoved, wantHas)
		}
	}
	if err := store.Release("one"); err != nil {
		t.Fatal(err)
	}
	gc(0, true)
	if err := store.Release("two"); err != nil {
		t.Fatal(err)
	}
	gc(1, false)
}

// TestBuildDirHostileXattrs: overlay xattrs a layer carries (PAX records,
// or set by any other unpacker) never reach the image; a file whose tar
// forged a redirect to another layer's object serves its own bytes.
func TestBuildDirHostileXattrs(t *testing.T) {
	root := needMounts(t)
	store := openStore(t, filepath.Join(root, "store"))

	// Another layer's secret, in the store.
	secret := blob(3000, 30)
	sdir := filepath.Join(root, "secret")
	unpack(t, tarLayer(t, []tarEntry{tfile("secret", 0o600, secret)}), sdir)
	build(t, sdir, store, "secret", filepath.Join(root, "secret.erofs"))
	sname, _ := objects.Name(digest.FromBytes(secret))
	forged := "/" + sname

	evil, small := blob(2000, 31), []byte("small but evil")
	hostile := map[string]string{
		"trusted.overlay.redirect": forged,
		"trusted.overlay.metacopy": "",
		"trusted.overlay.opaque":   "y",
		"trusted.overlay.origin":   "x",
		"trusted.foo":              "bar",
		"user.overlay.redirect":    forged,
		"user.overlay.metacopy":    "",
		"user.overlay.opaque":      "y",
	}
	with := func(e tarEntry) tarEntry {
		for k, v := range hostile {
			e = e.xattr(k, v)
		}
		return e.xattr("user.ok", "kept")
	}
	dir := filepath.Join(root, "layer")
	unpack(t, tarLayer(t, []tarEntry{
		with(tfile("evil", 0o644, evil)),
		with(tfile("evil-small", 0o644, small)),
		with(tdir("evildir", 0o755)),
		tdir("xdir", 0o755),
	}), dir)
	// containerd's applier (1.6 and 2.x) refuses trusted.* from a tar
	// (it says so in its log): the forged redirect and metacopy are not
	// there. Set the other trusted ones as an applier that took them
	// would have (a forged redirect or metacopy in dir is
	// ErrOverlayUpper: TestBuildDirRefusesOverlayUpper).
	for _, p := range []string{"evil", "evil-small", "evildir"} {
		for k, v := range hostile {
			if strings.HasPrefix(k, "trusted.") {
				if _, err := getXattr(filepath.Join(dir, p), k); err != unix.ENODATA {
					t.Errorf("%s has %s from the tar: %v", p, k, err)
				}
			}
			if k == xattrRedirect || k == xattrMetacopy {
				continue
			}
			if err := unix.Lsetxattr(filepath.Join(dir, p), k, []byte(v), 0); err != nil {
				t.Fatal(err)
			}
		}
	}
	unix.Lsetxattr(filepath.Join(dir, "xdir"), xattrOpaque, []byte("x"), 0)

	st := build(t, dir, store, "layer", filepath.Join(root, "layer.erofs"))
	mp := mountImage(t, root, filepath.Join(root, "layer.erofs"))
	ename, _ := objects.Name(digest.FromBytes(evil))
	want := map[string]map[string]string{
		"evil":       {"user.ok": "kept", xattrRedirect: "/" + ename, xattrMetacopy: "36 bytes"},
		"evil-small": {"user.ok": "kept"},
		// A directory's opaque=y is how the differ marks an opaque
		// directory: a layer may hide what is below it anyway.
		"evildir": {"user.ok": "kept", xattrOpaque: "y"},
		"xdir":    nil,
	}
	for p, w := range want {
		got := map[string]string{}
		for _, name := range append(slices.Collect(maps.Keys(hostile)), "user.ok") {
			if v, err := getXattr(filepath.Join(mp, p), name); err == nil {
				if name == xattrMetacopy && len(v) == 36 {
					v = "36 bytes"
				}
				got[name] = v
			} else if err != unix.ENODATA {
				t.Fatalf("%s: xattr %s: %v", p, name, err)
			}
		}
		if v, err := getXattr(filepath.Join(mp, p), xattrOpaque); err == nil {
			got[xattrOpaque] = v
		}
		if fmt.Sprint(got) != fmt.Sprint(w) && !(len(got) == 0 && len(w) == 0) {
			t.Errorf("%s in the image: xattrs %q; want %q", p, got, w)
		}
	}
	if st.Objects != 1 {
		t.Errorf("%+v: want 1 object (evil)", st)
	}

	merged := mountOverlay(t, root, Overlay{Layers: []string{mp}, Objects: store.ObjectsDir(), Verity: VerityOff})
	for p, data := range map[string][]byte{"evil": evil, "evil-small": small} {
		if got, err := os.ReadFile(filepath.Join(merged, p)); err != nil || !bytes.Equal(got, data) {
			t.Errorf("%s through the overlay: %d bytes, %v; want its own %d (the secret is %d)", p, len(got), err, len(data), len(secret))
		}
	}
	if _, err := os.Stat(filepath.Join(merged, "evildir")); err != nil {
		t.Error(err)
	}
}

// BenchmarkBuildDir converts a generated layer of 10,000 files (about 100
// MiB: a fifth of them 64 bytes or less, the rest up to 16 KiB but for 20
// of 1-4 MiB, in 100 directories, every content distinct) and, in the same
// run, copies the same directory with io.Copy (what the overlay
// snapshotter's layer costs beyond the unpack), reporting BuildDir's time
// (ns/op), the copy's, their ratio, and the bytes each takes on disk
// (objects and image, once the caller removed the layer directory; the
// copy's files). Sub-benchmarks: adopt (the default: the files become the
// objects) and copy (WithCopy). The store syncs once a batch
// (WithBatchSync), the copy once at its end (syncfs), as containerd's
// differ syncs a layer. CPU time (the process's, user and system) is the
// steadier figure on a busy disk. LAZYPULL_BENCH_DIR puts it on another
// filesystem (a tmpfs shows the hashing alone). None asserts a time.
func BenchmarkBuildDir(b *testing.B) {
	sizes := layerSizes(10000)
	var total int64
	for _, s := range sizes {
		total += int64(s)
	}
	for _, mode := range []string{"adopt", "copy"} {
		b.Run(mode, func(b *testing.B) {
			var opts []BuildOption
			if mode == "copy" {
				opts = append(opts, WithCopy())
			}
			b.SetBytes(total)
			var copyTime time.Duration
			var disk, copyDisk, cpu, copyCPU int64
			b.StopTimer()
			for range b.N {
				parent, err := os.MkdirTemp(benchParent(b), "build-")
				if err != nil {
					b.Fatal(err)
				}
				layer, cp := filepath.Join(parent, "layer"), filepath.Join(parent, "copy")
				genLayer(b, layer, sizes)
				store, err := objects.Open(context.Background(), filepath.Join(parent, "store"), objects.WithBatchSync())
				if err != nil {
					b.Fatal(err)
				}
				syncfs(b, parent)

				t0, c0 := time.Now(), cpuTime()
				copyTree(b, layer, cp)
				syncfs(b, parent)
				copyTime += time.Since(t0)
				copyCPU += cpuTime() - c0

				image := filepath.Join(parent, "layer.erofs")
				c0 = cpuTime()
				b.StartTimer()
				st, err := BuildDir(context.Background(), layer, store, "bench", image, opts...)
				b.StopTimer()
				cpu += cpuTime() - c0
				if err != nil {
					b.Fatal(err)
				}
				if st.Files != len(sizes) || st.FileBytes != total {
					b.Fatalf("%+v: want %d files of %d bytes", st, len(sizes), total)
				}
				if err := os.RemoveAll(layer); err != nil { // as the snapshotter does
					b.Fatal(err)
				}
				disk += diskUsage(b, filepath.Join(parent, "store", "objects")) + diskUsage(b, image)
				copyDisk += diskUsage(b, cp)
				store.Close()
				os.RemoveAll(parent)
			}
			n := float64(b.N)
			b.ReportMetric(float64(copyTime.Nanoseconds())/n, "copy-ns/op")
			b.ReportMetric(b.Elapsed().Seconds()/copyTime.Seconds(), "build/copy")
			b.ReportMetric(float64(cpu)/n, "cpu-ns/op")
			b.ReportMetric(float64(copyCPU)/n, "copy-cpu-ns/op")
			b.ReportMetric(float64(cpu)/float64(copyCPU), "build/copy-cpu")
			b.ReportMetric(float64(disk)/n/(1<<20), "disk-MiB")
			b.ReportMetric(float64(copyDisk)/n/(1<<20), "copy-disk-MiB")
			b.ReportMetric(float64(disk)/float64(copyDisk), "disk/copy")
		})
	}
}

// cpuTime is the process's user and system time so far, in ns.
func cpuTime() int64 {
	var ru unix.Rusage
	unix.Getrusage(unix.RUSAGE_SELF, &ru)
	return ru.Utime.Nano() + ru.Stime.Nano()
}

func benchParent(b *testing.B) string {
	if dir := os.Getenv("LAZYPULL_BENCH_DIR"); dir != "" {
		return dir
	}
	return b.TempDir()
}

// layerSizes are n file sizes, the same every run.
func layerSizes(n int) []int {
	r := rand.New(rand.NewPCG(1, 2))
	sizes := make([]int, n)
	for i := range sizes {
		switch x := r.IntN(1000); {
		case x < 200:
			sizes[i] = r.IntN(InlineMax + 1)
		case x < 998:
			sizes[i] = 65 + r.IntN(16<<10)
		default:
			sizes[i] = 1<<20 + r.IntN(3<<20)
		}
	}
	return sizes
}

// genLayer writes files of the given sizes into dir, 100 to a directory,
// each content distinct (its index in its first bytes).
func genLayer(b *testing.B, dir string, sizes []int) {
	buf := blob(4<<20, 99)
	for i, size := range sizes {
		d := filepath.Join(dir, fmt.Sprintf("d%02d", i/100))
		if i%100 == 0 {
			if err := os.MkdirAll(d, 0o755); err != nil {
				b.Fatal(err)
			}
		}
		data := buf[:size]
		if size >= 8 {
			binary.LittleEndian.PutUint64(data, uint64(i))
		}
		if err := os.WriteFile(filepath.Join(d, fmt.Sprintf("f%05d", i)), data, 0o644); err != nil {
			b.Fatal(err)
		}
	}
}

// copyTree copies a tree of directories and regular files.
func copyTree(b *testing.B, from, to string) {
	err := filepath.WalkDir(from, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(from, p)
		dst := filepath.Join(to, rel)
		if d.IsDir() {
			return os.Mkdir(dst, 0o755)
		}
		src, err := os.Open(p)
		if err != nil {
			return err
		}
		defer src.Close()
		out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
		if err != nil {
			return err
		}
		_, err = io.Copy(out, src)
		if cerr := out.Close(); err == nil {
			err = cerr
		}
		return err
	})
	if err != nil {
		b.Fatal(err)
	}
}

func syncfs(b *testing.B, dir string) {
	f, err := os.Open(dir)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	if err := unix.Syncfs(int(f.Fd())); err != nil {
		b.Fatal(err)
	}
}

// diskUsage is the bytes allocated (st_blocks) to the files under path,
// each inode once.
func diskUsage(b *testing.B, path string) int64 {
	var total int64
	seen := map[uint64]bool{}
	err := filepath.WalkDir(path, func(p string, _ os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			return err
		}
		if !seen[st.Ino] {
			seen[st.Ino] = true
			total += st.Blocks * 512
		}
		return nil
	})
	if err != nil {
		b.Fatal(err)
	}
	return total
}

// TestBuildDirErrors: what BuildDir cannot convert is an error naming the
// path, and leaves no image and no refs behind.
func TestBuildDirErrors(t *testing.T) {
	root := t.TempDir()
	store := openStore(t, filepath.Join(root, "store"))
	file := filepath.Join(root, "file")
	os.WriteFile(file, []byte("x"), 0o644)
	tree := filepath.Join(root, "tree")
	os.MkdirAll(filepath.Join(tree, "a/b"), 0o755)
	os.WriteFile(filepath.Join(tree, "a/b/big"), blob(1000, 40), 0o644)
	cancelled, cancel := context.WithCancel(context.Background())
	cancel()
	for _, c := range []struct {
		name, dir string
		ctx       context.Context
	}{
		{"missing", filepath.Join(root, "missing"), context.Background()},
		{"not a directory", file, context.Background()},
		{"cancelled", tree, cancelled},
	} {
		image := filepath.Join(root, "img")
		_, err := BuildDir(c.ctx, c.dir, store, "owner", image)
		if err == nil || !strings.Contains(err.Error(), c.dir) {
			t.Errorf("%s: %v; want an error naming %s", c.name, err, c.dir)
		}
		if _, serr := os.Stat(image); serr == nil {
			t.Errorf("%s: an image was written", c.name)
		}
		if _, rerr := store.Refs("owner"); rerr == nil {
			t.Errorf("%s: refs were recorded", c.name)
		}
	}
}

// TestBuildDirSpecialFiles: sockets and fifos are kept, a tree with no
// objects says a stack of it may require verity, and erofs-utils read the
// image.
func TestBuildDirSpecialFiles(t *testing.T) {
	root := t.TempDir()
	store := openStore(t, filepath.Join(root, "store"))
	dir := filepath.Join(root, "layer")
	os.MkdirAll(filepath.Join(dir, "run"), 0o755)
	if err := unix.Mkfifo(filepath.Join(dir, "run/fifo"), 0o600); err != nil {
		t.Fatal(err)
	}
	sock, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(sock)
	if err := unix.Bind(sock, &unix.SockaddrUnix{Name: filepath.Join(dir, "run/sock")}); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(dir, "run/pid"), []byte("1234\n"), 0o644)
	image := filepath.Join(root, "img")
	st := build(t, dir, store, "owner", image)
	if st.Entries != 5 || st.Files != 1 || st.Inlined != 1 || st.Objects != 0 || !st.Verity {
		t.Errorf("%+v: want 5 entries, 1 file inlined, no objects, verity possible", st)
	}
	fsckImage(t, image)
	dump := testenv.NeedBinary(t, "dump.erofs")
	out, err := exec.Command(dump, "--path=/run/sock", image).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "SOCK file") {
		t.Errorf("dump.erofs of run/sock: %v\n%s", err, out)
	}
}

// TestBuildDirRefusesOverlayUpper: what overlayfs writes into the upper of
// a composefs stack (metacopy=on, redirect_dir=on) when a container
// changes only a file's metadata or renames a directory names data in the
// lower layers; BuildDir refuses it (ErrOverlayUpper, naming the path)
// rather than store a hole's zeros as the file or an empty directory. So
// does a forged redirect or metacopy. Nothing is recorded.
func TestBuildDirRefusesOverlayUpper(t *testing.T) {
	root := needMounts(t)
	store := openStore(t, filepath.Join(root, "store"))
	dir := filepath.Join(root, "layer")
	unpack(t, tarLayer(t, layerOne), dir)
	img := filepath.Join(root, "1.erofs")
	build(t, dir, store, "layer", img)
	mp := mountImage(t, root, img, WithACL())

	for _, c := range []struct {
		name   string
		change func(merged string) error
		path   string
	}{
		{"chmod", func(m string) error { return os.Chmod(filepath.Join(m, "usr/lib/libx.so.1"), 0o600) }, "usr/lib/libx.so.1"},
		{"chown inlined", func(m string) error { return os.Chown(filepath.Join(m, "etc/hostname"), 5, 5) }, "etc/hostname"},
		{"rename dir", func(m string) error { return os.Rename(filepath.Join(m, "opaq"), filepath.Join(m, "moved")) }, "moved"},
	} {
		t.Run(c.name, func(t *testing.T) {
			up, work := filepath.Join(root, c.name, "upper"), filepath.Join(root, c.name, "work")
			os.MkdirAll(up, 0o755)
			os.MkdirAll(work, 0o755)
			merged := mountOverlay(t, root, Overlay{Layers: []string{mp}, Objects: store.ObjectsDir(), Verity: VerityOff, Upper: up, Work: work})
			if err := c.change(merged); err != nil {
				t.Fatal(err)
			}
			out := filepath.Join(root, c.name, "upper.erofs")
			_, err := BuildDir(context.Background(), up, store, "upper", out, WithCopy())
			if !errors.Is(err, ErrOverlayUpper) || !strings.Contains(err.Error(), filepath.Join(up, c.path)) {
				t.Errorf("BuildDir of the upper: %v; want ErrOverlayUpper naming %s", err, c.path)
			}
			if _, err := os.Stat(out); err == nil {
				t.Error("an image was written")
			}
		})
	}

	forged := filepath.Join(root, "forged")
	os.MkdirAll(filepath.Join(forged, "d"), 0o755)
	os.WriteFile(filepath.Join(forged, "f"), blob(100, 50), 0o644)
	for _, c := range []struct{ path, name string }{{"f", xattrMetacopy}, {"f", xattrRedirect}, {"d", xattrRedirect}} {
		p := filepath.Join(forged, c.path)
		unix.Lsetxattr(p, c.name, []byte("/00/forged"), 0)
		_, err := BuildDir(context.Background(), forged, store, "forged", filepath.Join(root, "forged.erofs"), WithCopy())
		if !errors.Is(err, ErrOverlayUpper) || !strings.Contains(err.Error(), p) {
			t.Errorf("%s with %s: %v; want ErrOverlayUpper naming it", c.path, c.name, err)
		}
		unix.Lremovexattr(p, c.name)
	}
	if _, err := store.Refs("upper"); err == nil {
		t.Error("refs recorded for a refused upper")
	}
	if _, err := store.Refs("forged"); err == nil {
		t.Error("refs recorded for a refused layer")
	}
}

package tocimage

import (
	"archive/tar"
	"bytes"
	"context"
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
	"testing"
	"time"

	"github.com/containerd/containerd/v2/pkg/archive"
	"golang.org/x/sys/unix"

	"github.com/lazypull/lazypull/composefs"
	"github.com/lazypull/lazypull/composefs/objects"
	"github.com/lazypull/lazypull/format/estargz"
	"github.com/lazypull/lazypull/format/toc"
	"github.com/lazypull/lazypull/internal/testenv"
)

var layerTime = time.Date(2024, 5, 6, 7, 8, 9, 0, time.UTC)

// testLayer has what a layer can hold: directories (one listed after its
// files, one never listed), empty, small and chunked files, a shared
// content, hard links to a file and to a symlink, devices, a fifo, xattrs
// (kept and dropped), a whiteout, an opaque directory, setuid bits.
func testLayer(t *testing.T) []byte {
	t.Helper()
	big := bytes.Repeat([]byte("0123456789abcdef"), 40000) // several chunks
	type file struct {
		h    tar.Header
		data []byte
	}
	dir := func(name string, mode int64) file {
		return file{h: tar.Header{Typeflag: tar.TypeDir, Name: name, Mode: mode}}
	}
	reg := func(name string, mode int64, data string) file {
		return file{h: tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: mode, Size: int64(len(data))}, data: []byte(data)}
	}
	files := []file{
		dir("etc/", 0o755),
		reg("etc/hostname", 0o644, "box\n"),
		reg("etc/empty", 0o600, ""),
		reg("etc/same", 0o644, "shared content\n"),
		{h: tar.Header{Typeflag: tar.TypeReg, Name: "etc/big", Mode: 0o640, Size: int64(len(big)), Uid: 1000, Gid: 1000}, data: big},
		{h: tar.Header{Typeflag: tar.TypeReg, Name: "etc/attrs", Mode: 0o644, Size: 1,
			PAXRecords: map[string]string{"SCHILY.xattr.user.color": "blue", "SCHILY.xattr.security.note": "x"}}, data: []byte("a")},
		dir("bin/", 0o755),
		reg("bin/tool", 0o4755, "#!/bin/sh\necho tool\n"),
		// A hard link's header has its target's mode, as tar writes it
		// (containerd's applier sets the inode's mode from it).
		{h: tar.Header{Typeflag: tar.TypeLink, Name: "bin/tool-link", Linkname: "bin/tool", Mode: 0o4755}},
		{h: tar.Header{Typeflag: tar.TypeSymlink, Name: "bin/sh", Linkname: "/bin/tool", Mode: 0o777}},
		{h: tar.Header{Typeflag: tar.TypeLink, Name: "bin/sh-link", Linkname: "bin/sh", Mode: 0o777}},
		reg("bin/same-again", 0o755, "shared content\n"),
		dir("dev/", 0o755),
		{h: tar.Header{Typeflag: tar.TypeChar, Name: "dev/null", Mode: 0o666, Devmajor: 1, Devminor: 3}},
		{h: tar.Header{Typeflag: tar.TypeBlock, Name: "dev/loop0", Mode: 0o660, Devmajor: 7, Devminor: 0}},
		{h: tar.Header{Typeflag: tar.TypeFifo, Name: "dev/pipe", Mode: 0o620}},
		dir("gone/", 0o755),
		reg("gone/.wh.old", 0o644, ""),
		dir("opaque/", 0o711),
		reg("opaque/.wh..wh..opq", 0o644, ""),
		reg("opaque/kept", 0o644, "kept\n"),
		reg("later/file", 0o644, "listed before its directory\n"),
		dir("later/", 0o700),
		reg("never/listed/file", 0o644, "in a directory the tar never lists\n"),
		dir("tmp/", 0o1777),
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, f := range files {
		f.h.ModTime = layerTime
		f.h.Format = tar.FormatPAX
		if err := tw.WriteHeader(&f.h); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write(f.data); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// parse converts a tar layer to eStargz and parses its TOC, as a lazy
// pull gets it.
func parse(t testing.TB, layer []byte) *toc.TOC {
	t.Helper()
	var blob bytes.Buffer
	w := estargz.NewWriter(&blob, estargz.WithChunkSize(64<<10))
	if err := w.AppendTar(bytes.NewReader(layer)); err != nil {
		t.Fatal(err)
	}
	if _, err := w.Close(); err != nil {
		t.Fatal(err)
	}
	r, err := estargz.Open(bytes.NewReader(blob.Bytes()), int64(blob.Len()))
	if err != nil {
		t.Fatal(err)
	}
	return r.TOC()
}

// TestImageMatchesUnpackedLayer: the image written from a layer's TOC
// holds what containerd's applier unpacks from the same layer the overlay
// snapshotter's way (whiteouts as 0/0 devices, opaque xattrs), every
// path, type, mode, owner, size, time, target, device and kept xattr;
// each regular file names the object of its content; and through a
// composefs overlay over those objects every file reads its bytes.
func TestImageMatchesUnpackedLayer(t *testing.T) {
	testenv.NeedRoot(t)
	ctx := context.Background()
	root := t.TempDir()
	layer := testLayer(t)

	want := filepath.Join(root, "unpacked")
	os.Mkdir(want, 0o755)
	if _, err := archive.Apply(ctx, want, bytes.NewReader(layer), archive.WithConvertWhiteout(archive.OverlayConvertWhiteout)); err != nil {
		t.Fatal(err)
	}

	image := filepath.Join(root, "layer.erofs")
	st, err := Write(ctx, parse(t, layer), image, Options{})
	if err != nil {
		t.Fatal(err)
	}
	// 9 files with content and 8 distinct contents (same and
	// same-again share one); hard links and markers are not files.
	if st.Files != 9 || st.Objects != 8 || st.Bytes != 4+15+640000+1+20+5+28+35 {
		t.Errorf("stats %+v; want 9 files, 8 objects, %d bytes", st, 4+15+640000+1+20+5+28+35)
	}
	if out, err := exec.Command(testenv.NeedBinary(t, "fsck.erofs"), image).CombinedOutput(); err != nil {
		t.Errorf("fsck.erofs: %v\n%s", err, out)
	}

	meta := filepath.Join(root, "meta")
	os.Mkdir(meta, 0o755)
	if err := composefs.MountImage(image, meta, composefs.WithACL()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := composefs.Unmount(meta); err != nil {
			t.Error(err)
		}
	})

	store, err := objects.Open(ctx, filepath.Join(root, "store"))
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	wantTree, gotTree := tree(t, want, false), tree(t, meta, true)
	for _, p := range sortedKeys(wantTree, gotTree) {
		w, g := wantTree[p], gotTree[p]
		if p == "" || p == "never" || p == "never/listed" || p == "gone/old" {
			// The root's, implicit directories' and whiteouts' times
			// are the applier's clock.
			w.mtime, g.mtime = 0, 0
		}
		if w.String() != g.String() {
			t.Errorf("%s:\n image    %v\n unpacked %v", p, g, w)
		}
	}
	// Each regular file names the object of its content: put the
	// unpacked files in the store, as a partial pull would fetch them.
	batch, err := store.Batch(ctx, "test")
	if err != nil {
		t.Fatal(err)
	}
	for p, n := range wantTree {
		if n.mode&unix.S_IFMT != unix.S_IFREG || n.size == 0 {
			continue
		}
		redirect, err := getxattr(filepath.Join(meta, p), "trusted.overlay.redirect")
		if err != nil {
			t.Errorf("%s: no redirect: %v", p, err)
			continue
		}
		if want := "/" + n.sha[:2] + "/" + n.sha[2:]; redirect != want {
			t.Errorf("%s: redirect %q, want %q", p, redirect, want)
		}
		if _, err := batch.PutFile(filepath.Join(want, p)); err != nil {
			t.Fatal(err)
		}
	}
	if err := batch.Commit(); err != nil {
		t.Fatal(err)
	}

	rootfs := filepath.Join(root, "rootfs")
	os.Mkdir(rootfs, 0o755)
	o := composefs.Overlay{Layers: []string{meta}, Objects: store.ObjectsDir(), Verity: composefs.VerityOff}
	if err := o.MountAt(rootfs); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := composefs.Unmount(rootfs); err != nil {
			t.Error(err)
		}
	})
	for p, n := range wantTree {
		if n.mode&unix.S_IFMT != unix.S_IFREG {
			continue
		}
		b, err := os.ReadFile(filepath.Join(rootfs, p))
		if sum := sha256.Sum256(b); err != nil || hex.EncodeToString(sum[:]) != n.sha {
			t.Errorf("%s through the overlay: %d bytes, %v; want the unpacked file's %d", p, len(b), err, n.size)
		}
	}
	for _, p := range []string{"gone/old", "opaque/.wh..wh..opq"} {
		if _, err := os.Lstat(filepath.Join(rootfs, p)); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("%s through the overlay: %v; want it absent", p, err)
		}
	}
}

// TestWriteRefuses: what an image cannot hold is an error naming the file.
func TestWriteRefuses(t *testing.T) {
	for name, files := range map[string][]tar.Header{
		"dangling hard link": {{Typeflag: tar.TypeLink, Name: "a", Linkname: "nothing"}},
		"whiteout of a dot":  {{Typeflag: tar.TypeReg, Name: "d/.wh..."}},
	} {
		t.Run(name, func(t *testing.T) {
			var buf bytes.Buffer
			tw := tar.NewWriter(&buf)
			for _, h := range files {
				h.ModTime = layerTime
				if err := tw.WriteHeader(&h); err != nil {
					t.Fatal(err)
				}
			}
			tw.Close()
			var blob bytes.Buffer
			w := estargz.NewWriter(&blob)
			if err := w.AppendTar(&buf); err != nil {
				t.Fatal(err)
			}
			if _, err := w.Close(); err != nil {
				t.Fatal(err)
			}
			r, err := estargz.Open(bytes.NewReader(blob.Bytes()), int64(blob.Len()))
			if err != nil {
				t.Skipf("the TOC parser refuses it already: %v", err)
			}
			_, err = Write(context.Background(), r.TOC(), filepath.Join(t.TempDir(), "image"), Options{})
			if err == nil || !strings.Contains(err.Error(), "layer file") {
				t.Errorf("Write: %v; want an error naming the file", err)
			}
		})
	}
}

type node struct {
	mode, uid, gid uint32
	size           int64
	mtime          int64
	rdev           uint64
	target, sha    string
	xattrs         []string
}

func (n node) String() string {
	return fmt.Sprintf("mode %#o uid %d gid %d size %d mtime %d rdev %d target %q sha %.12s xattrs %v",
		n.mode, n.uid, n.gid, n.size, n.mtime, n.rdev, n.target, n.sha, n.xattrs)
}

// tree describes every path under root. Regular files' digests are those
// of their content, or in an image the one its redirect names;
// xattrs are those a layer's files keep (not metacopy or redirect).
func tree(t *testing.T, root string, image bool) map[string]node {
	t.Helper()
	out := map[string]node{}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		if rel == "." {
			rel = ""
		}
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			return err
		}
		n := node{mode: st.Mode, uid: st.Uid, gid: st.Gid, mtime: st.Mtim.Sec}
		switch st.Mode & unix.S_IFMT {
		case unix.S_IFREG:
			n.size = st.Size
			if !image {
				b, err := os.ReadFile(p)
				if err != nil {
					return err
				}
				sum := sha256.Sum256(b)
				n.sha = hex.EncodeToString(sum[:])
			} else if redirect, err := getxattr(p, "trusted.overlay.redirect"); err == nil {
				n.sha = strings.ReplaceAll(strings.TrimPrefix(redirect, "/"), "/", "")
			} else {
				sum := sha256.Sum256(nil)
				n.sha = hex.EncodeToString(sum[:])
			}
		case unix.S_IFLNK:
			n.target, _ = os.Readlink(p)
		case unix.S_IFCHR, unix.S_IFBLK:
			n.rdev = st.Rdev
		}
		names := make([]byte, 4096)
		sz, err := unix.Llistxattr(p, names)
		if err != nil {
			return err
		}
		for _, name := range strings.Split(string(names[:sz]), "\x00") {
			if name == "" || name == "trusted.overlay.metacopy" || name == "trusted.overlay.redirect" {
				continue
			}
			v, _ := getxattr(p, name)
			n.xattrs = append(n.xattrs, name+"="+v)
		}
		slices.Sort(n.xattrs)
		out[rel] = n
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func getxattr(path, name string) (string, error) {
	buf := make([]byte, 4096)
	n, err := unix.Lgetxattr(path, name, buf)
	if err != nil {
		return "", err
	}
	return string(buf[:n]), nil
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

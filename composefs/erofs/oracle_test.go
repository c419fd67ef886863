package erofs

import (
	"bytes"
	"io"
	"io/fs"
	"maps"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	goerofs "github.com/erofs/go-erofs"

	"github.com/lazypull/lazypull/internal/testenv"
)

// writeImage writes entries (in the order given) to an image.
func writeImage(t testing.TB, entries []Entry) []byte {
	t.Helper()
	w := NewWriter()
	for _, e := range entries {
		if err := w.Add(e); err != nil {
			t.Fatalf("Add(%q): %v", e.Path, err)
		}
	}
	var buf bytes.Buffer
	n, err := w.WriteTo(&buf)
	if err != nil {
		t.Fatalf("WriteTo: %v", err)
	}
	if n != int64(buf.Len()) || n%blkSize != 0 {
		t.Fatalf("WriteTo returned %d for %d bytes (want a whole number of blocks)", n, buf.Len())
	}
	return buf.Bytes()
}

// want is what an entry should read back as: the entries resolved the way
// the writer documents (hard links share their target's inode, missing
// parents are 0755 root:root directories, directories count their
// subdirectories).
type want struct {
	Entry
	nlink    int
	children []string
	inode    string // the path whose inode this is
}

func expect(entries []Entry) map[string]*want {
	m := map[string]*want{}
	for _, e := range entries {
		m[e.Path] = &want{Entry: e, nlink: 1, inode: e.Path}
	}
	// Implicit parents (their mtime checked separately: the build time).
	for _, e := range entries {
		for p := e.Path; p != ""; {
			p = parent(p)
			if m[p] == nil {
				m[p] = &want{Entry: Entry{Path: p, Mode: sIFDIR | 0o755}, inode: p}
			}
		}
	}
	if m[""] == nil {
		m[""] = &want{Entry: Entry{Mode: sIFDIR | 0o755}}
	}
	for _, w := range m {
		if w.Link != "" {
			t := w.Link
			for m[t].Link != "" {
				t = m[t].Link
			}
			w.inode = t
		}
	}
	for p, w := range m {
		if p != "" {
			par := m[parent(p)]
			par.children = append(par.children, path.Base(p))
		}
		if w.Link != "" {
			m[w.inode].nlink++
		}
	}
	for _, w := range m {
		if w.Mode&sIFMT == sIFDIR {
			w.nlink = 2
			for _, c := range w.children {
				if m[join(w.Path, c)].Link == "" && m[join(w.Path, c)].Mode&sIFMT == sIFDIR {
					w.nlink++
				}
			}
		}
	}
	return m
}

func parent(p string) string {
	if i := strings.LastIndexByte(p, '/'); i >= 0 {
		return p[:i]
	}
	return ""
}

func join(dir, name string) string {
	if dir == "" {
		return name
	}
	return dir + "/" + name
}

// zeroPastEOF reads zeros past the image's end: go-erofs reads a whole
// block from a shared xattr's offset and fails near the end of an image,
// where the kernel (which maps blocks) does not.
type zeroPastEOF struct{ b []byte }

func (z zeroPastEOF) ReadAt(p []byte, off int64) (int, error) {
	if off >= int64(len(z.b)) {
		clear(p)
		return len(p), nil
	}
	n := copy(p, z.b[off:])
	clear(p[n:])
	return len(p), nil
}

// goMode turns st_mode into the fs.FileMode go-erofs reports.
func goMode(mode uint32) fs.FileMode {
	m := fs.FileMode(mode & 0o777)
	if mode&0o4000 != 0 {
		m |= fs.ModeSetuid
	}
	if mode&0o2000 != 0 {
		m |= fs.ModeSetgid
	}
	if mode&0o1000 != 0 {
		m |= fs.ModeSticky
	}
	switch mode & sIFMT {
	case sIFDIR:
		m |= fs.ModeDir
	case sIFLNK:
		m |= fs.ModeSymlink
	case sIFCHR:
		m |= fs.ModeDevice | fs.ModeCharDevice
	case sIFBLK:
		m |= fs.ModeDevice
	case sIFIFO:
		m |= fs.ModeNamedPipe
	case sIFSOCK:
		m |= fs.ModeSocket
	}
	return m
}

// checkWithGoErofs reads the image back with go-erofs's reader and
// compares every entry with what was added.
func checkWithGoErofs(t testing.TB, img []byte, entries []Entry) {
	t.Helper()
	fsys, err := goerofs.Open(zeroPastEOF{img})
	if err != nil {
		t.Fatalf("go-erofs Open: %v", err)
	}
	wants := expect(entries)
	inos := map[int64]string{}
	var buildTime, buildNsec = int64(-1), uint32(0)
	for _, p := range slices.Sorted(maps.Keys(wants)) {
		w := wants[p]
		name := p
		if name == "" {
			name = "."
		}
		fi, err := fs.Lstat(fsys, name)
		if err != nil {
			t.Errorf("%q: Lstat: %v", p, err)
			continue
		}
		st := fi.Sys().(*goerofs.Stat)
		in := wants[w.inode]
		if owner, ok := inos[st.Ino]; ok && wants[owner].inode != w.inode {
			t.Errorf("%q: inode %d is also %q's", p, st.Ino, owner)
		}
		inos[st.Ino] = p
		if st.Mode != goMode(in.Mode) {
			t.Errorf("%q: mode %v, want %v", p, st.Mode, goMode(in.Mode))
		}
		if st.UID != in.UID || st.GID != in.GID {
			t.Errorf("%q: owner %d:%d, want %d:%d", p, st.UID, st.GID, in.UID, in.GID)
		}
		if st.Nlink != in.nlink {
			t.Errorf("%q: nlink %d, want %d", p, st.Nlink, in.nlink)
		}
		implicit := false
		for _, e := range entries {
			implicit = implicit || e.Path == w.inode
		}
		implicit = !implicit
		if implicit {
			if buildTime < 0 {
				buildTime, buildNsec = minTime(entries)
			}
			if int64(st.Mtime) != buildTime || st.MtimeNs != buildNsec {
				t.Errorf("%q (implicit): mtime %d.%09d, want the build time %d.%09d", p, int64(st.Mtime), st.MtimeNs, buildTime, buildNsec)
			}
		} else if int64(st.Mtime) != in.Mtime || st.MtimeNs != in.MtimeNsec {
			t.Errorf("%q: mtime %d.%09d, want %d.%09d", p, int64(st.Mtime), st.MtimeNs, in.Mtime, in.MtimeNsec)
		}
		gotX := map[string]string{}
		for k, v := range st.Xattrs {
			// go-erofs names the ACL xattrs with a trailing dot.
			gotX[strings.TrimSuffix(k, ".")] = v
		}
		wantX := map[string]string{}
		for k, v := range in.Xattrs {
			wantX[k] = string(v)
		}
		if !maps.Equal(gotX, wantX) {
			t.Errorf("%q: xattrs %q, want %q", p, gotX, wantX)
		}
		switch in.Mode & sIFMT {
		case sIFREG:
			if uint64(st.Size) != in.Size {
				t.Errorf("%q: size %d, want %d", p, st.Size, in.Size)
			}
			if in.Data != nil || in.Size <= 64<<10 {
				data, err := fs.ReadFile(fsys, name)
				want := in.Data
				if want == nil {
					want = make([]byte, in.Size)
				}
				if err != nil || !bytes.Equal(data, want) {
					t.Errorf("%q: contents (%d bytes, %v) differ from the %d bytes wanted", p, len(data), err, len(want))
				}
			} else if f, err := fsys.Open(name); err != nil {
				t.Errorf("%q: open: %v", p, err)
			} else {
				// A large hole: its first block reads as zeros.
				buf := make([]byte, blkSize)
				if n, err := io.ReadFull(f, buf); err != nil || n != blkSize || !bytes.Equal(buf, make([]byte, blkSize)) {
					t.Errorf("%q: first block: %d bytes, %v", p, n, err)
				}
				f.Close()
			}
		case sIFLNK:
			target, err := fs.ReadLink(fsys, name)
			if err != nil || target != in.Target {
				t.Errorf("%q: readlink %q, %v; want %q", p, target, err, in.Target)
			}
		case sIFCHR, sIFBLK:
			if st.Rdev != encodeDev(in.DevMajor, in.DevMinor) {
				t.Errorf("%q: rdev %#x, want %d:%d", p, st.Rdev, in.DevMajor, in.DevMinor)
			}
		case sIFDIR:
			ents, err := fs.ReadDir(fsys, name)
			if err != nil {
				t.Errorf("%q: readdir: %v", p, err)
				continue
			}
			var names []string
			for _, e := range ents {
				names = append(names, e.Name())
				if e.Type() != goMode(wants[wants[join(p, e.Name())].inode].Mode).Type() {
					t.Errorf("%q: dirent %q type %v", p, e.Name(), e.Type())
				}
			}
			slices.Sort(w.children)
			names = slices.DeleteFunc(names, func(n string) bool { return n == "." || n == ".." })
			if !slices.Equal(names, w.children) {
				t.Errorf("%q: entries %q, want %q", p, names, w.children)
			}
		}
	}
}

func minTime(entries []Entry) (int64, uint32) {
	var sec int64
	var nsec uint32
	first := true
	for _, e := range entries {
		if e.Link != "" {
			continue
		}
		if first || e.Mtime < sec || e.Mtime == sec && e.MtimeNsec < nsec {
			sec, nsec, first = e.Mtime, e.MtimeNsec, false
		}
	}
	if sec < 0 {
		return 0, 0
	}
	return sec, nsec
}

// saveImage writes an image to a file in a test's temp dir.
func saveImage(t testing.TB, img []byte) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "layer.erofs")
	if err := os.WriteFile(p, img, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// checkWithErofsUtils runs fsck.erofs (which walks every inode and
// directory and reads every file) and dump.erofs on the image.
func checkWithErofsUtils(t testing.TB, imgPath string) {
	t.Helper()
	fsck := testenv.NeedBinary(t, "fsck.erofs")
	dump := testenv.NeedBinary(t, "dump.erofs")
	if out, err := exec.Command(fsck, "--extract", imgPath).CombinedOutput(); err != nil {
		t.Fatalf("fsck.erofs %s: %v\n%s", imgPath, err, out)
	}
	for _, args := range [][]string{{"-s"}, {"-S"}, {"--path=/", "-s"}} {
		out, err := exec.Command(dump, append(args, imgPath)...).CombinedOutput()
		if err != nil || bytes.Contains(out, []byte("rror")) {
			t.Fatalf("dump.erofs %v %s: %v\n%s", args, imgPath, err, out)
		}
	}
}

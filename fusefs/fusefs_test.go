package fusefs

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sys/unix"

	"github.com/lazypull/lazypull/cache"
	"github.com/lazypull/lazypull/format/estargz"
	"github.com/lazypull/lazypull/internal/testenv"
	"github.com/lazypull/lazypull/layer"
	"github.com/lazypull/lazypull/metrics"
)

// fileFetcher reads a blob from a local file (the registry path is tested
// end to end elsewhere).
type fileFetcher struct{ f *os.File }

func (f fileFetcher) Size() int64 {
	fi, _ := f.f.Stat()
	return fi.Size()
}

// blobReads counts the fetches of every fileFetcher (no test of this
// package runs in parallel).
var blobReads atomic.Int64

func (f fileFetcher) FetchAt(ctx context.Context, p []byte, off int64) error {
	blobReads.Add(1)
	_, err := f.f.ReadAt(p, off)
	return err
}

type entry struct {
	hdr  tar.Header
	data []byte
}

func random(n int) []byte {
	r := rand.New(rand.NewPCG(uint64(n), 7))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

var mtime = time.Date(2025, 3, 4, 5, 6, 7, 0, time.UTC)

func reg(name string, data []byte, mode int64) entry {
	return entry{hdr: tar.Header{Name: name, Typeflag: tar.TypeReg, Mode: mode, Size: int64(len(data)), ModTime: mtime, Uid: 1000, Gid: 100}, data: data}
}

func dir(name string, mode int64) entry {
	return entry{hdr: tar.Header{Name: name, Typeflag: tar.TypeDir, Mode: mode, ModTime: mtime}}
}

// lowerLayer and upperLayer make a two-layer image with every kind of entry.
func lowerLayer() []entry {
	return []entry{
		dir("etc/", 0o755),
		reg("etc/hostname", []byte("lazypull\n"), 0o644),
		reg("etc/removed", []byte("deleted above"), 0o644),
		dir("data/", 0o750),
		reg("data/big", random(5<<20+77), 0o640),
		dir("opq/", 0o755),
		reg("opq/old", []byte("hidden above"), 0o644),
		{hdr: tar.Header{Name: "bin/ping", Typeflag: tar.TypeReg, Mode: 0o4755, Size: 4, ModTime: mtime,
			PAXRecords: map[string]string{"SCHILY.xattr.security.capability": "\x01\x00\x00\x02\x00\x20\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00", "SCHILY.xattr.user.note": "hello"}}, data: []byte("ping")},
		{hdr: tar.Header{Name: "bin/ping6", Typeflag: tar.TypeLink, Linkname: "bin/ping", ModTime: mtime}},
		{hdr: tar.Header{Name: "link", Typeflag: tar.TypeSymlink, Linkname: "etc/hostname", Mode: 0o777, ModTime: mtime}},
		{hdr: tar.Header{Name: "dev/null", Typeflag: tar.TypeChar, Devmajor: 1, Devminor: 3, Mode: 0o666, ModTime: mtime}},
		{hdr: tar.Header{Name: "run/fifo", Typeflag: tar.TypeFifo, Mode: 0o600, ModTime: mtime}},
		reg(strings.Repeat("long/", 40)+"name", []byte("deep"), 0o644),
	}
}

func upperLayer() []entry {
	return []entry{
		reg("etc/.wh.removed", nil, 0o644),
		dir("opq/", 0o755),
		reg("opq/.wh..wh..opq", nil, 0o644),
		reg("opq/new", []byte("new above"), 0o644),
		reg("etc/added", []byte("added above"), 0o600),
	}
}

// mountLayer converts entries to eStargz, opens the layer over a real cache
// and mounts it.
func mountLayer(t *testing.T, entries []entry, opts Options) (string, *MountedLayer, *layer.Layer) {
	t.Helper()
	testenv.NeedFUSE(t)
	c, err := cache.New(filepath.Join(t.TempDir(), "cache"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return mountLayerOver(t, entries, opts, c)
}

// mountLayerOver is mountLayer over the cache c.
func mountLayerOver(t *testing.T, entries []entry, opts Options, c *cache.Cache) (string, *MountedLayer, *layer.Layer) {
	t.Helper()
	testenv.NeedFUSE(t)
	l := openLayer(t, entries, c)
	mnt := filepath.Join(t.TempDir(), "mnt")
	os.Mkdir(mnt, 0o755)
	m, err := Mount(mnt, l, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := m.Unmount(); err != nil {
			t.Error(err)
		}
	})
	return mnt, m, l
}

// openLayer opens an eStargz layer of entries (1 MiB chunks), caching in c.
func openLayer(t *testing.T, entries []entry, c *cache.Cache) *layer.Layer {
	t.Helper()
	l, _ := openLayerBlob(t, entries, c)
	return l
}

// openLayerBlob is openLayer, and the file its blob is read from.
func openLayerBlob(t *testing.T, entries []entry, c *cache.Cache) (*layer.Layer, string) {
	t.Helper()
	blobFile, desc := writeLayer(t, entries)
	return openBlob(t, blobFile, desc, c), blobFile.Name()
}

// writeLayer writes entries as an eStargz blob (1 MiB chunks) in a file
// of its own, and returns it and the blob's descriptor.
func writeLayer(t *testing.T, entries []entry) (*os.File, ocispec.Descriptor) {
	t.Helper()
	var tarBuf bytes.Buffer
	tw := tar.NewWriter(&tarBuf)
	for _, e := range entries {
		h := e.hdr
		if err := tw.WriteHeader(&h); err != nil {
			t.Fatal(err)
		}
		tw.Write(e.data)
	}
	tw.Close()
	blobFile, err := os.Create(filepath.Join(t.TempDir(), "blob"))
	if err != nil {
		t.Fatal(err)
	}
	w := estargz.NewWriter(blobFile, estargz.WithChunkSize(1<<20))
	if err := w.AppendTar(&tarBuf); err != nil {
		t.Fatal(err)
	}
	res, err := w.Close()
	if err != nil {
		t.Fatal(err)
	}
	blob, _ := os.ReadFile(blobFile.Name())
	return blobFile, ocispec.Descriptor{MediaType: ocispec.MediaTypeImageLayerGzip, Digest: digest.FromBytes(blob), Size: int64(len(blob)), Annotations: res.Annotations}
}

// openBlob opens the layer desc describes, its blob read from f.
func openBlob(t *testing.T, f *os.File, desc ocispec.Descriptor, c *cache.Cache) *layer.Layer {
	t.Helper()
	l, err := layer.Open(context.Background(), desc, fileFetcher{f}, c, layer.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(l.Close)
	return l
}

func TestTreeMatchesTheTar(t *testing.T) {
	entries := lowerLayer()
	mnt, _, l := mountLayer(t, entries, Options{})

	for _, e := range entries {
		name := strings.TrimSuffix(e.hdr.Name, "/")
		base := filepath.Base(name)
		if strings.HasPrefix(base, ".wh.") {
			continue // checked below
		}
		p := filepath.Join(mnt, name)
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		want := e.hdr
		if e.hdr.Typeflag == tar.TypeLink {
			want = entries[slices.IndexFunc(entries, func(x entry) bool { return x.hdr.Name == e.hdr.Linkname })].hdr
		}
		if st.Mode&0o7777 != uint32(want.Mode&0o7777) || st.Uid != uint32(want.Uid) || st.Gid != uint32(want.Gid) {
			t.Errorf("%s: mode %o owner %d:%d, want %o %d:%d", name, st.Mode&0o7777, st.Uid, st.Gid, want.Mode, want.Uid, want.Gid)
		}
		if st.Mtim.Sec != mtime.Unix() {
			t.Errorf("%s: mtime %d, want %d", name, st.Mtim.Sec, mtime.Unix())
		}
		switch e.hdr.Typeflag {
		case tar.TypeReg:
			got, err := os.ReadFile(p)
			if err != nil || !bytes.Equal(got, e.data) {
				t.Errorf("%s: content differs (%d bytes, %v)", name, len(got), err)
			}
			if st.Blocks != int64(len(e.data)+511)/512 {
				t.Errorf("%s: %d blocks", name, st.Blocks)
			}
		case tar.TypeSymlink:
			if target, _ := os.Readlink(p); target != e.hdr.Linkname {
				t.Errorf("%s: target %q", name, target)
			}
		case tar.TypeChar:
			if st.Mode&unix.S_IFMT != unix.S_IFCHR || unix.Major(st.Rdev) != 1 || unix.Minor(st.Rdev) != 3 {
				t.Errorf("%s: not char 1:3 (mode %o rdev %d)", name, st.Mode, st.Rdev)
			}
		case tar.TypeFifo:
			if st.Mode&unix.S_IFMT != unix.S_IFIFO {
				t.Errorf("%s: not a fifo", name)
			}
		}
		for k, v := range e.hdr.PAXRecords {
			if x, ok := strings.CutPrefix(k, "SCHILY.xattr."); ok {
				buf := make([]byte, 256)
				n, err := unix.Lgetxattr(p, x, buf)
				if err != nil || string(buf[:n]) != v {
					t.Errorf("%s: xattr %s = %q, %v", name, x, buf[:max(n, 0)], err)
				}
			}
		}
	}

	// Hard links: one inode, two names.
	var a, b unix.Stat_t
	unix.Lstat(filepath.Join(mnt, "bin/ping"), &a)
	unix.Lstat(filepath.Join(mnt, "bin/ping6"), &b)
	if a.Ino != b.Ino || a.Nlink != 2 {
		t.Errorf("hard link: inodes %d and %d, nlink %d", a.Ino, b.Ino, a.Nlink)
	}
	// Landmarks are hidden; the state directory is reachable but unlisted.
	root := readdir(t, mnt)
	if slices.Contains(root, ".no.prefetch.landmark") || slices.Contains(root, StateDirName) {
		t.Errorf("root lists %v", root)
	}
	data, err := os.ReadFile(filepath.Join(mnt, StateDirName, l.Stats().Digest.String()+".json"))
	var st State
	if err != nil || json.Unmarshal(data, &st) != nil || st.Digest != l.Stats().Digest.String() || st.FetchedBytes == 0 {
		t.Errorf("state file: %v %s", err, data)
	}
	var fs unix.Statfs_t
	if err := unix.Statfs(mnt, &fs); err != nil || fs.Files == 0 {
		t.Errorf("statfs: %+v, %v", fs, err)
	}
	if err := os.WriteFile(filepath.Join(mnt, "etc/hostname"), []byte("x"), 0o644); err == nil {
		t.Errorf("a write to the read-only layer succeeded")
	}
}

// TestWhiteoutsAndOpaqueDirs checks how a layer's deletions look to overlayfs.
func TestWhiteoutsAndOpaqueDirs(t *testing.T) {
	mnt, _, _ := mountLayer(t, upperLayer(), Options{OpaqueXattrs: []string{TrustedOpaque, UserOpaque}})
	// Whiteouts are overlayfs's char 0/0 under the deleted name.
	var wh unix.Stat_t
	if err := unix.Lstat(filepath.Join(mnt, "etc/removed"), &wh); err != nil || wh.Mode&unix.S_IFMT != unix.S_IFCHR || wh.Rdev != 0 {
		t.Errorf("whiteout etc/removed: mode %o rdev %d, %v", wh.Mode, wh.Rdev, err)
	}
	names := readdir(t, filepath.Join(mnt, "etc"))
	if !slices.Contains(names, "removed") || slices.ContainsFunc(names, func(n string) bool { return strings.HasPrefix(n, ".wh.") }) {
		t.Errorf("etc lists %v: want the whiteout as \"removed\" and no .wh. names", names)
	}
	// The opaque directory carries both xattrs asked for; its marker is hidden.
	for _, x := range []string{TrustedOpaque, UserOpaque} {
		buf := make([]byte, 8)
		if n, err := unix.Lgetxattr(filepath.Join(mnt, "opq"), x, buf); err != nil || string(buf[:n]) != "y" {
			t.Errorf("opq: %s = %q, %v", x, buf[:max(n, 0)], err)
		}
	}
	if names := readdir(t, filepath.Join(mnt, "opq")); !slices.Equal(names, []string{"new"}) {
		t.Errorf("opq lists %v, want [new] (the opaque marker hidden)", names)
	}
	// A directory that is not opaque has no opaque xattr.
	if _, err := unix.Lgetxattr(filepath.Join(mnt, "etc"), TrustedOpaque, make([]byte, 8)); err != unix.ENODATA {
		t.Errorf("etc: opaque xattr lookup gave %v, want ENODATA", err)
	}
}

// TestNoXattrsNoQuestions: on a layer without xattrs or opaque directories
// the kernel is told once that there are none (ENOSYS), and stops asking:
// overlayfs's xattr questions at each lookup cost no round trips.
func TestNoXattrsNoQuestions(t *testing.T) {
	mnt, _, _ := mountLayer(t, []entry{dir("etc", 0o755), reg("etc/hostname", []byte("lazypull\n"), 0o644)}, Options{})
	for range 2 {
		if _, err := unix.Lgetxattr(filepath.Join(mnt, "etc/hostname"), TrustedOpaque, make([]byte, 8)); err != unix.EOPNOTSUPP {
			t.Errorf("getxattr on a layer without xattrs: %v, want EOPNOTSUPP", err)
		}
	}
	if b, err := os.ReadFile(filepath.Join(mnt, "etc/hostname")); err != nil || string(b) != "lazypull\n" {
		t.Errorf("read: %q, %v", b, err)
	}
}

func readdir(t *testing.T, dir string) []string {
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

// TestOverlayOnFUSELowers stacks overlayfs on two FUSE-mounted layers and
// checks deletions and opaque directories in the merged view.
func TestOverlayOnFUSELowers(t *testing.T) {
	lower, _, _ := mountLayer(t, lowerLayer(), Options{})
	upper, _, _ := mountLayer(t, upperLayer(), Options{})
	work := t.TempDir()
	for _, d := range []string{"upper", "work", "merged"} {
		os.Mkdir(filepath.Join(work, d), 0o755)
	}
	merged := filepath.Join(work, "merged")
	opts := fmt.Sprintf("lowerdir=%s:%s,upperdir=%s,workdir=%s,index=off", upper, lower, filepath.Join(work, "upper"), filepath.Join(work, "work"))
	if err := unix.Mount("overlay", merged, "overlay", 0, opts); err != nil {
		t.Fatalf("overlay on FUSE lowers: %v", err)
	}
	defer unix.Unmount(merged, unix.MNT_DETACH)
	checkMerged(t, merged)
	// A write copies up; the layers stay as they were.
	if err := os.WriteFile(filepath.Join(merged, "etc/hostname"), []byte("changed\n"), 0o644); err != nil {
		t.Errorf("write through overlay: %v", err)
	}
	if got, _ := os.ReadFile(filepath.Join(lower, "etc/hostname")); string(got) != "lazypull\n" {
		t.Errorf("the lower layer changed: %q", got)
	}
}

func checkMerged(t *testing.T, merged string) {
	t.Helper()
	if _, err := os.Lstat(filepath.Join(merged, "etc/removed")); !os.IsNotExist(err) {
		t.Errorf("etc/removed is visible through the whiteout: %v", err)
	}
	if got := readdir(t, filepath.Join(merged, "opq")); !slices.Equal(got, []string{"new"}) {
		t.Errorf("opaque opq lists %v, want [new]", got)
	}
	if got, _ := os.ReadFile(filepath.Join(merged, "etc/added")); string(got) != "added above" {
		t.Errorf("etc/added = %q", got)
	}
	if got, _ := os.ReadFile(filepath.Join(merged, "data/big")); len(got) != 5<<20+77 {
		t.Errorf("data/big through overlay: %d bytes", len(got))
	}
}

// TestOverlayUserXattrInUserNamespace: inside a user namespace overlayfs
// reads only user.overlay.* (with userxattr); the FUSE layers expose it.
func TestOverlayUserXattrInUserNamespace(t *testing.T) {
	unshare := testenv.NeedBinary(t, "unshare")
	lower, _, _ := mountLayer(t, lowerLayer(), Options{OpaqueXattrs: []string{UserOpaque}})
	upper, _, _ := mountLayer(t, upperLayer(), Options{OpaqueXattrs: []string{UserOpaque}})
	work := t.TempDir()
	script := fmt.Sprintf(`set -e
mkdir -p %[1]s/u %[1]s/w %[1]s/m
mount -t overlay overlay -o lowerdir=%[2]s:%[3]s,upperdir=%[1]s/u,workdir=%[1]s/w,userxattr %[1]s/m
ls -A %[1]s/m/opq
test ! -e %[1]s/m/etc/removed && echo removed-hidden
`, work, upper, lower)
	out, err := exec.Command(unshare, "-Urm", "sh", "-c", script).CombinedOutput()
	if err != nil {
		t.Fatalf("overlay in a user namespace: %v\n%s", err, out)
	}
	if got := strings.Fields(string(out)); !slices.Equal(got, []string{"new", "removed-hidden"}) {
		t.Errorf("in the user namespace: %q, want the opaque directory to show only new and the whiteout to hide", out)
	}
}

// daemonReads counts the FUSE READs this process has served, on any
// mount: each read handler observes its latency in metrics.FUSEOperations,
// and a passthrough handle that fell back counts in PassthroughFallbacks.
func daemonReads(t *testing.T, m *MountedLayer) uint64 {
	t.Helper()
	return fuseReads(t) + uint64(m.PassthroughFallbacks())
}

// fuseReads counts the FUSE READs served so far, by every mount.
func fuseReads(t *testing.T) uint64 {
	t.Helper()
	reg := prometheus.NewRegistry()
	reg.MustRegister(metrics.FUSEOperations)
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var n uint64
	for _, f := range families {
		for _, s := range f.GetMetric() {
			for _, l := range s.GetLabel() {
				if l.GetName() == "operation" && l.GetValue() == "read" {
					n += s.GetHistogram().GetSampleCount()
				}
			}
		}
	}
	return n
}

// TestPassthrough: a cached file is served by the kernel from the cache,
// without a single FUSE READ reaching the daemon.
func TestPassthrough(t *testing.T) {
	entries := lowerLayer()
	c, err := cache.New(filepath.Join(t.TempDir(), "cache"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	mnt, m, l := mountLayerOver(t, entries, Options{Passthrough: true, Debug: os.Getenv("FUSE_DEBUG") != ""}, c)

	// The counter sees reads through the daemon: a file not cached.
	before := daemonReads(t, m)
	if got, err := os.ReadFile(filepath.Join(mnt, "etc/hostname")); err != nil || string(got) != "lazypull\n" {
		t.Fatalf("etc/hostname: %q, %v", got, err)
	}
	if daemonReads(t, m) == before {
		t.Fatal("a read of a file not cached was not counted")
	}

	// data/big is cached whole before its first open, as the layer leaves
	// it once its chunks filled it (that is the layer's to test; opening
	// it here first would race its own release with the next open).
	e, ok := l.TOC().Lookup("data/big")
	if !ok {
		t.Fatal("data/big not in the TOC")
	}
	want := entries[slices.IndexFunc(entries, func(x entry) bool { return x.hdr.Name == "data/big" })].data
	if err := c.PutFile(e.Digest(), bytes.NewReader(want)); err != nil {
		t.Fatal(err)
	}
	before = daemonReads(t, m)
	got, err := os.ReadFile(filepath.Join(mnt, "data/big"))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("passthrough read differs")
	}
	if n := daemonReads(t, m) - before; n != 0 {
		t.Errorf("%d FUSE READs of a cached file reached the daemon (%d fell back from passthrough), want 0", n, m.PassthroughFallbacks())
	}
}

// TestPassthroughWhileAnotherOpenReadsThroughTheCache: the kernel refuses
// to open an inode with passthrough while another open of it reads through
// the page cache; a file opened before it was cached must still open again.
func TestPassthroughWhileAnotherOpenReadsThroughTheCache(t *testing.T) {
	mnt, _, _ := mountLayer(t, lowerLayer(), Options{Passthrough: true})
	p := filepath.Join(mnt, "data/big")
	first, err := os.Open(p) // not cached yet: read through the daemon
	if err != nil {
		t.Fatal(err)
	}
	defer first.Close()
	whole := make([]byte, 5<<20+77)
	if _, err := first.ReadAt(whole, 0); err != nil {
		t.Fatal(err)
	}
	// Cached now; the first open is still there.
	second, err := os.ReadFile(p)
	if err != nil {
		t.Fatalf("opening a cached file while an earlier open is live: %v", err)
	}
	if !bytes.Equal(second, whole) {
		t.Errorf("the two opens read different bytes")
	}
}

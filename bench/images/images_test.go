package images

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/pkg/archive"
	"github.com/klauspost/compress/gzip"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"golang.org/x/sys/unix"

	"github.com/lazypull/lazypull/internal/testenv"
)

// TestOverlayUpperLayer changes a tree through a real overlayfs mount and
// checks the layer made from the upper directory: the OCI whiteouts and
// opaque markers it must have, and that unpacking base + layer with
// containerd's applier gives exactly the tree seen through the overlay.
func TestOverlayUpperLayer(t *testing.T) {
	testenv.NeedRoot(t)
	dir := t.TempDir()
	t.Cleanup(func() { checkNoMounts(t, dir) })
	lower := filepath.Join(dir, "lower")
	writeFiles(t, lower, map[string]string{
		"keep.txt":         "kept",
		"gone.txt":         "deleted above",
		"olddir/a.txt":     "deleted with its directory",
		"opaque/old.txt":   "hidden by the opaque directory",
		"chmod.txt":        "mode changed above",
		"sub/deep/old.txt": "its directory gains a file above",
	})

	ov, err := mountOverlay(lower, filepath.Join(dir, "ov"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ov.unmount() })
	m := ov.merged
	must(t, os.Remove(filepath.Join(m, "gone.txt")))
	must(t, os.RemoveAll(filepath.Join(m, "olddir")))
	must(t, os.RemoveAll(filepath.Join(m, "opaque")))
	writeFiles(t, m, map[string]string{
		"opaque/new.txt":    "new in the opaque directory",
		"added.txt":         "added above",
		"sub/deep/new.txt":  "new beside an old file",
		"fresh.new/new.txt": "in a directory lower never had",
	})
	// As dpkg unpacks a directory: made under a temporary name, then
	// renamed, which overlayfs marks opaque though lower has nothing there.
	must(t, os.Rename(filepath.Join(m, "fresh.new"), filepath.Join(m, "fresh")))
	must(t, os.Link(filepath.Join(m, "added.txt"), filepath.Join(m, "hard.txt")))
	must(t, os.Symlink("keep.txt", filepath.Join(m, "link")))
	must(t, os.Chmod(filepath.Join(m, "chmod.txt"), 0o600))
	must(t, unix.Setxattr(filepath.Join(m, "added.txt"), "user.bench", []byte("x"), 0))
	must(t, unix.Mkfifo(filepath.Join(m, "fifo"), 0o644))
	want := describeTree(t, m)
	must(t, ov.unmount())

	var layerTar bytes.Buffer
	tw := tar.NewWriter(&layerTar)
	must(t, writeUpper(tw, ov.upper, lower))
	must(t, tw.Close())

	got := map[string]*tar.Header{}
	var order []string
	tr := tar.NewReader(bytes.NewReader(layerTar.Bytes()))
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		must(t, err)
		got[hdr.Name] = hdr
		order = append(order, hdr.Name)
		for k := range hdr.PAXRecords {
			if strings.HasPrefix(k, "SCHILY.xattr.trusted.overlay.") {
				t.Errorf("%s: overlayfs's own xattr %s leaked into the layer", hdr.Name, k)
			}
		}
	}
	for _, name := range []string{".wh.gone.txt", ".wh.olddir", "opaque/", "opaque/.wh..wh..opq", "opaque/new.txt", "sub/deep/new.txt", "fresh/new.txt"} {
		if got[name] == nil {
			t.Errorf("layer has no %s; it has %v", name, order)
		}
	}
	for _, name := range []string{"keep.txt", "sub/deep/old.txt", "sub/.wh..wh..opq", "olddir/", "olddir/a.txt", "fresh/.wh..wh..opq"} {
		if got[name] != nil {
			t.Errorf("layer has %s, which did not change", name)
		}
	}
	if h := got["hard.txt"]; h == nil || h.Typeflag != tar.TypeLink || h.Linkname != "added.txt" {
		t.Errorf("hard.txt: want a hard link to added.txt, got %+v", h)
	}
	if h := got["added.txt"]; h == nil || h.PAXRecords["SCHILY.xattr.user.bench"] != "x" {
		t.Errorf("added.txt: want xattr user.bench=x, got %+v", h)
	}
	if !parentsFirst(order) {
		t.Errorf("entries not parents-first: %v", order)
	}

	// What a runtime unpacks must be what the overlay showed.
	rootfs := filepath.Join(dir, "rootfs")
	must(t, os.MkdirAll(rootfs, 0o755))
	var baseTar bytes.Buffer
	tw = tar.NewWriter(&baseTar)
	must(t, writeTree(tw, lower))
	must(t, tw.Close())
	for _, l := range []*bytes.Buffer{&baseTar, &layerTar} {
		if _, err := archive.Apply(context.Background(), rootfs, l); err != nil {
			t.Fatal(err)
		}
	}
	if got := describeTree(t, rootfs); !slices.Equal(got, want) {
		t.Errorf("base + layer unpacked:\n%s\nthe overlay showed:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

// TestBuildDataImage builds the data image over a tiny stand-in base and
// checks the OCI layout, the data and its Ready line, and the cache: a
// second build is a hit, another size is a miss that reuses the base, a
// damaged entry is rebuilt, and Export makes a layout skopeo reads.
func TestBuildDataImage(t *testing.T) {
	ctx := context.Background()
	cache := t.TempDir()
	const size = 3<<20 + 7
	b, bases := fakeBuilder(t, cache, WithDataSize(size))

	img, err := b.Build(ctx, "data")
	if err != nil {
		t.Fatal(err)
	}
	if img.Cached || len(img.Layers) != 2 || img.Tag != "data" {
		t.Fatalf("first build: cached %v, %d layers, tag %q; want a fresh 2-layer image tagged data", img.Cached, len(img.Layers), img.Tag)
	}
	files := checkLayout(t, img)
	checkEntry(t, img)
	var total int64
	listing := sha256.New()
	names := make([]string, 0, len(files))
	for name := range files {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		if strings.HasPrefix(name, "data/blob-") {
			total += int64(len(files[name]))
			fmt.Fprintf(listing, "%x  /%s\n", sha256.Sum256(files[name]), name)
		}
	}
	if total != size {
		t.Errorf("data layer holds %d bytes, want %d", total, size)
	}
	if want := "READY data " + hex.EncodeToString(listing.Sum(nil)); img.Ready != want {
		t.Errorf("Ready = %q, want %q", img.Ready, want)
	}
	if gz := compressedSize(t, img, 1); gz < size {
		t.Errorf("data layer compressed to %d bytes from %d: the data is not incompressible", gz, size)
	}

	again, err := b.Build(ctx, "data")
	if err != nil {
		t.Fatal(err)
	}
	if !again.Cached || again.Manifest.Digest != img.Manifest.Digest || again.BuildTime != img.BuildTime || again.Layout != img.Layout {
		t.Errorf("second build: cached %v, manifest %s (first %s): want the cached image", again.Cached, again.Manifest.Digest, img.Manifest.Digest)
	}

	// Another size is another image over the same base.
	b2, _ := fakeBuilder(t, cache, WithDataSize(size+1))
	b2.makeBase = b.makeBase
	other, err := b2.Build(ctx, "data")
	if err != nil {
		t.Fatal(err)
	}
	if other.Cached || other.Layout == img.Layout || other.Layers[0].Digest != img.Layers[0].Digest {
		t.Errorf("other size: cached %v, layout %s (first %s), base %s (first %s): want a new image on the same base",
			other.Cached, other.Layout, img.Layout, other.Layers[0].Digest, img.Layers[0].Digest)
	}
	if *bases != 1 {
		t.Errorf("the base was made %d times, want once", *bases)
	}

	// The data layer is the same bytes in any cache.
	b3, _ := fakeBuilder(t, t.TempDir(), WithDataSize(size))
	elsewhere, err := b3.Build(ctx, "data")
	if err != nil {
		t.Fatal(err)
	}
	if elsewhere.Layers[1].Digest != img.Layers[1].Digest {
		t.Errorf("data layer %s in another cache, %s in the first: it is not deterministic", elsewhere.Layers[1].Digest, img.Layers[1].Digest)
	}

	// A damaged entry is rebuilt, not returned.
	must(t, os.Remove(filepath.Join(img.Layout, "blobs", "sha256", img.Layers[1].Digest.Encoded())))
	rebuilt, err := b.Build(ctx, "data")
	if err != nil {
		t.Fatal(err)
	}
	if rebuilt.Cached || rebuilt.Layers[1].Digest != img.Layers[1].Digest {
		t.Errorf("after losing a blob: cached %v, data layer %s; want a rebuild of %s", rebuilt.Cached, rebuilt.Layers[1].Digest, img.Layers[1].Digest)
	}
	if tmp, _ := os.ReadDir(filepath.Join(cache, "tmp")); len(tmp) != 0 {
		t.Errorf("work directories left in the cache: %v", tmp)
	}

	out := filepath.Join(t.TempDir(), "data")
	exported, err := Export(rebuilt, out)
	if err != nil {
		t.Fatal(err)
	}
	checkLayout(t, exported)
	if sameFile(t, filepath.Join(out, "index.json"), filepath.Join(rebuilt.Layout, "index.json")) {
		t.Error("Export linked index.json: a tool that rewrites the exported layout would change the cache")
	}
	if _, err := Export(rebuilt, out); err != nil {
		t.Errorf("exporting over an earlier export: %v", err)
	}

	t.Run("skopeo", func(t *testing.T) {
		skopeo := testenv.NeedBinary(t, "skopeo")
		raw, err := exec.Command(skopeo, "inspect", "--raw", exported.Ref()).Output()
		if err != nil {
			t.Fatalf("skopeo inspect %s: %v", exported.Ref(), err)
		}
		if got := digest.FromBytes(raw); got != exported.Manifest.Digest {
			t.Errorf("skopeo read manifest %s, want %s", got, exported.Manifest.Digest)
		}
	})
}

// TestBuildAll builds every image from Debian for real (debootstrap and
// apt-get) and runs each workload: about 5 minutes on a new machine, and
// seconds once the images are cached (DefaultCacheDir), so it is part of
// the suite.
func TestBuildAll(t *testing.T) {
	testenv.NeedRoot(t)
	mirror, err := aptMirror("/etc/apt", Suite)
	if err == nil {
		err = reachable(mirror + "/dists/" + Suite + "/Release")
	}
	testenv.Need(t, "a reachable Debian mirror", err)

	ctx := context.Background()
	b, err := New(DefaultCacheDir(), WithDataSize(8<<20), WithProgress(testWriter{t}))
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range Names() {
		img, err := b.Build(ctx, name)
		if err != nil {
			t.Fatal(err)
		}
		checkLayout(t, img)
		checkEntry(t, img)
		if err := Verify(ctx, img); err != nil {
			t.Fatal(err)
		}
		t.Logf("%s: %s, %d bytes, built in %v (cached: %v)", name, img.Layout, img.Size(), img.BuildTime.Round(time.Second), img.Cached)
	}
	checkNoMounts(t, b.CacheDir())
}

func TestAptMirror(t *testing.T) {
	etc := t.TempDir()
	writeFiles(t, etc, map[string]string{
		"sources.list": "# deb http://old.example/debian bookworm main\n" +
			"deb [arch=amd64 signed-by=/k.gpg] http://other.example/debian trixie main\n",
		"sources.list.d/a.sources": "Types: deb-src\nURIs: http://src.example/debian\nSuites: bookworm\n\n" +
			"Types: deb\nURIs: http://off.example/debian\nSuites: bookworm\nEnabled: no\n\n" +
			"Types: deb\n# a comment\nURIs: http://mirror.example/debian http://second.example/debian\nSuites: bookworm bookworm-updates\nComponents: main\n",
		"sources.list.d/z.list": "deb http://later.example/debian bookworm main\n",
	})
	if got, err := aptMirror(etc, "bookworm"); err != nil || got != "http://later.example/debian" {
		// *.list files are read before *.sources, as the glob order says.
		t.Errorf("aptMirror(bookworm) = %q, %v; want http://later.example/debian", got, err)
	}
	must(t, os.Remove(filepath.Join(etc, "sources.list.d/z.list")))
	if got, err := aptMirror(etc, "bookworm"); err != nil || got != "http://mirror.example/debian" {
		t.Errorf("aptMirror(bookworm) = %q, %v; want http://mirror.example/debian", got, err)
	}
	if got, err := aptMirror(etc, "trixie"); err != nil || got != "http://other.example/debian" {
		t.Errorf("aptMirror(trixie) = %q, %v; want http://other.example/debian", got, err)
	}
	if got, err := aptMirror(etc, "sid"); err == nil {
		t.Errorf("aptMirror(sid) = %q, want an error", got)
	}
}

func TestDataFiles(t *testing.T) {
	for _, c := range []struct {
		size int64
		want []int64
	}{
		{DefaultDataSize, slices.Repeat([]int64{128 << 20}, 8)},
		{5, []int64{5}},
		{256<<20 + 1, []int64{89478486, 89478486, 89478485}},
	} {
		if got := dataFiles(c.size); !slices.Equal(got, c.want) {
			t.Errorf("dataFiles(%d) = %v, want %v", c.size, got, c.want)
		}
	}
}

// fakeBuilder is a Builder whose base is a small tree made in Go, so that
// no test but TestBuildAll needs debootstrap. *made counts base builds.
func fakeBuilder(t *testing.T, cache string, opts ...Option) (b *Builder, made *int) {
	b, err := New(cache, append(opts, WithProgress(testWriter{t}))...)
	if err != nil {
		t.Fatal(err)
	}
	made = new(int)
	b.makeBase = func(ctx context.Context, dir string) error {
		*made++
		writeFiles(t, dir, map[string]string{
			"etc/os-release": "PRETTY_NAME=\"a test base\"\n",
			"bin/sh":         "#!/not/a/shell\n",
		})
		return nil
	}
	return b, made
}

// checkLayout reads img's layout as a consumer would, from index.json down,
// checks every digest and diff ID, and returns the files of the last layer.
func checkLayout(t *testing.T, img Image) map[string][]byte {
	t.Helper()
	readBlob := func(d ocispec.Descriptor) []byte {
		t.Helper()
		data, err := os.ReadFile(filepath.Join(img.Layout, "blobs", "sha256", d.Digest.Encoded()))
		if err != nil {
			t.Fatal(err)
		}
		if digest.FromBytes(data) != d.Digest || int64(len(data)) != d.Size {
			t.Fatalf("blob %s: %d bytes, digest %s", d.Digest, len(data), digest.FromBytes(data))
		}
		return data
	}
	var index ocispec.Index
	decode(t, filepath.Join(img.Layout, "index.json"), &index)
	if len(index.Manifests) != 1 || index.Manifests[0].Digest != img.Manifest.Digest ||
		index.Manifests[0].Annotations[ocispec.AnnotationRefName] != img.Tag {
		t.Fatalf("index.json: %+v; want manifest %s tagged %s", index.Manifests, img.Manifest.Digest, img.Tag)
	}
	var layout ocispec.ImageLayout
	decode(t, filepath.Join(img.Layout, "oci-layout"), &layout)
	var manifest ocispec.Manifest
	must(t, json.Unmarshal(readBlob(img.Manifest), &manifest))
	var config ocispec.Image
	must(t, json.Unmarshal(readBlob(manifest.Config), &config))
	if !slices.Equal(config.Config.Cmd, img.Cmd) || config.Config.Labels[ReadyLabel] != img.Ready || len(config.Config.Env) == 0 {
		t.Errorf("config: cmd %q, labels %v, env %v; want cmd %q ready %q", config.Config.Cmd, config.Config.Labels, config.Config.Env, img.Cmd, img.Ready)
	}
	if len(manifest.Layers) != len(config.RootFS.DiffIDs) || len(manifest.Layers) != len(img.Layers) {
		t.Fatalf("%d layers, %d diff IDs, image says %d", len(manifest.Layers), len(config.RootFS.DiffIDs), len(img.Layers))
	}
	var files map[string][]byte
	for i, l := range manifest.Layers {
		f, err := os.Open(filepath.Join(img.Layout, "blobs", "sha256", l.Digest.Encoded()))
		must(t, err)
		defer f.Close()
		compressed := digest.Canonical.Digester()
		zr, err := gzip.NewReader(io.TeeReader(f, compressed.Hash()))
		must(t, err)
		uncompressed := digest.Canonical.Digester()
		tr := tar.NewReader(io.TeeReader(zr, uncompressed.Hash()))
		files = map[string][]byte{}
		for {
			hdr, err := tr.Next()
			if err == io.EOF {
				break
			}
			must(t, err)
			if hdr.Typeflag == tar.TypeReg && hdr.Size < 64<<20 {
				data, err := io.ReadAll(tr)
				must(t, err)
				files[hdr.Name] = data
			}
		}
		io.Copy(io.Discard, zr)
		io.Copy(io.Discard, f)
		if compressed.Digest() != l.Digest || uncompressed.Digest() != config.RootFS.DiffIDs[i] {
			t.Errorf("layer %d: digest %s diff ID %s; manifest says %s, config %s", i, compressed.Digest(), uncompressed.Digest(), l.Digest, config.RootFS.DiffIDs[i])
		}
	}
	return files
}

// checkEntry checks that img's cache entry holds its layout and record and
// nothing of the build's work directories.
func checkEntry(t *testing.T, img Image) {
	t.Helper()
	entries, err := os.ReadDir(filepath.Dir(img.Layout))
	must(t, err)
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	if !slices.Equal(names, []string{imageFile, layoutDirName}) {
		t.Errorf("cache entry %s holds %v, want %v", filepath.Dir(img.Layout), names, []string{imageFile, layoutDirName})
	}
}

func compressedSize(t *testing.T, img Image, layer int) int64 {
	fi, err := os.Stat(filepath.Join(img.Layout, "blobs", "sha256", img.Layers[layer].Digest.Encoded()))
	must(t, err)
	return fi.Size()
}

// describeTree lists every entry under root with what a runtime must
// reproduce: type, mode, owner, contents or target, user xattrs.
func describeTree(t *testing.T, root string) []string {
	t.Helper()
	var lines []string
	err := filepath.Walk(root, func(p string, fi os.FileInfo, err error) error {
		if err != nil || p == root {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		st := fi.Sys().(*syscall.Stat_t)
		line := fmt.Sprintf("%s %v %d:%d", rel, fi.Mode(), st.Uid, st.Gid)
		switch {
		case fi.Mode().IsRegular():
			data, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			line += fmt.Sprintf(" %q", data)
		case fi.Mode()&os.ModeSymlink != 0:
			target, _ := os.Readlink(p)
			line += " -> " + target
		}
		if v, err := lgetxattr(p, "user.bench"); err == nil {
			line += " user.bench=" + string(v)
		}
		lines = append(lines, line)
		return nil
	})
	must(t, err)
	return lines
}

// parentsFirst says whether every entry's directory came before it.
func parentsFirst(names []string) bool {
	seen := map[string]bool{"": true}
	for _, n := range names {
		n = strings.TrimSuffix(n, "/")
		if !seen[filepath.Dir(n)] && filepath.Dir(n) != "." {
			return false
		}
		seen[n] = true
	}
	return true
}

func checkNoMounts(t *testing.T, dir string) {
	t.Helper()
	if left := testenv.MountsUnder(dir); len(left) > 0 {
		t.Errorf("mounts left under %s: %v", dir, left)
	}
}

func reachable(url string) error {
	client := http.Client{Timeout: 10 * time.Second}
	resp, err := client.Head(url)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("HEAD %s: %s", url, resp.Status)
	}
	return nil
}

func writeFiles(t *testing.T, root string, files map[string]string) {
	t.Helper()
	for name, data := range files {
		p := filepath.Join(root, name)
		must(t, os.MkdirAll(filepath.Dir(p), 0o755))
		must(t, os.WriteFile(p, []byte(data), 0o644))
	}
}

func decode(t *testing.T, path string, v any) {
	t.Helper()
	data, err := os.ReadFile(path)
	must(t, err)
	must(t, json.Unmarshal(data, v))
}

func sameFile(t *testing.T, a, b string) bool {
	fa, err := os.Stat(a)
	must(t, err)
	fb, err := os.Stat(b)
	must(t, err)
	return os.SameFile(fa, fb)
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSuffix(string(p), "\n"))
	return len(p), nil
}

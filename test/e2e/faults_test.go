package e2e

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/lazypull/lazypull/cache"
	"github.com/lazypull/lazypull/format"
	"github.com/lazypull/lazypull/format/estargz"
	"github.com/lazypull/lazypull/format/toc"
	"github.com/lazypull/lazypull/fusefs"
	"github.com/lazypull/lazypull/internal/regproxy"
	"github.com/lazypull/lazypull/internal/testenv"
	"github.com/lazypull/lazypull/layer"
	"github.com/lazypull/lazypull/remote"
)

// faultTail is how much of the blob's end layer.Open reads: small, so that
// almost every file's data is fetched by a read through FUSE, where the
// faults are.
const faultTail = 64 << 10

// faultFiles is the layer's content: sizes around and across the chunk
// size, random (incompressible) data and one compressible file.
func faultFiles() map[string][]byte {
	r := rand.New(rand.NewPCG(4, 4))
	random := func(n int) []byte {
		b := make([]byte, n)
		for i := range b {
			b[i] = byte(r.Uint32())
		}
		return b
	}
	return map[string][]byte{
		"etc/motd":          []byte("registry faults never give wrong bytes\n"),
		"etc/empty":         nil,
		"bin/tool":          random(300 << 10),                                       // two chunks, the second short
		"lib/exact.so":      random(256 << 10),                                       // exactly one chunk
		"lib/libbig.so":     random(2<<20 + 12345),                                   // nine chunks
		"share/doc/license": bytes.Repeat([]byte("lazy pulling, verified. "), 30000), // compresses well
		"var/data.bin":      random(1<<20 + 1),                                       // five chunks, the last one byte
	}
}

// faultLayer is the test layer, pushed to the registry.
type faultLayer struct {
	files map[string][]byte
	names []string // files in a fixed order
	desc  ocispec.Descriptor
	repo  string
}

// buildFaultLayer makes an eStargz blob of faultFiles with 256 KiB chunks.
func buildFaultLayer(t *testing.T) (*faultLayer, []byte) {
	t.Helper()
	fl := &faultLayer{files: faultFiles(), repo: "faults/layer"}
	for name := range fl.files {
		fl.names = append(fl.names, name)
	}
	sort.Strings(fl.names)
	var tarBuf bytes.Buffer
	tw := tar.NewWriter(&tarBuf)
	mtime := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	dirs := map[string]bool{}
	for _, name := range fl.names {
		for d := filepath.Dir(name); d != "." && !dirs[d]; d = filepath.Dir(d) {
			dirs[d] = true
		}
	}
	var dirNames []string
	for d := range dirs {
		dirNames = append(dirNames, d)
	}
	sort.Strings(dirNames) // parents first
	for _, d := range dirNames {
		tw.WriteHeader(&tar.Header{Name: d + "/", Typeflag: tar.TypeDir, Mode: 0o755, ModTime: mtime})
	}
	for _, name := range fl.names {
		data := fl.files[name]
		if err := tw.WriteHeader(&tar.Header{Name: name, Typeflag: tar.TypeReg, Mode: 0o644, Size: int64(len(data)), ModTime: mtime}); err != nil {
			t.Fatal(err)
		}
		tw.Write(data)
	}
	tw.WriteHeader(&tar.Header{Name: "etc/motd.link", Typeflag: tar.TypeSymlink, Linkname: "motd", Mode: 0o777, ModTime: mtime})
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	var blob bytes.Buffer
	w := estargz.NewWriter(&blob, estargz.WithChunkSize(256<<10))
	if err := w.AppendTar(&tarBuf); err != nil {
		t.Fatal(err)
	}
	res, err := w.Close()
	if err != nil {
		t.Fatal(err)
	}
	fl.desc = ocispec.Descriptor{
		MediaType:   ocispec.MediaTypeImageLayerGzip,
		Digest:      digest.FromBytes(blob.Bytes()),
		Size:        int64(blob.Len()),
		Annotations: res.Annotations,
	}
	return fl, blob.Bytes()
}

// pushBlobHTTP uploads data to repo of the registry at host with a POST and
// a monolithic PUT, as the distribution API allows.
func pushBlobHTTP(t *testing.T, host, repo string, data []byte) {
	t.Helper()
	resp, err := http.Post("http://"+host+"/v2/"+repo+"/blobs/uploads/", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("start upload to %s: %s", repo, resp.Status)
	}
	loc, err := resp.Request.URL.Parse(resp.Header.Get("Location"))
	if err != nil {
		t.Fatal(err)
	}
	q := loc.Query()
	q.Set("digest", digest.FromBytes(data).String())
	loc.RawQuery = q.Encode()
	req, _ := http.NewRequest(http.MethodPut, loc.String(), bytes.NewReader(data))
	req.Header.Set("Content-Type", "application/octet-stream")
	resp, err = http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("finish upload to %s: %s", repo, resp.Status)
	}
}

// lazyMount is the layer opened from the registry through a proxy and
// mounted over FUSE, as the snapshotter does it.
type lazyMount struct {
	mnt   string
	blob  *remote.Blob
	cache *cache.Cache
	layer *layer.Layer
	fs    *fusefs.MountedLayer
}

// mountThrough opens fl through the proxy at addr with a cache in
// cacheDir and mounts it; it is unmounted and closed when t ends (or by
// close).
func mountThrough(t *testing.T, fl *faultLayer, addr, cacheDir string, bopts remote.BlobOptions, passthrough bool) *lazyMount {
	t.Helper()
	ctx := context.Background()
	m := &lazyMount{}
	t.Cleanup(func() { m.close(t) })
	// Empty hosts and docker config dirs: nothing from this machine's
	// configuration between the test and the proxy.
	ropts := remote.Options{HostsDir: t.TempDir(), DockerConfigDir: t.TempDir()}
	var err error
	if m.blob, err = remote.OpenBlob(ctx, addr+"/"+fl.repo+"@"+fl.desc.Digest.String(), fl.desc, ropts, bopts); err != nil {
		t.Fatal(err)
	}
	if m.cache, err = cache.New(cacheDir); err != nil {
		t.Fatal(err)
	}
	if m.layer, err = layer.Open(ctx, fl.desc, m.blob, m.cache, layer.Options{TailSize: faultTail}); err != nil {
		t.Fatal(err)
	}
	m.mnt = filepath.Join(t.TempDir(), "mnt")
	if err := os.Mkdir(m.mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	if m.fs, err = fusefs.Mount(m.mnt, m.layer, fusefs.Options{Passthrough: passthrough}); err != nil {
		t.Fatal(err)
	}
	return m
}

// close unmounts and closes, in the reverse order of mountThrough; it may
// be called more than once.
func (m *lazyMount) close(t *testing.T) {
	if m.fs != nil {
		if err := m.fs.Unmount(); err != nil {
			t.Errorf("unmount %s: %v", m.mnt, err)
		}
		m.fs = nil
	}
	if m.layer != nil {
		m.layer.Close()
		m.layer = nil
	}
	if m.cache != nil {
		if err := m.cache.Close(); err != nil {
			t.Error(err)
		}
		m.cache = nil
	}
}

// state reads the mount's state file.
func (m *lazyMount) state(t *testing.T, fl *faultLayer) fusefs.State {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(m.mnt, fusefs.StateDirName, fl.desc.Digest.String()+".json"))
	if err != nil {
		t.Fatal(err)
	}
	var st fusefs.State
	if err := json.Unmarshal(data, &st); err != nil {
		t.Fatalf("state file: %v\n%s", err, data)
	}
	return st
}

// readFiles reads the named files through the mount and checks the one rule that always holds: a read gives the file's exact
// bytes or fails with EIO. It returns the files that failed.
func (m *lazyMount) readFiles(t *testing.T, fl *faultLayer, names []string) (failed []string) {
	t.Helper()
	for _, name := range names {
		got, err := os.ReadFile(filepath.Join(m.mnt, name))
		switch {
		case err == nil:
			if !bytes.Equal(got, fl.files[name]) {
				t.Errorf("WRONG BYTES: %s read %d bytes through FUSE that differ from the source's %d", name, len(got), len(fl.files[name]))
			}
		case errors.Is(err, syscall.EIO):
			failed = append(failed, name)
		default:
			t.Errorf("%s: %v, want the file's bytes or EIO", name, err)
		}
	}
	return failed
}

// dataReads matches the blob's ranged reads of file data: every range but
// the tail read of layer.Open, which ends at the blob's last byte.
func dataReads(fl *faultLayer) func(*http.Request) bool {
	return func(r *http.Request) bool {
		last, ok := rangeLast(r)
		return ok && strings.HasSuffix(r.URL.Path, "/blobs/"+fl.desc.Digest.String()) && last < fl.desc.Size-1
	}
}

// tailRead matches layer.Open's read of the blob's end.
func tailRead(fl *faultLayer) func(*http.Request) bool {
	return func(r *http.Request) bool {
		last, ok := rangeLast(r)
		return ok && strings.HasSuffix(r.URL.Path, "/blobs/"+fl.desc.Digest.String()) && last == fl.desc.Size-1
	}
}

// rangeLast is the last byte a single-range request asks for.
func rangeLast(r *http.Request) (int64, bool) {
	spec, ok := strings.CutPrefix(r.Header.Get("Range"), "bytes=")
	if !ok {
		return 0, false
	}
	_, b, ok := strings.Cut(spec, "-")
	if !ok {
		return 0, false
	}
	n, err := strconv.ParseInt(b, 10, 64)
	return n, err == nil
}

func startProxy(t *testing.T, upstream string) *regproxy.Proxy {
	t.Helper()
	p, err := regproxy.Start(upstream)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := p.Close(); err != nil {
			t.Error(err)
		}
	})
	return p
}

// TestRegistryFaultsNeverGiveWrongBytes reads a lazily mounted layer from a
// real registry through a proxy that injects each kind of fault: transient
// faults are ridden out by retries (and the file reads succeed), persistent
// corruption gives EIO and is recorded in the state file, a corrupt cache
// file is detected and refetched, and no read ever returns wrong bytes.
func TestRegistryFaultsNeverGiveWrongBytes(t *testing.T) {
	testenv.NeedFUSE(t)
	reg := testenv.NewRegistry(t)
	fl, blob := buildFaultLayer(t)
	pushBlobHTTP(t, reg.Host, fl.repo, blob) // straight to the registry: no proxy has seen it
	t.Logf("layer %s: %d bytes, %d files", fl.desc.Digest, fl.desc.Size, len(fl.names))

	// Each transient fault fires on layer.Open's tail read once and on file
	// data reads a few times; the mount must hide all of it.
	transient := []struct {
		name  string
		kind  regproxy.FaultKind
		count int // faults on data reads, after one on the tail read
		bopts remote.BlobOptions
		// midway runs after half the files have been read.
		midway func(p *regproxy.Proxy)
		setup  func(p *regproxy.Proxy)
	}{
		{name: "ResetMidBody", kind: regproxy.ResetMidBody, count: 3},
		{name: "Status503", kind: regproxy.Status503, count: 3},
		{name: "Stall", kind: regproxy.Stall, count: 2, bopts: remote.BlobOptions{RequestTimeout: 300 * time.Millisecond}},
		{name: "Truncate", kind: regproxy.Truncate, count: 3},
		{
			// 401s from the registry, and real token expiry: the proxy
			// demands bearer tokens from the start and forgets them all
			// half way through.
			name: "Unauthorized401", kind: regproxy.Unauthorized401, count: 2,
			setup:  func(p *regproxy.Proxy) { p.EnableTokenAuth() },
			midway: func(p *regproxy.Proxy) { p.ExpireTokens() },
		},
	}
	for _, tc := range transient {
		t.Run(tc.name, func(t *testing.T) {
			p := startProxy(t, reg.Host)
			if tc.setup != nil {
				tc.setup(p)
			}
			p.AddFault(regproxy.Fault{Match: tailRead(fl), Kind: tc.kind, Count: 1})
			p.AddFault(regproxy.Fault{Match: dataReads(fl), Kind: tc.kind, Count: tc.count})
			m := mountThrough(t, fl, p.Addr(), t.TempDir(), tc.bopts, true)
			half := len(fl.names) / 2
			failed := m.readFiles(t, fl, fl.names[:half])
			tokensBefore := p.Stats().ByKind[regproxy.Token]
			if tc.midway != nil {
				tc.midway(p)
			}
			failed = append(failed, m.readFiles(t, fl, fl.names[half:])...)
			if len(failed) > 0 {
				t.Errorf("reads failed with EIO despite a transient fault (%s): %v; state %+v", tc.kind, failed, m.state(t, fl))
			}
			st := p.Stats()
			if fired := st.FaultsByKind[tc.kind]; fired != int64(1+tc.count) {
				t.Errorf("%d %s faults fired, want %d: the test did not test what it says", fired, tc.kind, 1+tc.count)
			}
			if bs := m.blob.Stats(); bs.Retries == 0 {
				t.Errorf("no retries counted after %s faults: %+v", tc.kind, bs)
			}
			if tc.midway != nil && st.ByKind[regproxy.Token] <= tokensBefore {
				t.Errorf("no new token was fetched after the tokens expired (%d token requests before, %d after)", tokensBefore, st.ByKind[regproxy.Token])
			}
			if s := m.state(t, fl); s.ReadErrors != 0 {
				t.Errorf("state file counts %d read errors after transient faults: %+v", s.ReadErrors, s)
			}
		})
	}

	// One corrupted body (a flipped byte on the way) fails verification;
	// the layer fetches the span again and the read succeeds.
	t.Run("CorruptBodyOnce", func(t *testing.T) {
		p := startProxy(t, reg.Host)
		p.AddFault(regproxy.Fault{Match: dataReads(fl), Kind: regproxy.CorruptBody, Count: 1})
		m := mountThrough(t, fl, p.Addr(), t.TempDir(), remote.BlobOptions{}, true)
		if failed := m.readFiles(t, fl, fl.names); len(failed) > 0 {
			t.Errorf("one corrupted response made reads fail with EIO: %v; state %+v", failed, m.state(t, fl))
		}
		if fired := p.Stats().FaultsByKind[regproxy.CorruptBody]; fired != 1 {
			t.Errorf("%d corruptions fired, want 1", fired)
		}
		// The kernel retries a failed read-ahead page with a read of its
		// own, which can hide an EIO from os.ReadFile: the state file
		// counts every EIO the filesystem gave.
		if st := m.state(t, fl); st.ReadErrors != 0 {
			t.Errorf("one corrupted response gave %d EIOs to FUSE reads: %+v", st.ReadErrors, st)
		}
	})

	// A registry that corrupts everything: every read of fetched data
	// fails with EIO, the state file says why, and once the registry is
	// healthy again the same reads succeed (a failure is not sticky).
	t.Run("CorruptBodyAlways", func(t *testing.T) {
		p := startProxy(t, reg.Host)
		p.AddFault(regproxy.Fault{Match: dataReads(fl), Kind: regproxy.CorruptBody})
		m := mountThrough(t, fl, p.Addr(), t.TempDir(), remote.BlobOptions{}, true)
		failed := m.readFiles(t, fl, fl.names)
		if len(failed) == 0 {
			t.Fatal("every response was corrupt, yet every read succeeded")
		}
		t.Logf("EIO for %v", failed)
		for _, name := range failed {
			if len(fl.files[name]) == 0 {
				t.Errorf("%s is empty, nothing to fetch, yet its read failed", name)
			}
		}
		st := m.state(t, fl)
		if st.Errors == 0 || st.ReadErrors < int64(len(failed)) {
			t.Errorf("state file after corrupt fetches: %+v, want the errors counted and at least %d read errors", st, len(failed))
		}
		// The reason is the node's to see (lazypull status), not the
		// containers' that can read the state file.
		lastError := m.layer.Stats().LastError
		if !strings.Contains(lastError, "digest") && !strings.Contains(lastError, "gzip") && !strings.Contains(lastError, "checksum") {
			t.Errorf("the layer's last error %q does not say the data failed verification", lastError)
		}
		p.ClearFaults()
		if again := m.readFiles(t, fl, failed); len(again) > 0 {
			t.Errorf("with the registry healthy again, reads still fail: %v", again)
		}
	})

	t.Run("CacheCorruptionHealsAndNothingIsFetchedTwice", func(t *testing.T) {
		testCacheHeals(t, reg.Host, fl)
	})
}

// testCacheHeals reads the layer clean (checking that no byte range crosses
// the proxy twice), corrupts cache files on disk, and reads it again over
// fresh caches on the same directory: each corruption is found, only the
// corrupt chunks are fetched again, and the files are right.
func testCacheHeals(t *testing.T, upstream string, fl *faultLayer) {
	cacheDir := t.TempDir()
	p := startProxy(t, upstream)
	m := mountThrough(t, fl, p.Addr(), cacheDir, remote.BlobOptions{}, true)
	// Start the background fetch as the mounter does, right after the
	// mount; read half the files (which lets it start), let it fetch the
	// rest, then read everything: foreground, read-ahead and background
	// fetches must not overlap.
	m.layer.StartBackground()
	half := fl.names[:len(fl.names)/2]
	if failed := m.readFiles(t, fl, half); len(failed) > 0 {
		t.Fatalf("clean reads failed: %v", failed)
	}
	foreground := len(p.Ranges(fl.desc.Digest))
	select {
	case <-m.layer.BackgroundDone():
	case <-time.After(10 * time.Second):
		t.Fatal("the background fetch did not end")
	}
	if len(p.Ranges(fl.desc.Digest)) == foreground {
		t.Error("the background fetch fetched nothing of a half-read layer")
	}
	// Every chunk is cached now, each multi-chunk file's into one
	// whole-file cache entry filled in place (sealed by now, or as it is
	// opened), never into entries of their own.
	if failed := m.readFiles(t, fl, fl.names); len(failed) > 0 {
		t.Fatalf("cached reads failed: %v", failed)
	}
	if again := p.Refetched(); len(again) > 0 {
		t.Errorf("byte ranges fetched more than once on the normal path: %v", again)
	}
	if st := m.state(t, fl); st.CachedPercent != 100 {
		t.Errorf("after a full read and the background fetch the layer is %.1f%% cached", st.CachedPercent)
	}
	index := m.layer.TOC()
	multi, _ := index.Lookup("var/data.bin")
	small, _ := index.Lookup("etc/motd")
	gone, _ := index.Lookup("lib/libbig.so")
	tool, _ := index.Lookup("bin/tool")
	m.close(t) // waits for the seals
	for _, e := range []*toc.Entry{multi, gone, tool} {
		if _, err := os.Stat(cachePath(cacheDir, e.Digest())); err != nil {
			t.Fatalf("%s is not one cache entry: %v", e.Path(), err)
		}
		if _, err := os.Stat(cachePath(cacheDir, e.Digest()) + ".parts"); err == nil {
			t.Errorf("%s: its cache entry was never sealed", e.Path())
		}
		if _, err := os.Stat(cachePath(cacheDir, e.Chunks()[0].Digest())); err == nil {
			t.Errorf("%s: a chunk entry is there beside the whole file's", e.Path())
		}
	}
	// What layer.Open reads: the TOC and footer where the annotations
	// place them, else the last faultTail bytes.
	tail := [2]int64{fl.desc.Size - faultTail, fl.desc.Size - 1}
	if start, ok := format.TOCStart(fl.desc); ok {
		tail[0] = start
	}
	member := func(c toc.Chunk) [2]int64 { return [2]int64{c.Offset, c.EndOffset - 1} }
	span := func(e *toc.Entry) [2]int64 {
		return [2]int64{e.Chunks()[0].Offset, e.Chunks()[len(e.Chunks())-1].EndOffset - 1}
	}
	members := func(es ...*toc.Entry) (out [][2]int64) {
		for _, e := range es {
			for _, c := range e.Chunks() {
				out = append(out, member(c))
			}
		}
		return out
	}
	// checkRefetch: every range fetched lies within allowed (or is the
	// tail), and every range of want was fetched again.
	checkRefetch := func(fetched, allowed, want [][2]int64) {
		t.Helper()
		for _, r := range fetched {
			if r != tail && !containedIn(r, allowed) {
				t.Errorf("fetched %v, which holds no bad or missing data: only %v (and the tail %v) should be fetched", r, allowed, tail)
			}
		}
		for _, w := range want {
			if !containedIn(w, fetched) {
				t.Errorf("%v, bad or missing, was not fetched again (fetched %v)", w, fetched)
			}
		}
	}

	// A mount without passthrough over a fresh cache on the same
	// directory, where each file meets a different damage:
	//  - etc/motd: its one chunk (which is its cache file) is corrupt;
	//  - var/data.bin: its whole-file entry is corrupt;
	//  - lib/libbig.so: its whole-file entry is gone;
	//  - bin/tool: intact, and read from its whole-file entry.
	// Only the bad or missing files' data may be fetched.
	corrupt := []digest.Digest{small.Chunks()[0].Digest(), multi.Digest()}
	corruptCacheEntries(t, cacheDir, corrupt...)
	if err := os.Remove(cachePath(cacheDir, gone.Digest())); err != nil {
		t.Fatal(err)
	}
	p2 := startProxy(t, upstream)
	m2 := mountThrough(t, fl, p2.Addr(), cacheDir, remote.BlobOptions{}, false)
	if failed := m2.readFiles(t, fl, fl.names); len(failed) > 0 {
		t.Errorf("reads over a damaged cache failed: %v", failed)
	}
	if n := m2.cache.Stats().Corruptions; n != int64(len(corrupt)) {
		t.Errorf("the cache found %d corrupt entries, want %d", n, len(corrupt))
	}
	checkRefetch(p2.Ranges(fl.desc.Digest), [][2]int64{member(small.Chunks()[0]), span(multi), span(gone)},
		append(members(multi, gone), member(small.Chunks()[0])))
	m2.close(t)

	// With passthrough: a corrupt whole-file entry, the backing file of a
	// passthrough open, is found when the new cache first opens it, and the
	// file's data alone is fetched again.
	corruptCacheEntries(t, cacheDir, tool.Digest())
	p3 := startProxy(t, upstream)
	m3 := mountThrough(t, fl, p3.Addr(), cacheDir, remote.BlobOptions{}, true)
	if failed := m3.readFiles(t, fl, fl.names); len(failed) > 0 {
		t.Errorf("reads over a corrupt whole-file entry failed: %v", failed)
	}
	if n := m3.cache.Stats().Corruptions; n != 1 {
		t.Errorf("the cache found %d corrupt entries, want 1", n)
	}
	checkRefetch(p3.Ranges(fl.desc.Digest), [][2]int64{span(tool)}, members(tool))
	m3.close(t)

	// Healed: each entry is back on disk, and right.
	for _, d := range append(corrupt, tool.Digest(), gone.Digest()) {
		data, err := os.ReadFile(cachePath(cacheDir, d))
		if err != nil {
			t.Errorf("entry %s not stored again: %v", d, err)
		} else if digest.FromBytes(data) != d {
			t.Errorf("entry %s is still corrupt on disk", d)
		}
	}
}

// cachePath is where cache.Cache keeps the entry for d (see cache/disk.go).
func cachePath(dir string, d digest.Digest) string {
	return filepath.Join(dir, d.Algorithm().String(), d.Encoded()[:2], d.Encoded())
}

// corruptCacheEntries flips a byte in the middle of each entry's file.
func corruptCacheEntries(t *testing.T, dir string, ds ...digest.Digest) {
	t.Helper()
	for _, d := range ds {
		path := cachePath(dir, d)
		data, err := os.ReadFile(path)
		if err != nil {
			t.Fatalf("cache entry %s: %v", d, err)
		}
		data[len(data)/2] ^= 0x01
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
}

// containedIn tells whether the inclusive range r lies within one of rs.
func containedIn(r [2]int64, rs [][2]int64) bool {
	for _, o := range rs {
		if r[0] >= o[0] && r[1] <= o[1] {
			return true
		}
	}
	return false
}

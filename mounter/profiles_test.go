package mounter

import (
	"bytes"
	"context"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/lazypull/lazypull/cache"
	"github.com/lazypull/lazypull/convert"
	"github.com/lazypull/lazypull/format"
	"github.com/lazypull/lazypull/internal/testenv"
	"github.com/lazypull/lazypull/labels"
	"github.com/lazypull/lazypull/layer"
	"github.com/lazypull/lazypull/profile"
	"github.com/lazypull/lazypull/profile/artifact"
	"github.com/lazypull/lazypull/remote"
	"github.com/lazypull/lazypull/transport"
)

// profiledImage is a one-layer eStargz image in a registry with files
// bin/a, lib/b and lib/c of different content; it returns its reference
// and layer.
func profiledImage(t *testing.T, reg *testenv.Registry, dir string) (string, digest.Digest) {
	t.Helper()
	file := func(p string, n int) testenv.Entry {
		return testenv.Entry{Path: p, Type: '0', Mode: 0o644, Data: bytes.Repeat([]byte(p), n)}
	}
	img := testenv.Image{Layers: [][]testenv.Entry{{
		testenv.Dir("bin"), testenv.Dir("lib"),
		file("bin/a", 40000), file("lib/b", 20000), file("lib/c", 10000),
	}}, Cmd: []string{"/bin/a"}}
	layout := filepath.Join(dir, "oci")
	if _, err := img.WriteOCILayout(layout, "v1"); err != nil {
		t.Fatal(err)
	}
	ref := reg.Host + "/profiled:esgz"
	layers, _ := convertTo(t, layout, ref)
	return ref, layers[0].Digest
}

// profiledSetup is profiledImage in a temporary directory, with an empty
// profile directory in it; it returns the directory, the image's
// reference and layer, and the profile directory.
func profiledSetup(t *testing.T) (dir, ref string, d digest.Digest, profiles string) {
	t.Helper()
	testenv.NeedFUSE(t)
	dir = t.TempDir()
	ref, d = profiledImage(t, testenv.NewRegistry(t), dir)
	profiles = filepath.Join(dir, "profiles")
	os.Mkdir(profiles, 0o700)
	return dir, ref, d, profiles
}

// mountProfiled mounts layer d of ref with opts (no background fetch) and
// a cache of its own; it returns the mounter and the cache.
func mountProfiled(t *testing.T, dir, ref string, d digest.Digest, opts Options) (*Mounter, *cache.Cache, string) {
	t.Helper()
	c, err := cache.New(filepath.Join(dir, "cache"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	opts.NoBackground = true
	m := New(c, opts)
	t.Cleanup(func() { m.Close() })
	mp := filepath.Join(dir, "mnt")
	os.Mkdir(mp, 0o755)
	if err := m.Mount(context.Background(), mp, map[string]string{labels.CRIImageRef: ref, labels.CRIDigest: d.String()}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Unmount(context.Background(), mp) })
	return m, c, mp
}

// cachedFiles tells of each file of layer d whether its first chunk is
// cached.
func cachedFiles(m *Mounter, c *cache.Cache, d digest.Digest, names ...string) map[string]bool {
	l := m.mountedLayer(d)
	out := make(map[string]bool)
	for _, name := range names {
		e, _ := l.TOC().Lookup(name)
		first := e.Chunks()[0]
		out[name] = c.Has(first.Digest()) || c.HasPart(e.Digest(), 0, first.Digest()) // its own entry, or its file's
	}
	return out
}

func newProfile(d digest.Digest, reads ...profile.Read) *profile.Profile {
	return &profile.Profile{SchemaVersion: 1, MediaType: profile.MediaType, Layers: []profile.Layer{{Digest: d}}, Reads: reads}
}

// writeProfile puts p in the profile directory dir as name.
func writeProfile(t *testing.T, dir, name string, p *profile.Profile) {
	t.Helper()
	data, err := p.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, name), data, 0o600); err != nil {
		t.Fatal(err)
	}
}

// TestMountFetchesWhatProfilesRead: a layer that a workload profile in the
// profile directory names fetches, at mount, the ranges the profile read
// and nothing else (not the files the image marks); profiles that do not
// parse or do not fit the layer are left out, and the mount works.
func TestMountFetchesWhatProfilesRead(t *testing.T) {
	dir, ref, d, profiles := profiledSetup(t)
	writeProfile(t, profiles, "run.json", newProfile(d, profile.Read{Path: "lib/b", Offset: 0, Length: 100}, profile.Read{Path: "bin/a", Offset: 1000, Length: 5000}))
	writeProfile(t, profiles, "other-image.json", newProfile(d, profile.Read{Path: "lib/c", Length: 10}, profile.Read{Path: "no/such/file", Length: 10}))
	os.WriteFile(filepath.Join(profiles, "garbage.json"), []byte("{not json"), 0o600)

	m, c, mp := mountProfiled(t, dir, ref, d, Options{ProfileDir: profiles})
	m.mu.Lock()
	fetched := m.mounts[mp].ahead
	m.mu.Unlock()
	if fetched == nil {
		t.Fatal("the mount started no fetch of what the profile read")
	}
	if err := <-fetched; err != nil {
		t.Fatal(err)
	}
	for name, cached := range cachedFiles(m, c, d, "bin/a", "lib/b", "lib/c") {
		if want := name != "lib/c"; cached != want {
			t.Errorf("%s cached after the mount: %v; want %v", name, cached, want)
		}
	}
	if got, err := os.ReadFile(filepath.Join(mp, "lib/b")); err != nil || !bytes.Equal(got, bytes.Repeat([]byte("lib/b"), 20000)) {
		t.Errorf("read lib/b: %v", err)
	}
}

// TestMountFetchesProfiledSpansEarly: a profile that recorded where its
// reads lie in the blob (spans) has them fetched before the layer is open,
// and the layer's fetch of the profile's ranges takes them from there.
func TestMountFetchesProfiledSpansEarly(t *testing.T) {
	dir, ref, d, profiles := profiledSetup(t)
	p := newProfile(d, profile.Read{Path: "lib/c", Length: 10}, profile.Read{Path: "bin/a", Offset: 1000, Length: 5000})

	// Where the reads lie, as a recording finds them.
	first, _, _ := mountProfiled(t, filepath.Join(dir, "first"), ref, d, Options{})
	l := first.mountedLayer(d)
	ranges, err := p.Plan(d, l.TOC())
	if err != nil {
		t.Fatal(err)
	}
	var want int64
	for _, s := range l.Spans(ranges) {
		p.Layers[0].Spans = append(p.Layers[0].Spans, profile.Span{Offset: s.Offset, Length: s.Length})
		want += s.Length
	}
	writeProfile(t, profiles, "run.json", p)

	m, c, mp := mountProfiled(t, filepath.Join(dir, "second"), ref, d, Options{ProfileDir: profiles, NoProfileReferrers: true})
	m.mu.Lock()
	fetched := m.mounts[mp].ahead
	m.mu.Unlock()
	if err := <-fetched; err != nil {
		t.Fatal(err)
	}
	for name, cached := range cachedFiles(m, c, d, "bin/a", "lib/c") {
		if !cached {
			t.Errorf("%s not cached after the mount", name)
		}
	}
	if got := m.mountedLayer(d).Stats().EarlyBytes; got != want || want == 0 {
		t.Errorf("the layer took %d bytes from the early fetch; want the spans' %d", got, want)
	}
}

// TestMountFetchesPrefetchEarly: without a profile, the files the image
// marks to fetch first (its command, before the prefetch landmark; the
// layer descriptor's prefetch-end annotation says where they end) come
// from the requests that start before the layer is open: the mount's
// prefetch takes all of them there.
func TestMountFetchesPrefetchEarly(t *testing.T) {
	dir, plain, _, _ := profiledSetup(t)
	ctx := context.Background()
	// The image again, its command first, as convert puts it by default.
	ref := plain + "-startup"
	src, _ := transport.Open(ctx, transport.Ref{Transport: transport.OCI, Name: filepath.Join(dir, "oci"), Tag: "v1"}, remote.Options{})
	dst, _ := transport.Open(ctx, transport.Ref{Transport: transport.Docker, Name: ref}, remote.Options{})
	if _, err := convert.Image(ctx, src, dst, convert.Options{Format: convert.EStargz, PrioritizedFiles: []string{"bin/a"}}); err != nil {
		t.Fatal(err)
	}
	_, img, err := fetchImage(ctx, imageKey{ref: ref}, remote.Options{})
	if err != nil {
		t.Fatal(err)
	}
	d := img.Manifest.Layers[0].Digest
	end, ok := format.PrefetchEnd(img.Manifest.Layers[0])
	if !ok {
		t.Fatalf("the converted layer's descriptor names no prefetch end: %v", img.Manifest.Layers[0].Annotations)
	}
	m, c, mp := mountProfiled(t, dir, ref, d, Options{NoProfileReferrers: true})
	m.mu.Lock()
	fetched := m.mounts[mp].ahead
	m.mu.Unlock()
	if err := <-fetched; err != nil {
		t.Fatal(err)
	}
	if !cachedFiles(m, c, d, "bin/a")["bin/a"] {
		t.Error("bin/a, the image's command, is not cached after the mount")
	}
	// Everything the layer fetched after its tail (the TOC) came from
	// the early requests, and those hold nothing after the prefetch.
	tocStart, _ := format.TOCStart(img.Manifest.Layers[0])
	st := m.mountedLayer(d).Stats()
	if want := st.FetchedBytes - (st.Size - tocStart); st.EarlyBytes != want || want <= 0 || want > end {
		t.Errorf("the layer took %d bytes from the early fetch; want the %d it fetched after its tail, within the prefetch area's %d", st.EarlyBytes, want, end)
	}
	if held := layer.EarlyHeld(); held != 0 {
		t.Errorf("the early fetches still hold %d bytes after the prefetch", held)
	}
}

// TestMountFetchesWhatReferringProfilesRead: a profile pushed as an
// artifact referring to the image (profile push; Distribution 2.8: the
// referrers tag schema) is found after the image's manifest, without the
// mount waiting for it, and its ranges are fetched.
func TestMountFetchesWhatReferringProfilesRead(t *testing.T) {
	testenv.NeedFUSE(t)
	ctx := context.Background()
	dir := t.TempDir()
	ref, d := profiledImage(t, testenv.NewRegistry(t), dir)
	loc, err := transport.Open(ctx, transport.Ref{Transport: transport.Docker, Name: ref}, remote.Options{})
	if err != nil {
		t.Fatal(err)
	}
	subject, err := loc.Resolve(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := artifact.Push(ctx, loc, subject, newProfile(d, profile.Read{Path: "lib/b", Length: 100})); err != nil {
		t.Fatal(err)
	}

	m, c, _ := mountProfiled(t, dir, ref, d, Options{})
	// Fetched in the background, after the mount: wait for it.
	deadline := time.Now().Add(10 * time.Second)
	for !cachedFiles(m, c, d, "lib/b")["lib/b"] {
		if time.Now().After(deadline) {
			t.Fatalf("what the referring profile read was not fetched (layer: %+v)", m.mountedLayer(d).Stats())
		}
		time.Sleep(20 * time.Millisecond)
	}
	if cachedFiles(m, c, d, "bin/a")["bin/a"] {
		t.Error("bin/a, which no profile reads, was fetched")
	}
}

// TestMountFetchesWhatEveryProfileRead: an image run by two workloads, each
// with its profile: a mount fetches what either read, what both read
// first (nothing here), then each one's own, the one of fewer bytes first.
func TestMountFetchesWhatEveryProfileRead(t *testing.T) {
	dir, ref, d, profiles := profiledSetup(t)
	web := newProfile(d, profile.Read{Path: "bin/a", Length: 100}, profile.Read{Path: "bin/a", Offset: 30000, Length: 100})
	job := newProfile(d, profile.Read{Path: "lib/c", Length: 10})
	writeProfile(t, profiles, "web.json", web)
	writeProfile(t, profiles, "job.json", job)

	m, c, mp := mountProfiled(t, dir, ref, d, Options{ProfileDir: profiles})
	m.mu.Lock()
	fetched := m.mounts[mp].ahead
	m.mu.Unlock()
	if fetched == nil {
		t.Fatal("the mount started no fetch of what the profiles read")
	}
	if err := <-fetched; err != nil {
		t.Fatal(err)
	}
	// (lib/b, small and between them in the blob, comes along.)
	for name, cached := range cachedFiles(m, c, d, "bin/a", "lib/c") {
		if !cached {
			t.Errorf("%s, which a workload read, is not cached after the mount", name)
		}
	}

	plan := planOf(context.Background(), map[string]*profile.Profile{"job": job, "web": web}, d, m.mountedLayer(d).TOC())
	if len(plan) != 2 {
		t.Fatalf("%d phases; want two: nothing is read by both, then each one's own", len(plan))
	}
	var got []string
	for _, r := range slices.Concat(plan...) {
		got = append(got, fmt.Sprintf("%s@%d", r.Entry.Path(), r.Offset))
	}
	if want := []string{"lib/c@0", "bin/a@0", "bin/a@30000"}; !slices.Equal(got, want) {
		t.Errorf("the plan of both workloads' profiles is %v; want %v (the one that read fewer bytes first, each in its order)", got, want)
	}
}

// TestSpansOfSeveralProfiles: the spans several profiles recorded of a
// layer come in the order planOf gives ranges (the bytes several read
// first, then the rest, each interleaved by rank), each byte once, and
// bounded in number.
func TestSpansOfSeveralProfiles(t *testing.T) {
	d := digest.FromString("layer")
	withSpans := func(spans ...profile.Span) *profile.Profile {
		p := newProfile(d)
		p.Layers[0].Spans = spans
		return p
	}
	ps := map[string]*profile.Profile{
		"a": withSpans(profile.Span{Offset: 100, Length: 100}, profile.Span{Offset: 1000, Length: 10}),
		"b": withSpans(profile.Span{Offset: 150, Length: 100}, profile.Span{Offset: 0, Length: 300}, profile.Span{Offset: 5000, Length: 1}),
		"c": newProfile(digest.FromString("another layer")),
	}
	// The bytes both read first ([100, 200)); then a's own (a and b read
	// as many bytes: by name), then b's, less what came before. Their
	// spans name no reads: each ranks by its place in its list.
	span := func(off, n int64, phase, rank int) layer.EarlySpan {
		return layer.EarlySpan{Span: layer.Span{Offset: off, Length: n}, Phase: phase, Rank: rank}
	}
	want := []layer.EarlySpan{span(100, 100, 0, 0), span(1000, 10, 1, 1), span(200, 50, 2, 0), span(0, 100, 2, 1), span(250, 50, 2, 1), span(5000, 1, 2, 2)}
	if got := spansOf(ps, d); !slices.Equal(got, want) {
		t.Errorf("spans %v; want %v", got, want)
	}
	var many []profile.Span
	for i := range 2 * maxEarlySpans {
		many = append(many, profile.Span{Offset: int64(i) * 10, Length: 5})
	}
	if got := spansOf(map[string]*profile.Profile{"many": withSpans(many...)}, d); len(got) != maxEarlySpans {
		t.Errorf("%d spans of a profile that lists %d; want at most %d", len(got), len(many), maxEarlySpans)
	}
}

// TestSharedFirst: the bytes another profile reads too come first (of the
// same file), interleaved by rank; then each profile's own.
func TestSharedFirst(t *testing.T) {
	type read struct {
		file     string
		off, len int64
	}
	item := func(r read) (any, layer.Span) { return r.file, layer.Span{Offset: r.off, Length: r.len} }
	cut := func(r read, s layer.Span) read { return read{r.file, s.Offset, s.Length} }
	web := []read{{"bin/web", 0, 100}, {"lib/libc", 0, 4096}, {"etc/web.conf", 0, 10}}
	job := []read{{"bin/job", 0, 50}, {"lib/libc", 1000, 100}, {"etc/web.conf", 10, 10}}
	// libc's bytes that both read, interleaved by rank; then web's own
	// (its libc cut around job's), in its order; then job's.
	want := []read{{"lib/libc", 1000, 100}, {"lib/libc", 1000, 100}, {"bin/web", 0, 100}, {"lib/libc", 0, 1000}, {"lib/libc", 1100, 2996}, {"etc/web.conf", 0, 10}, {"bin/job", 0, 50}, {"etc/web.conf", 10, 10}}
	shared, own := sharedFirst([][]read{web, job}, item, cut)
	if got := slices.Concat(append([][]read{shared}, own...)...); !slices.Equal(got, want) || len(shared) != 2 || len(own) != 2 {
		t.Errorf("sharedFirst = %v then %v; want %v: the first two shared, then web's, then job's", shared, own, want)
	}
	if got, own := sharedFirst([][]read{web}, item, cut); !slices.Equal(got, web) || own != nil {
		t.Errorf("sharedFirst of one profile = %v; want it as it is", got)
	}
}

// TestProfilesOfImage: of the profiles in the directory, an image uses
// those whose every layer is one of its own: not another image's that
// shares its base layer.
func TestProfilesOfImage(t *testing.T) {
	base, app, other := digest.FromString("base"), digest.FromString("app"), digest.FromString("other app")
	withLayers := func(ds ...digest.Digest) *profile.Profile {
		p := newProfile(ds[0])
		for _, d := range ds[1:] {
			p.Layers = append(p.Layers, profile.Layer{Digest: d})
		}
		return p
	}
	ps := map[string]*profile.Profile{
		"app":   withLayers(base, app),
		"other": withLayers(base, other),
		"base":  withLayers(base),
	}
	image := []ocispec.Descriptor{{Digest: base}, {Digest: app}}
	got := slices.Sorted(maps.Keys(ofImage(ps, image)))
	if want := []string{"app", "base"}; !slices.Equal(got, want) {
		t.Errorf("the image's profiles are %v; want %v", got, want)
	}
}

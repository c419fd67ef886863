package mounter

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/lazypull/lazypull/cache"
	"github.com/lazypull/lazypull/internal/testenv"
	"github.com/lazypull/lazypull/labels"
	"github.com/lazypull/lazypull/profile"
	"github.com/lazypull/lazypull/profile/artifact"
	"github.com/lazypull/lazypull/remote"
	"github.com/lazypull/lazypull/transport"
)

// TestMountFetchesWhatProfilesRead: a layer that a workload profile in the
// profile directory names fetches, at mount, the ranges the profile read
// and nothing else (not the files the image marks); profiles that do not
// parse or do not fit the layer are left out, and the mount works.
func TestMountFetchesWhatProfilesRead(t *testing.T) {
	testenv.NeedFUSE(t)
	ctx := context.Background()
	dir := t.TempDir()
	reg := testenv.NewRegistry(t)
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
	d := layers[0].Digest

	profiles := filepath.Join(dir, "profiles")
	os.Mkdir(profiles, 0o700)
	write := func(name string, p *profile.Profile) {
		data, err := p.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(profiles, name), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("run.json", &profile.Profile{SchemaVersion: 1, MediaType: profile.MediaType, Layers: []profile.Layer{{Digest: d}},
		Reads: []profile.Read{{Path: "lib/b", Offset: 0, Length: 100}, {Path: "bin/a", Offset: 1000, Length: 5000}}})
	write("other-image.json", &profile.Profile{SchemaVersion: 1, MediaType: profile.MediaType, Layers: []profile.Layer{{Digest: d}},
		Reads: []profile.Read{{Path: "lib/c", Length: 10}, {Path: "no/such/file", Length: 10}}})
	os.WriteFile(filepath.Join(profiles, "garbage.json"), []byte("{not json"), 0o600)

	c, err := cache.New(filepath.Join(dir, "cache"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	m := New(c, Options{NoBackground: true, ProfileDir: profiles})
	defer m.Close()
	mp := filepath.Join(dir, "mnt")
	os.Mkdir(mp, 0o755)
	if err := m.Mount(ctx, mp, map[string]string{labels.CRIImageRef: ref, labels.CRIDigest: d.String()}); err != nil {
		t.Fatal(err)
	}
	defer m.Unmount(ctx, mp)
	m.mu.Lock()
	fetched := m.mounts[mp].profiled
	m.mu.Unlock()
	if fetched == nil {
		t.Fatal("the mount started no fetch of what the profile read")
	}
	if err := <-fetched; err != nil {
		t.Fatal(err)
	}
	l := m.mountedLayer(d)
	for name, want := range map[string]bool{"bin/a": true, "lib/b": true, "lib/c": false} {
		e, _ := l.TOC().Lookup(name)
		if got := c.Has(e.Chunks()[0].Digest()); got != want {
			t.Errorf("%s cached after the mount: %v; want %v", name, got, want)
		}
	}
	if got, err := os.ReadFile(filepath.Join(mp, "lib/b")); err != nil || !bytes.Equal(got, bytes.Repeat([]byte("lib/b"), 20000)) {
		t.Errorf("read lib/b: %v", err)
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
	reg := testenv.NewRegistry(t)
	img := testenv.Image{Layers: [][]testenv.Entry{{
		testenv.Dir("bin"), {Path: "bin/a", Type: '0', Mode: 0o755, Data: bytes.Repeat([]byte("a"), 40000)},
		{Path: "bin/b", Type: '0', Mode: 0o755, Data: bytes.Repeat([]byte("b"), 40000)},
	}}, Cmd: []string{"/bin/a"}}
	layout := filepath.Join(dir, "oci")
	if _, err := img.WriteOCILayout(layout, "v1"); err != nil {
		t.Fatal(err)
	}
	ref := reg.Host + "/referred:esgz"
	layers, _ := convertTo(t, layout, ref)
	d := layers[0].Digest
	loc, err := transport.Open(ctx, transport.Ref{Transport: transport.Docker, Name: ref}, remote.Options{})
	if err != nil {
		t.Fatal(err)
	}
	subject, err := loc.Resolve(ctx)
	if err != nil {
		t.Fatal(err)
	}
	p := &profile.Profile{SchemaVersion: 1, MediaType: profile.MediaType, Layers: []profile.Layer{{Digest: d}},
		Reads: []profile.Read{{Path: "bin/b", Offset: 0, Length: 100}}}
	if _, err := artifact.Push(ctx, loc, subject, p); err != nil {
		t.Fatal(err)
	}

	c, err := cache.New(filepath.Join(dir, "cache"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	m := New(c, Options{NoBackground: true})
	defer m.Close()
	mp := filepath.Join(dir, "mnt")
	os.Mkdir(mp, 0o755)
	if err := m.Mount(ctx, mp, map[string]string{labels.CRIImageRef: ref, labels.CRIDigest: d.String()}); err != nil {
		t.Fatal(err)
	}
	defer m.Unmount(ctx, mp)
	l := m.mountedLayer(d)
	chunk := func(name string) bool {
		e, _ := l.TOC().Lookup(name)
		return c.Has(e.Chunks()[0].Digest())
	}
	// Fetched in the background, after the mount: wait for it.
	deadline := time.Now().Add(10 * time.Second)
	for !chunk("bin/b") {
		if time.Now().After(deadline) {
			t.Fatalf("what the referring profile read was not fetched (layer: %+v)", l.Stats())
		}
		time.Sleep(20 * time.Millisecond)
	}
	if chunk("bin/a") {
		t.Error("bin/a, which no profile reads, was fetched")
	}
}

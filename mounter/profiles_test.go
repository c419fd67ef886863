package mounter

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/lazypull/lazypull/cache"
	"github.com/lazypull/lazypull/internal/testenv"
	"github.com/lazypull/lazypull/labels"
	"github.com/lazypull/lazypull/profile"
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

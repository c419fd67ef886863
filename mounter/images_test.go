package mounter

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/lazypull/lazypull/cache"
	"github.com/lazypull/lazypull/internal/regproxy"
	"github.com/lazypull/lazypull/internal/testenv"
	"github.com/lazypull/lazypull/labels"
	"github.com/lazypull/lazypull/remote"
	"github.com/lazypull/lazypull/transport"
)

// A Prepare whose labels carry the image's manifest and config (as the
// snapshotter hands them over from containerd's content store) mounts
// without asking the registry for either; handed over wrong, they are
// fetched instead.
func TestMountWithStoredImage(t *testing.T) {
	testenv.NeedFUSE(t)
	ctx := context.Background()
	dir := t.TempDir()
	reg := testenv.NewRegistry(t)
	layout, err := testenv.HelloLayout(dir)
	if err != nil {
		t.Fatal(err)
	}
	convertTo(t, layout, reg.Host+"/hello:esgz")

	var mu sync.Mutex
	var asked []string // what the mounter asked the registry for, besides ranges of layers
	p, err := regproxy.Start(reg.Host, regproxy.WithRequestHook(func(r regproxy.RequestRecord) {
		if r.Kind != regproxy.BlobRange {
			mu.Lock()
			asked = append(asked, r.Method+" "+r.Path)
			mu.Unlock()
		}
	}))
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	ref := p.Addr() + "/hello:esgz"

	// What containerd stored: the manifest and config, as the registry has them.
	loc, _, err := locationOf(ctx, imageKey{ref: ref}, remote.Options{})
	if err != nil {
		t.Fatal(err)
	}
	desc, err := loc.Resolve(ctx)
	if err != nil {
		t.Fatal(err)
	}
	img, err := transport.ReadImage(ctx, loc, desc)
	if err != nil {
		t.Fatal(err)
	}
	manifest, err := transport.FetchJSON(ctx, loc, desc, new(any))
	if err != nil {
		t.Fatal(err)
	}
	config, err := transport.FetchJSON(ctx, loc, img.Manifest.Config, new(any))
	if err != nil {
		t.Fatal(err)
	}

	c, err := cache.New(filepath.Join(dir, "cache"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for _, tc := range []struct {
		name          string
		config        []byte
		wantManifests bool
	}{
		{"as stored", config, false},
		{"config altered", append([]byte(" "), config...), true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := New(c, Options{NoBackground: true, NoPrefetch: true, NoProfileReferrers: true})
			defer m.Close()
			mu.Lock()
			asked = nil
			mu.Unlock()
			mp := filepath.Join(t.TempDir(), "mnt")
			os.Mkdir(mp, 0o755)
			lbls := map[string]string{
				labels.CRIImageRef: ref, labels.CRIDigest: img.Manifest.Layers[0].Digest.String(), labels.CRIManifest: desc.Digest.String(),
				labels.ManifestContent: string(manifest), labels.ConfigContent: string(tc.config),
			}
			if err := m.Mount(ctx, mp, lbls); err != nil {
				t.Fatal(err)
			}
			defer m.Unmount(ctx, mp)
			if data, err := os.ReadFile(filepath.Join(mp, "hello")); err != nil || len(data) == 0 {
				t.Errorf("read /hello of the mounted layer: %d bytes, %v", len(data), err)
			}
			mu.Lock()
			defer mu.Unlock()
			var manifests, configs int
			for _, a := range asked {
				if strings.Contains(a, "/manifests/") {
					manifests++
				}
				if strings.HasSuffix(a, "/blobs/"+img.Manifest.Config.Digest.String()) {
					configs++
				}
			}
			if got := manifests > 0 && configs > 0; got != tc.wantManifests {
				t.Errorf("the mounter asked the registry for %v; want the manifest and config fetched: %v", asked, tc.wantManifests)
			}
		})
	}

	// Checked as a fetch by digest is: another manifest's bytes, an index,
	// a config that is not the manifest's are refused.
	s := storedImage{manifest: manifest, config: config}
	if _, err := s.image(desc.Digest); err != nil {
		t.Errorf("the image as stored: %v", err)
	}
	if _, err := s.image(digest.FromString("another")); err == nil {
		t.Error("a manifest under another digest was taken")
	}
	index := []byte(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}`)
	if _, err := (&storedImage{manifest: index, config: config}).image(digest.FromBytes(index)); err == nil {
		t.Error("an index was taken for a manifest")
	}
	if _, err := (&storedImage{manifest: manifest, config: []byte("{}")}).image(desc.Digest); err == nil {
		t.Error("a config that is not the manifest's was taken")
	}
}

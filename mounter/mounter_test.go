package mounter

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/lazypull/lazypull/labels"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/lazypull/lazypull/cache"
	"github.com/lazypull/lazypull/convert"
	"github.com/lazypull/lazypull/internal/testenv"
	"github.com/lazypull/lazypull/remote"
	"github.com/lazypull/lazypull/transport"
)

// convertTo converts the image at layout:v1 to eStargz at ref, and returns
// its layers and diff_ids.
func convertTo(t *testing.T, layout, ref string) ([]ocispec.Descriptor, []digest.Digest) {
	t.Helper()
	ctx := context.Background()
	src, _ := transport.Open(ctx, transport.Ref{Transport: transport.OCI, Name: layout, Tag: "v1"}, remote.Options{})
	dst, _ := transport.Open(ctx, transport.Ref{Transport: transport.Docker, Name: ref}, remote.Options{})
	if _, err := convert.Image(ctx, src, dst, convert.Options{Format: convert.EStargz}); err != nil {
		t.Fatal(err)
	}
	_, img, err := fetchImage(ctx, imageKey{ref: ref}, remote.Options{})
	if err != nil {
		t.Fatal(err)
	}
	return img.Manifest.Layers, img.Config.RootFS.DiffIDs
}

// TestMountWithCRILabels mounts a layer the way containerd's CRI plugin
// asks for it: only the image reference and the layer digest, so that the
// mounter must find the layer's descriptor in the image's manifest.
func TestMountWithCRILabels(t *testing.T) {
	testenv.NeedFUSE(t)
	ctx := context.Background()
	dir := t.TempDir()
	reg := testenv.NewRegistry(t)

	layout, err := testenv.HelloLayout(dir)
	if err != nil {
		t.Fatal(err)
	}
	plainRef, lazyRef := reg.Host+"/hello:v1", reg.Host+"/hello:esgz"
	convertTo(t, layout, lazyRef)
	if err := testenv.Push(ctx, layout, "v1", plainRef); err != nil {
		t.Fatal(err)
	}
	layers := func(ref string) []ocispec.Descriptor {
		_, img, err := fetchImage(ctx, imageKey{ref: ref}, remote.Options{})
		if err != nil {
			t.Fatal(err)
		}
		return img.Manifest.Layers
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
	lazy := layers(lazyRef)
	cri := map[string]string{labels.CRIImageRef: lazyRef, labels.CRIDigest: lazy[0].Digest.String(), labels.CRILayers: lazy[0].Digest.String() + "," + lazy[1].Digest.String()}
	if err := m.Mount(ctx, mp, cri); err != nil {
		t.Fatalf("mount with CRI labels: %v", err)
	}
	if fi, err := os.Stat(filepath.Join(mp, "hello")); err != nil || fi.Size() == 0 {
		t.Errorf("the mounted layer lacks /hello: %v", err)
	}
	if err := m.Mount(ctx, mp, cri); err != nil {
		t.Errorf("mounting again what is mounted (a restore) failed: %v", err)
	}
	if err := m.Unmount(ctx, mp); err != nil {
		t.Fatal(err)
	}
	if m := testenv.MountsUnder(mp); len(m) > 0 {
		t.Errorf("still mounted after Unmount: %v", m)
	}

	// An ordinary layer, and a Prepare with no image labels, are declined.
	plain := layers(plainRef)
	err = m.Mount(ctx, mp, map[string]string{labels.CRIImageRef: plainRef, labels.CRIDigest: plain[0].Digest.String()})
	if !errors.Is(err, errNotLazy) {
		t.Errorf("an ordinary layer: err = %v, want a not-lazy error", err)
	}
	if err := m.Mount(ctx, mp, map[string]string{}); !errors.Is(err, errNotLazy) || !strings.Contains(err.Error(), "lazypull pull") {
		t.Errorf("no labels: err = %v", err)
	}
}

// TestUnmountDemotesTheLayer: once no snapshot uses a layer, its chunks are
// the first the cache gives up when full, before older chunks of anything
// still in use.
func TestUnmountDemotesTheLayer(t *testing.T) {
	testenv.NeedFUSE(t)
	ctx := context.Background()
	dir := t.TempDir()
	ref, d := profiledImage(t, testenv.NewRegistry(t), dir)
	c, err := cache.New(filepath.Join(dir, "cache"), cache.WithMaxBytes(400<<10))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	older := bytes.Repeat([]byte("in use elsewhere"), 100<<10/16)
	if err := c.Put(digest.FromBytes(older), older); err != nil {
		t.Fatal(err)
	}

	m := New(c, Options{NoBackground: true, NoPrefetch: true})
	defer m.Close()
	mp := filepath.Join(dir, "mnt")
	os.Mkdir(mp, 0o755)
	if err := m.Mount(ctx, mp, map[string]string{labels.CRIImageRef: ref, labels.CRIDigest: d.String()}); err != nil {
		t.Fatal(err)
	}
	// lib/c is one chunk, in an entry of its own.
	if _, err := os.ReadFile(filepath.Join(mp, "lib/c")); err != nil {
		t.Fatal(err)
	}
	e, _ := m.mountedLayer(d).TOC().Lookup("lib/c")
	chunk := e.Chunks()[0].Digest()
	if !c.Has(chunk) {
		t.Fatal("reading lib/c cached nothing")
	}
	if err := m.Unmount(ctx, mp); err != nil {
		t.Fatal(err)
	}

	newer := bytes.Repeat([]byte("a new layer's chunk"), 300<<10/19)
	if err := c.Put(digest.FromBytes(newer), newer); err != nil {
		t.Fatal(err)
	}
	if c.Has(chunk) || !c.Has(digest.FromBytes(older)) {
		t.Errorf("over its limit, the cache kept the unmounted layer's chunk (%v) and gave up an older one in use (%v)", c.Has(chunk), !c.Has(digest.FromBytes(older)))
	}
}

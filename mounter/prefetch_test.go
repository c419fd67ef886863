package mounter

import (
	"bytes"
	"context"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/lazypull/lazypull/cache"
	"github.com/lazypull/lazypull/convert"
	"github.com/lazypull/lazypull/internal/regproxy"
	"github.com/lazypull/lazypull/internal/testenv"
	"github.com/lazypull/lazypull/labels"
	"github.com/lazypull/lazypull/remote"
	"github.com/lazypull/lazypull/transport"
)

// A mount does not wait for its prefetch: with the registry holding back
// the prefetch area's bytes, the mount returns, the prefetch is still under
// way, and files outside it read right.
func TestMountDoesNotWaitForPrefetch(t *testing.T) {
	testenv.NeedFUSE(t)
	ctx := context.Background()
	dir := t.TempDir()
	reg := testenv.NewRegistry(t)
	file := func(p string, n int) testenv.Entry {
		return testenv.Entry{Path: p, Type: '0', Mode: 0o644, Data: bytes.Repeat([]byte(p), n)}
	}
	img := testenv.Image{Layers: [][]testenv.Entry{{
		testenv.Dir("bin"), testenv.Dir("lib"), file("bin/a", 40000), file("lib/c", 10000),
	}}, Cmd: []string{"/bin/a"}}
	layout := filepath.Join(dir, "oci")
	if _, err := img.WriteOCILayout(layout, "v1"); err != nil {
		t.Fatal(err)
	}
	src, _ := transport.Open(ctx, transport.Ref{Transport: transport.OCI, Name: layout, Tag: "v1"}, remote.Options{})
	dst, _ := transport.Open(ctx, transport.Ref{Transport: transport.Docker, Name: reg.Host + "/prefetch:esgz"}, remote.Options{})
	if _, err := convert.Image(ctx, src, dst, convert.Options{Format: convert.EStargz, PrioritizedFiles: []string{"bin/a"}}); err != nil {
		t.Fatal(err)
	}

	p, err := regproxy.Start(reg.Host)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	// The prefetch area starts the blob; the TOC and lib/c do not.
	p.AddFault(regproxy.Fault{Kind: regproxy.Stall, Match: func(r *http.Request) bool {
		return strings.HasPrefix(r.Header.Get("Range"), "bytes=0-")
	}})
	ref := p.Addr() + "/prefetch:esgz"
	_, im, err := fetchImage(ctx, imageKey{ref: ref}, remote.Options{})
	if err != nil {
		t.Fatal(err)
	}

	c, err := cache.New(filepath.Join(dir, "cache"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	m := New(c, Options{NoBackground: true, PrefetchTimeout: time.Hour})
	defer m.Close()
	mp := filepath.Join(dir, "mnt")
	os.Mkdir(mp, 0o755)
	mctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	if err := m.Mount(mctx, mp, map[string]string{labels.CRIImageRef: ref, labels.CRIDigest: im.Manifest.Layers[0].Digest.String()}); err != nil {
		t.Fatal(err)
	}
	defer m.Unmount(ctx, mp)
	m.mu.Lock()
	ahead := m.mounts[mp].ahead
	m.mu.Unlock()
	if ahead == nil {
		t.Fatal("the mount started no prefetch")
	}
	select {
	case err := <-ahead:
		t.Fatalf("the prefetch ended (%v) before the mount returned, though the registry holds it back", err)
	default:
	}
	if got, err := os.ReadFile(filepath.Join(mp, "lib/c")); err != nil || !bytes.Equal(got, bytes.Repeat([]byte("lib/c"), 10000)) {
		t.Errorf("read lib/c during the prefetch: %v, or wrong bytes", err)
	}
}

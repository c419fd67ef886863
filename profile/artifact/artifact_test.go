package artifact

import (
	"context"
	"path/filepath"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/lazypull/lazypull/internal/testenv"
	"github.com/lazypull/lazypull/profile"
	"github.com/lazypull/lazypull/remote"
	"github.com/lazypull/lazypull/transport"
)

// TestPushFind: profiles pushed to a real registry (Distribution 2.8: no
// referrers API, so the referrers tag schema) are found for the image
// they refer to, each once, and the image's digest stays what it was.
func TestPushFind(t *testing.T) {
	ctx := context.Background()
	reg := testenv.NewRegistry(t)
	dir := t.TempDir()
	layout, err := testenv.HelloLayout(dir)
	if err != nil {
		t.Fatal(err)
	}
	ref := reg.Host + "/hello:v1"
	if err := testenv.Push(ctx, layout, "v1", ref); err != nil {
		t.Fatal(err)
	}
	loc, err := transport.Open(ctx, transport.Ref{Transport: transport.Docker, Name: ref}, remote.Options{})
	if err != nil {
		t.Fatal(err)
	}
	subject, err := loc.Resolve(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if found, err := Find(ctx, loc, subject.Digest); err != nil || len(found) != 0 {
		t.Fatalf("Find before any push = %v, %v; want none", found, err)
	}
	layer := digest.FromString("a layer")
	mk := func(args ...string) *profile.Profile {
		return &profile.Profile{SchemaVersion: 1, MediaType: profile.MediaType, Workload: profile.Workload{Args: args},
			Layers: []profile.Layer{{Digest: layer}}, Reads: []profile.Read{{Path: "hello", Length: 4096}}}
	}
	for _, p := range []*profile.Profile{mk("/hello"), mk("/hello", "/data"), mk("/hello")} { // the last again: listed once
		if _, err := Push(ctx, loc, subject, p); err != nil {
			t.Fatal(err)
		}
	}
	found, err := Find(ctx, loc, subject.Digest)
	if err != nil {
		t.Fatal(err)
	}
	var workloads []string
	for _, p := range found {
		workloads = append(workloads, strings.Join(p.Workload.Args, " "))
	}
	if len(found) != 2 || !strings.Contains(strings.Join(workloads, ","), "/hello /data") {
		t.Errorf("found profiles of %q; want the two pushed", workloads)
	}
	if again, err := loc.Resolve(ctx); err != nil || again.Digest != subject.Digest {
		t.Errorf("the image's digest after the pushes: %v, %v; want %s", again.Digest, err, subject.Digest)
	}
	// An OCI layout keeps no referrers: said, not silently lost.
	lloc, _ := transport.Open(ctx, transport.Ref{Transport: transport.OCI, Name: filepath.Join(dir, "oci"), Tag: "v1"}, remote.Options{})
	if _, err := Push(ctx, lloc, subject, mk("/hello")); err == nil {
		t.Error("Push to an OCI layout succeeded; it keeps no referrers")
	}
}

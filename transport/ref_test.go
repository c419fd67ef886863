package transport

import (
	"bytes"
	"context"
	"io"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/lazypull/lazypull/remote"
)

var defaultOpts = remote.Options{}

func TestParseRef(t *testing.T) {
	for in, want := range map[string]Ref{
		"docker://alpine":                        {Transport: Docker, Name: "docker.io/library/alpine:latest"},
		"docker://127.0.0.1:5000/app:v1":         {Transport: Docker, Name: "127.0.0.1:5000/app:v1"},
		"docker://r.example/a/b@sha256:" + hex64: {Transport: Docker, Name: "r.example/a/b@sha256:" + hex64},
		"oci:/tmp/layout:v1":                     {Transport: OCI, Name: "/tmp/layout", Tag: "v1"},
		"oci:./layout":                           {Transport: OCI, Name: "./layout"},
	} {
		got, err := ParseRef(in)
		if err != nil || got != want {
			t.Errorf("ParseRef(%q) = %+v, %v; want %+v", in, got, err, want)
		}
	}
	for _, bad := range []string{"alpine", "docker:alpine", "oci:", "dir:/x"} {
		if _, err := ParseRef(bad); err == nil {
			t.Errorf("ParseRef(%q) accepted", bad)
		}
	}
	if _, err := ParseRef("alpine"); err == nil || !strings.Contains(err.Error(), "docker://alpine") {
		t.Errorf("a bare reference should suggest docker://: %v", err)
	}
}

const hex64 = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

func TestLayoutRoundTrip(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	loc, _ := Open(ctx, Ref{Transport: OCI, Name: dir, Tag: "v1"}, defaultOpts)
	blob := []byte("a blob")
	desc := ocispec.Descriptor{MediaType: ocispec.MediaTypeImageManifest, Digest: digest.FromBytes(blob), Size: int64(len(blob))}
	if err := loc.Push(ctx, desc, bytes.NewReader([]byte("not the blob"))); err == nil {
		t.Errorf("a push whose bytes differ from the descriptor was stored")
	}
	if err := loc.Push(ctx, desc, bytes.NewReader(blob)); err != nil {
		t.Fatal(err)
	}
	if err := loc.Tag(ctx, desc); err != nil {
		t.Fatal(err)
	}
	got, err := loc.Resolve(ctx)
	if err != nil || got.Digest != desc.Digest {
		t.Fatalf("Resolve = %v, %v", got.Digest, err)
	}
	rc, err := loc.Fetch(ctx, got)
	if err != nil {
		t.Fatal(err)
	}
	data, err := io.ReadAll(rc)
	rc.Close()
	if err != nil || !bytes.Equal(data, blob) {
		t.Errorf("Fetch = %q, %v", data, err)
	}
	other, _ := Open(ctx, Ref{Transport: OCI, Name: dir, Tag: "v2"}, defaultOpts)
	if _, err := other.Resolve(ctx); err == nil {
		t.Errorf("an absent tag resolved")
	}
	// A fetch whose stored bytes were damaged fails at the end.
	lied := desc
	lied.Size = 3
	rc, _ = loc.Fetch(ctx, lied)
	if _, err := io.ReadAll(rc); err == nil {
		t.Errorf("a fetch of the wrong size succeeded")
	}
}

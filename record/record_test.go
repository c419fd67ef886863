package record

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	containerd "github.com/containerd/containerd/v2/client"

	"github.com/lazypull/lazypull/convert"
	"github.com/lazypull/lazypull/internal/testenv"
	"github.com/lazypull/lazypull/profile"
	"github.com/lazypull/lazypull/remote"
	"github.com/lazypull/lazypull/transport"
)

// TestRecord runs the hello image's workload through a real containerd
// and runc on its eStargz layers mounted in record mode: the profile names
// what hello read (itself, the files it lists, in both layers, in the order
// read) and not what it never read; nothing is left mounted, on disk or in
// containerd.
func TestRecord(t *testing.T) {
	testenv.NeedRoot(t)
	testenv.NeedFUSE(t)
	testenv.Need(t, "containerd "+testenv.Containerd2.Name, testenv.Containerd2.Installed())
	ctx := context.Background()
	dir := t.TempDir()
	layout, err := testenv.HelloLayout(dir)
	if err != nil {
		t.Fatal(err)
	}
	esgz := transport.Ref{Transport: transport.OCI, Name: filepath.Join(dir, "esgz"), Tag: "esgz"}
	src, _ := transport.Open(ctx, transport.Ref{Transport: transport.OCI, Name: layout, Tag: "v1"}, remote.Options{})
	dst, _ := transport.Open(ctx, esgz, remote.Options{})
	if _, err := convert.Image(ctx, src, dst, convert.Options{Format: convert.EStargz}); err != nil {
		t.Fatal(err)
	}

	cdir := filepath.Join(dir, "containerd")
	os.Mkdir(cdir, 0o700)
	cd, err := testenv.StartContainerd(testenv.Containerd2, cdir, filepath.Join(cdir, "none.sock"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer cd.Stop()
	client, err := containerd.New(cd.Address, containerd.WithDefaultNamespace(testenv.Namespace))
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()

	tmp := filepath.Join(dir, "tmp")
	os.Mkdir(tmp, 0o700)
	var out bytes.Buffer
	p, err := Run(ctx, esgz, Options{Client: client, WaitFor: "/data/opaque/new.txt", Output: &out, TempDir: tmp})
	if err != nil {
		t.Fatalf("%v; the workload printed:\n%s", err, out.String())
	}
	if !strings.HasPrefix(out.String(), "hello from lazypull") {
		t.Errorf("the workload printed %q", out.String())
	}
	if len(p.Layers) != 2 || p.Workload.WaitFor == "" || !slices.Equal(p.Workload.Args, []string{"/hello", "/data"}) {
		t.Errorf("profile layers %v, workload %+v", p.Layers, p.Workload)
	}
	read := func(layer int, path string) int {
		return slices.IndexFunc(p.Reads, func(r profile.Read) bool { return r.Layer == layer && r.Path == path })
	}
	// Every file hello reads, from either layer, even one cached before
	// it was read (fetched with a neighbour): a recording layer serves
	// every read itself.
	hello := read(0, "hello")
	if hello != 0 || read(1, "data/added.txt") < 0 || read(0, "data/keep.txt") < 0 || read(1, "data/opaque/new.txt") < 0 {
		t.Errorf("reads %+v: want hello first, then data/added.txt and data/opaque/new.txt (upper) and data/keep.txt (base)", p.Reads)
	}
	if r := p.Reads[hello]; r.Offset != 0 || len(r.Chunks) == 0 {
		t.Errorf("the read of hello %+v: want its start, with its chunks", r)
	}
	if i := read(0, "opt/unused.bin"); i >= 0 {
		t.Errorf("the profile names opt/unused.bin, which hello never reads: %+v", p.Reads[i])
	}
	if err := p.Validate(); err != nil {
		t.Errorf("the profile does not validate: %v", err)
	}
	// Where the reads lie in each blob, for a node to fetch before it
	// has the TOC.
	// Each names the first read that needs it, a read of its layer: the
	// first span of layer 0 is hello's start, the image's first read.
	for i, l := range p.Layers {
		if len(l.Spans) == 0 {
			t.Errorf("layer %d (%s): no spans recorded", i, l.Digest)
		}
		for _, s := range l.Spans {
			if s.Read == nil || p.Reads[*s.Read].Layer != i {
				t.Errorf("layer %d: span %d+%d names read %v, not one of the layer's", i, s.Offset, s.Length, s.Read)
			}
		}
	}
	if s := p.Layers[0].Spans; len(s) > 0 && s[0].Read != nil && *s[0].Read != hello {
		t.Errorf("layer 0's first span names read %d; want hello's (%d)", *s[0].Read, hello)
	}
	for _, r := range p.Reads {
		t.Logf("layer %d %s: %d bytes at %d, %d chunks", r.Layer, r.Path, r.Length, r.Offset, len(r.Chunks))
	}

	if m := testenv.MountsUnder(tmp); len(m) > 0 {
		t.Errorf("left mounted: %v", m)
	}
	if left, _ := os.ReadDir(tmp); len(left) > 0 {
		t.Errorf("left in the temporary directory: %v", left)
	}
	if cs, err := client.Containers(ctx); err != nil || len(cs) > 0 {
		t.Errorf("containers left in containerd: %v, %v", cs, err)
	}
}

package mounter

import (
	"context"
	"errors"
	"io/fs"
	"path/filepath"
	"testing"

	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/opencontainers/image-spec/identity"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/lazypull/lazypull/composefs/objects"
	"github.com/lazypull/lazypull/convert"
	"github.com/lazypull/lazypull/internal/testenv"
	"github.com/lazypull/lazypull/labels"
	"github.com/lazypull/lazypull/remote"
	"github.com/lazypull/lazypull/transport"
)

// TestFillPullsOnlyWhatTheStoreLacks: the layers of a zstd:chunked image
// go into the store checked against their diff_ids, each with its
// metadata image; the same layers again (another image, say) fetch no
// file; a layer under another chain ID, or in eStargz, is declined.
func TestFillPullsOnlyWhatTheStoreLacks(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	reg := testenv.NewRegistry(t)
	layout, err := testenv.HelloLayout(dir)
	if err != nil {
		t.Fatal(err)
	}
	push := func(ref string, f convert.Format) ([]ocispec.Descriptor, []string) {
		return pushConverted(t, layout, ref, f)
	}
	zref, eref := reg.Host+"/hello:zstd", reg.Host+"/hello:esgz"
	zlayers, zchains := push(zref, convert.ZstdChunked)
	elayers, echains := push(eref, convert.EStargz)

	store, err := objects.Open(ctx, filepath.Join(dir, "store"))
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	f := NewFiller(store, Options{})
	defer f.Close()
	fill := func(owner, ref string, layers []ocispec.Descriptor, i int, chain string) (FillStats, error) {
		lbls := labels.ForLayer(ref, "", layers[i], layers)
		lbls[snapshots.LabelSnapshotRef] = chain
		return f.Fill(ctx, owner, filepath.Join(dir, owner+".erofs"), lbls)
	}
	for i := range zlayers {
		st, err := fill("first-"+string(rune('a'+i)), zref, zlayers, i, zchains[i])
		if err != nil {
			t.Fatalf("layer %d: %v", i, err)
		}
		t.Logf("layer %d: %+v", i, st)
		if st.Objects == 0 || st.Fetched+st.Present != st.Objects || st.ImageBytes == 0 || st.Bytes <= st.ImageBytes {
			t.Errorf("layer %d: %+v; want every object fetched or present, and an image", i, st)
		}
		again, err := fill("again-"+string(rune('a'+i)), zref, zlayers, i, zchains[i])
		if err != nil || again.Fetched != 0 || again.Reads != 0 || again.Present != st.Objects {
			t.Errorf("layer %d again: %+v, %v; want every object present, nothing read", i, again, err)
		}
	}
	if _, err := fill("wrong-chain", zref, zlayers, 0, zchains[len(zchains)-1]); err == nil || len(zchains) == 1 {
		t.Errorf("a layer under another chain ID: %v; want it refused", err)
	}
	if _, err := fill("estargz", eref, elayers, 0, echains[0]); !errors.Is(err, errNotLazy) {
		t.Errorf("an eStargz layer: %v; want it declined", err)
	}
	if refs, err := store.Refs("wrong-chain"); !errors.Is(err, fs.ErrNotExist) || len(refs) != 0 {
		t.Errorf("a refused fill claimed %v, %v", refs, err)
	}
}

// pushConverted converts the OCI layout's image v1 to format f, pushes it
// as ref, and returns its layers and their chain IDs.
func pushConverted(t *testing.T, layout, ref string, f convert.Format) ([]ocispec.Descriptor, []string) {
	t.Helper()
	ctx := context.Background()
	src, _ := transport.Open(ctx, transport.Ref{Transport: transport.OCI, Name: layout, Tag: "v1"}, remote.Options{})
	dst, _ := transport.Open(ctx, transport.Ref{Transport: transport.Docker, Name: ref}, remote.Options{})
	if _, err := convert.Image(ctx, src, dst, convert.Options{Format: f}); err != nil {
		t.Fatal(err)
	}
	_, img, err := fetchImage(ctx, imageKey{ref: ref}, remote.Options{})
	if err != nil {
		t.Fatal(err)
	}
	layers, diffIDs := img.Manifest.Layers, img.Config.RootFS.DiffIDs
	chains := make([]string, len(diffIDs))
	for i := range diffIDs {
		chains[i] = identity.ChainID(diffIDs[:i+1]).String()
	}
	return layers, chains
}

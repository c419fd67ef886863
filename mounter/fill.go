package mounter

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"sync"

	"github.com/containerd/containerd/v2/core/snapshots"

	"github.com/lazypull/lazypull/composefs/objects"
	"github.com/lazypull/lazypull/composefs/partial"
	"github.com/lazypull/lazypull/composefs/tocimage"
	"github.com/lazypull/lazypull/format"
	"github.com/lazypull/lazypull/format/zstdchunked"
	"github.com/lazypull/lazypull/remote"
)

// Filler pulls lazily pullable layers into the composefs object store
// rather than mounting them: only the files whose content the store lacks
// are fetched (composefs/partial), the layer is checked against its
// image's diff_id by rebuilding its tar from its tar-split data, and its
// metadata image is written from its TOC (composefs/tocimage). A layer it
// cannot check so is declined (errNotLazy): eStargz layers, which have no
// tar-split data, and zstd:chunked ones without it. The snapshotter then
// mounts them lazily or unpacks them.
type Filler struct {
	store  *objects.Store
	opts   Options
	images *imageCache // the manifests and configs of the images it filled from

	stop context.CancelFunc
	bg   sync.WaitGroup // image fetches
}

// NewFiller fills store, reaching registries as opts say (Registry, Blob
// and Layer.Limits are used). Close it to end its fetches.
func NewFiller(store *objects.Store, opts Options) *Filler {
	f := &Filler{store: store, opts: opts}
	var ctx context.Context
	ctx, f.stop = context.WithCancel(context.Background())
	f.images = newImageCache(ctx, &f.bg, opts)
	return f
}

// Close ends the fetches of images' manifests in flight.
func (f *Filler) Close() {
	f.stop()
	f.bg.Wait()
}

// FillStats say what a fill did.
type FillStats struct {
	partial.Stats
	ImageBytes int64 // the metadata image's size
	Bytes      int64 // what the layer takes: its image and every object it names
}

// Fill pulls the layer the labels name (a Prepare's, as for Mount) into
// the store, its objects claimed by owner, and writes its metadata image
// to imagePath. After an error nothing is claimed, and the caller may unpack
// the layer instead; errNotLazy says the layer is not one to fill.
func (f *Filler) Fill(ctx context.Context, owner, imagePath string, lbls map[string]string) (FillStats, error) {
	var st FillStats
	t, err := targetFromLabels(lbls)
	if err != nil {
		return st, err
	}
	img, err := f.images.get(ctx, imageKey{ref: t.ref, manifest: t.manifest}, t.stored)
	if err != nil {
		return st, err
	}
	desc, expect, err := img.layer(t, lbls[snapshots.LabelSnapshotRef])
	if err != nil {
		return st, err
	}
	if kind, ok := format.KindOf(desc); !ok || kind != format.ZstdChunked {
		return st, fmt.Errorf("%w: layer %s is not zstd:chunked, whose tar-split data would let a partial pull be checked against the image", errNotLazy, desc.Digest)
	}
	split, ok, err := zstdchunked.TarSplitPosition(desc.Annotations)
	if err != nil {
		return st, fmt.Errorf("layer %s: %w", desc.Digest, err)
	}
	if !ok {
		return st, fmt.Errorf("%w: layer %s has no tar-split data, so a partial pull could not be checked against the image", errNotLazy, desc.Digest)
	}
	blob, err := remote.OpenBlob(ctx, t.ref, desc, f.opts.Registry, f.opts.Blob)
	if err != nil {
		return st, err
	}
	b, _, err := format.Open(blob, desc, format.Options{Limits: f.opts.Layer.Limits})
	if err != nil {
		return st, fmt.Errorf("layer %s: %w", desc.Digest, err)
	}

	batch, err := f.store.Batch(ctx, owner)
	if err != nil {
		return st, err
	}
	committed := false
	defer func() {
		if !committed {
			batch.Abort()
		}
	}()
	if st.Stats, err = partial.Fill(ctx, f.store, batch, blob, b, partial.Options{}); err != nil {
		return st, fmt.Errorf("layer %s: %w", desc.Digest, err)
	}
	// The tar-split data streams in reads of 1 MiB (Open confined its
	// position to the blob).
	splitData := bufio.NewReaderSize(io.NewSectionReader(blob, split.Offset, split.Length), 1<<20)
	if err := partial.VerifyTar(ctx, f.store, b.TOC(), splitData, expect.DiffID); err != nil {
		return st, fmt.Errorf("layer %s: %w", desc.Digest, err)
	}
	ist, err := tocimage.Write(ctx, b.TOC(), imagePath, tocimage.Options{})
	if err != nil {
		return st, fmt.Errorf("layer %s: %w", desc.Digest, err)
	}
	if err := batch.Commit(); err != nil {
		return st, err
	}
	committed = true
	st.ImageBytes, st.Bytes = ist.Size, ist.Size+ist.Bytes
	return st, nil
}

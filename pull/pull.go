// Package pull pulls an image into containerd for the lazypull snapshotter:
// it fetches the manifest and config through containerd's client, labels
// each layer so that the snapshotter can mount it from the registry, and
// unpacks — which, for lazy layers, downloads nothing. It is the lazy
// counterpart of `ctr image pull`; it knows containerd's client, not how
// layers are mounted.
package pull

import (
	"context"
	"fmt"
	"maps"
	"strings"

	"github.com/containerd/errdefs"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/images"
	"github.com/opencontainers/go-digest"
	"github.com/opencontainers/image-spec/identity"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/lazypull/lazypull/labels"
	"github.com/lazypull/lazypull/remote"
	"github.com/lazypull/lazypull/snapshot"
)

// Options configure a pull.
type Options struct {
	Snapshotter string // default "lazypull"
	Platform    string // default: this machine's
	Registry    remote.Options
}

// Layer says how one layer arrived.
type Layer struct {
	Digest digest.Digest
	Size   int64
	Lazy   bool // mounted from the registry
	// LazyComposefs: mounted from the registry in the lazy composefs
	// form (Lazy is set too).
	LazyComposefs bool
	Filled        bool   // pulled into the composefs store, only the files it lacked
	Reason        string // why neither, when it was downloaded and unpacked
	// NotLazyComposefs says why, with the lazy composefs mode on, the
	// layer was not mounted in that form.
	NotLazyComposefs string
}

// Result is a pulled image.
type Result struct {
	Image  containerd.Image
	Layers []Layer
}

// Image pulls ref (a normalized reference) and unpacks it for the
// snapshotter.
func Image(ctx context.Context, client *containerd.Client, ref string, opts Options) (Result, error) {
	if opts.Snapshotter == "" {
		opts.Snapshotter = "lazypull"
	}
	pullOpts := []containerd.RemoteOpt{
		containerd.WithResolver(remote.NewResolver(ctx, opts.Registry)),
		containerd.WithPullUnpack,
		containerd.WithPullSnapshotter(opts.Snapshotter),
		containerd.WithImageHandlerWrapper(labelLayers(ref)),
	}
	if opts.Platform != "" {
		pullOpts = append(pullOpts, containerd.WithPlatform(opts.Platform))
	}
	img, err := client.Pull(ctx, ref, pullOpts...)
	if err != nil && errdefs.IsNotFound(err) && strings.Contains(err.Error(), "parent snapshot") {
		// The unpack found a layer's snapshot that nothing referenced (a
		// failed pull left it) and containerd's garbage collector removed
		// it before the next layer stacked on it: unpacking again sees it
		// gone and makes it anew.
		img, err = client.Pull(ctx, ref, pullOpts...)
	}
	if err != nil {
		return Result{}, fmt.Errorf("pull %s: %w", ref, err)
	}
	layers, err := describeLayers(ctx, client, img, opts.Snapshotter)
	if err != nil {
		return Result{Image: img}, err
	}
	return Result{Image: img, Layers: layers}, nil
}

// labelLayers gives every layer of a manifest the annotations that the
// unpacker hands to the snapshotter as labels: the image, the layer, its
// siblings and its format annotations.
func labelLayers(ref string) func(images.Handler) images.Handler {
	return func(h images.Handler) images.Handler {
		return images.HandlerFunc(func(ctx context.Context, desc ocispec.Descriptor) ([]ocispec.Descriptor, error) {
			children, err := h.Handle(ctx, desc)
			if err != nil || !images.IsManifestType(desc.MediaType) {
				return children, err
			}
			var layers []ocispec.Descriptor
			for _, c := range children {
				if images.IsLayerType(c.MediaType) {
					layers = append(layers, c)
				}
			}
			for i, c := range children {
				if !images.IsLayerType(c.MediaType) {
					continue
				}
				annotations := maps.Clone(c.Annotations)
				if annotations == nil {
					annotations = make(map[string]string)
				}
				maps.Copy(annotations, labels.ForLayer(ref, desc.Digest, c, layers))
				children[i].Annotations = annotations
			}
			return children, nil
		})
	}
}

// describeLayers asks the snapshotter how each layer arrived.
func describeLayers(ctx context.Context, client *containerd.Client, img containerd.Image, snapshotter string) ([]Layer, error) {
	manifest, err := images.Manifest(ctx, client.ContentStore(), img.Target(), img.Platform())
	if err != nil {
		return nil, err
	}
	diffIDs, err := img.RootFS(ctx)
	if err != nil {
		return nil, err
	}
	if len(diffIDs) != len(manifest.Layers) {
		return nil, fmt.Errorf("image %s: %d layers, %d diff IDs", img.Name(), len(manifest.Layers), len(diffIDs))
	}
	chain := identity.ChainIDs(diffIDs)
	sn := client.SnapshotService(snapshotter)
	var out []Layer
	for i, l := range manifest.Layers {
		info, err := sn.Stat(ctx, chain[i].String())
		if err != nil {
			return nil, fmt.Errorf("layer %s: %w", l.Digest, err)
		}
		layer := Layer{Digest: l.Digest, Size: l.Size}
		_, layer.Lazy = info.Labels[snapshot.LabelRemote]
		if _, ok := info.Labels[snapshot.LabelLazy]; ok {
			layer.Lazy, layer.LazyComposefs = true, true
		}
		_, layer.Filled = info.Labels[snapshot.LabelFilled]
		layer.NotLazyComposefs = info.Labels[snapshot.LabelNotLazy]
		if !layer.Lazy && !layer.Filled {
			layer.Reason = info.Labels[snapshot.LabelUnpacked]
		}
		out = append(out, layer)
	}
	return out, nil
}

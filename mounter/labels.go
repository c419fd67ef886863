package mounter

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// Snapshot labels that say which layer of which image a Prepare is for.
// containerd passes a layer descriptor's annotations under the
// containerd.io/snapshot/ prefix to the snapshotter as labels; `lazypull
// pull` sets these, and containerd's CRI plugin sets the cri.* ones.
const (
	LabelPrefix      = "containerd.io/snapshot/remote/lazypull."
	LabelRef         = LabelPrefix + "ref"       // the image reference
	LabelDigest      = LabelPrefix + "digest"    // the layer's digest
	LabelSize        = LabelPrefix + "size"      // the layer's size
	LabelMediaType   = LabelPrefix + "mediatype" // the layer's media type
	LabelLayers      = LabelPrefix + "layers"    // the image's layer digests, comma separated
	LabelManifest    = LabelPrefix + "manifest"  // the digest of the image's manifest
	LabelAnnotation  = LabelPrefix + "a."        // + a layer annotation's key (the TOC digest, …)
	LabelCRIImageRef = "containerd.io/snapshot/cri.image-ref"
	LabelCRIDigest   = "containerd.io/snapshot/cri.layer-digest"
	LabelCRILayers   = "containerd.io/snapshot/cri.image-layers"
	LabelCRIManifest = "containerd.io/snapshot/cri.manifest-digest"
)

// target is the layer a Prepare's labels name.
type target struct {
	ref      string
	manifest digest.Digest      // "" when the labels do not pin it
	desc     ocispec.Descriptor // complete when the labels carry it all
	layers   []digest.Digest
	full     bool // desc has size, media type and annotations
}

// targetFromLabels reads our labels, or CRI's.
func targetFromLabels(labels map[string]string) (target, error) {
	t := target{ref: labels[LabelRef]}
	d, layers, manifest := labels[LabelDigest], labels[LabelLayers], labels[LabelManifest]
	if t.ref == "" {
		t.ref, d, layers = labels[LabelCRIImageRef], labels[LabelCRIDigest], labels[LabelCRILayers]
	}
	if manifest == "" {
		manifest = labels[LabelCRIManifest]
	}
	if t.ref == "" || d == "" {
		return target{}, fmt.Errorf("%w: no image reference and layer digest labels (pull with `lazypull pull`, or enable CRI snapshot annotations)", errNotLazy)
	}
	var err error
	if t.desc.Digest, err = digest.Parse(d); err != nil {
		return target{}, fmt.Errorf("layer digest label %q: %w", d, err)
	}
	if manifest != "" {
		if t.manifest, err = digest.Parse(manifest); err != nil {
			return target{}, fmt.Errorf("manifest digest label %q: %w", manifest, err)
		}
	}
	for _, l := range strings.Split(layers, ",") {
		if pd, err := digest.Parse(l); err == nil {
			t.layers = append(t.layers, pd)
		}
	}
	if size, ok := labels[LabelSize]; ok {
		if t.desc.Size, err = strconv.ParseInt(size, 10, 64); err != nil || t.desc.Size < 0 {
			return target{}, fmt.Errorf("layer size label %q is not a size", size)
		}
		t.desc.MediaType = labels[LabelMediaType]
		for k, v := range labels {
			if key, ok := strings.CutPrefix(k, LabelAnnotation); ok {
				if t.desc.Annotations == nil {
					t.desc.Annotations = make(map[string]string)
				}
				t.desc.Annotations[key] = v
			}
		}
		t.full = true
	}
	return t, nil
}

// Labels are the labels that let the snapshotter mount layer desc of the
// image ref, whose manifest has digest manifest, lazily; `lazypull pull`
// puts them on the layer descriptors. They include the CRI plugin's,
// which every remote snapshotter reads, so that `lazypull pull
// --snapshotter NAME` serves others too.
func Labels(ref string, manifest digest.Digest, desc ocispec.Descriptor, layers []ocispec.Descriptor) map[string]string {
	labels := map[string]string{
		LabelRef:         ref,
		LabelDigest:      desc.Digest.String(),
		LabelSize:        strconv.FormatInt(desc.Size, 10),
		LabelMediaType:   desc.MediaType,
		LabelCRIImageRef: ref,
		LabelCRIDigest:   desc.Digest.String(),
	}
	if manifest != "" {
		labels[LabelManifest] = manifest.String()
		labels[LabelCRIManifest] = manifest.String()
	}
	var all []string
	for _, l := range layers {
		all = append(all, l.Digest.String())
	}
	// containerd bounds a label's size: leave the list out when too long.
	if list := strings.Join(all, ","); len(list) < 3500 {
		labels[LabelLayers] = list
		labels[LabelCRILayers] = list
	}
	for k, v := range desc.Annotations {
		if len(LabelAnnotation+k)+len(v) < 4000 {
			labels[LabelAnnotation+k] = v
		}
	}
	return labels
}

package mounter

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/lazypull/lazypull/labels"
)

// target is the layer a Prepare's labels name.
type target struct {
	ref      string
	manifest digest.Digest      // "" when the labels do not pin it
	desc     ocispec.Descriptor // complete when the labels carry it all
	layers   []digest.Digest
	full     bool         // desc has size, media type and annotations
	stored   *storedImage // the image as containerd stored it, if handed over
}

// targetFromLabels reads our labels, or CRI's.
func targetFromLabels(lbls map[string]string) (target, error) {
	t := target{ref: lbls[labels.Ref]}
	d, layers, manifest := lbls[labels.Digest], lbls[labels.Layers], labels.ManifestDigest(lbls)
	if t.ref == "" {
		t.ref, d, layers = lbls[labels.CRIImageRef], lbls[labels.CRIDigest], lbls[labels.CRILayers]
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
	if m, c := lbls[labels.ManifestContent], lbls[labels.ConfigContent]; m != "" && c != "" {
		t.stored = &storedImage{manifest: []byte(m), config: []byte(c)}
	}
	for _, l := range strings.Split(layers, ",") {
		if pd, err := digest.Parse(l); err == nil {
			t.layers = append(t.layers, pd)
		}
	}
	if size, ok := lbls[labels.Size]; ok {
		if t.desc.Size, err = strconv.ParseInt(size, 10, 64); err != nil || t.desc.Size < 0 {
			return target{}, fmt.Errorf("layer size label %q is not a size", size)
		}
		t.desc.MediaType = lbls[labels.MediaType]
		for k, v := range lbls {
			if key, ok := strings.CutPrefix(k, labels.Annotation); ok {
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

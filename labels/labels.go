// Package labels names the snapshot labels by which containerd tells a
// remote snapshotter which layer of which image a Prepare is for: ours,
// which `lazypull pull` sets, and the CRI plugin's, which every remote
// snapshotter reads. It knows label names, not what is done with them.
package labels

import (
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
	Prefix      = "containerd.io/snapshot/remote/lazypull."
	Ref         = Prefix + "ref"       // the image reference
	Digest      = Prefix + "digest"    // the layer's digest
	Size        = Prefix + "size"      // the layer's size
	MediaType   = Prefix + "mediatype" // the layer's media type
	Layers      = Prefix + "layers"    // the image's layer digests, comma separated
	Manifest    = Prefix + "manifest"  // the digest of the image's manifest
	Annotation  = Prefix + "a."        // + a layer annotation's key (the TOC digest, …)
	CRIImageRef = "containerd.io/snapshot/cri.image-ref"
	CRIDigest   = "containerd.io/snapshot/cri.layer-digest"
	CRILayers   = "containerd.io/snapshot/cri.image-layers"
	CRIManifest = "containerd.io/snapshot/cri.manifest-digest"
)

// The image's manifest and config as containerd stored them, which the
// snapshotter adds to the labels it hands its mounter (never labels a
// client sets or containerd keeps: too large for them): a Prepare for an
// unpack comes after containerd fetched both, and the mounter, which
// checks them against the manifest digest it is given, need not fetch them
// from the registry again.
const (
	ManifestContent = Prefix + "content.manifest"
	ConfigContent   = Prefix + "content.config"
)

// ManifestDigest is the manifest digest the labels name, ours or CRI's;
// "" if none.
func ManifestDigest(lbls map[string]string) string {
	if m := lbls[Manifest]; m != "" {
		return m
	}
	return lbls[CRIManifest]
}

// ForLayer returns the labels that let the snapshotter mount layer desc of the
// image ref, whose manifest has digest manifest, lazily; `lazypull pull`
// puts them on the layer descriptors. They include the CRI plugin's,
// which every remote snapshotter reads, so that `lazypull pull
// --snapshotter NAME` serves others too.
func ForLayer(ref string, manifest digest.Digest, desc ocispec.Descriptor, layers []ocispec.Descriptor) map[string]string {
	labels := map[string]string{
		Ref:         ref,
		Digest:      desc.Digest.String(),
		Size:        strconv.FormatInt(desc.Size, 10),
		MediaType:   desc.MediaType,
		CRIImageRef: ref,
		CRIDigest:   desc.Digest.String(),
	}
	if manifest != "" {
		labels[Manifest] = manifest.String()
		labels[CRIManifest] = manifest.String()
	}
	var all []string
	for _, l := range layers {
		all = append(all, l.Digest.String())
	}
	// containerd bounds a label's size: leave the list out when too long.
	if list := strings.Join(all, ","); len(list) < 3500 {
		labels[Layers] = list
		labels[CRILayers] = list
	}
	for k, v := range desc.Annotations {
		if len(Annotation+k)+len(v) < 4000 {
			labels[Annotation+k] = v
		}
	}
	return labels
}

package mounter

import (
	"testing"

	"github.com/lazypull/lazypull/labels"
)

// FuzzTargetFromLabels: labels come from image annotations, which anyone
// who can push an image writes. Reading them never panics, and what it
// accepts is well formed.
func FuzzTargetFromLabels(f *testing.F) {
	f.Add("registry.example/app:1", "sha256:4f53cda18c2baa0c0354bb5f9a3ecbe5ed12ab4d8e11ba873c2f11161202b945", "1234", "application/vnd.oci.image.layer.v1.tar+gzip", "", "containerd.io/snapshot/stargz/toc.digest", "sha256:x", true)
	f.Add("", "", "", "", "", "", "", false)
	f.Add("r", "sha256:4f53cda18c2baa0c0354bb5f9a3ecbe5ed12ab4d8e11ba873c2f11161202b945", "-1", "", "sha512:nothex", "k", "v", false)
	f.Fuzz(func(t *testing.T, ref, digest, size, mediaType, manifest, annotation, value string, cri bool) {
		lbls := map[string]string{labels.Ref: ref, labels.Digest: digest, labels.Size: size, labels.MediaType: mediaType,
			labels.Manifest: manifest, labels.Annotation + annotation: value}
		if cri {
			lbls = map[string]string{labels.CRIImageRef: ref, labels.CRIDigest: digest, labels.CRIManifest: manifest, labels.CRILayers: digest + "," + value}
		}
		tgt, err := targetFromLabels(lbls)
		if err != nil {
			return
		}
		if tgt.ref == "" || tgt.desc.Digest.Validate() != nil {
			t.Fatalf("accepted %+v: no reference or a bad layer digest", tgt)
		}
		if tgt.manifest != "" && tgt.manifest.Validate() != nil {
			t.Fatalf("accepted a bad manifest digest %q", tgt.manifest)
		}
		if tgt.desc.Size < 0 {
			t.Fatalf("accepted a negative size %d", tgt.desc.Size)
		}
		for _, l := range tgt.layers {
			if l.Validate() != nil {
				t.Fatalf("accepted a bad layer digest %q in the list", l)
			}
		}
	})
}

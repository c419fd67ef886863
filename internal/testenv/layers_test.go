package testenv

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"io"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/lazypull/lazypull/format/estargz"
)

// The layers describe themselves truly: digest and size of the blob, the
// diff_id of what it decompresses to, the xattrs in the tar.
func TestLayersDescribeTheirBlobs(t *testing.T) {
	entries := []Entry{
		{Path: "d", Type: tar.TypeDir, Mode: 0o755, Xattrs: map[string]string{"user.note": "kept"}},
		File("d/f", "content"),
	}
	esgz, err := EStargzLayer(entries)
	if err != nil {
		t.Fatal(err)
	}
	plain, err := GzipLayer(entries)
	if err != nil {
		t.Fatal(err)
	}
	for name, l := range map[string]Layer{"estargz": esgz, "gzip": plain} {
		if l.Desc.Digest != digest.FromBytes(l.Blob) || l.Desc.Size != int64(len(l.Blob)) {
			t.Errorf("%s: descriptor %s (%d bytes) is not the blob's", name, l.Desc.Digest, l.Desc.Size)
		}
		diffID, _, err := DiffIDOf(l.Blob)
		if err != nil || diffID != l.DiffID {
			t.Errorf("%s: DiffIDOf = %s, %v; the layer says %s", name, diffID, err, l.DiffID)
		}
		zr, err := gzip.NewReader(bytes.NewReader(l.Blob))
		if err != nil {
			t.Fatal(err)
		}
		tr := tar.NewReader(zr)
		found := false
		for {
			h, err := tr.Next()
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Fatalf("%s: %v", name, err)
			}
			if h.Name == "d/" || h.Name == "d" {
				found = h.PAXRecords["SCHILY.xattr.user.note"] == "kept"
			}
		}
		if !found {
			t.Errorf("%s: no directory d with its xattr in the tar", name)
		}
	}
	if esgz.Desc.Annotations[estargz.TOCDigestAnnotation] == "" {
		t.Errorf("the eStargz layer has no TOC digest annotation: %v", esgz.Desc.Annotations)
	}
}

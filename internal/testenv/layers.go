package testenv

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"runtime"

	"github.com/opencontainers/go-digest"
	specs "github.com/opencontainers/image-spec/specs-go"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/lazypull/lazypull/format/estargz"
)

// A Layer is a layer blob ready to push: its bytes, its descriptor (with
// the annotations a lazy pull reads) and its diff_id (the digest of its
// uncompressed tar).
type Layer struct {
	Blob   []byte
	Desc   ocispec.Descriptor
	DiffID digest.Digest
}

// EStargzLayer is the eStargz blob of entries, written by our writer.
func EStargzLayer(entries []Entry) (Layer, error) {
	tarData, err := tarLayer(entries)
	if err != nil {
		return Layer{}, err
	}
	var blob bytes.Buffer
	w := estargz.NewWriter(&blob)
	if err := w.AppendTar(bytes.NewReader(tarData)); err != nil {
		return Layer{}, err
	}
	res, err := w.Close()
	if err != nil {
		return Layer{}, err
	}
	return Layer{
		Blob: blob.Bytes(),
		Desc: ocispec.Descriptor{
			MediaType: ocispec.MediaTypeImageLayerGzip, Digest: digest.FromBytes(blob.Bytes()),
			Size: int64(blob.Len()), Annotations: res.Annotations,
		},
		DiffID: res.DiffID,
	}, nil
}

// GzipLayer is the ordinary gzip'd tar of entries.
func GzipLayer(entries []Entry) (Layer, error) {
	tarData, err := tarLayer(entries)
	if err != nil {
		return Layer{}, err
	}
	return GzipBlobLayer(tarData, nil)
}

// GzipBlobLayer describes a gzip blob of tarData with these annotations.
func GzipBlobLayer(tarData []byte, annotations map[string]string) (Layer, error) {
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	zw.Write(tarData)
	if err := zw.Close(); err != nil {
		return Layer{}, err
	}
	return Layer{
		Blob: gz.Bytes(),
		Desc: ocispec.Descriptor{
			MediaType: ocispec.MediaTypeImageLayerGzip, Digest: digest.FromBytes(gz.Bytes()),
			Size: int64(gz.Len()), Annotations: annotations,
		},
		DiffID: digest.FromBytes(tarData),
	}, nil
}

// DiffIDOf is the digest and size of what a gzip blob (of any number of
// members) decompresses to: the diff_id a truthful config gives it.
func DiffIDOf(blob []byte) (digest.Digest, int64, error) {
	zr, err := gzip.NewReader(bytes.NewReader(blob))
	if err != nil {
		return "", 0, err
	}
	d := digest.SHA256.Digester()
	n, err := io.Copy(d.Hash(), zr)
	if err != nil {
		return "", 0, err
	}
	return d.Digest(), n, nil
}

// LayerImage is an image made of ready layers, bottom first: what a test
// pushes when it forges blobs, annotations or diff_ids.
type LayerImage struct {
	Layers []Layer
	// DiffIDs are what the config claims; nil means the layers' own.
	DiffIDs []digest.Digest
	Cmd     []string
}

// PushImage pushes img to ref (host/repo:tag, a loopback registry served
// over plain HTTP) and returns its manifest's descriptor. It writes an OCI
// layout and copies it with skopeo (Push): testenv must not import the
// registry code it tests.
func PushImage(ctx context.Context, ref string, img LayerImage) (ocispec.Descriptor, error) {
	dir, err := os.MkdirTemp("", "lazypull-push-")
	if err != nil {
		return ocispec.Descriptor{}, err
	}
	defer os.RemoveAll(dir)
	writeBlob := func(d digest.Digest, data []byte) error {
		path := filepath.Join(dir, "blobs", d.Algorithm().String(), d.Encoded())
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			return err
		}
		return os.WriteFile(path, data, 0o644)
	}
	config := ocispec.Image{
		Platform: ocispec.Platform{Architecture: runtime.GOARCH, OS: "linux"},
		Config:   ocispec.ImageConfig{Cmd: img.Cmd, Env: []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}},
		RootFS:   ocispec.RootFS{Type: "layers", DiffIDs: img.DiffIDs},
	}
	manifest := ocispec.Manifest{Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: ocispec.MediaTypeImageManifest}
	for _, l := range img.Layers {
		if err := writeBlob(l.Desc.Digest, l.Blob); err != nil {
			return ocispec.Descriptor{}, err
		}
		manifest.Layers = append(manifest.Layers, l.Desc)
		if img.DiffIDs == nil {
			config.RootFS.DiffIDs = append(config.RootFS.DiffIDs, l.DiffID)
		}
	}
	store := func(mediaType string, v any) (ocispec.Descriptor, error) {
		data, err := json.Marshal(v)
		if err != nil {
			return ocispec.Descriptor{}, err
		}
		desc := ocispec.Descriptor{MediaType: mediaType, Digest: digest.FromBytes(data), Size: int64(len(data))}
		return desc, writeBlob(desc.Digest, data)
	}
	if manifest.Config, err = store(ocispec.MediaTypeImageConfig, config); err != nil {
		return ocispec.Descriptor{}, err
	}
	desc, err := store(ocispec.MediaTypeImageManifest, manifest)
	if err != nil {
		return ocispec.Descriptor{}, err
	}
	tagged := desc
	tagged.Annotations = map[string]string{ocispec.AnnotationRefName: "v1"}
	index := ocispec.Index{Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: ocispec.MediaTypeImageIndex, Manifests: []ocispec.Descriptor{tagged}}
	data, err := json.Marshal(index)
	if err != nil {
		return ocispec.Descriptor{}, err
	}
	if err := os.WriteFile(filepath.Join(dir, "index.json"), data, 0o644); err != nil {
		return ocispec.Descriptor{}, err
	}
	if err := os.WriteFile(filepath.Join(dir, ocispec.ImageLayoutFile), []byte(`{"imageLayoutVersion":"1.0.0"}`), 0o644); err != nil {
		return ocispec.Descriptor{}, err
	}
	if err := Push(ctx, dir, "v1", ref); err != nil {
		return ocispec.Descriptor{}, err
	}
	return desc, nil
}

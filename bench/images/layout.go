package images

import (
	"archive/tar"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/klauspost/compress/gzip"
	"github.com/opencontainers/go-digest"
	specs "github.com/opencontainers/image-spec/specs-go"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"golang.org/x/sys/unix"
)

// layer is one layer blob of an image: its descriptor (the compressed blob)
// and its diff ID (the digest of the uncompressed tar).
type layer struct {
	Desc   ocispec.Descriptor `json:"desc"`
	DiffID digest.Digest      `json:"diffID"`
}

// layoutWriter writes an OCI image layout blob by blob, streaming each one
// to its file: the layers here are up to gigabytes.
type layoutWriter struct{ dir string }

func newLayout(dir string) (*layoutWriter, error) {
	if err := os.MkdirAll(filepath.Join(dir, "blobs", "sha256"), 0o755); err != nil {
		return nil, fmt.Errorf("OCI layout %s: %w", dir, err)
	}
	l := &layoutWriter{dir: dir}
	layout, err := json.Marshal(ocispec.ImageLayout{Version: ocispec.ImageLayoutVersion})
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(dir, ocispec.ImageLayoutFile), layout, 0o644); err != nil {
		return nil, fmt.Errorf("OCI layout %s: %w", dir, err)
	}
	return l, nil
}

func (l *layoutWriter) blobPath(d digest.Digest) string {
	return filepath.Join(l.dir, "blobs", d.Algorithm().String(), d.Encoded())
}

// writeBlob streams what write writes into a blob and returns its descriptor.
func (l *layoutWriter) writeBlob(mediaType string, write func(io.Writer) error) (ocispec.Descriptor, error) {
	f, err := os.CreateTemp(filepath.Join(l.dir, "blobs"), "ingest-")
	if err != nil {
		return ocispec.Descriptor{}, fmt.Errorf("OCI layout %s: %w", l.dir, err)
	}
	defer os.Remove(f.Name()) // after the rename below, a no-op
	defer f.Close()
	digester := digest.Canonical.Digester()
	counter := &countingWriter{w: io.MultiWriter(f, digester.Hash())}
	if err := write(counter); err != nil {
		return ocispec.Descriptor{}, err
	}
	if err := f.Close(); err != nil {
		return ocispec.Descriptor{}, fmt.Errorf("write blob %s: %w", f.Name(), err)
	}
	desc := ocispec.Descriptor{MediaType: mediaType, Digest: digester.Digest(), Size: counter.n}
	if err := os.Rename(f.Name(), l.blobPath(desc.Digest)); err != nil {
		return ocispec.Descriptor{}, fmt.Errorf("store blob %s: %w", desc.Digest, err)
	}
	return desc, nil
}

func (l *layoutWriter) writeJSON(mediaType string, v any) (ocispec.Descriptor, error) {
	data, err := json.Marshal(v)
	if err != nil {
		return ocispec.Descriptor{}, fmt.Errorf("encode %s: %w", mediaType, err)
	}
	return l.writeBlob(mediaType, func(w io.Writer) error {
		_, err := w.Write(data)
		return err
	})
}

// writeLayer streams the tar that write writes, gzip-compressed at the
// default level (what docker and containerd push), into a layer blob.
func (l *layoutWriter) writeLayer(write func(*tar.Writer) error) (layer, error) {
	diffID := digest.Canonical.Digester()
	desc, err := l.writeBlob(ocispec.MediaTypeImageLayerGzip, func(w io.Writer) error {
		zw, err := gzip.NewWriterLevel(w, gzip.DefaultCompression)
		if err != nil {
			return err
		}
		tw := tar.NewWriter(io.MultiWriter(zw, diffID.Hash()))
		if err := write(tw); err != nil {
			return err
		}
		if err := tw.Close(); err != nil {
			return fmt.Errorf("close layer tar: %w", err)
		}
		return zw.Close()
	})
	return layer{Desc: desc, DiffID: diffID.Digest()}, err
}

// addBlob puts an existing blob file (the shared base layer) into the
// layout: a hard link where it can, a copy where it cannot.
func (l *layoutWriter) addBlob(src string, desc ocispec.Descriptor) error {
	if err := linkOrCopy(src, l.blobPath(desc.Digest)); err != nil {
		return fmt.Errorf("add blob %s to %s: %w", desc.Digest, l.dir, err)
	}
	return nil
}

// finish writes the config, the manifest and index.json naming the manifest
// tag, and returns the manifest's descriptor.
func (l *layoutWriter) finish(config ocispec.Image, layers []layer, tag string) (ocispec.Descriptor, ocispec.Descriptor, error) {
	manifest := ocispec.Manifest{Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: ocispec.MediaTypeImageManifest}
	config.RootFS = ocispec.RootFS{Type: "layers"}
	for _, ly := range layers {
		manifest.Layers = append(manifest.Layers, ly.Desc)
		config.RootFS.DiffIDs = append(config.RootFS.DiffIDs, ly.DiffID)
	}
	var err error
	if manifest.Config, err = l.writeJSON(ocispec.MediaTypeImageConfig, config); err != nil {
		return ocispec.Descriptor{}, ocispec.Descriptor{}, err
	}
	desc, err := l.writeJSON(ocispec.MediaTypeImageManifest, manifest)
	if err != nil {
		return ocispec.Descriptor{}, ocispec.Descriptor{}, err
	}
	tagged := desc
	tagged.Annotations = map[string]string{ocispec.AnnotationRefName: tag}
	index, err := json.Marshal(ocispec.Index{
		Versioned: specs.Versioned{SchemaVersion: 2},
		MediaType: ocispec.MediaTypeImageIndex,
		Manifests: []ocispec.Descriptor{tagged},
	})
	if err != nil {
		return ocispec.Descriptor{}, ocispec.Descriptor{}, err
	}
	if err := os.WriteFile(filepath.Join(l.dir, ocispec.ImageIndexFile), index, 0o644); err != nil {
		return ocispec.Descriptor{}, ocispec.Descriptor{}, fmt.Errorf("OCI layout %s: %w", l.dir, err)
	}
	return desc, manifest.Config, nil
}

type countingWriter struct {
	w io.Writer
	n int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

// linkOrCopy makes dst a hard link to src, or a copy of it across
// filesystems. dst must not exist.
func linkOrCopy(src, dst string) error {
	err := os.Link(src, dst)
	if err == nil || !errors.Is(err, unix.EXDEV) && !errors.Is(err, os.ErrPermission) {
		return err
	}
	return copyFile(src, dst)
}

// copyFile copies src to dst, which must not exist.
func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		os.Remove(dst)
		return err
	}
	return out.Close()
}

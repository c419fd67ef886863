package testenv

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	"github.com/opencontainers/go-digest"
	specs "github.com/opencontainers/image-spec/specs-go"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// Entry is one member of a test layer's tar.
type Entry struct {
	Path     string
	Type     byte // tar.TypeReg, TypeDir, TypeSymlink, TypeLink
	Mode     int64
	Data     []byte
	Linkname string
	Xattrs   map[string]string // as tar's SCHILY.xattr PAX records
}

// File is a regular file entry.
func File(p, data string) Entry {
	return Entry{Path: p, Type: tar.TypeReg, Mode: 0o644, Data: []byte(data)}
}

// Dir is a directory entry.
func Dir(p string) Entry { return Entry{Path: p, Type: tar.TypeDir, Mode: 0o755} }

// Symlink is a symbolic link entry.
func Symlink(p, target string) Entry {
	return Entry{Path: p, Type: tar.TypeSymlink, Mode: 0o777, Linkname: target}
}

// Hardlink is a hard link to an earlier entry of the same layer.
func Hardlink(p, target string) Entry {
	return Entry{Path: p, Type: tar.TypeLink, Mode: 0o644, Linkname: target}
}

// Whiteout deletes p from the layers below.
func Whiteout(p string) Entry {
	return File(path.Join(path.Dir(p), ".wh."+path.Base(p)), "")
}

// Opaque hides everything the layers below have in dir.
func Opaque(dir string) Entry { return File(path.Join(dir, ".wh..wh..opq"), "") }

// Image is a test image: its layers, bottom first, and its command.
type Image struct {
	Layers [][]Entry
	Cmd    []string
}

// WriteOCILayout writes img as an OCI image layout in dir, tagged tag, with
// gzip-compressed layers.
func (img Image) WriteOCILayout(dir, tag string) (ocispec.Descriptor, error) {
	blobs := filepath.Join(dir, "blobs", "sha256")
	if err := os.MkdirAll(blobs, 0o755); err != nil {
		return ocispec.Descriptor{}, err
	}
	writeBlob := func(mediaType string, data []byte) (ocispec.Descriptor, error) {
		d := digest.FromBytes(data)
		err := os.WriteFile(filepath.Join(blobs, d.Encoded()), data, 0o644)
		return ocispec.Descriptor{MediaType: mediaType, Digest: d, Size: int64(len(data))}, err
	}

	config := ocispec.Image{
		Platform: ocispec.Platform{Architecture: runtime.GOARCH, OS: "linux"},
		Config:   ocispec.ImageConfig{Cmd: img.Cmd, Env: []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}},
		RootFS:   ocispec.RootFS{Type: "layers"},
	}
	manifest := ocispec.Manifest{Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: ocispec.MediaTypeImageManifest}
	for i, entries := range img.Layers {
		tarData, err := tarLayer(entries)
		if err != nil {
			return ocispec.Descriptor{}, fmt.Errorf("layer %d: %w", i, err)
		}
		var gz bytes.Buffer
		zw := gzip.NewWriter(&gz)
		zw.Write(tarData)
		zw.Close()
		desc, err := writeBlob(ocispec.MediaTypeImageLayerGzip, gz.Bytes())
		if err != nil {
			return ocispec.Descriptor{}, err
		}
		manifest.Layers = append(manifest.Layers, desc)
		config.RootFS.DiffIDs = append(config.RootFS.DiffIDs, digest.FromBytes(tarData))
	}
	configJSON, _ := json.Marshal(config)
	var err error
	if manifest.Config, err = writeBlob(ocispec.MediaTypeImageConfig, configJSON); err != nil {
		return ocispec.Descriptor{}, err
	}
	manifestJSON, _ := json.Marshal(manifest)
	desc, err := writeBlob(ocispec.MediaTypeImageManifest, manifestJSON)
	if err != nil {
		return ocispec.Descriptor{}, err
	}
	desc.Annotations = map[string]string{ocispec.AnnotationRefName: tag}
	index, _ := json.Marshal(ocispec.Index{
		Versioned: specs.Versioned{SchemaVersion: 2},
		MediaType: ocispec.MediaTypeImageIndex,
		Manifests: []ocispec.Descriptor{desc},
	})
	if err := os.WriteFile(filepath.Join(dir, "index.json"), index, 0o644); err != nil {
		return ocispec.Descriptor{}, err
	}
	layout, _ := json.Marshal(ocispec.ImageLayout{Version: ocispec.ImageLayoutVersion})
	return desc, os.WriteFile(filepath.Join(dir, ocispec.ImageLayoutFile), layout, 0o644)
}

func tarLayer(entries []Entry) ([]byte, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	mtime := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	for _, e := range entries {
		hdr := &tar.Header{
			Name: strings.TrimPrefix(e.Path, "/"), Typeflag: e.Type, Mode: e.Mode,
			Linkname: strings.TrimPrefix(e.Linkname, "/"), ModTime: mtime, Format: tar.FormatPAX,
		}
		if e.Type == tar.TypeSymlink {
			hdr.Linkname = e.Linkname // a symlink's target is kept as written
		}
		for k, v := range e.Xattrs {
			if hdr.PAXRecords == nil {
				hdr.PAXRecords = make(map[string]string)
			}
			hdr.PAXRecords["SCHILY.xattr."+k] = v
		}
		if e.Type == tar.TypeReg {
			hdr.Size = int64(len(e.Data))
		}
		if err := tw.WriteHeader(hdr); err != nil {
			return nil, fmt.Errorf("%s: %w", e.Path, err)
		}
		if _, err := tw.Write(e.Data); err != nil {
			return nil, fmt.Errorf("%s: %w", e.Path, err)
		}
	}
	err := tw.Close()
	return buf.Bytes(), err
}

// Push copies the OCI layout's image tag to ref (host/repo:tag) over plain
// HTTP with skopeo.
func Push(ctx context.Context, layoutDir, tag, ref string) error {
	bin, err := lookPath("skopeo")
	if err != nil {
		return err
	}
	out, err := exec.CommandContext(ctx, bin, "copy", "--quiet", "--insecure-policy", "--dest-tls-verify=false",
		"oci:"+layoutDir+":"+tag, "docker://"+ref).CombinedOutput()
	if err != nil {
		return fmt.Errorf("push %s to %s: %w: %s", layoutDir, ref, err, strings.TrimSpace(string(out)))
	}
	return nil
}

package transport

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	specs "github.com/opencontainers/image-spec/specs-go"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// layout is an image in an OCI image layout directory.
type layout struct {
	dir string
	tag string
}

func (l *layout) blobPath(d digest.Digest) (string, error) {
	if err := d.Validate(); err != nil {
		return "", fmt.Errorf("blob %q: %w", d, err)
	}
	return filepath.Join(l.dir, "blobs", d.Algorithm().String(), d.Encoded()), nil
}

func (l *layout) readIndex() (ocispec.Index, error) {
	var idx ocispec.Index
	data, err := os.ReadFile(filepath.Join(l.dir, ocispec.ImageIndexFile))
	if errors.Is(err, os.ErrNotExist) {
		return idx, fmt.Errorf("%s is not an OCI image layout (no index.json): %w", l.dir, errdefs.ErrNotFound)
	}
	if err != nil {
		return idx, err
	}
	if err := json.Unmarshal(data, &idx); err != nil {
		return idx, fmt.Errorf("%s/index.json: %w", l.dir, err)
	}
	return idx, nil
}

func (l *layout) Resolve(ctx context.Context) (ocispec.Descriptor, error) {
	idx, err := l.readIndex()
	if err != nil {
		return ocispec.Descriptor{}, err
	}
	var found []ocispec.Descriptor
	for _, m := range idx.Manifests {
		if l.tag == "" || m.Annotations[ocispec.AnnotationRefName] == l.tag {
			found = append(found, m)
		}
	}
	switch {
	case len(found) == 1:
		return found[0], nil
	case len(found) == 0:
		return ocispec.Descriptor{}, fmt.Errorf("no image tagged %q in %s: %w", l.tag, l.dir, errdefs.ErrNotFound)
	case l.tag == "":
		return ocispec.Descriptor{}, fmt.Errorf("%s holds %d images: name one with oci:%s:TAG", l.dir, len(found), l.dir)
	}
	return ocispec.Descriptor{}, fmt.Errorf("%d images tagged %q in %s", len(found), l.tag, l.dir)
}

func (l *layout) open(desc ocispec.Descriptor) (*os.File, error) {
	path, err := l.blobPath(desc.Digest)
	if err != nil {
		return nil, err
	}
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("blob %s not in %s: %w", desc.Digest, l.dir, errdefs.ErrNotFound)
	}
	return f, err
}

func (l *layout) Fetch(ctx context.Context, desc ocispec.Descriptor) (io.ReadCloser, error) {
	f, err := l.open(desc)
	if err != nil {
		return nil, err
	}
	return verified(f, desc), nil
}

func (l *layout) ReaderAt(ctx context.Context, desc ocispec.Descriptor) (ReaderAt, error) {
	f, err := l.open(desc)
	if err != nil {
		return nil, err
	}
	return fileReaderAt{f, desc.Size}, nil
}

type fileReaderAt struct {
	*os.File
	size int64
}

func (f fileReaderAt) Size() int64 { return f.size }

func (l *layout) Push(ctx context.Context, desc ocispec.Descriptor, r io.Reader) error {
	path, err := l.blobPath(desc.Digest)
	if err != nil {
		return err
	}
	if _, err := os.Stat(path); err == nil {
		return nil
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	// Write beside the blob and rename: a blob in the layout is whole.
	tmp, err := os.CreateTemp(filepath.Dir(path), ".tmp-"+desc.Digest.Encoded()[:12]+"-")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	defer tmp.Close()
	if _, err := io.Copy(tmp, verified(io.NopCloser(r), desc)); err != nil {
		return fmt.Errorf("write %s to %s: %w", desc.Digest, l.dir, err)
	}
	if err := tmp.Sync(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}

func (l *layout) Tag(ctx context.Context, desc ocispec.Descriptor) error {
	if err := writeAtomically(filepath.Join(l.dir, ocispec.ImageLayoutFile), ocispec.ImageLayout{Version: ocispec.ImageLayoutVersion}); err != nil {
		return err
	}
	idx, err := l.readIndex()
	if errdefs.IsNotFound(err) {
		idx = ocispec.Index{Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: ocispec.MediaTypeImageIndex}
	} else if err != nil {
		return err
	}
	kept := idx.Manifests[:0]
	for _, m := range idx.Manifests {
		if l.tag == "" || m.Annotations[ocispec.AnnotationRefName] != l.tag {
			kept = append(kept, m)
		}
	}
	if l.tag == "" {
		kept = kept[:0] // an untagged layout holds one image: this one
	}
	tagged := desc
	if l.tag != "" {
		tagged.Annotations = map[string]string{ocispec.AnnotationRefName: l.tag}
	}
	idx.Manifests = append(kept, tagged)
	return writeAtomically(filepath.Join(l.dir, ocispec.ImageIndexFile), idx)
}

func writeAtomically(path string, v any) error {
	data, err := json.Marshal(v)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

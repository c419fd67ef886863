package transport

import (
	"context"
	"encoding/json"
	"fmt"
	"io"

	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/platforms"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/lazypull/lazypull/remote"
)

// Location is where one image is read from or written to.
type Location interface {
	// Resolve returns the descriptor the reference names: a manifest or an
	// index.
	Resolve(ctx context.Context) (ocispec.Descriptor, error)
	// Fetch reads a blob or manifest. The reader fails at the end if the
	// bytes are not the descriptor's size and digest.
	Fetch(ctx context.Context, desc ocispec.Descriptor) (io.ReadCloser, error)
	// ReaderAt reads parts of a blob, unverified: the caller checks what it
	// reads (a TOC digest, chunk digests).
	ReaderAt(ctx context.Context, desc ocispec.Descriptor) (ReaderAt, error)
	// Push stores a blob or manifest by digest; content already there is
	// not sent again.
	Push(ctx context.Context, desc ocispec.Descriptor, r io.Reader) error
	// Tag points the reference at desc, a manifest or index already pushed.
	Tag(ctx context.Context, desc ocispec.Descriptor) error
}

// ReaderAt is a blob open for random reads.
type ReaderAt interface {
	io.ReaderAt
	io.Closer
	Size() int64
}

// Open returns the location a reference names.
func Open(ctx context.Context, ref Ref, opts remote.Options) (Location, error) {
	switch ref.Transport {
	case Docker:
		return openRegistry(ctx, ref, opts)
	case OCI:
		return &layout{dir: ref.Name, tag: ref.Tag}, nil
	}
	return nil, fmt.Errorf("unknown transport %q", ref.Transport)
}

// verifyingReader checks size and digest as the last byte is read.
type verifyingReader struct {
	r        io.ReadCloser
	desc     ocispec.Descriptor
	verifier digest.Verifier
	n        int64
}

func verified(r io.ReadCloser, desc ocispec.Descriptor) io.ReadCloser {
	return &verifyingReader{r: r, desc: desc, verifier: desc.Digest.Verifier()}
}

func (v *verifyingReader) Read(p []byte) (int, error) {
	n, err := v.r.Read(p)
	v.n += int64(n)
	v.verifier.Write(p[:n])
	if v.n > v.desc.Size {
		return n, fmt.Errorf("%s: more than the %d bytes its descriptor says", v.desc.Digest, v.desc.Size)
	}
	if err == io.EOF {
		if v.n != v.desc.Size {
			return n, fmt.Errorf("%s: %d bytes, its descriptor says %d: %w", v.desc.Digest, v.n, v.desc.Size, io.ErrUnexpectedEOF)
		}
		if !v.verifier.Verified() {
			return n, fmt.Errorf("%s: content does not match its digest", v.desc.Digest)
		}
	}
	return n, err
}

func (v *verifyingReader) Close() error { return v.r.Close() }

// MaxManifestSize bounds the manifests, indexes and configs read from any
// location: they are small, and untrusted.
const MaxManifestSize = 8 << 20

// FetchJSON fetches a manifest, index or config, checks it and decodes it
// into v; it returns the raw bytes too.
func FetchJSON(ctx context.Context, loc Location, desc ocispec.Descriptor, v any) ([]byte, error) {
	if desc.Size > MaxManifestSize {
		return nil, fmt.Errorf("%s: %d bytes, more than %d for a manifest or config", desc.Digest, desc.Size, MaxManifestSize)
	}
	rc, err := loc.Fetch(ctx, desc)
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	data, err := io.ReadAll(rc)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", desc.Digest, err)
	}
	if err := json.Unmarshal(data, v); err != nil {
		return nil, fmt.Errorf("%s (%s): %w", desc.Digest, desc.MediaType, err)
	}
	return data, nil
}

// Image is one platform's image at a location: its manifest and config.
type Image struct {
	Desc     ocispec.Descriptor // of the manifest
	Manifest ocispec.Manifest
	Config   ocispec.Image
}

// ReadImage reads the image root names (what Resolve returned): root
// itself if it is a manifest, else the manifest an index lists for this
// machine's platform; then its config.
func ReadImage(ctx context.Context, loc Location, root ocispec.Descriptor) (Image, error) {
	desc := root
	if images.IsIndexType(root.MediaType) {
		var idx ocispec.Index
		if _, err := FetchJSON(ctx, loc, root, &idx); err != nil {
			return Image{}, err
		}
		match := platforms.Default()
		found := false
		for _, d := range idx.Manifests {
			if d.Platform != nil && match.Match(*d.Platform) && images.IsManifestType(d.MediaType) {
				desc, found = d, true
				break
			}
		}
		if !found {
			return Image{}, fmt.Errorf("index %s has no manifest for %s", root.Digest, platforms.DefaultString())
		}
	}
	img := Image{Desc: desc}
	if _, err := FetchJSON(ctx, loc, desc, &img.Manifest); err != nil {
		return Image{}, err
	}
	if _, err := FetchJSON(ctx, loc, img.Manifest.Config, &img.Config); err != nil {
		return Image{}, fmt.Errorf("config of %s: %w", desc.Digest, err)
	}
	return img, nil
}

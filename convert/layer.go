package convert

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/containerd/v2/pkg/archive/compression"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/lazypull/lazypull/format"
	"github.com/lazypull/lazypull/format/estargz"
	"github.com/lazypull/lazypull/format/zstdchunked"
)

// Format is a lazily pullable layer format.
type Format string

// The formats convert writes.
const (
	EStargz     Format = "estargz"
	ZstdChunked Format = "zstdchunked"
)

// ParseFormat accepts a format's name as the command line gives it.
func ParseFormat(s string) (Format, error) {
	switch strings.ToLower(strings.NewReplacer("-", "", ":", "", "_", "").Replace(s)) {
	case "estargz", "stargz":
		return EStargz, nil
	case "zstdchunked":
		return ZstdChunked, nil
	}
	return "", fmt.Errorf("unknown layer format %q: want estargz or zstdchunked", s)
}

// layerResult is what every format's writer reports.
type layerResult struct {
	mediaType   string
	diffID      digest.Digest
	annotations map[string]string
}

// layerWriter converts one uncompressed tar.
type layerWriter interface {
	AppendTar(io.Reader) error
	close() (layerResult, error)
}

type estargzWriter struct{ *estargz.Writer }

func (w estargzWriter) close() (layerResult, error) {
	res, err := w.Close()
	return layerResult{ocispec.MediaTypeImageLayerGzip, res.DiffID, res.Annotations}, err
}

type zstdWriter struct {
	*zstdchunked.Writer
	forStargz bool
}

func (w zstdWriter) close() (layerResult, error) {
	res, err := w.Close()
	annotations := res.Annotations
	if w.forStargz {
		annotations = res.StargzAnnotations
	}
	return layerResult{zstdchunked.MediaType, res.DiffID, annotations}, err
}

// newLayerWriter writes a layer in the format asked for; an eStargz layer
// puts prioritized first.
func (c *converter) newLayerWriter(out io.Writer, prioritized []string) (layerWriter, error) {
	switch c.opts.Format {
	case EStargz:
		opts := []estargz.WriterOption{estargz.WithTempDir(c.stage)}
		if c.opts.ChunkSize > 0 {
			opts = append(opts, estargz.WithChunkSize(c.opts.ChunkSize))
		}
		if c.opts.MinChunkSize > 0 {
			opts = append(opts, estargz.WithMinChunkSize(c.opts.MinChunkSize))
		}
		if c.opts.CompressionLevel != 0 {
			opts = append(opts, estargz.WithCompressionLevel(c.opts.CompressionLevel))
		}
		if len(prioritized) > 0 {
			opts = append(opts, estargz.WithPrioritizedFiles(prioritized))
		}
		return estargzWriter{estargz.NewWriter(out, opts...)}, nil
	case ZstdChunked:
		if len(c.opts.PrioritizedFiles) > 0 || c.opts.MinChunkSize > 0 {
			return nil, fmt.Errorf("zstd:chunked has no prefetch landmark nor shared frames: prioritized files and a minimum chunk size are for estargz")
		}
		var opts []zstdchunked.WriterOption
		if c.opts.ChunkSize > 0 {
			opts = append(opts, zstdchunked.WithChunkSize(c.opts.ChunkSize))
		}
		if c.opts.CompressionLevel != 0 {
			opts = append(opts, zstdchunked.WithCompressionLevel(c.opts.CompressionLevel))
		}
		return zstdWriter{zstdchunked.NewWriter(out, opts...), c.opts.ForStargz}, nil
	}
	return nil, fmt.Errorf("unknown layer format %q", c.opts.Format)
}

// inFormat tells whether a layer is already in the format asked for.
func inFormat(layer ocispec.Descriptor, f Format) bool {
	switch f {
	case EStargz:
		kind, ok := format.KindOf(layer)
		return ok && kind == format.EStargz && strings.Contains(layer.MediaType, "gzip")
	case ZstdChunked:
		kind, ok := format.KindOf(layer)
		return ok && kind == format.ZstdChunked && strings.Contains(layer.MediaType, "zstd")
	}
	return false
}

// convertLayer converts one layer (or keeps it, if it is in the format
// already or is not a layer we may rewrite) and returns its new descriptor
// and diffID.
func (c *converter) convertLayer(ctx context.Context, layer ocispec.Descriptor, diffID digest.Digest, prioritized []string) (_ ocispec.Descriptor, _ digest.Digest, err error) {
	if inFormat(layer, c.opts.Format) || !images.IsLayerType(layer.MediaType) || images.IsNonDistributable(layer.MediaType) {
		c.add(stagedBlob{desc: layer, keep: true})
		return layer, diffID, nil
	}
	rc, err := c.src.Fetch(ctx, layer)
	if err != nil {
		return ocispec.Descriptor{}, "", err
	}
	defer rc.Close()
	tr := c.opts.Progress.Start("convert", layer)
	defer func() { tr.Done(err) }()

	tarStream, err := compression.DecompressStream(&counting{r: rc, tr: tr})
	if err != nil {
		return ocispec.Descriptor{}, "", fmt.Errorf("decompress: %w", err)
	}
	defer tarStream.Close()
	// The source's diffID is checked as we read: a config that lies about
	// its layers is not carried over.
	sourceDiff := digest.SHA256.Digester()
	tee := io.TeeReader(tarStream, sourceDiff.Hash())

	f, err := os.CreateTemp(c.stage, "layer-")
	if err != nil {
		return ocispec.Descriptor{}, "", err
	}
	defer f.Close()
	out := &digestingWriter{w: f, d: digest.SHA256.Digester()}
	w, err := c.newLayerWriter(out, prioritized)
	if err != nil {
		return ocispec.Descriptor{}, "", err
	}
	if err := w.AppendTar(tee); err != nil {
		w.close()
		return ocispec.Descriptor{}, "", err
	}
	// The tar reader stops at the end-of-archive marker: hash the rest too.
	if _, err := io.Copy(io.Discard, tee); err != nil {
		return ocispec.Descriptor{}, "", fmt.Errorf("decompress: %w", err)
	}
	if got := sourceDiff.Digest(); got != diffID {
		w.close()
		return ocispec.Descriptor{}, "", fmt.Errorf("uncompressed digest is %s, but the image config says %s", got, diffID)
	}
	res, err := w.close()
	if err != nil {
		return ocispec.Descriptor{}, "", err
	}
	if err := f.Close(); err != nil {
		return ocispec.Descriptor{}, "", err
	}
	blobDigest := out.d.Digest()
	path := filepath.Join(c.stage, blobDigest.Encoded())
	if err := os.Rename(f.Name(), path); err != nil {
		return ocispec.Descriptor{}, "", err
	}

	annotations := make(map[string]string)
	for k, v := range layer.Annotations {
		if !formatAnnotation(k) {
			annotations[k] = v
		}
	}
	for k, v := range res.annotations {
		annotations[k] = v
	}
	desc := ocispec.Descriptor{MediaType: res.mediaType, Digest: blobDigest, Size: out.n, Annotations: annotations}
	c.add(stagedBlob{desc: desc, file: path})
	return desc, res.diffID, nil
}

// formatAnnotation tells whether an annotation describes a layer's old
// encoding, which conversion replaces.
func formatAnnotation(key string) bool {
	return key == estargz.TOCDigestAnnotation || key == estargz.UncompressedSizeAnnotation ||
		strings.HasPrefix(key, "io.github.containers.zstd-chunked.")
}

// digestingWriter counts and digests a converted blob as it is written.
type digestingWriter struct {
	w io.Writer
	d digest.Digester
	n int64
}

func (d *digestingWriter) Write(p []byte) (int, error) {
	n, err := d.w.Write(p)
	d.d.Hash().Write(p[:n])
	d.n += int64(n)
	return n, err
}

// Package inspect describes an image's layers as lazypull sees them —
// format, sizes, TOC, prefetch area — and verifies them chunk by chunk. It
// reads through transport locations and opens layers with format/; it knows
// no registry protocol and mounts nothing.
package inspect

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/containerd/containerd/v2/core/images"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/lazypull/lazypull/format"
	"github.com/lazypull/lazypull/format/estargz"
	"github.com/lazypull/lazypull/format/toc"
	"github.com/lazypull/lazypull/format/zstdchunked"
	"github.com/lazypull/lazypull/transport"
)

// Manifest describes one image manifest and its layers.
type Manifest struct {
	Digest   digest.Digest      `json:"digest"`
	Platform *ocispec.Platform  `json:"platform,omitempty"`
	Layers   []Layer            `json:"layers"`
	Desc     ocispec.Descriptor `json:"-"`
}

// Layer describes one layer.
type Layer struct {
	Digest       digest.Digest `json:"digest"`
	MediaType    string        `json:"mediaType"`
	Size         int64         `json:"size"`
	Format       format.Kind   `json:"format,omitempty"` // empty: not lazily pullable
	TOCDigest    digest.Digest `json:"tocDigest,omitempty"`
	Entries      int           `json:"entries,omitempty"`
	Files        int           `json:"files,omitempty"` // regular files
	Chunks       int           `json:"chunks,omitempty"`
	FileBytes    int64         `json:"fileBytes,omitempty"`    // uncompressed size of the regular files
	PrefetchSize int64         `json:"prefetchSize,omitempty"` // compressed bytes before the prefetch landmark
	// LazyFor names who mounts the layer lazily (containers/storage:
	// pulls it partially), by its descriptor and footer: lazypull,
	// stargz-snapshotter, containers/storage.
	LazyFor  []string `json:"lazyFor,omitempty"`
	Verified bool     `json:"verified,omitempty"`
	Problem  string   `json:"problem,omitempty"`
}

// Options configure Image.
type Options struct {
	// Verify fetches every lazy layer whole and checks its digest, its TOC
	// digest and every chunk's digest.
	Verify bool
	// TempDir holds layers being verified (default: the system's).
	TempDir string
}

// ErrVerify marks a layer that failed verification.
var ErrVerify = errors.New("verification failed")

// Image describes every manifest the location names. With Verify, the
// returned error names the first bad layer and entry (and wraps ErrVerify);
// the reports are complete either way.
func Image(ctx context.Context, loc transport.Location, opts Options) ([]Manifest, error) {
	root, err := loc.Resolve(ctx)
	if err != nil {
		return nil, err
	}
	var manifests []ocispec.Descriptor
	if images.IsIndexType(root.MediaType) {
		var idx ocispec.Index
		if _, err := transport.FetchJSON(ctx, loc, root, &idx); err != nil {
			return nil, err
		}
		for _, m := range idx.Manifests {
			if images.IsManifestType(m.MediaType) {
				manifests = append(manifests, m)
			}
		}
	} else {
		manifests = []ocispec.Descriptor{root}
	}

	var reports []Manifest
	var firstProblem error
	for _, desc := range manifests {
		var m ocispec.Manifest
		if _, err := transport.FetchJSON(ctx, loc, desc, &m); err != nil {
			return nil, err
		}
		report := Manifest{Digest: desc.Digest, Platform: desc.Platform, Desc: desc}
		var diffIDs []digest.Digest
		if opts.Verify {
			var config ocispec.Image
			if _, err := transport.FetchJSON(ctx, loc, m.Config, &config); err != nil {
				return nil, fmt.Errorf("config of %s: %w", desc.Digest, err)
			}
			diffIDs = config.RootFS.DiffIDs
		}
		for i, l := range m.Layers {
			var diffID digest.Digest
			if i < len(diffIDs) {
				diffID = diffIDs[i]
			}
			layer, err := describeLayer(ctx, loc, l, diffID, opts)
			if err != nil {
				layer.Problem = err.Error()
				if firstProblem == nil {
					firstProblem = err
				}
			}
			report.Layers = append(report.Layers, layer)
		}
		reports = append(reports, report)
	}
	return reports, firstProblem
}

// describeLayer reads a layer's TOC; with opts.Verify it also fetches the
// blob and checks every chunk, and checks that the tar a full pull would
// unpack is what the TOC shows and has the config's diff_id (so that a
// scanner reading the tar and lazypull serving the TOC see the same files).
func describeLayer(ctx context.Context, loc transport.Location, desc ocispec.Descriptor, diffID digest.Digest, opts Options) (Layer, error) {
	layer := Layer{Digest: desc.Digest, MediaType: desc.MediaType, Size: desc.Size}
	if !images.IsLayerType(desc.MediaType) {
		return layer, nil
	}
	_, lazy := format.KindOf(desc)
	var ra transport.ReaderAt
	var err error
	if opts.Verify {
		ra, err = fetchWhole(ctx, loc, desc, opts.TempDir)
	} else if lazy {
		ra, err = loc.ReaderAt(ctx, desc)
	}
	if err != nil {
		return layer, fmt.Errorf("layer %s: %w: %w", desc.Digest, ErrVerify, err)
	}
	if ra == nil {
		return layer, nil
	}
	defer ra.Close()

	blob, kind, err := format.Open(ra, desc, format.Options{Unverified: !lazy})
	if errors.Is(err, format.ErrNotLazy) {
		if opts.Verify {
			layer.Verified = true // its digest checked out
		}
		return layer, nil
	}
	layer.Format = kind
	if err != nil {
		return layer, fmt.Errorf("%w: %w", ErrVerify, err)
	}
	if !lazy {
		layer.Problem = "has a " + string(kind) + " footer but no TOC digest annotation: its TOC cannot be verified"
	}
	t := blob.TOC()
	layer.TOCDigest = blob.TOCDigest()
	layer.Entries = t.Len()
	for _, e := range t.Entries() {
		if e.Type == toc.TypeReg {
			layer.Files++
			layer.FileBytes += e.Size
			layer.Chunks += len(e.Chunks())
		}
	}
	if end, ok := blob.PrefetchEnd(); ok {
		layer.PrefetchSize = end
	}
	zstdFooter := 0
	if kind == format.ZstdChunked {
		zstdFooter = footerSize(ra, desc.Size)
	}
	layer.LazyFor = lazyFor(desc, kind, zstdFooter)
	if opts.Verify && lazy {
		if err := verifyChunks(ra, blob); err != nil {
			return layer, fmt.Errorf("layer %s: %w: %w", desc.Digest, ErrVerify, err)
		}
		if diffID == "" {
			return layer, fmt.Errorf("layer %s: %w: the image's config has no diff_id for it", desc.Digest, ErrVerify)
		}
		if err := format.Verify(io.NewSectionReader(ra, 0, desc.Size), kind, t, diffID); err != nil {
			return layer, fmt.Errorf("layer %s: %w: %w", desc.Digest, ErrVerify, err)
		}
		layer.Verified = true
	}
	return layer, nil
}

// lazyFor names who mounts a layer of a lazily pullable kind lazily: lazypull
// if the descriptor holds a TOC digest; stargz-snapshotter if it holds the
// eStargz one and, for zstd:chunked, the blob ends with the 40-byte footer,
// the only one it reads; containers/storage for zstd:chunked with its own
// checksum and tar-split data, and not the eStargz digest (a layer with
// both it refuses).
func lazyFor(desc ocispec.Descriptor, kind format.Kind, zstdFooterSize int) []string {
	var who []string
	if _, ok := format.KindOf(desc); ok {
		who = append(who, "lazypull")
	}
	_, estargzDigest := desc.Annotations[estargz.TOCDigestAnnotation]
	if estargzDigest && (kind == format.EStargz || zstdFooterSize == 40) {
		who = append(who, "stargz-snapshotter")
	}
	_, checksum := desc.Annotations[zstdchunked.ManifestChecksumAnnotation]
	_, tarSplit := desc.Annotations[zstdchunked.TarSplitPositionAnnotation]
	if kind == format.ZstdChunked && checksum && tarSplit && !estargzDigest {
		who = append(who, "containers/storage")
	}
	return who
}

// footerSize is the payload size of the zstd:chunked footer the blob ends
// with, or 0.
func footerSize(ra io.ReaderAt, size int64) int {
	tail := make([]byte, min(size, zstdchunked.TailSize))
	if _, err := ra.ReadAt(tail, size-int64(len(tail))); err != nil && err != io.EOF {
		return 0
	}
	f, err := zstdchunked.ParseFooter(tail)
	if err != nil {
		return 0
	}
	return f.Size
}

// verifyChunks reads every chunk of every file and checks its digest.
func verifyChunks(ra io.ReaderAt, blob format.Blob) error {
	for _, e := range blob.TOC().Entries() {
		for i, c := range e.Chunks() {
			if c.Zero {
				continue
			}
			compressed := make([]byte, c.EndOffset-c.Offset)
			if _, err := ra.ReadAt(compressed, c.Offset); err != nil && err != io.EOF {
				return fmt.Errorf("file %q chunk %d: %w", e.Path(), i, err)
			}
			if _, err := blob.ReadChunk(nil, compressed, c); err != nil {
				return fmt.Errorf("file %q chunk %d: %w", e.Path(), i, err)
			}
		}
	}
	return nil
}

// fetchWhole downloads a blob into a temporary file, checking its digest.
func fetchWhole(ctx context.Context, loc transport.Location, desc ocispec.Descriptor, dir string) (transport.ReaderAt, error) {
	rc, err := loc.Fetch(ctx, desc)
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	f, err := os.CreateTemp(dir, "lazypull-inspect-")
	if err != nil {
		return nil, err
	}
	os.Remove(f.Name()) // gone when closed
	if _, err := io.Copy(f, rc); err != nil {
		f.Close()
		return nil, err
	}
	return tempBlob{f, desc.Size}, nil
}

type tempBlob struct {
	*os.File
	size int64
}

func (t tempBlob) Size() int64 { return t.size }

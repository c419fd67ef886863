// Package convert rewrites images so that their layers can be pulled
// lazily: every layer becomes eStargz or zstd:chunked, and the configs'
// diff_ids, the manifests and the index follow. It reads from and writes to
// transport locations, and stages everything before it pushes anything, so
// that a failed conversion leaves nothing new at the destination. It knows
// image specs and layer formats, not how registries speak.
package convert

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"

	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/platforms"
	"github.com/opencontainers/go-digest"
	specs "github.com/opencontainers/image-spec/specs-go"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/lazypull/lazypull/transport"
)

// Options configure a conversion.
type Options struct {
	Format           Format
	ChunkSize        int      // 0: the format's default
	MinChunkSize     int      // eStargz: let smaller files share a gzip member
	CompressionLevel int      // 0: the format's default
	PrioritizedFiles []string // files a workload reads first, in order
	// PrioritizeStartup, for eStargz with no PrioritizedFiles, puts first
	// in each image's layers the files its program loads before it runs
	// (see startupFiles), which a mount then prefetches.
	PrioritizeStartup bool
	// ForStargz gives zstd:chunked layers stargz-snapshotter's annotations
	// instead of containers/storage's: the blob suits both, but one
	// descriptor cannot carry both sets (containers/storage refuses a
	// layer with the eStargz TOC digest). lazypull reads either.
	ForStargz bool
	// Platforms picks the manifests of a multi-platform source; nil means
	// the host's platform. AllPlatforms keeps every manifest.
	Platforms    platforms.MatchComparer
	AllPlatforms bool
	TempDir      string   // where converted layers wait to be pushed
	Progress     Progress // nil: silent
}

// Progress hears how a conversion goes.
type Progress interface {
	// Start announces work on one blob ("convert", "copy", "push") of the
	// given size and returns a tracker of its bytes.
	Start(action string, desc ocispec.Descriptor) Tracker
}

// Tracker follows one blob's work.
type Tracker interface {
	Add(n int)
	Done(err error)
}

// Image converts the image src names and writes the result to dst; it
// returns the new root descriptor (a manifest, or an index for an index).
func Image(ctx context.Context, src, dst transport.Location, opts Options) (ocispec.Descriptor, error) {
	if opts.Platforms == nil {
		opts.Platforms = platforms.Default()
	}
	if opts.Progress == nil {
		opts.Progress = silent{}
	}
	stage, err := os.MkdirTemp(opts.TempDir, "lazypull-convert-")
	if err != nil {
		return ocispec.Descriptor{}, err
	}
	defer os.RemoveAll(stage)

	c := &converter{src: src, opts: opts, stage: stage, staged: make(map[digest.Digest]stagedBlob)}
	root, err := src.Resolve(ctx)
	if err != nil {
		return ocispec.Descriptor{}, err
	}
	newRoot, err := c.convert(ctx, root)
	if err != nil {
		return ocispec.Descriptor{}, err
	}
	// Only now that everything converted: blobs, then manifests children
	// first, then the tag.
	for _, d := range c.order {
		if err := c.push(ctx, dst, c.staged[d]); err != nil {
			return ocispec.Descriptor{}, err
		}
	}
	if err := dst.Tag(ctx, newRoot); err != nil {
		return ocispec.Descriptor{}, err
	}
	return newRoot, nil
}

type converter struct {
	src    transport.Location
	opts   Options
	stage  string
	staged map[digest.Digest]stagedBlob
	order  []digest.Digest // push order
}

// stagedBlob is something to push: bytes in memory, a converted layer in
// a file, or a source blob kept as it is.
type stagedBlob struct {
	desc ocispec.Descriptor
	data []byte
	file string
	keep bool
}

func (c *converter) add(b stagedBlob) {
	if _, ok := c.staged[b.desc.Digest]; ok {
		return
	}
	c.staged[b.desc.Digest] = b
	c.order = append(c.order, b.desc.Digest)
}

func (c *converter) convert(ctx context.Context, desc ocispec.Descriptor) (ocispec.Descriptor, error) {
	switch {
	case images.IsIndexType(desc.MediaType):
		return c.convertIndex(ctx, desc)
	case images.IsManifestType(desc.MediaType):
		return c.convertManifest(ctx, desc)
	}
	return ocispec.Descriptor{}, fmt.Errorf("%s is a %s, not an image manifest or index", desc.Digest, desc.MediaType)
}

func (c *converter) stageJSON(mediaType string, v any, annotations map[string]string, platform *ocispec.Platform) (ocispec.Descriptor, error) {
	data, err := json.Marshal(v)
	if err != nil {
		return ocispec.Descriptor{}, err
	}
	desc := ocispec.Descriptor{MediaType: mediaType, Digest: digest.FromBytes(data), Size: int64(len(data)), Annotations: annotations, Platform: platform}
	c.add(stagedBlob{desc: desc, data: data})
	return desc, nil
}

func (c *converter) convertIndex(ctx context.Context, desc ocispec.Descriptor) (ocispec.Descriptor, error) {
	var idx ocispec.Index
	if _, err := transport.FetchJSON(ctx, c.src, desc, &idx); err != nil {
		return ocispec.Descriptor{}, err
	}
	out := ocispec.Index{Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: ocispec.MediaTypeImageIndex, Annotations: idx.Annotations}
	for _, m := range idx.Manifests {
		if !images.IsManifestType(m.MediaType) && !images.IsIndexType(m.MediaType) {
			continue // attestations and the like are not images to run
		}
		if !c.opts.AllPlatforms && m.Platform != nil && !c.opts.Platforms.Match(*m.Platform) {
			continue
		}
		converted, err := c.convert(ctx, m)
		if err != nil {
			return ocispec.Descriptor{}, err
		}
		converted.Platform = m.Platform
		converted.Annotations = m.Annotations
		out.Manifests = append(out.Manifests, converted)
	}
	if len(out.Manifests) == 0 {
		return ocispec.Descriptor{}, fmt.Errorf("index %s has no manifest for the platform asked for (see --platform, --all-platforms)", desc.Digest)
	}
	return c.stageJSON(ocispec.MediaTypeImageIndex, out, nil, nil)
}

func (c *converter) convertManifest(ctx context.Context, desc ocispec.Descriptor) (ocispec.Descriptor, error) {
	var m ocispec.Manifest
	if _, err := transport.FetchJSON(ctx, c.src, desc, &m); err != nil {
		return ocispec.Descriptor{}, err
	}
	var config map[string]json.RawMessage
	if _, err := transport.FetchJSON(ctx, c.src, m.Config, &config); err != nil {
		return ocispec.Descriptor{}, err
	}
	var rootfs ocispec.RootFS
	if err := json.Unmarshal(config["rootfs"], &rootfs); err != nil {
		return ocispec.Descriptor{}, fmt.Errorf("config %s: rootfs: %w", m.Config.Digest, err)
	}
	if len(rootfs.DiffIDs) != len(m.Layers) {
		return ocispec.Descriptor{}, fmt.Errorf("manifest %s has %d layers, its config %d diff_ids", desc.Digest, len(m.Layers), len(rootfs.DiffIDs))
	}

	prioritized := c.opts.PrioritizedFiles
	if c.opts.Format == EStargz && len(prioritized) == 0 && c.opts.PrioritizeStartup {
		var ic ocispec.ImageConfig
		if raw, ok := config["config"]; ok {
			if err := json.Unmarshal(raw, &ic); err != nil {
				return ocispec.Descriptor{}, fmt.Errorf("config %s: %w", m.Config.Digest, err)
			}
		}
		var err error
		if prioritized, err = c.startupFiles(ctx, m.Layers, ic); err != nil {
			return ocispec.Descriptor{}, fmt.Errorf("the files %s's program starts with: %w", desc.Digest, err)
		}
	}
	out := ocispec.Manifest{Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: ocispec.MediaTypeImageManifest, Annotations: m.Annotations}
	for i, layer := range m.Layers {
		converted, diffID, err := c.convertLayer(ctx, layer, rootfs.DiffIDs[i], prioritized)
		if err != nil {
			return ocispec.Descriptor{}, fmt.Errorf("layer %d (%s): %w", i, layer.Digest, err)
		}
		out.Layers = append(out.Layers, converted)
		rootfs.DiffIDs[i] = diffID
	}
	raw, err := json.Marshal(rootfs)
	if err != nil {
		return ocispec.Descriptor{}, err
	}
	config["rootfs"] = raw
	if out.Config, err = c.stageJSON(ocispec.MediaTypeImageConfig, config, nil, nil); err != nil {
		return ocispec.Descriptor{}, err
	}
	return c.stageJSON(ocispec.MediaTypeImageManifest, out, nil, nil)
}

func (c *converter) push(ctx context.Context, dst transport.Location, b stagedBlob) (err error) {
	action := "push"
	if b.keep {
		action = "copy"
	}
	tr := c.opts.Progress.Start(action, b.desc)
	defer func() { tr.Done(err) }()
	var r io.Reader
	switch {
	case b.data != nil:
		r = bytes.NewReader(b.data)
	case b.file != "":
		f, err := os.Open(b.file)
		if err != nil {
			return err
		}
		defer f.Close()
		r = f
	default:
		rc, err := c.src.Fetch(ctx, b.desc)
		if err != nil {
			return err
		}
		defer rc.Close()
		r = rc
	}
	return dst.Push(ctx, b.desc, &counting{r: r, tr: tr})
}

type counting struct {
	r  io.Reader
	tr Tracker
}

func (c *counting) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.tr.Add(n)
	return n, err
}

type silent struct{}

func (silent) Start(string, ocispec.Descriptor) Tracker { return silent{} }
func (silent) Add(int)                                  {}
func (silent) Done(error)                               {}

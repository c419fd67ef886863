package mounter

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/log"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/lazypull/lazypull/profile"
	"github.com/lazypull/lazypull/profile/artifact"
	"github.com/lazypull/lazypull/transport"
)

// image is an image's manifest layers and config diff_ids, fetched once,
// and the workload profiles that refer to its manifest in its registry,
// looked up after (profilesDone is closed then).
type image struct {
	done     chan struct{}
	manifest digest.Digest
	layers   []ocispec.Descriptor
	diffIDs  []digest.Digest
	err      error

	profilesDone chan struct{}
	profiles     []*profile.Profile
}

// imageCache fetches the manifest and config of an image for this machine's
// platform once per key, while that succeeds, for every layer of the
// image that asks. A fetch runs on its owner's context, bounded by the
// request timeout whoever waits for it, and counts in the owner's bg.
type imageCache struct {
	opts Options
	ctx  context.Context
	bg   *sync.WaitGroup

	mu    sync.Mutex
	byKey map[imageKey]*image
}

func newImageCache(ctx context.Context, bg *sync.WaitGroup, opts Options) *imageCache {
	return &imageCache{opts: opts, ctx: ctx, bg: bg, byKey: make(map[imageKey]*image)}
}

// get returns the image key names, fetching it if no fetch has succeeded
// or is under way.
//
// stored, if not nil, is the image as containerd stored it (from the
// labels), used instead of a fetch if it checks out.
func (c *imageCache) get(ctx context.Context, key imageKey, stored *storedImage) (*image, error) {
	c.mu.Lock()
	img, ok := c.byKey[key]
	if !ok {
		img = &image{done: make(chan struct{}), profilesDone: make(chan struct{})}
		c.byKey[key] = img
		c.bg.Add(1)
		go func() {
			defer c.bg.Done()
			timeout := c.opts.Blob.RequestTimeout
			if timeout <= 0 {
				timeout = time.Minute
			}
			fctx, cancel := context.WithTimeout(c.ctx, timeout)
			defer cancel()
			defer close(img.profilesDone)
			loc, im, err := c.load(fctx, key, stored)
			img.manifest, img.layers, img.diffIDs, img.err = im.Desc.Digest, im.Manifest.Layers, im.Config.RootFS.DiffIDs, err
			if img.err != nil {
				c.mu.Lock()
				delete(c.byKey, key) // try again next time
				c.mu.Unlock()
			}
			close(img.done)
			if img.err == nil && !c.opts.NoProfileReferrers {
				// After: the layers' mounts need not wait for it.
				ps, err := artifact.Find(fctx, loc, img.manifest)
				if err != nil {
					log.G(fctx).WithError(err).WithField("image", key.ref).Warn("cannot read the workload profiles that refer to the image")
				}
				img.profiles = ps
			}
		}()
	}
	c.mu.Unlock()
	select {
	case <-img.done:
		return img, img.err
	case <-ctx.Done():
		return nil, fmt.Errorf("manifest of %s: %w", key.ref, ctx.Err())
	}
}

// load makes the image from what containerd stored, if the labels carry
// it and it checks out, else fetches it.
func (c *imageCache) load(ctx context.Context, key imageKey, stored *storedImage) (transport.Location, transport.Image, error) {
	if stored != nil {
		im, err := stored.image(key.manifest)
		if err == nil {
			log.G(ctx).WithField("image", key.ref).Debug("image's manifest and config taken from containerd's content store")
			loc, _, err := locationOf(ctx, key, c.opts.Registry)
			return loc, im, err
		}
		log.G(ctx).WithError(err).WithField("image", key.ref).Warn("the image's manifest and config handed over from containerd's content store do not check out; fetching them from the registry")
	}
	return fetchImage(ctx, key, c.opts.Registry)
}

// storedImage is an image's manifest and config as containerd stored them
// (labels.ManifestContent), handed over by the snapshotter.
type storedImage struct {
	manifest, config []byte
}

// image decodes the stored image, checked as one fetched by digest is:
// the manifest against the digest the labels pin, the config against the
// descriptor in the manifest.
func (s *storedImage) image(manifest digest.Digest) (transport.Image, error) {
	if manifest == "" {
		return transport.Image{}, errors.New("no manifest digest to check it against")
	}
	if err := manifest.Validate(); err != nil {
		return transport.Image{}, err
	}
	if len(s.manifest) > transport.MaxManifestSize || len(s.config) > transport.MaxManifestSize {
		return transport.Image{}, fmt.Errorf("manifest of %d bytes or config of %d, more than %d", len(s.manifest), len(s.config), transport.MaxManifestSize)
	}
	if manifest.Algorithm().FromBytes(s.manifest) != manifest {
		return transport.Image{}, fmt.Errorf("the manifest is not %s", manifest)
	}
	img := transport.Image{Desc: ocispec.Descriptor{MediaType: ocispec.MediaTypeImageManifest, Digest: manifest, Size: int64(len(s.manifest))}}
	if err := json.Unmarshal(s.manifest, &img.Manifest); err != nil {
		return transport.Image{}, fmt.Errorf("manifest %s: %w", manifest, err)
	}
	if mt := img.Manifest.MediaType; mt != "" {
		if !images.IsManifestType(mt) {
			return transport.Image{}, fmt.Errorf("%s is a %s, not a manifest", manifest, mt)
		}
		img.Desc.MediaType = mt
	}
	cd := img.Manifest.Config
	if err := cd.Digest.Validate(); err != nil {
		return transport.Image{}, fmt.Errorf("config of %s: %w", manifest, err)
	}
	if cd.Size != int64(len(s.config)) || cd.Digest.Algorithm().FromBytes(s.config) != cd.Digest {
		return transport.Image{}, fmt.Errorf("config of %s: not %s of %d bytes", manifest, cd.Digest, cd.Size)
	}
	if err := json.Unmarshal(s.config, &img.Config); err != nil {
		return transport.Image{}, fmt.Errorf("config %s: %w", cd.Digest, err)
	}
	return img, nil
}

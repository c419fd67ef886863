package mounter

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/containerd/log"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/lazypull/lazypull/profile"
	"github.com/lazypull/lazypull/profile/artifact"
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
func (c *imageCache) get(ctx context.Context, key imageKey) (*image, error) {
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
			loc, im, err := fetchImage(fctx, key, c.opts.Registry)
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

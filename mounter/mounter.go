// Package mounter mounts lazily pulled layers for the snapshotter: from a
// Prepare's labels to a verified FUSE mount of the layer, its prefetch and
// its background fetch. It joins remote (the registry), layer (fetching and
// caching) and fusefs; the snapshotter sees it only as a snapshot.Remote.
package mounter

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/log"
	"github.com/containerd/platforms"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"golang.org/x/sys/unix"

	"github.com/lazypull/lazypull/format"
	"github.com/lazypull/lazypull/fusefs"
	"github.com/lazypull/lazypull/layer"
	"github.com/lazypull/lazypull/metrics"
	"github.com/lazypull/lazypull/remote"
	"github.com/lazypull/lazypull/transport"
)

// errNotLazy says a layer is not one to mount lazily; the snapshotter then
// unpacks it as usual.
var errNotLazy = format.ErrNotLazy

// Options configure the mounter.
type Options struct {
	Registry remote.Options
	Blob     remote.BlobOptions
	Layer    layer.Options
	FUSE     fusefs.Options
	// PrefetchTimeout bounds how long a mount waits for the files the
	// image marks to fetch first (default 10 s).
	PrefetchTimeout time.Duration
	NoPrefetch      bool
	NoBackground    bool
}

// Mounter mounts layers; it implements snapshot.Remote.
type Mounter struct {
	cache layer.Cache
	opts  Options

	hints *hints

	mu        sync.Mutex
	mounts    map[string]*mounted     // by mountpoint
	opening   map[digest.Digest]*open // layers being opened, by digest
	manifests map[string]*manifest    // image layers, by reference
}

type mounted struct {
	layer *layer.Layer
	fuse  *fusefs.MountedLayer
}

// open is a layer being opened (its TOC fetched) ahead of its Prepare.
type open struct {
	done  chan struct{}
	layer *layer.Layer
	err   error
}

type manifest struct {
	done   chan struct{}
	layers []ocispec.Descriptor
	err    error
}

// New returns a mounter that caches in c.
func New(c layer.Cache, opts Options) *Mounter {
	if opts.PrefetchTimeout <= 0 {
		opts.PrefetchTimeout = 10 * time.Second
	}
	if opts.Layer.Gate == nil {
		// Every layer shares the machine's link: one gate for all.
		opts.Layer.Gate = layer.NewGate()
	}
	m := &Mounter{cache: c, opts: opts, mounts: make(map[string]*mounted), opening: make(map[digest.Digest]*open), manifests: make(map[string]*manifest)}
	m.hints = &hints{m: m, seen: make(map[string]bool)}
	return m
}

// openRemote opens a layer of image ref from its registry.
func (m *Mounter) openRemote(ctx context.Context, ref string, desc ocispec.Descriptor) (*layer.Layer, error) {
	blob, err := remote.OpenBlob(ctx, ref, desc, m.opts.Registry, m.opts.Blob)
	if err != nil {
		return nil, err
	}
	opts := m.opts.Layer
	opts.OnMiss = m.hints.onMiss(ref, desc.Digest)
	return layer.Open(ctx, desc, blob, m.cache, opts)
}

// Mount mounts the layer the labels name at mountpoint. It fails (and the
// snapshotter unpacks the layer) when the labels name no image, the layer
// is in no lazy format, or its TOC cannot be fetched and verified.
func (m *Mounter) Mount(ctx context.Context, mountpoint string, labels map[string]string) error {
	t, err := targetFromLabels(labels)
	if err != nil {
		return err
	}
	m.mu.Lock()
	_, serving := m.mounts[mountpoint]
	m.mu.Unlock()
	if serving {
		return nil // restoring what this mounter serves already
	}
	// A mount left there by a server that is gone answers nothing but
	// ENOTCONN: take it away before mounting anew.
	if err := detachStale(mountpoint); err != nil {
		return err
	}
	desc := t.desc
	if !t.full {
		if desc, err = m.lookup(ctx, t.ref, t.desc.Digest); err != nil {
			return err
		}
	}
	if _, ok := format.KindOf(desc); !ok && !m.opts.Layer.Unverified {
		return fmt.Errorf("layer %s: %w (no eStargz or zstd:chunked TOC digest annotation)", desc.Digest, errNotLazy)
	}
	// The image's other layers will be asked for next: open them now.
	go m.preopen(context.WithoutCancel(ctx), t.ref)

	l, err := m.openLayer(ctx, t.ref, desc)
	if err != nil {
		return err
	}
	fm, err := fusefs.Mount(mountpoint, l, m.opts.FUSE)
	if err != nil {
		l.Close()
		return err
	}
	if !m.opts.NoPrefetch {
		if err := l.Prefetch(ctx, m.opts.PrefetchTimeout); err != nil {
			log.G(ctx).WithError(err).WithField("layer", desc.Digest).Warn("prefetch did not finish; files will be fetched on demand")
		}
	}
	if !m.opts.NoBackground {
		l.StartBackground()
	}
	m.mu.Lock()
	m.mounts[mountpoint] = &mounted{layer: l, fuse: fm}
	m.mu.Unlock()
	metrics.MountedLayers.Inc()
	log.G(ctx).WithField("layer", desc.Digest).WithField("mountpoint", mountpoint).Info("layer mounted lazily")
	return nil
}

// openLayer opens a layer, or takes the one preopen opened.
func (m *Mounter) openLayer(ctx context.Context, ref string, desc ocispec.Descriptor) (*layer.Layer, error) {
	m.mu.Lock()
	o, ok := m.opening[desc.Digest]
	if ok {
		delete(m.opening, desc.Digest) // a layer serves one mount
	}
	m.mu.Unlock()
	if ok {
		<-o.done
		if o.err == nil {
			return o.layer, nil
		}
	}
	return m.openRemote(ctx, ref, desc)
}

// preopen opens the TOCs of an image's lazy layers in parallel, so that
// each Prepare finds its layer ready.
func (m *Mounter) preopen(ctx context.Context, ref string) {
	layers, err := m.imageLayers(ctx, ref)
	if err != nil {
		return
	}
	for _, desc := range layers {
		if _, ok := format.KindOf(desc); !ok {
			continue
		}
		m.mu.Lock()
		_, busy := m.opening[desc.Digest]
		if !busy {
			o := &open{done: make(chan struct{})}
			m.opening[desc.Digest] = o
			go func() {
				defer close(o.done)
				o.layer, o.err = m.openRemote(ctx, ref, desc)
			}()
		}
		m.mu.Unlock()
	}
}

// lookup finds a layer's descriptor in its image's manifest.
func (m *Mounter) lookup(ctx context.Context, ref string, d digest.Digest) (ocispec.Descriptor, error) {
	layers, err := m.imageLayers(ctx, ref)
	if err != nil {
		return ocispec.Descriptor{}, err
	}
	for _, l := range layers {
		if l.Digest == d {
			return l, nil
		}
	}
	return ocispec.Descriptor{}, fmt.Errorf("layer %s is not in the manifest of %s", d, ref)
}

// imageLayers fetches (once per reference) the layers of the image ref names
// for this machine's platform.
func (m *Mounter) imageLayers(ctx context.Context, ref string) ([]ocispec.Descriptor, error) {
	m.mu.Lock()
	mf, ok := m.manifests[ref]
	if !ok {
		mf = &manifest{done: make(chan struct{})}
		m.manifests[ref] = mf
	}
	m.mu.Unlock()
	if !ok {
		mf.layers, mf.err = fetchLayers(ctx, ref, m.opts.Registry)
		close(mf.done)
		if mf.err != nil {
			m.mu.Lock()
			delete(m.manifests, ref) // try again next time
			m.mu.Unlock()
		}
	}
	<-mf.done
	return mf.layers, mf.err
}

func fetchLayers(ctx context.Context, ref string, opts remote.Options) ([]ocispec.Descriptor, error) {
	r, err := transport.ParseRef("docker://" + ref)
	if err != nil {
		return nil, err
	}
	loc, err := transport.Open(ctx, r, opts)
	if err != nil {
		return nil, err
	}
	desc, err := loc.Resolve(ctx)
	if err != nil {
		return nil, err
	}
	if images.IsIndexType(desc.MediaType) {
		var idx ocispec.Index
		if _, err := transport.FetchJSON(ctx, loc, desc, &idx); err != nil {
			return nil, err
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
			return nil, fmt.Errorf("%s has no manifest for %s", ref, platforms.DefaultString())
		}
	}
	var mf ocispec.Manifest
	if _, err := transport.FetchJSON(ctx, loc, desc, &mf); err != nil {
		return nil, err
	}
	return mf.Layers, nil
}

// Unmount unmounts what Mount mounted at mountpoint; other mountpoints are
// none of its business.
func (m *Mounter) Unmount(ctx context.Context, mountpoint string) error {
	m.mu.Lock()
	mt, ok := m.mounts[mountpoint]
	delete(m.mounts, mountpoint)
	m.mu.Unlock()
	if !ok {
		return nil
	}
	metrics.MountedLayers.Dec()
	mt.layer.Close()
	return mt.fuse.Unmount()
}

// Layers reports every mounted layer's fetching.
func (m *Mounter) Layers() map[string]layer.Stats {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make(map[string]layer.Stats, len(m.mounts))
	for mp, mt := range m.mounts {
		out[mp] = mt.layer.Stats()
	}
	return out
}

// Close unmounts every layer.
func (m *Mounter) Close() error {
	m.mu.Lock()
	points := make([]string, 0, len(m.mounts))
	for mp := range m.mounts {
		points = append(points, mp)
	}
	m.mu.Unlock()
	var errs []error
	for _, mp := range points {
		errs = append(errs, m.Unmount(context.Background(), mp))
	}
	return errors.Join(errs...)
}

// detachStale lazily unmounts whatever is mounted at mountpoint.
func detachStale(mountpoint string) error {
	for {
		switch err := unix.Unmount(mountpoint, unix.MNT_DETACH); err {
		case nil:
			continue
		case unix.EINVAL, unix.ENOENT:
			return nil
		default:
			return fmt.Errorf("clear the old mount at %s: %w", mountpoint, err)
		}
	}
}

// Package mounter mounts lazily pulled layers for the snapshotter: from a
// Prepare's labels to a verified FUSE mount of the layer, its prefetch and
// its background fetch. It joins remote (the registry), layer (fetching and
// caching) and fusefs; the snapshotter sees it only as a snapshot.Remote.
package mounter

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	"github.com/distribution/reference"
	"github.com/opencontainers/go-digest"
	"github.com/opencontainers/image-spec/identity"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"golang.org/x/sys/unix"

	"github.com/lazypull/lazypull/format"
	"github.com/lazypull/lazypull/format/toc"
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
	// PassthroughNote says why FUSE.Passthrough is what it is, for
	// lazypull status.
	PassthroughNote string
	// Composefs sets up the lazy composefs mode (MountComposefs).
	Composefs ComposefsOptions
	// PrefetchTimeout bounds how long a mount's prefetch of the files the
	// image marks to fetch first goes on (default 10 s); the mount does
	// not wait for it.
	PrefetchTimeout time.Duration
	NoPrefetch      bool
	// ProfileDir holds workload profiles (profile.Profile, files *.json):
	// a layer they name fetches the ranges they read, in the order the
	// workloads read them, instead of the files the image marks.
	ProfileDir string
	// NoProfileReferrers: do not look for workload profiles among the
	// referrers of an image's manifest in its registry (profile push).
	NoProfileReferrers bool
	NoBackground       bool
	// MaxImageEntries bounds the TOC entries the mounted lazy layers of
	// one image hold together (default DefaultMaxImageEntries); layers
	// past it are unpacked instead.
	MaxImageEntries int64
	// VerifyBeforeUse makes a mount wait until its layer has been fetched
	// whole and verified against its image (no lazy start, but nothing
	// unverified is ever shown).
	VerifyBeforeUse bool
}

// Mounter mounts layers; it implements snapshot.Remote.
type Mounter struct {
	cache layer.Cache
	opts  Options

	hints    *hints
	profiles *profiles // nil without ProfileDir

	mu           sync.Mutex
	closed       bool
	mounts       map[string]*mounted      // by mountpoint
	busy         map[string]chan struct{} // mountpoints being mounted or unmounted
	opening      map[digest.Digest]*open  // layers opened ahead of their Prepare, by digest
	images       *imageCache              // manifests and configs, by reference and digest
	imageEntries map[imageKey]int64       // TOC entries of each image's mounted layers
	gates        map[string]*layer.Gate   // by registry host
	// The object filesystem, mounted while lazy composefs layers are
	// served; objfsMu orders its mount and unmount.
	objfsMu sync.Mutex
	objfs   *fusefs.MountedObjects
	bg      sync.WaitGroup     // preopens and image fetches in flight
	stop    context.CancelFunc // ends preopens
	ctx     context.Context
}

type mounted struct {
	layer   *layer.Layer
	ahead   <-chan error         // the fetch of what profiles read, or the prefetch; nil without
	fuse    *fusefs.MountedLayer // nil for a layer in the lazy composefs form
	image   imageKey
	entries int64 // counted against the image's MaxImageEntries
}

// open is a layer being opened (its TOC fetched) ahead of its Prepare. A
// layer nobody takes within preopenKeep is closed: its image's snapshot
// may exist already (containerd then never asks for it).
type open struct {
	key     imageKey // the image its entries are held against
	expect  layer.Expect
	done    chan struct{}
	layer   *layer.Layer
	err     error
	expires *time.Timer
}

// DefaultMaxImageEntries fits the largest images we know (a few hundred
// thousand files) and keeps one image's TOCs to some hundreds of MiB of
// the FUSE manager, which serves every image on the node.
const DefaultMaxImageEntries = 256 << 10

// preopenKeep is how long a layer opened ahead waits for its Prepare.
const preopenKeep = time.Minute

// New returns a mounter that caches in c.
func New(c layer.Cache, opts Options) *Mounter {
	if opts.PrefetchTimeout <= 0 {
		opts.PrefetchTimeout = 10 * time.Second
	}
	if opts.MaxImageEntries <= 0 {
		opts.MaxImageEntries = DefaultMaxImageEntries
	}
	if opts.Layer.Budget == nil {
		// Every layer this process mounts shares one budget.
		opts.Layer.Budget = layer.NewBudget(layer.BudgetLimits{})
	}
	m := &Mounter{cache: c, opts: opts, mounts: make(map[string]*mounted), busy: make(map[string]chan struct{}),
		opening: make(map[digest.Digest]*open), gates: make(map[string]*layer.Gate),
		imageEntries: make(map[imageKey]int64)}
	m.ctx, m.stop = context.WithCancel(context.Background())
	m.images = newImageCache(m.ctx, &m.bg, opts)
	m.hints = &hints{m: m, seen: make(map[string]bool)}
	if opts.ProfileDir != "" {
		m.profiles = newProfiles(opts.ProfileDir)
	}
	return m
}

// gate returns the Gate of the registry that serves ref: one per host, so
// that a slow registry's reads hold back only its own background fetches.
func (m *Mounter) gate(ref string) *layer.Gate {
	if m.opts.Layer.Gate != nil {
		return m.opts.Layer.Gate
	}
	host := ref
	if named, err := reference.ParseNormalizedNamed(ref); err == nil {
		host = reference.Domain(named)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	g, ok := m.gates[host]
	if !ok {
		g = layer.NewGate()
		m.gates[host] = g
	}
	return g
}

// openRemote opens a layer of image img (whose layers are layers) from its
// registry, to be verified against expect. What the image's workload
// profiles recorded of its blob is fetched as soon as its tail is in, and
// those of the layers opened with it (group, if not nil), in one order
// with theirs.
func (m *Mounter) openRemote(ctx context.Context, img imageKey, layers []ocispec.Descriptor, desc ocispec.Descriptor, expect layer.Expect, group *layer.EarlyGroup) (_ *layer.Layer, err error) {
	blob, err := remote.OpenBlob(ctx, img.ref, desc, m.opts.Registry, m.opts.Blob)
	if err != nil {
		return nil, err
	}
	opts := m.opts.Layer
	// The TOC may hold no more entries than the image may still hold:
	// a parse stops there instead of building what would be refused.
	m.mu.Lock()
	remaining := m.opts.MaxImageEntries - m.imageEntries[img]
	m.mu.Unlock()
	if remaining <= 0 {
		return nil, fmt.Errorf("%w: the lazy layers of %s hold the %d TOC entries one image may ([fetch] max_image_entries); this layer is unpacked instead", errNotLazy, img.ref, m.opts.MaxImageEntries)
	}
	opts.Limits = opts.Limits.WithDefaults()
	capped := remaining < int64(opts.Limits.MaxEntries)
	opts.Limits.MaxEntries = int(min(int64(opts.Limits.MaxEntries), remaining))
	if !m.opts.NoBackground || m.opts.VerifyBeforeUse {
		// Verified once the background fetch has it all.
		opts.Expect = expect
	}
	opts.Gate = m.gate(img.ref)
	opts.OnMiss = m.hints.onMiss(img, desc.Digest)
	var f layer.Fetcher = blob
	spans := m.profiles.spans(ctx, desc.Digest, layers)
	if end, ok := format.PrefetchEnd(desc); ok && len(spans) == 0 && !m.opts.NoPrefetch {
		// No profile: the files the image marks to fetch first (what its
		// mount's prefetch fetches) cross the link while the TOC is parsed.
		spans = []layer.EarlySpan{{Span: layer.Span{Length: end}}}
	}
	if len(spans) > 0 || group != nil {
		// What the profiles read crosses the link while the TOC is parsed.
		if group == nil {
			group = layer.NewEarlyGroup([]digest.Digest{desc.Digest}, m.opts.Layer.Parallel)
		}
		early := layer.FetchEarly(m.ctx, blob, desc.Digest, spans, group)
		defer func() {
			if err != nil {
				early.Close()
			}
		}()
		f = early
	}
	l, err := layer.Open(ctx, desc, f, m.cache, opts)
	var tocErr *toc.Error
	if err != nil && capped && errors.As(err, &tocErr) {
		return nil, fmt.Errorf("%w: the lazy layers of %s may hold %d more TOC entries ([fetch] max_image_entries); this layer is unpacked instead: %w", errNotLazy, img.ref, remaining, err)
	}
	if err != nil {
		return nil, err
	}
	// Counted as soon as it is open (ahead of its Prepare too): an image
	// of many layers must not take the process's memory while its layers
	// wait to be mounted.
	if err := m.holdEntries(img, entriesOf(l)); err != nil {
		l.Close()
		return nil, fmt.Errorf("layer %s: %w", desc.Digest, err)
	}
	return l, nil
}

func entriesOf(l *layer.Layer) int64 { return int64(l.TOC().Len()) }

// lockMountpoint waits until no other Mount or Unmount works on
// mountpoint, and holds it until the returned func is called.
func (m *Mounter) lockMountpoint(ctx context.Context, mountpoint string) (func(), error) {
	for {
		m.mu.Lock()
		if m.closed {
			m.mu.Unlock()
			return nil, errors.New("the mounter is closing")
		}
		wait, busy := m.busy[mountpoint]
		if !busy {
			ch := make(chan struct{})
			m.busy[mountpoint] = ch
			m.mu.Unlock()
			return func() {
				m.mu.Lock()
				delete(m.busy, mountpoint)
				m.mu.Unlock()
				close(ch)
			}, nil
		}
		m.mu.Unlock()
		select {
		case <-wait:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// Mount mounts the layer the labels name at mountpoint. It fails (and the
// snapshotter unpacks the layer) when the labels name no image, the layer
// is in no lazy format, or its TOC cannot be fetched and verified.
func (m *Mounter) Mount(ctx context.Context, mountpoint string, labels map[string]string) error {
	return m.mount(ctx, mountpoint, labels, nil)
}

// mount mounts the layer the labels name at mountpoint over FUSE, or, with
// cfs, serves it in the lazy composefs form (see MountComposefs).
func (m *Mounter) mount(ctx context.Context, mountpoint string, labels map[string]string, cfs *composefsLayer) error {
	t, err := targetFromLabels(labels)
	if err != nil {
		return err
	}
	unlock, err := m.lockMountpoint(ctx, mountpoint)
	if err != nil {
		return err
	}
	defer unlock()
	m.mu.Lock()
	_, serving := m.mounts[mountpoint]
	m.mu.Unlock()
	if serving {
		return nil // restoring what this mounter serves already
	}
	// A mount left there by a server that is gone answers nothing but
	// ENOTCONN: take it away before mounting anew. (A composefs layer's
	// mountpoint holds its image, the snapshotter's mount.)
	if cfs == nil {
		if err := detachStale(mountpoint); err != nil {
			return err
		}
	}
	key := imageKey{ref: t.ref, manifest: t.manifest}
	img, err := m.images.get(ctx, key, t.stored)
	if err != nil {
		return err
	}
	desc, expect, err := img.layer(t, labels[snapshots.LabelSnapshotRef])
	if err != nil {
		return err
	}
	if _, ok := format.KindOf(desc); !ok && !m.opts.Layer.Unverified {
		return fmt.Errorf("layer %s: %w (no eStargz or zstd:chunked TOC digest annotation)", desc.Digest, errNotLazy)
	}
	// The image's other layers will be asked for next: open them now.
	m.preopen(key, img)

	l, held, err := m.openLayer(ctx, key, img.layers, desc, expect)
	if err != nil {
		return err
	}
	entries := entriesOf(l)
	var (
		fm *fusefs.MountedLayer
		// A lazy composefs layer's image and claim are written while
		// its prefetch waits on the registry.
		served chan error
	)
	if cfs == nil {
		if fm, err = fusefs.Mount(mountpoint, l, m.opts.FUSE); err != nil {
			m.holdEntries(held, -entries)
			l.Close()
			return err
		}
	} else {
		served = make(chan error, 1)
		go func() { served <- m.serveObjects(ctx, mountpoint, l, *cfs) }()
	}
	// Neither is waited for: the container starts meanwhile, and its
	// reads join the fetches that bring what they want.
	var ahead <-chan error
	if plan := m.profiles.plan(ctx, desc.Digest, l.TOC(), img.layers); len(plan) > 0 {
		ahead = l.FetchRanges(plan...)
		log.G(ctx).WithField("layer", desc.Digest).WithField("ranges", rangesIn(plan)).Info("fetching what the workload profiles read")
	} else if !m.opts.NoPrefetch {
		ahead = l.StartPrefetch(m.opts.PrefetchTimeout)
	}
	if served != nil {
		if err := <-served; err != nil {
			m.drop(mountpoint, nil, l, held, entries)
			return err
		}
	}
	// Verifying before use needs the whole layer, background or not.
	if !m.opts.NoBackground || m.opts.VerifyBeforeUse {
		l.StartBackground()
		if m.opts.VerifyBeforeUse {
			if err := l.WaitVerified(ctx); err != nil {
				m.drop(mountpoint, fm, l, held, entries)
				return fmt.Errorf("layer %s: verify before use: %w", desc.Digest, err)
			}
		}
	}
	m.mu.Lock()
	m.mounts[mountpoint] = &mounted{layer: l, ahead: ahead, fuse: fm, image: held, entries: entries}
	if cfs != nil && !m.closed { // MountComposefs ruled out a settled layer
		m.bg.Add(1)
		go m.settle(mountpoint, l, *cfs)
	}
	if !m.closed {
		m.bg.Add(1)
		go m.fetchReferred(img, l)
	}
	m.mu.Unlock()
	metrics.MountedLayers.Inc()
	how := "layer mounted lazily"
	if cfs != nil {
		how = "layer mounted lazily in the composefs form"
	}
	log.G(ctx).WithField("layer", desc.Digest).WithField("mountpoint", mountpoint).Info(how)
	return nil
}

// openLayer opens a layer, or takes the one preopen opened for the same
// expectation.
// It returns the image whose bound the layer's entries are held against.
func (m *Mounter) openLayer(ctx context.Context, img imageKey, layers []ocispec.Descriptor, desc ocispec.Descriptor, expect layer.Expect) (*layer.Layer, imageKey, error) {
	m.mu.Lock()
	o, ok := m.opening[desc.Digest]
	m.mu.Unlock()
	if ok {
		select {
		case <-o.done:
		case <-ctx.Done():
			return nil, img, ctx.Err()
		}
		m.mu.Lock()
		taken := m.opening[desc.Digest] == o && o.err == nil && o.layer != nil && o.expect == expect
		if taken {
			delete(m.opening, desc.Digest) // a layer serves one mount
		}
		m.mu.Unlock()
		if taken && o.expires != nil && o.expires.Stop() {
			return o.layer, o.key, nil
		}
	}
	l, err := m.openRemote(ctx, img, layers, desc, expect, nil)
	return l, img, err
}

// preopen opens the TOCs of an image's lazy layers in parallel (the
// layer Budget bounds how many at once), so that each Prepare finds its
// layer ready; once per layer: not one that is open, mounted or being
// opened already.
func (m *Mounter) preopen(key imageKey, img *image) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return
	}
	var batch []int // the layers to open, by index
	var digests []digest.Digest
	for i, desc := range img.layers {
		if _, ok := format.KindOf(desc); !ok {
			continue
		}
		if _, busy := m.opening[desc.Digest]; busy || m.mountedLocked(desc.Digest) != nil || slices.Contains(digests, desc.Digest) {
			continue
		}
		batch, digests = append(batch, i), append(digests, desc.Digest)
	}
	tails := layer.NewEarlyGroup(digests, m.opts.Layer.Parallel)
	for _, i := range batch {
		desc := img.layers[i]
		o := &open{key: key, done: make(chan struct{})}
		if len(img.diffIDs) == len(img.layers) {
			o.expect = layer.Expect{DiffID: img.diffIDs[i]}
		}
		m.opening[desc.Digest] = o
		m.bg.Add(1)
		go func() {
			defer m.bg.Done()
			defer close(o.done)
			o.layer, o.err = m.openRemote(m.ctx, key, img.layers, desc, o.expect, tails)
			tails.Arrived(desc.Digest) // if it failed before its tail
			if o.err != nil {
				m.dropPreopened(desc.Digest, o) // a failure is not kept
				return
			}
			// Not taken in time: close it (a taker stops the timer).
			o.expires = time.AfterFunc(preopenKeep, func() { m.dropPreopened(desc.Digest, o) })
		}()
	}
}

// dropPreopened closes a layer opened ahead that nobody took.
func (m *Mounter) dropPreopened(d digest.Digest, o *open) {
	m.mu.Lock()
	if m.opening[d] == o {
		delete(m.opening, d)
	}
	m.mu.Unlock()
	if o.layer != nil {
		o.layer.Close()
		m.holdEntries(o.key, -entriesOf(o.layer))
	}
}

// imageKey names an image: by reference, and by manifest digest when
// containerd gave one (then the manifest is fetched by digest, never by
// a tag that may have moved since containerd resolved it).
type imageKey struct {
	ref      string
	manifest digest.Digest
}

// layer finds the descriptor of the layer t names in the image, and what
// its content must be: its diff_id from the image's config, checked to
// make the chain ID containerd will commit it as (chainID, when the
// labels carry it), so that a config which claims another image's
// layers cannot be mounted under a name it does not make.
func (img *image) layer(t target, chainID string) (ocispec.Descriptor, layer.Expect, error) {
	i := slices.IndexFunc(img.layers, func(l ocispec.Descriptor) bool { return l.Digest == t.desc.Digest })
	if i < 0 {
		return ocispec.Descriptor{}, layer.Expect{}, fmt.Errorf("layer %s is not in the manifest of %s", t.desc.Digest, t.ref)
	}
	desc := img.layers[i]
	if t.full && (t.desc.Size != desc.Size || t.desc.MediaType != desc.MediaType) {
		return ocispec.Descriptor{}, layer.Expect{}, fmt.Errorf("layer %s: the labels say %d bytes of %s, the manifest of %s %d bytes of %s",
			desc.Digest, t.desc.Size, t.desc.MediaType, t.ref, desc.Size, desc.MediaType)
	}
	if len(img.diffIDs) != len(img.layers) {
		return ocispec.Descriptor{}, layer.Expect{}, fmt.Errorf("the config of %s lists %d diff_ids for %d layers", t.ref, len(img.diffIDs), len(img.layers))
	}
	if chainID != "" {
		if want := identity.ChainID(img.diffIDs[:i+1]); want.String() != chainID {
			return ocispec.Descriptor{}, layer.Expect{}, fmt.Errorf("layer %s of %s: its diff_ids make chain %s, but containerd asks for %s (the image changed since it was pulled?)",
				desc.Digest, t.ref, want, chainID)
		}
	}
	return desc, layer.Expect{DiffID: img.diffIDs[i]}, nil
}

// locationOf opens the registry location of an image (by digest when the
// key has one); it makes no request.
func locationOf(ctx context.Context, key imageKey, opts remote.Options) (transport.Location, string, error) {
	name := key.ref
	if key.manifest != "" {
		named, err := reference.ParseNormalizedNamed(key.ref)
		if err != nil {
			return nil, "", fmt.Errorf("image reference %s: %w", key.ref, err)
		}
		canonical, err := reference.WithDigest(reference.TrimNamed(named), key.manifest)
		if err != nil {
			return nil, "", err
		}
		name = canonical.String()
	}
	r, err := transport.ParseRef("docker://" + name)
	if err != nil {
		return nil, "", err
	}
	loc, err := transport.Open(ctx, r, opts)
	return loc, name, err
}

// fetchImage fetches an image's manifest (by digest when the key has one)
// and config, and returns them with the location they came from.
func fetchImage(ctx context.Context, key imageKey, opts remote.Options) (transport.Location, transport.Image, error) {
	loc, name, err := locationOf(ctx, key, opts)
	if err != nil {
		return nil, transport.Image{}, err
	}
	desc, err := loc.Resolve(ctx)
	if err != nil {
		return nil, transport.Image{}, err
	}
	if key.manifest != "" && desc.Digest != key.manifest {
		return nil, transport.Image{}, fmt.Errorf("%s resolved to %s", name, desc.Digest)
	}
	if key.manifest != "" && images.IsIndexType(desc.MediaType) {
		return nil, transport.Image{}, fmt.Errorf("%s is an index, not the manifest containerd named", name)
	}
	img, err := transport.ReadImage(ctx, loc, desc)
	if err != nil {
		return nil, transport.Image{}, fmt.Errorf("%s: %w", name, err)
	}
	return loc, img, nil
}

// Unmount unmounts what Mount mounted at mountpoint, then closes its
// layer (so no read arrives at a closed layer); other mountpoints are
// none of its business.
func (m *Mounter) Unmount(ctx context.Context, mountpoint string) error {
	unlock, err := m.lockMountpoint(ctx, mountpoint)
	if err != nil {
		return err
	}
	defer unlock()
	return m.unmount(mountpoint, true)
}

// unmount stops serving the layer at mountpoint; released says no snapshot
// uses it any more (not so when the mounter closes: the next one serves
// the same snapshots).
func (m *Mounter) unmount(mountpoint string, released bool) error {
	m.mu.Lock()
	mt, ok := m.mounts[mountpoint]
	delete(m.mounts, mountpoint)
	unused := ok && released && m.mountedLocked(mt.layer.Descriptor().Digest) == nil
	m.mu.Unlock()
	if !ok {
		return nil
	}
	metrics.MountedLayers.Dec()
	if unused {
		// No snapshot uses the layer now (its last was removed): when the
		// cache is full, its chunks go before those of layers in use.
		mt.layer.DemoteCached()
	}
	return m.drop(mountpoint, mt.fuse, mt.layer, mt.image, mt.entries)
}

// drop undoes the mount of l at mountpoint: it stops serving it (its FUSE
// mount fm, or, with none, its objects), then closes the layer, so that no
// read arrives at a closed layer, and gives back its entries held against
// its image.
func (m *Mounter) drop(mountpoint string, fm *fusefs.MountedLayer, l *layer.Layer, held imageKey, entries int64) error {
	var err error
	if fm != nil {
		err = fm.Unmount()
	} else {
		err = m.stopServing(mountpoint)
	}
	l.Close()
	m.holdEntries(held, -entries)
	return err
}

// holdEntries counts n more TOC entries (fewer if negative) against the
// image's MaxImageEntries, or fails saying so: one image cannot take the
// whole process's budget, even with many layers each within its limits.
func (m *Mounter) holdEntries(img imageKey, n int64) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	held := m.imageEntries[img]
	if n > 0 && held+n > m.opts.MaxImageEntries {
		return fmt.Errorf("%w: the lazy layers of %s would hold %d TOC entries, over the bound of %d per image ([fetch] max_image_entries); this layer is unpacked instead", errNotLazy, img.ref, held+n, m.opts.MaxImageEntries)
	}
	if held+n <= 0 {
		delete(m.imageEntries, img)
	} else {
		m.imageEntries[img] = held + n
	}
	return nil
}

// Check fails if a layer mounted at one of mountpoints was rejected (found
// not to be its image's content); it implements snapshot.Checker.
func (m *Mounter) Check(ctx context.Context, mountpoints []string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, mp := range mountpoints {
		if mt, ok := m.mounts[mp]; ok {
			if v, err := mt.layer.Verification(); v == layer.Rejected {
				return err
			}
		}
	}
	return nil
}

// Usage reports what the layer mounted at mountpoint takes: the bytes of
// its data fetched or found in the cache, and its entries as inodes. It
// implements snapshot.UsageReporter.
func (m *Mounter) Usage(ctx context.Context, mountpoint string) (snapshots.Usage, error) {
	m.mu.Lock()
	mt, ok := m.mounts[mountpoint]
	m.mu.Unlock()
	if !ok {
		return snapshots.Usage{}, fmt.Errorf("no layer mounted at %s: %w", mountpoint, errdefs.ErrNotFound)
	}
	return snapshots.Usage{Size: mt.layer.Stats().CachedBytes, Inodes: mt.entries}, nil
}

// PassthroughNote says whether cached files are handed to the kernel
// (FUSE passthrough), and why.
func (m *Mounter) PassthroughNote() string { return m.opts.PassthroughNote }

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

// mountedLocked returns a mounted layer of digest d, if any; m.mu held.
func (m *Mounter) mountedLocked(d digest.Digest) *layer.Layer {
	for _, mt := range m.mounts {
		if mt.layer.Descriptor().Digest == d {
			return mt.layer
		}
	}
	return nil
}

// Close unmounts every layer, stops what it fetches ahead and closes the
// layers it opened ahead.
func (m *Mounter) Close() error {
	m.mu.Lock()
	m.closed = true
	points := make([]string, 0, len(m.mounts))
	for mp := range m.mounts {
		points = append(points, mp)
	}
	m.mu.Unlock()
	m.stop()
	m.bg.Wait()
	var errs []error
	for _, mp := range points {
		errs = append(errs, m.unmount(mp, false))
	}
	m.mu.Lock()
	opened := m.opening
	m.opening = make(map[digest.Digest]*open)
	m.mu.Unlock()
	for _, o := range opened {
		if o.expires != nil {
			o.expires.Stop()
		}
		if o.layer != nil {
			o.layer.Close()
			m.holdEntries(o.key, -entriesOf(o.layer))
		}
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

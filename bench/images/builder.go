package images

import (
	"archive/tar"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"time"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// Image is a built image: an OCI image layout holding one image, tagged
// with its name.
type Image struct {
	Name     string               `json:"name"`
	Tag      string               `json:"tag"` // the layout's org.opencontainers.image.ref.name
	Layout   string               `json:"-"`   // the OCI image layout directory
	Cmd      []string             `json:"cmd"`
	Ready    string               `json:"ready"` // the line Cmd prints once it has done its first useful work
	Manifest ocispec.Descriptor   `json:"manifest"`
	Config   ocispec.Descriptor   `json:"config"`
	Layers   []ocispec.Descriptor `json:"layers"` // base first
	// BuildTime is how long the build took, when it was built: taking it
	// from the cache later does not change it.
	BuildTime time.Duration `json:"buildTime"`
	Cached    bool          `json:"-"` // this call took it from the cache
}

// Size is the compressed size of the image: its layers, config and manifest.
func (img Image) Size() int64 {
	n := img.Manifest.Size + img.Config.Size
	for _, l := range img.Layers {
		n += l.Size
	}
	return n
}

// Ref is the image's reference in the containers-transports syntax that
// skopeo takes: oci:<layout>:<tag>.
func (img Image) Ref() string { return "oci:" + img.Layout + ":" + img.Tag }

// ReadyLabel is the config label that carries Image.Ready, so that whoever
// has only the image (from a registry) knows what line to wait for.
const ReadyLabel = "dev.lazypull.bench.ready"

// imageEnv is the images' environment: Debian's default PATH.
var imageEnv = []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}

// Builder builds the benchmark images into its cache directory. One Builder
// may be used by several goroutines, and several processes may share a cache
// directory: builds take turns under a lock file.
type Builder struct {
	cache    string
	suite    string
	mirror   string // "" means the one apt on this machine uses
	dataSize int64
	progress io.Writer
	// makeBase writes the base tree into an empty directory; it is
	// debootstrap, and tests replace it with a tiny tree.
	makeBase func(ctx context.Context, dir string) error

	mu sync.Mutex // in-process turns; the lock file serialises processes
}

// Option configures a Builder.
type Option func(*Builder)

// WithMirror sets the Debian mirror debootstrap and apt fetch from (default:
// the first one this machine's apt sources list for the suite).
func WithMirror(url string) Option { return func(b *Builder) { b.mirror = url } }

// WithDataSize sets the size of the data image's data layer (default
// DefaultDataSize); tests use a few MiB.
func WithDataSize(n int64) Option { return func(b *Builder) { b.dataSize = n } }

// WithProgress makes the Builder say what it is doing, a line per step, on w.
func WithProgress(w io.Writer) Option { return func(b *Builder) { b.progress = w } }

// Suite is the Debian release the images are made of.
const Suite = "bookworm"

// New returns a Builder whose cache is the directory cache (created if
// missing; "" means DefaultCacheDir()).
func New(cache string, opts ...Option) (*Builder, error) {
	if cache == "" {
		cache = DefaultCacheDir()
	}
	b := &Builder{cache: cache, suite: Suite, dataSize: DefaultDataSize, progress: io.Discard}
	b.makeBase = b.debootstrap
	for _, opt := range opts {
		opt(b)
	}
	if b.dataSize <= 0 {
		return nil, fmt.Errorf("data size %d: must be positive", b.dataSize)
	}
	if err := os.MkdirAll(cache, 0o755); err != nil {
		return nil, fmt.Errorf("image cache: %w", err)
	}
	return b, nil
}

// CacheDir is where the Builder keeps what it built.
func (b *Builder) CacheDir() string { return b.cache }

func (b *Builder) logf(format string, args ...any) {
	fmt.Fprintf(b.progress, "images: "+format+"\n", args...)
}

// Build returns the image called name (one of Names()), from the cache if
// it was built before with the same recipe, else building it (minutes: a
// debootstrap the first time, then apt-get install).
func (b *Builder) Build(ctx context.Context, name string) (_ Image, err error) {
	r, err := lookupRecipe(name)
	if err != nil {
		return Image{}, err
	}
	unlock, err := b.lock()
	if err != nil {
		return Image{}, err
	}
	defer unlock()

	dir := b.imageDir(r)
	img, err := loadImage(dir)
	if err == nil {
		img.Cached = true
		return img, nil
	}
	if err := clearEntry(dir, err, b.logf); err != nil {
		return Image{}, err
	}

	start := time.Now()
	tmp, err := b.tempDir(name)
	if err != nil {
		return Image{}, err
	}
	defer func() {
		if rerr := removeTemp(tmp); rerr != nil && err == nil {
			err = rerr
		}
	}()
	// The cache entry is made in tmp/entry, beside the build's work
	// directories, and only it moves into the cache.
	entry := filepath.Join(tmp, "entry")
	img, err = b.build(ctx, r, entry, tmp)
	if err != nil {
		return Image{}, fmt.Errorf("build image %s: %w", name, err)
	}
	img.BuildTime = time.Since(start)
	if err := storeImage(entry, dir, img); err != nil {
		return Image{}, err
	}
	img.Layout = filepath.Join(dir, layoutDirName)
	b.logf("%s: built in %v: %d bytes in %d layers", name, img.BuildTime.Round(time.Second), img.Size(), len(img.Layers))
	return img, nil
}

// build makes r's image in an OCI layout under entry, working in tmp.
func (b *Builder) build(ctx context.Context, r recipe, entry, tmp string) (Image, error) {
	base, baseBlob, err := b.base(ctx)
	if err != nil {
		return Image{}, err
	}
	lw, err := newLayout(filepath.Join(entry, layoutDirName))
	if err != nil {
		return Image{}, err
	}
	if err := lw.addBlob(baseBlob, base.Desc); err != nil {
		return Image{}, err
	}

	ready := r.Ready
	var app layer
	if r.Data {
		b.logf("%s: writing %d bytes of data", r.Name, b.dataSize)
		app, err = lw.writeLayer(func(tw *tar.Writer) (err error) {
			ready, err = writeData(tw, b.dataSize)
			return err
		})
	} else {
		app, err = b.installLayer(ctx, r, lw, baseBlob, tmp)
	}
	if err != nil {
		return Image{}, err
	}

	config := ocispec.Image{
		Platform: ocispec.Platform{Architecture: runtime.GOARCH, OS: "linux"},
		Config: ocispec.ImageConfig{
			Cmd: r.Cmd, Env: imageEnv, WorkingDir: "/",
			Labels: map[string]string{ReadyLabel: ready},
		},
	}
	manifest, configDesc, err := lw.finish(config, []layer{base, app}, r.Name)
	if err != nil {
		return Image{}, err
	}
	return Image{
		Name: r.Name, Tag: r.Name, Cmd: r.Cmd, Ready: ready,
		Manifest: manifest, Config: configDesc,
		Layers: []ocispec.Descriptor{base.Desc, app.Desc},
	}, nil
}

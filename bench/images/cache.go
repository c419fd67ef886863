package images

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"golang.org/x/sys/unix"
)

// The cache directory:
//
//	lock                          held while a build runs (flock)
//	tmp/                          work directories of the build in progress
//	base/<suite>-<key>/           the base layer: blobs/sha256/<digest>, layer.json
//	images/<name>-<key>/layout/   an image's OCI layout
//	images/<name>-<key>/image.json  what Build returns for it
//
// Entries appear by renaming a finished work directory, so a crash leaves
// only tmp/ behind, which the next build clears.
const (
	layoutDirName = "layout"
	imageFile     = "image.json"
	baseFile      = "layer.json"
)

// DefaultCacheDir is $XDG_CACHE_HOME/lazypull-bench, or
// /var/cache/lazypull-bench (building needs root anyway).
func DefaultCacheDir() string {
	if d := os.Getenv("XDG_CACHE_HOME"); d != "" {
		return filepath.Join(d, "lazypull-bench")
	}
	return "/var/cache/lazypull-bench"
}

func (b *Builder) imageDir(r recipe) string {
	return filepath.Join(b.cache, "images", r.Name+"-"+r.key(baseKey(b.suite), b.dataSize))
}

func (b *Builder) baseDir() string {
	return filepath.Join(b.cache, "base", b.suite+"-"+baseKey(b.suite))
}

// lock takes the cache for one build. Work directories left in tmp/ by a
// build that died are cleared then: while the lock is held, no other build
// is running.
func (b *Builder) lock() (unlock func(), err error) {
	b.mu.Lock()
	defer func() {
		if err != nil {
			b.mu.Unlock()
		}
	}()
	path := filepath.Join(b.cache, "lock")
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, fmt.Errorf("image cache lock: %w", err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); errors.Is(err, unix.EWOULDBLOCK) {
		b.logf("waiting for another build that holds %s", path)
		err = unix.Flock(int(f.Fd()), unix.LOCK_EX)
	}
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	unlock = func() { f.Close(); b.mu.Unlock() } // closing releases the flock

	stale, _ := filepath.Glob(filepath.Join(b.cache, "tmp", "*"))
	for _, dir := range stale {
		if err := removeTemp(dir); err != nil {
			unlock()
			return nil, fmt.Errorf("clear a dead build's work directory: %w", err)
		}
	}
	return unlock, nil
}

func (b *Builder) tempDir(name string) (string, error) {
	tmp := filepath.Join(b.cache, "tmp")
	if err := os.MkdirAll(tmp, 0o755); err != nil {
		return "", fmt.Errorf("image cache: %w", err)
	}
	dir, err := os.MkdirTemp(tmp, name+"-")
	if err != nil {
		return "", fmt.Errorf("image cache: %w", err)
	}
	return dir, nil
}

// storeImage moves the finished cache entry (img's layout) to dir with a
// record of img.
func storeImage(entry, dir string, img Image) error {
	data, err := json.MarshalIndent(img, "", "\t")
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(entry, imageFile), data, 0o644); err != nil {
		return fmt.Errorf("image cache: %w", err)
	}
	return publish(entry, dir)
}

// publish renames a finished cache entry into its place in the cache.
func publish(entry, dir string) error {
	if err := os.MkdirAll(filepath.Dir(dir), 0o755); err != nil {
		return fmt.Errorf("image cache: %w", err)
	}
	if err := os.Chmod(entry, 0o755); err != nil {
		return fmt.Errorf("image cache: %w", err)
	}
	if err := os.Rename(entry, dir); err != nil {
		return fmt.Errorf("image cache: store %s: %w", dir, err)
	}
	return nil
}

// clearEntry removes the cache entry dir, which could not be loaded (why
// says why), so that it is built again. No entry at all is the usual case.
func clearEntry(dir string, why error, logf func(string, ...any)) error {
	if _, err := os.Lstat(dir); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	logf("rebuilding %s: %v", dir, why)
	return removeTemp(dir)
}

// loadImage reads the image cached in dir, checking that its blobs are
// there: a half-deleted cache entry must be rebuilt, not returned.
func loadImage(dir string) (Image, error) {
	data, err := os.ReadFile(filepath.Join(dir, imageFile))
	if err != nil {
		return Image{}, err
	}
	var img Image
	if err := json.Unmarshal(data, &img); err != nil {
		return Image{}, fmt.Errorf("%s: %w", filepath.Join(dir, imageFile), err)
	}
	img.Layout = filepath.Join(dir, layoutDirName)
	for _, d := range append([]ocispec.Descriptor{img.Manifest, img.Config}, img.Layers...) {
		if err := checkBlob(img.Layout, d); err != nil {
			return Image{}, err
		}
	}
	return img, nil
}

// checkBlob checks that the layout has the blob d, of its size. (Hashing a
// gigabyte on every cache hit would cost more than it protects.)
func checkBlob(layout string, d ocispec.Descriptor) error {
	p := filepath.Join(layout, "blobs", d.Digest.Algorithm().String(), d.Digest.Encoded())
	fi, err := os.Stat(p)
	if err != nil {
		return fmt.Errorf("blob %s: %w", d.Digest, err)
	}
	if fi.Size() != d.Size {
		return fmt.Errorf("blob %s: %d bytes, want %d", p, fi.Size(), d.Size)
	}
	return nil
}

// Export puts img's layout at dir (replacing an OCI layout there, hard
// linking blobs where it can) and returns img with Layout set to dir.
func Export(img Image, dir string) (Image, error) {
	if _, err := os.Stat(filepath.Join(dir, ocispec.ImageLayoutFile)); err == nil {
		if err := os.RemoveAll(dir); err != nil {
			return Image{}, fmt.Errorf("replace %s: %w", dir, err)
		}
	} else if entries, _ := os.ReadDir(dir); len(entries) > 0 {
		return Image{}, fmt.Errorf("export %s: %s is not empty and not an OCI layout", img.Name, dir)
	}
	blobs := filepath.Join(dir, "blobs", "sha256")
	if err := os.MkdirAll(blobs, 0o755); err != nil {
		return Image{}, fmt.Errorf("export %s: %w", img.Name, err)
	}
	// index.json and oci-layout are copied: tools that add to a layout
	// (skopeo copy) may rewrite them in place, which must not reach the
	// cache. Blobs are never rewritten, so they may be shared.
	for _, f := range []string{ocispec.ImageLayoutFile, ocispec.ImageIndexFile} {
		if err := copyFile(filepath.Join(img.Layout, f), filepath.Join(dir, f)); err != nil {
			return Image{}, fmt.Errorf("export %s to %s: %w", img.Name, dir, err)
		}
	}
	for _, d := range append([]ocispec.Descriptor{img.Manifest, img.Config}, img.Layers...) {
		f := filepath.Join("blobs", d.Digest.Algorithm().String(), d.Digest.Encoded())
		if err := linkOrCopy(filepath.Join(img.Layout, f), filepath.Join(dir, f)); err != nil {
			return Image{}, fmt.Errorf("export %s to %s: %w", img.Name, dir, err)
		}
	}
	img.Layout = dir
	return img, nil
}

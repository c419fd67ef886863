package transport

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/containerd/v2/core/remotes"
	"github.com/containerd/errdefs"
	"github.com/distribution/reference"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/lazypull/lazypull/remote"
)

// registry is an image in a registry, reached through containerd's resolver.
type registry struct {
	ref      string // normalized, with tag or digest
	repo     string // without tag or digest
	resolver remotes.Resolver
}

func openRegistry(ctx context.Context, ref Ref, opts remote.Options) (*registry, error) {
	named, err := reference.ParseNormalizedNamed(ref.Name)
	if err != nil {
		return nil, fmt.Errorf("image reference %s: %w", ref, err)
	}
	return &registry{ref: ref.Name, repo: named.Name(), resolver: remote.NewResolver(ctx, opts)}, nil
}

func (r *registry) Resolve(ctx context.Context) (ocispec.Descriptor, error) {
	_, desc, err := r.resolver.Resolve(ctx, r.ref)
	if err != nil {
		return ocispec.Descriptor{}, fmt.Errorf("resolve %s: %w", r.ref, err)
	}
	return desc, nil
}

func (r *registry) fetch(ctx context.Context, desc ocispec.Descriptor) (io.ReadCloser, error) {
	fetcher, err := r.resolver.Fetcher(ctx, r.ref)
	if err != nil {
		return nil, fmt.Errorf("fetch from %s: %w", r.repo, err)
	}
	rc, err := fetcher.Fetch(ctx, desc)
	if err != nil {
		return nil, fmt.Errorf("fetch %s from %s: %w", desc.Digest, r.repo, err)
	}
	return rc, nil
}

func (r *registry) Fetch(ctx context.Context, desc ocispec.Descriptor) (io.ReadCloser, error) {
	rc, err := r.fetch(ctx, desc)
	if err != nil {
		return nil, err
	}
	return verified(rc, desc), nil
}

func (r *registry) ReaderAt(ctx context.Context, desc ocispec.Descriptor) (ReaderAt, error) {
	rc, err := r.fetch(ctx, desc)
	if err != nil {
		return nil, err
	}
	// containerd's blob reader seeks with HTTP Range requests.
	rs, ok := rc.(io.ReadSeeker)
	if !ok {
		rc.Close()
		return nil, fmt.Errorf("fetch %s from %s: the reader cannot seek", desc.Digest, r.repo)
	}
	return &seekingReaderAt{rs: rs, c: rc, size: desc.Size}, nil
}

func (r *registry) Push(ctx context.Context, desc ocispec.Descriptor, rd io.Reader) error {
	// Pushing through an untagged reference stores manifests by digest.
	pusher, err := r.resolver.Pusher(ctx, r.repo+"@"+desc.Digest.String())
	if err != nil {
		return fmt.Errorf("push to %s: %w", r.repo, err)
	}
	return push(ctx, pusher, desc, rd, r.repo)
}

func (r *registry) Tag(ctx context.Context, desc ocispec.Descriptor) error {
	if !images.IsManifestType(desc.MediaType) && !images.IsIndexType(desc.MediaType) {
		return fmt.Errorf("tag %s: %s is a %s, not a manifest or index", r.ref, desc.Digest, desc.MediaType)
	}
	rc, err := r.Fetch(ctx, desc)
	if err != nil {
		return err
	}
	defer rc.Close()
	pusher, err := r.resolver.Pusher(ctx, r.ref)
	if err != nil {
		return fmt.Errorf("tag %s: %w", r.ref, err)
	}
	// The resolver remembers the push by digest under the same key and
	// would skip this one: give the tag push a key of its own.
	ctx = remotes.WithMediaTypeKeyPrefix(ctx, desc.MediaType, "tag")
	w, err := pusher.Push(ctx, desc)
	if errdefs.IsAlreadyExists(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("tag %s: %w", r.ref, err)
	}
	return commit(ctx, w, rc, desc, r.ref)
}

func push(ctx context.Context, pusher remotes.Pusher, desc ocispec.Descriptor, rd io.Reader, where string) error {
	w, err := pusher.Push(ctx, desc)
	if errdefs.IsAlreadyExists(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("push %s to %s: %w", desc.Digest, where, err)
	}
	return commit(ctx, w, rd, desc, where)
}

func commit(ctx context.Context, w content.Writer, rd io.Reader, desc ocispec.Descriptor, where string) error {
	defer w.Close()
	if _, err := io.Copy(w, rd); err != nil {
		return fmt.Errorf("push %s to %s: %w", desc.Digest, where, err)
	}
	if err := w.Commit(ctx, desc.Size, desc.Digest); err != nil && !errdefs.IsAlreadyExists(err) {
		return fmt.Errorf("push %s to %s: %w", desc.Digest, where, err)
	}
	return nil
}

// seekingReaderAt turns a seekable blob reader into a ReaderAt.
type seekingReaderAt struct {
	mu   sync.Mutex
	rs   io.ReadSeeker
	c    io.Closer
	size int64
}

func (s *seekingReaderAt) ReadAt(p []byte, off int64) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, err := s.rs.Seek(off, io.SeekStart); err != nil {
		return 0, err
	}
	n, err := io.ReadFull(s.rs, p)
	if errors.Is(err, io.ErrUnexpectedEOF) {
		err = io.EOF
	}
	return n, err
}

func (s *seekingReaderAt) Close() error { return s.c.Close() }
func (s *seekingReaderAt) Size() int64  { return s.size }

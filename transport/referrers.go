package transport

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"github.com/containerd/containerd/v2/core/remotes"
	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	specs "github.com/opencontainers/image-spec/specs-go"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// Referrers are the manifests that name another as their subject (OCI 1.1):
// artifacts that travel with an image without changing its digest. A
// registry lists them through the referrers API where it has one, else
// (Distribution 2.8) in an index tagged with the subject's digest,
// sha256-<hex>, the referrers tag schema; containerd's fetcher reads
// either.

// ErrNoReferrers is returned by the referrer operations of a location
// that keeps none (an OCI layout).
var ErrNoReferrers = errors.New("this location keeps no referrers (push to a registry)")

// referrerTag is the referrers tag schema's tag for subject.
func referrerTag(subject digest.Digest) string {
	return strings.Replace(subject.String(), ":", "-", 1)
}

// Referrers lists the manifests of artifactType that refer to subject in
// the location's repository.
func Referrers(ctx context.Context, loc Location, subject digest.Digest, artifactType string) ([]ocispec.Descriptor, error) {
	r, ok := loc.(*registry)
	if !ok {
		return nil, nil
	}
	f, err := r.resolver.Fetcher(ctx, r.ref)
	if err != nil {
		return nil, fmt.Errorf("referrers of %s in %s: %w", subject, r.repo, err)
	}
	rf, ok := f.(remotes.ReferrersFetcher)
	if !ok {
		return nil, fmt.Errorf("referrers of %s in %s: the resolver cannot list referrers", subject, r.repo)
	}
	descs, err := rf.FetchReferrers(ctx, subject, remotes.WithReferrerArtifactTypes(artifactType))
	if err != nil {
		return nil, fmt.Errorf("referrers of %s in %s: %w", subject, r.repo, err)
	}
	return descs, nil
}

// AddReferrer lists manifest, pushed already and naming subject as its
// subject, among subject's referrers: in the referrers tag schema's index,
// which it creates or extends (a registry with the referrers API lists it
// from the push already; the tag is harmless there).
func AddReferrer(ctx context.Context, loc Location, subject digest.Digest, manifest ocispec.Descriptor) error {
	r, ok := loc.(*registry)
	if !ok {
		return ErrNoReferrers
	}
	tagRef := r.repo + ":" + referrerTag(subject)
	idx := ocispec.Index{Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: ocispec.MediaTypeImageIndex}
	_, cur, err := r.resolver.Resolve(ctx, tagRef)
	switch {
	case err == nil:
		tagged := &registry{ref: tagRef, repo: r.repo, resolver: r.resolver}
		if _, err := FetchJSON(ctx, tagged, cur, &idx); err != nil {
			return fmt.Errorf("referrers of %s in %s: %w", subject, r.repo, err)
		}
	case !errdefs.IsNotFound(err):
		return fmt.Errorf("referrers of %s in %s: %w", subject, r.repo, err)
	}
	for _, m := range idx.Manifests {
		if m.Digest == manifest.Digest {
			return nil
		}
	}
	idx.Manifests = append(idx.Manifests, ocispec.Descriptor{MediaType: manifest.MediaType, Digest: manifest.Digest, Size: manifest.Size,
		ArtifactType: manifest.ArtifactType, Annotations: manifest.Annotations})
	data, err := json.Marshal(idx)
	if err != nil {
		return err
	}
	desc := ocispec.Descriptor{MediaType: ocispec.MediaTypeImageIndex, Digest: digest.FromBytes(data), Size: int64(len(data))}
	if err := r.Push(ctx, desc, bytes.NewReader(data)); err != nil {
		return err
	}
	return (&registry{ref: tagRef, repo: r.repo, resolver: r.resolver}).Tag(ctx, desc)
}

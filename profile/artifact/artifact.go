// Package artifact carries a workload profile with its image, as an OCI
// artifact whose subject is the image's manifest: pushing one does not
// change the image's digest, and one image can carry the profiles of
// several workloads. It joins profile and transport (which knows the
// referrers API and its tag schema).
package artifact

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"

	"github.com/opencontainers/go-digest"
	specs "github.com/opencontainers/image-spec/specs-go"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/lazypull/lazypull/profile"
	"github.com/lazypull/lazypull/transport"
)

// emptyJSON is the OCI empty descriptor's content: an artifact's config.
var emptyJSON = []byte("{}")

// Push stores p at loc as an artifact referring to subject (the image's
// manifest there) and lists it among subject's referrers. It returns the
// artifact's manifest.
func Push(ctx context.Context, loc transport.Location, subject ocispec.Descriptor, p *profile.Profile) (ocispec.Descriptor, error) {
	data, err := p.Marshal()
	if err != nil {
		return ocispec.Descriptor{}, err
	}
	blob := ocispec.Descriptor{MediaType: profile.MediaType, Digest: digest.FromBytes(data), Size: int64(len(data))}
	config := ocispec.DescriptorEmptyJSON
	m := ocispec.Manifest{
		Versioned:    specs.Versioned{SchemaVersion: 2},
		MediaType:    ocispec.MediaTypeImageManifest,
		ArtifactType: profile.MediaType,
		Config:       config,
		Layers:       []ocispec.Descriptor{blob},
		Subject:      &ocispec.Descriptor{MediaType: subject.MediaType, Digest: subject.Digest, Size: subject.Size},
	}
	if len(p.Workload.Args) > 0 {
		m.Annotations = map[string]string{"dev.lazypull.profile.workload": fmt.Sprint(p.Workload.Args)}
	}
	mdata, err := json.Marshal(m)
	if err != nil {
		return ocispec.Descriptor{}, err
	}
	desc := ocispec.Descriptor{MediaType: m.MediaType, ArtifactType: m.ArtifactType, Digest: digest.FromBytes(mdata), Size: int64(len(mdata)), Annotations: m.Annotations}
	for _, b := range []struct {
		desc ocispec.Descriptor
		data []byte
	}{{config, emptyJSON}, {blob, data}, {desc, mdata}} {
		if err := loc.Push(ctx, b.desc, bytes.NewReader(b.data)); err != nil {
			return ocispec.Descriptor{}, err
		}
	}
	if err := transport.AddReferrer(ctx, loc, subject.Digest, desc); err != nil {
		return ocispec.Descriptor{}, err
	}
	return desc, nil
}

// MaxProfiles bounds the profiles Find reads for one image: a registry
// that lists thousands must not make a node fetch thousands.
const MaxProfiles = 8

// Find returns the profiles that refer to subject at loc, at most
// MaxProfiles of them (the first listed). An artifact that is not a
// profile, too large or malformed is an error that names it; the others
// are still returned.
func Find(ctx context.Context, loc transport.Location, subject digest.Digest) ([]*profile.Profile, error) {
	refs, err := transport.Referrers(ctx, loc, subject, profile.MediaType)
	if err != nil {
		return nil, err
	}
	var tooMany error
	if len(refs) > MaxProfiles {
		tooMany = fmt.Errorf("%s has %d profiles; the first %d are used", subject, len(refs), MaxProfiles)
		refs = refs[:MaxProfiles]
	}
	var out []*profile.Profile
	var firstErr error
	for _, d := range refs {
		p, err := fetch(ctx, loc, d)
		if err != nil {
			if firstErr == nil {
				firstErr = fmt.Errorf("profile artifact %s of %s: %w", d.Digest, subject, err)
			}
			continue
		}
		out = append(out, p)
	}
	if firstErr == nil {
		firstErr = tooMany
	}
	return out, firstErr
}

func fetch(ctx context.Context, loc transport.Location, desc ocispec.Descriptor) (*profile.Profile, error) {
	var m ocispec.Manifest
	if _, err := transport.FetchJSON(ctx, loc, desc, &m); err != nil {
		return nil, err
	}
	if m.ArtifactType != profile.MediaType || len(m.Layers) != 1 || m.Layers[0].MediaType != profile.MediaType {
		return nil, fmt.Errorf("not a profile artifact (artifact type %q, %d layers)", m.ArtifactType, len(m.Layers))
	}
	blob := m.Layers[0]
	if blob.Size > profile.MaxBytes {
		return nil, fmt.Errorf("a profile of %d bytes, over the %d allowed", blob.Size, profile.MaxBytes)
	}
	rc, err := loc.Fetch(ctx, blob)
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	data, err := io.ReadAll(io.LimitReader(rc, profile.MaxBytes+1)) // the reader checks the digest at its end
	if err != nil {
		return nil, err
	}
	return profile.Parse(data)
}

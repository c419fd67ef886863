// Package transport names where images live, as skopeo does —
// docker://HOST/REPO:TAG in a registry, oci:DIR[:TAG] in an OCI image
// layout — and opens them for fetching and pushing. Everything fetched is
// checked against its descriptor's size and digest. It knows image
// references and layouts; registries only through remote/, and nothing of
// layer formats.
package transport

import (
	"fmt"
	"strings"

	"github.com/distribution/reference"
)

// Transports.
const (
	Docker = "docker"
	OCI    = "oci"
)

// Ref is an image location.
type Ref struct {
	Transport string // Docker or OCI
	// Name is, for Docker, the normalized reference
	// ("docker.io/library/alpine:latest"); for OCI, the layout's directory.
	Name string
	// Tag is, for OCI, the image's org.opencontainers.image.ref.name; empty
	// means the layout's only image.
	Tag string
}

// ParseRef parses docker://REFERENCE or oci:DIR[:TAG].
func ParseRef(s string) (Ref, error) {
	transport, rest, ok := strings.Cut(s, ":")
	switch {
	case ok && transport == Docker && strings.HasPrefix(rest, "//"):
		named, err := reference.ParseDockerRef(rest[2:])
		if err != nil {
			return Ref{}, fmt.Errorf("image reference %q: %w", s, err)
		}
		return Ref{Transport: Docker, Name: named.String()}, nil
	case ok && transport == OCI:
		dir, tag, _ := strings.Cut(rest, ":")
		if dir == "" {
			return Ref{}, fmt.Errorf("image reference %q: oci: needs a directory, as in oci:/path/to/layout:tag", s)
		}
		return Ref{Transport: OCI, Name: dir, Tag: tag}, nil
	}
	return Ref{}, fmt.Errorf("image reference %q: give a transport, docker://%s for a registry or oci:DIR:TAG for an OCI layout", s, s)
}

func (r Ref) String() string {
	if r.Transport == OCI {
		if r.Tag == "" {
			return "oci:" + r.Name
		}
		return "oci:" + r.Name + ":" + r.Tag
	}
	return "docker://" + r.Name
}

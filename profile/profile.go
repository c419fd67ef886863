// Package profile is a workload profile: the byte ranges of each file a
// container read from each layer of its image, in the order it first read
// them, so that a later start fetches exactly those, in parallel, before
// the container asks.
//
// A profile is recorded on one run (Recorder), travels as a small JSON
// document (a file, or an OCI artifact that refers to the image), and is
// turned back into ranges of one layer's files at mount (Plan). It knows
// TOCs, to name a read's chunks and check them; it must not know
// registries, FUSE or containerd. A profile comes from outside the node:
// Parse bounds it, and Plan refuses one that does not fit the layer.
package profile

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// MediaType is a profile's media type, as a file and as the artifact type
// of the OCI artifact that carries it.
const MediaType = "application/vnd.lazypull.profile.v1+json"

// Limits bound a profile read from outside (Parse): a node parses one per
// image it mounts.
const (
	MaxBytes  = 16 << 20 // of JSON
	MaxReads  = 1 << 18
	MaxLayers = 128
	MaxPath   = 4096
)

// Profile is what one workload read of an image.
type Profile struct {
	SchemaVersion int    `json:"schemaVersion"` // 1
	MediaType     string `json:"mediaType"`
	// Workload says what ran, for people: the command, what ended it.
	Workload Workload `json:"workload"`
	// Layers are the image's layers that were read, by digest.
	Layers []Layer `json:"layers"`
	// Reads are the ranges read, across layers, in the order each was
	// first touched.
	Reads []Read `json:"reads"`
}

// Workload describes the recorded run.
type Workload struct {
	Image   string   `json:"image,omitempty"`   // the reference it ran from
	Args    []string `json:"args,omitempty"`    // the process, as run
	WaitFor string   `json:"waitFor,omitempty"` // the output that ended the record
	Period  string   `json:"period,omitempty"`  // or how long it ran
}

// Layer is one layer of the profiled image.
type Layer struct {
	Digest digest.Digest `json:"digest"`
	// Spans are the byte ranges of the layer's blob that hold the chunks
	// its reads fall in, in first-touch order, as a node requests them.
	// With them a node fetches what the workload reads as soon as it
	// knows the image, before it has the layer's TOC; it verifies those
	// bytes by the TOC like any it fetches, so a wrong span costs bytes,
	// never trust. Optional: without them, the reads are fetched once the
	// TOC is read.
	Spans []Span `json:"spans,omitempty"`
}

// Span is a byte range of a layer's blob.
type Span struct {
	Offset int64 `json:"offset"`
	Length int64 `json:"length"`
	// Read is the index in Profile.Reads of the first read that needs the
	// span: it orders the spans of all layers in one, as the workload
	// touched them. Optional: without it, a node takes each layer's spans
	// in their order, the layers side by side.
	Read *int `json:"read,omitempty"`
}

// Read is a range of one file of one layer, and the chunks it falls in
// (their digests, in file order; holes have none).
type Read struct {
	Layer  int             `json:"layer"` // index in Profile.Layers
	Path   string          `json:"path"`
	Offset int64           `json:"offset"`
	Length int64           `json:"length"`
	Chunks []digest.Digest `json:"chunks,omitempty"`
}

// Parse reads a profile from data, refusing one over the limits or not
// well formed; the error says what is wrong, and where.
func Parse(data []byte) (*Profile, error) {
	if len(data) > MaxBytes {
		return nil, fmt.Errorf("profile: %d bytes, more than the %d allowed", len(data), MaxBytes)
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	var p Profile
	if err := dec.Decode(&p); err != nil {
		return nil, fmt.Errorf("profile: %w", err)
	}
	if err := p.Validate(); err != nil {
		return nil, err
	}
	return &p, nil
}

// Validate checks p's shape: version, bounds, digests, paths, ranges.
func (p *Profile) Validate() error {
	switch {
	case p.SchemaVersion != 1:
		return fmt.Errorf("profile: schema version %d, not 1", p.SchemaVersion)
	case p.MediaType != MediaType:
		return fmt.Errorf("profile: media type %q, not %s", p.MediaType, MediaType)
	case len(p.Layers) > MaxLayers:
		return fmt.Errorf("profile: %d layers, more than the %d allowed", len(p.Layers), MaxLayers)
	case len(p.Reads) > MaxReads:
		return fmt.Errorf("profile: %d reads, more than the %d allowed", len(p.Reads), MaxReads)
	}
	for i, l := range p.Layers {
		if err := l.Digest.Validate(); err != nil {
			return fmt.Errorf("profile: layer %d: %w", i, err)
		}
		if len(l.Spans) > MaxReads {
			return fmt.Errorf("profile: layer %d: %d spans, more than the %d allowed", i, len(l.Spans), MaxReads)
		}
		for _, s := range l.Spans {
			if s.Offset < 0 || s.Length <= 0 || s.Offset > (1<<62)-s.Length {
				return fmt.Errorf("profile: layer %d: span %d+%d", i, s.Offset, s.Length)
			}
			if s.Read != nil && (*s.Read < 0 || *s.Read >= len(p.Reads)) {
				return fmt.Errorf("profile: layer %d: span %d+%d names read %d of %d", i, s.Offset, s.Length, *s.Read, len(p.Reads))
			}
		}
	}
	for i, r := range p.Reads {
		if err := r.validate(len(p.Layers)); err != nil {
			return fmt.Errorf("profile: read %d (%q): %w", i, shorten(r.Path), err)
		}
	}
	return nil
}

func (r Read) validate(layers int) error {
	switch {
	case r.Layer < 0 || r.Layer >= layers:
		return fmt.Errorf("layer %d of %d", r.Layer, layers)
	case r.Path == "" || len(r.Path) > MaxPath || strings.ContainsRune(r.Path, 0):
		return errors.New("not a file path")
	case r.Offset < 0 || r.Length <= 0 || r.Offset > (1<<62)-r.Length:
		return fmt.Errorf("range %d+%d", r.Offset, r.Length)
	}
	for _, d := range r.Chunks {
		if err := d.Validate(); err != nil {
			return fmt.Errorf("chunk: %w", err)
		}
	}
	return nil
}

// Marshal encodes p as it is stored: indented JSON.
func (p *Profile) Marshal() ([]byte, error) {
	return json.MarshalIndent(p, "", " ")
}

// Bytes is how many bytes of file data p's reads name (overlaps counted
// once per read).
func (p *Profile) Bytes() int64 {
	var n int64
	for _, r := range p.Reads {
		n += r.Length
	}
	return n
}

// Paths lists the files p reads, each once, in the order first read.
func (p *Profile) Paths() []string {
	seen := make(map[string]bool)
	var out []string
	for _, r := range p.Reads {
		if !seen[r.Path] {
			seen[r.Path] = true
			out = append(out, r.Path)
		}
	}
	return out
}

// ForLayers returns p for the same image in another form (converted):
// layers are its layers, in the order of p's, which must be as many. The
// reads keep their files and ranges, not their chunks or the layers'
// spans, which the other form cuts and places differently.
func (p *Profile) ForLayers(layers []digest.Digest) (*Profile, error) {
	if len(layers) != len(p.Layers) {
		return nil, fmt.Errorf("profile: it names %d layers, the image has %d: recorded on another image", len(p.Layers), len(layers))
	}
	q := *p
	q.Layers = make([]Layer, len(layers))
	for i, d := range layers {
		q.Layers[i] = Layer{Digest: d}
	}
	q.Reads = make([]Read, len(p.Reads))
	for i, r := range p.Reads {
		r.Chunks = nil
		q.Reads[i] = r
	}
	return &q, nil
}

// Spans returns the spans p recorded of the layer with digest d (none if
// it does not name it, or recorded none).
func (p *Profile) Spans(d digest.Digest) []Span {
	for _, l := range p.Layers {
		if l.Digest == d {
			return l.Spans
		}
	}
	return nil
}

// MissingLayers lists the layers p names that are not among layers (an
// image's): a profile recorded on another image.
func (p *Profile) MissingLayers(layers []ocispec.Descriptor) []digest.Digest {
	var missing []digest.Digest
	for _, l := range p.Layers {
		if !slices.ContainsFunc(layers, func(d ocispec.Descriptor) bool { return d.Digest == l.Digest }) {
			missing = append(missing, l.Digest)
		}
	}
	return missing
}

func shorten(s string) string {
	if len(s) > 80 {
		return s[:77] + "..."
	}
	return s
}

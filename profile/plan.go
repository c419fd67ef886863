package profile

import (
	"fmt"
	"slices"

	"github.com/opencontainers/go-digest"

	"github.com/lazypull/lazypull/format/toc"
)

// Plan returns the ranges p read of the layer with digest d, whose TOC is
// t, in first-touch order. A profile that does not fit the layer (a file
// it names is not there, or not a regular file, a range past its end,
// chunks other than the TOC's) is refused whole with an error that names
// the read: it was recorded on another image, or forged, and fetching by
// it would be waste.
func (p *Profile) Plan(d digest.Digest, t *toc.TOC) ([]toc.Range, error) {
	li := slices.IndexFunc(p.Layers, func(l Layer) bool { return l.Digest == d })
	if li < 0 {
		return nil, nil
	}
	var out []toc.Range
	for i, r := range p.Reads {
		if r.Layer != li {
			continue
		}
		e, ok := t.Lookup(r.Path)
		if ok {
			e = t.HardlinkTarget(e)
		}
		switch {
		case !ok:
			return nil, fmt.Errorf("profile: read %d: %q is not in layer %s", i, shorten(r.Path), d)
		case e.Type != toc.TypeReg:
			return nil, fmt.Errorf("profile: read %d: %q is a %s in layer %s, not a file", i, shorten(r.Path), e.Type, d)
		case r.Offset+r.Length > e.Size:
			return nil, fmt.Errorf("profile: read %d: %d bytes at %d of %q, which has %d in layer %s", i, r.Length, r.Offset, shorten(r.Path), e.Size, d)
		}
		if r.Chunks != nil && !slices.Equal(r.Chunks, chunksIn(e, r.Offset, r.Offset+r.Length)) {
			return nil, fmt.Errorf("profile: read %d: the chunks of %q differ from layer %s's: recorded on another version of it", i, shorten(r.Path), d)
		}
		out = append(out, toc.Range{Entry: e, Offset: r.Offset, Length: r.Length})
	}
	return out, nil
}

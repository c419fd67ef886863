package mounter

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/containerd/log"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/lazypull/lazypull/format/toc"
	"github.com/lazypull/lazypull/layer"
	"github.com/lazypull/lazypull/profile"
)

// profiles are the workload profiles in a directory (files *.json), parsed
// once each and again when they change.
type profiles struct {
	dir string

	mu     sync.Mutex
	parsed map[string]parsedProfile // by file name
}

type parsedProfile struct {
	mtime time.Time
	size  int64
	p     *profile.Profile // nil: the file is not a profile (logged once)
}

func newProfiles(dir string) *profiles {
	return &profiles{dir: dir, parsed: make(map[string]parsedProfile)}
}

// plan returns the ranges of layer d (its TOC t) of an image (its
// layers) that the directory's profiles of that image read (see planOf).
func (ps *profiles) plan(ctx context.Context, d digest.Digest, t *toc.TOC, image []ocispec.Descriptor) [][]toc.Range {
	if ps == nil {
		return nil
	}
	return planOf(ctx, ofImage(ps.load(ctx), image), d, t)
}

// ofImage returns the profiles that every layer they name is a layer of
// image: those of its workloads. A profile of another image that shares
// a base layer with it is not, and neither its bytes nor its order are
// this image's business: on a node that runs many tenants' images, one
// image's profile must not slow another's start.
func ofImage(ps map[string]*profile.Profile, image []ocispec.Descriptor) map[string]*profile.Profile {
	out := make(map[string]*profile.Profile)
	for name, p := range ps {
		if !slices.ContainsFunc(p.Layers, func(l profile.Layer) bool {
			return !slices.ContainsFunc(image, func(desc ocispec.Descriptor) bool { return desc.Digest == l.Digest })
		}) {
			out[name] = p
		}
	}
	return out
}

// planOf returns the ranges of layer d (its TOC t) that the profiles (by
// where they come from) read, in the phases sharedFirst gives: a layer
// shared by several profiled workloads fetches first what any of them
// needs, then what each alone read, the workload that read the fewest
// bytes first (bySize). A profile that does not fit the layer is left
// out with a warning.
func planOf(ctx context.Context, ps map[string]*profile.Profile, d digest.Digest, t *toc.TOC) [][]toc.Range {
	var plans [][]toc.Range
	for _, from := range bySize(ps) {
		plan, err := ps[from].Plan(d, t)
		if err != nil {
			log.G(ctx).WithError(err).WithField("profile", from).Warn("a workload profile does not fit the layer it names; it is not used for it")
			continue
		}
		if len(plan) > 0 {
			plans = append(plans, plan)
		}
	}
	shared, own := sharedFirst(plans,
		func(r toc.Range) (any, layer.Span) { return r.Entry, layer.Span{Offset: r.Offset, Length: r.Length} },
		func(r toc.Range, s layer.Span) toc.Range {
			return toc.Range{Entry: r.Entry, Offset: s.Offset, Length: s.Length}
		})
	phases := slices.DeleteFunc(own, func(p []toc.Range) bool { return len(p) == 0 })
	if len(shared) == 0 {
		return phases
	}
	return append([][]toc.Range{shared}, phases...)
}

// bySize returns the names of profiles, the one that read the fewest bytes
// first (then by name): the shortest start is over soonest, and a longer
// one waits for little more than it would alone. Every layer of an image
// orders its phases so.
func bySize(ps map[string]*profile.Profile) []string {
	return slices.SortedFunc(maps.Keys(ps), func(a, b string) int {
		return cmp.Or(cmp.Compare(ps[a].Bytes(), ps[b].Bytes()), cmp.Compare(a, b))
	})
}

// sharedFirst splits what several profiles read of a layer: the bytes
// another of them read too (whichever workload runs needs them),
// interleaved in first-touch order (the first of each profile, then the
// second, …); then what each alone read, in its order (own, one list per
// profile, as lists). One profile's reads are all "shared". An item is a
// span of something (key: a file, or the blob); cut makes one of a part
// of it, where shared bytes begin or end.
func sharedFirst[T any](lists [][]T, item func(T) (key any, s layer.Span), cut func(x T, s layer.Span) T) (shared []T, own [][]T) {
	if len(lists) < 2 {
		return interleave(lists), nil
	}
	sets := make([]map[any]layer.SpanSet, len(lists))
	for i, l := range lists {
		spans := make(map[any][]layer.Span)
		for _, x := range l {
			k, s := item(x)
			spans[k] = append(spans[k], s)
		}
		sets[i] = make(map[any]layer.SpanSet, len(spans))
		for k, ss := range spans {
			sets[i][k] = layer.NewSpanSet(ss)
		}
	}
	both := make([][]T, len(lists))
	own = make([][]T, len(lists))
	for i, l := range lists {
		for _, x := range l {
			k, s := item(x)
			var held []layer.Span
			for j := range lists {
				if j != i {
					held = append(held, sets[j][k].Within(s)...)
				}
			}
			elsewhere := layer.NewSpanSet(held)
			for _, p := range elsewhere {
				both[i] = append(both[i], cut(x, p))
			}
			for _, p := range elsewhere.Missing(s) {
				own[i] = append(own[i], cut(x, p))
			}
		}
	}
	return interleave(both), own
}

// rangesIn counts the ranges of a plan's phases, for the log.
func rangesIn(phases [][]toc.Range) int {
	n := 0
	for _, p := range phases {
		n += len(p)
	}
	return n
}

// interleave takes the first item of each list, then the second, ….
func interleave[T any](lists [][]T) []T {
	lists = slices.Clone(lists)
	var out []T
	for i := 0; len(lists) > 0; i++ {
		lists = slices.DeleteFunc(lists, func(l []T) bool { return i >= len(l) })
		for _, l := range lists {
			out = append(out, l[i])
		}
	}
	return out
}

// spans returns the blob spans of layer d of an image (its layers) that
// the directory's profiles of that image recorded (see spansOf).
func (ps *profiles) spans(ctx context.Context, d digest.Digest, image []ocispec.Descriptor) []layer.EarlySpan {
	if ps == nil {
		return nil
	}
	return spansOf(ofImage(ps.load(ctx), image), d)
}

// maxEarlySpans bounds the spans of one layer fetched before its TOC: a
// profile may list many more (it is not trusted), and the rest is fetched
// by its plan once the TOC is read.
const maxEarlySpans = 4096

// spansOf returns the blob spans of layer d that the profiles recorded,
// each byte once, placed as planOf orders their ranges: phase 0 what
// several read, then phase 1 + i what the i-th profile (bySize) alone
// read. Within a phase, a span ranks by the first read that needs it
// (the profile's Span.Read; without it, by its place in the layer's
// list), so the spans of all layers of an image take one order.
func spansOf(ps map[string]*profile.Profile, d digest.Digest) []layer.EarlySpan {
	var lists [][]layer.EarlySpan
	var phase []int // of each list's own bytes
	for i, from := range bySize(ps) {
		var l []layer.EarlySpan
		for j, s := range ps[from].Spans(d) {
			if len(l) == maxEarlySpans {
				break
			}
			rank := j
			if s.Read != nil {
				rank = *s.Read
			}
			l = append(l, layer.EarlySpan{Span: layer.Span{Offset: s.Offset, Length: s.Length}, Rank: rank})
		}
		if len(l) > 0 {
			lists, phase = append(lists, l), append(phase, 1+i)
		}
	}
	blob := func(s layer.EarlySpan) (any, layer.Span) { return nil, s.Span }
	part := func(s layer.EarlySpan, p layer.Span) layer.EarlySpan { s.Span = p; return s }
	shared, own := sharedFirst(lists, blob, part)
	for i := range own {
		for j := range own[i] {
			own[i][j].Phase = phase[i]
		}
	}
	var out []layer.EarlySpan
	var covered layer.SpanSet
	for _, s := range slices.Concat(append([][]layer.EarlySpan{shared}, own...)...) {
		for _, m := range covered.Missing(s.Span) {
			if len(out) == maxEarlySpans {
				return out
			}
			covered.Add(m)
			out = append(out, part(s, m))
		}
	}
	return out
}

// load returns the profiles in the directory by path, parsing the
// files that are new or changed.
func (ps *profiles) load(ctx context.Context) map[string]*profile.Profile {
	des, err := os.ReadDir(ps.dir)
	if err != nil {
		if !errors.Is(err, fs.ErrNotExist) {
			log.G(ctx).WithError(err).WithField("dir", ps.dir).Warn("cannot list the workload profiles")
		}
		return nil
	}
	ps.mu.Lock()
	defer ps.mu.Unlock()
	out := make(map[string]*profile.Profile)
	seen := make(map[string]bool)
	for _, de := range des {
		name := de.Name()
		if !strings.HasSuffix(name, ".json") || !de.Type().IsRegular() {
			continue
		}
		seen[name] = true
		info, err := de.Info()
		if err != nil {
			continue
		}
		old, ok := ps.parsed[name]
		if !ok || !old.mtime.Equal(info.ModTime()) || old.size != info.Size() {
			old = parsedProfile{mtime: info.ModTime(), size: info.Size(), p: ps.parse(ctx, name, info.Size())}
			ps.parsed[name] = old
		}
		if old.p != nil {
			out[filepath.Join(ps.dir, name)] = old.p
		}
	}
	for name := range ps.parsed {
		if !seen[name] {
			delete(ps.parsed, name)
		}
	}
	return out
}

func (ps *profiles) parse(ctx context.Context, name string, size int64) *profile.Profile {
	path := filepath.Join(ps.dir, name)
	l := log.G(ctx).WithField("profile", path)
	if size > profile.MaxBytes {
		l.Warnf("a workload profile of %d bytes, over the %d allowed, is not used", size, profile.MaxBytes)
		return nil
	}
	data, err := os.ReadFile(path)
	if err != nil {
		l.WithError(err).Warn("cannot read a workload profile")
		return nil
	}
	p, err := profile.Parse(data)
	if err != nil {
		l.WithError(err).Warn("a workload profile that does not parse is not used")
		return nil
	}
	return p
}

// fetchReferred fetches what the profiles that refer to img's manifest in
// its registry read of l, once they are known: after the mount, which
// does not wait for them.
func (m *Mounter) fetchReferred(img *image, l *layer.Layer) {
	defer m.bg.Done()
	select {
	case <-img.profilesDone:
	case <-m.ctx.Done():
		return
	}
	ps := make(map[string]*profile.Profile)
	for i, p := range img.profiles {
		ps[fmt.Sprintf("%s (referrer %d)", img.manifest, i)] = p
	}
	d := l.Descriptor().Digest
	if plan := planOf(m.ctx, ps, d, l.TOC()); len(plan) > 0 {
		l.FetchRanges(plan...)
		log.G(m.ctx).WithField("layer", d).WithField("ranges", rangesIn(plan)).Info("fetching what the workload profiles that travel with the image read")
	}
}

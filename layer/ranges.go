package layer

import (
	"cmp"
	"context"
	"maps"
	"slices"

	"github.com/lazypull/lazypull/format/toc"
)

// maxRunGap is the most bytes of members nobody asked for that a request
// takes along to join two runs that were asked for: less than a round
// trip costs (20 ms at 100 Mbit/s is 250 KB).
const maxRunGap = 64 << 10

// FetchRanges fetches, in the background but ahead of background work,
// the chunks that hold ranges of the layer's regular files (from its TOC,
// hard links resolved), in the order given: a workload profile's
// first-touch order; phase after phase (what several profiles read, then
// the rest). Members adjacent in the blob, or nearly, go in one request
// (up to SpanSize) if they are of one phase, Parallel requests at once,
// each run in the order of its first-ranked member; a read that wants a
// chunk meanwhile joins the request that brings it, or fetches it itself
// if its turn has not come. The channel gets the outcome: nil once all
// are cached, or the first error.
func (l *Layer) FetchRanges(phases ...[]toc.Range) <-chan error {
	res := make(chan error, 1)
	runs := l.runsOf(phases...)
	if len(runs) == 0 {
		res <- nil
		return res
	}
	for _, r := range runs {
		l.profiled.Add(l.members[r.to-1].end() - l.members[r.from].off)
	}
	over := l.earlyFor()
	l.gate.enter()
	if !l.spawn("profiled fetch", func(ctx context.Context) {
		defer l.gate.leave()
		err := l.fetchRuns(ctx, runs, "profile", pace{parallel: l.opts.Parallel, span: l.opts.SpanSize})
		over()
		res <- err
	}) {
		l.gate.leave()
		res <- errClosed
	}
	return res
}

// runsOf turns the ranges of each phase into runs of members, ranked by
// the first range that needs each (its index among the phase's ranges),
// phase after phase: a member an earlier phase needs is not fetched
// again, and no run of a later phase spans it.
func (l *Layer) runsOf(phases ...[]toc.Range) []run {
	earlier := make(map[int]bool)
	var out []run
	for _, ranges := range phases {
		rank := l.rankMembers(ranges, earlier)
		members := slices.Sorted(maps.Keys(rank))
		var runs []run
		for _, k := range members {
			if n := len(runs); n > 0 && l.members[k].off-l.members[runs[n-1].to-1].end() <= maxRunGap && !anyIn(runs[n-1].to, k, earlier) {
				runs[n-1].to = k + 1
				runs[n-1].rank = min(runs[n-1].rank, rank[k])
				continue
			}
			runs = append(runs, run{from: k, to: k + 1, rank: rank[k]})
		}
		slices.SortStableFunc(runs, func(a, b run) int { return cmp.Compare(a.rank, b.rank) })
		out = append(out, runs...)
		for k := range rank {
			earlier[k] = true
		}
	}
	return out
}

// rankMembers ranks the members that hold ranges (not those of skip) by
// the first range that needs each: its index in ranges.
func (l *Layer) rankMembers(ranges []toc.Range, skip map[int]bool) map[int]int {
	rank := make(map[int]int)
	for ri, r := range ranges {
		e, end := r.Entry, r.Offset+r.Length
		first, ok := e.ChunkAt(r.Offset)
		if !ok || e.Type != toc.TypeReg {
			continue
		}
		for i := first; i < len(e.Chunks()) && e.Chunks()[i].FileOffset < end; i++ {
			c := e.Chunks()[i]
			if c.Zero {
				continue
			}
			k := l.memberOf(c)
			if k >= len(l.members) || l.members[k].off != c.Offset {
				continue // not a chunk of this layer's TOC
			}
			if _, seen := rank[k]; !seen && !skip[k] {
				rank[k] = ri
			}
		}
	}
	return rank
}

// anyIn reports whether a member in [from, to) is one of set.
func anyIn(from, to int, set map[int]bool) bool {
	for k := from; k < to; k++ {
		if set[k] {
			return true
		}
	}
	return false
}

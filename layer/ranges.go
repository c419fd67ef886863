package layer

import (
	"cmp"
	"context"
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
// first-touch order. Members adjacent in the blob, or nearly, go in one
// request (up to SpanSize), Parallel requests at once, each run in the
// order of its first-ranked member; a read that wants a chunk meanwhile
// joins the request that brings it, or fetches it itself if its turn has
// not come. The channel gets the outcome: nil once all are cached, or the
// first error.
func (l *Layer) FetchRanges(ranges []toc.Range) <-chan error {
	res := make(chan error, 1)
	runs := l.runsOf(ranges)
	if len(runs) == 0 {
		res <- nil
		return res
	}
	for _, r := range runs {
		l.profiled.Add(l.members[r.to-1].end() - l.members[r.from].off)
	}
	l.gate.enter()
	if !l.spawn("profiled fetch", func(ctx context.Context) {
		defer l.gate.leave()
		res <- l.fetchRuns(ctx, runs, "profile", pace{parallel: l.opts.Parallel, span: l.opts.SpanSize})
	}) {
		l.gate.leave()
		res <- errClosed
	}
	return res
}

// runsOf turns ranges into runs of members, ranked by the first range
// that needs each.
func (l *Layer) runsOf(ranges []toc.Range) []run {
	rank := make(map[int]int)
	for _, r := range ranges {
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
			if _, seen := rank[k]; !seen {
				rank[k] = len(rank)
			}
		}
	}
	members := make([]int, 0, len(rank))
	for k := range rank {
		members = append(members, k)
	}
	slices.Sort(members)
	type ranked struct {
		run
		rank int
	}
	var runs []ranked
	for _, k := range members {
		if n := len(runs); n > 0 && l.members[k].off-l.members[runs[n-1].to-1].end() <= maxRunGap {
			runs[n-1].to = k + 1
			runs[n-1].rank = min(runs[n-1].rank, rank[k])
			continue
		}
		runs = append(runs, ranked{run{k, k + 1}, rank[k]})
	}
	slices.SortStableFunc(runs, func(a, b ranked) int { return cmp.Compare(a.rank, b.rank) })
	out := make([]run, len(runs))
	for i, r := range runs {
		out[i] = r.run
	}
	return out
}

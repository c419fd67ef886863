package runner

import (
	"slices"
	"time"
)

// Spread is the median and range of one measure over the runs.
type Spread struct {
	Median, Min, Max float64
}

// spreadOf summarises values; the median of an even count is the mean of
// the middle two. Empty input gives the zero Spread.
func spreadOf(values []float64) Spread {
	if len(values) == 0 {
		return Spread{}
	}
	v := slices.Clone(values)
	slices.Sort(v)
	n := len(v)
	med := v[n/2]
	if n%2 == 0 {
		med = (v[n/2-1] + v[n/2]) / 2
	}
	return Spread{Median: med, Min: v[0], Max: v[n-1]}
}

// Summary is one image and scenario over all its runs.
type Summary struct {
	Image, Scenario          string
	Runs                     int
	Pull, FirstOutput, Total Spread // seconds
	MB, Requests, MemoryMiB  Spread // MemoryMiB: daemon + FUSE manager
	Warm                     Spread // seconds
	FUSEOps, WarmFUSEOps     Spread // per container start; -1 where not measured
	// Settled is the bytes fetched once the link is quiet as a multiple
	// of the image's blobs; BackgroundLink the background fetch's rate as
	// a fraction of the link (0 where too little moved, or no cap).
	Settled, BackgroundLink Spread
	Ratio                   float64 // median total / overlayfs's median total; 0 if unknown
	WarmRatio               float64 // median warm / overlayfs's median warm; 0 if unknown
	// FloorRatio is the median total over the floor of a start that
	// fetches what this one fetched: the median warm start, plus the
	// median bytes before the ready line at the link's rate, plus three
	// round trips; 0 if unknown (no warm start, no bandwidth cap).
	FloorRatio float64
}

// floor is the least a start that fetched what s's runs fetched could
// take (see Summary.FloorRatio), or 0.
func (rep *Report) floor(s Summary) float64 {
	rtt, err := time.ParseDuration(rep.RTT)
	if err != nil || rep.Bandwidth <= 0 || s.Warm.Median <= 0 {
		return 0
	}
	return s.Warm.Median + s.MB.Median*1e6*8/float64(rep.Bandwidth) + 3*rtt.Seconds()
}

// Summaries gives one Summary per image and scenario that has results, in
// the report's order.
func (rep *Report) Summaries() []Summary {
	var out []Summary
	for _, img := range rep.Images {
		first := len(out)
		for _, sc := range rep.Scenarios {
			var pull, first, total, mbs, reqs, mem, warm, settled, link, ops, warmOps []float64
			for _, r := range rep.Results {
				if r.Image != img.Name || r.Scenario != sc {
					continue
				}
				if r.Warm > 0 {
					warm = append(warm, r.Warm)
				}
				if r.ImageBytes > 0 && r.SettledBytes > 0 {
					settled = append(settled, float64(r.SettledBytes)/float64(r.ImageBytes))
				}
				if rate := r.BackgroundRate(); rate > 0 && rep.Bandwidth > 0 {
					link = append(link, rate/float64(rep.Bandwidth))
				}
				pull = append(pull, r.Pull)
				first = append(first, r.FirstOutput)
				total = append(total, r.Total)
				mbs = append(mbs, mb(r.Bytes))
				reqs = append(reqs, float64(r.Requests))
				mem = append(mem, mib(r.DaemonPeak+r.ManagerPeak))
				ops = append(ops, float64(r.FUSEOps))
				warmOps = append(warmOps, float64(r.WarmFUSEOps))
			}
			if len(total) == 0 {
				continue
			}
			s := Summary{Image: img.Name, Scenario: sc, Runs: len(total),
				Pull: spreadOf(pull), FirstOutput: spreadOf(first), Total: spreadOf(total),
				MB: spreadOf(mbs), Requests: spreadOf(reqs), MemoryMiB: spreadOf(mem),
				Warm: spreadOf(warm), Settled: spreadOf(settled), BackgroundLink: spreadOf(link),
				FUSEOps: spreadOf(ops), WarmFUSEOps: spreadOf(warmOps)}
			if floor := rep.floor(s); floor > 0 {
				s.FloorRatio = s.Total.Median / floor
			}
			out = append(out, s)
		}
		// Ratios against overlayfs's full pull, whatever order it ran in.
		for _, b := range out[first:] {
			if b.Scenario == Overlayfs.Name && b.Total.Median > 0 {
				for i := first; i < len(out); i++ {
					out[i].Ratio = out[i].Total.Median / b.Total.Median
					if b.Warm.Median > 0 {
						out[i].WarmRatio = out[i].Warm.Median / b.Warm.Median
					}
				}
			}
		}
	}
	return out
}

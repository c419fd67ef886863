package layer

import (
	"sort"

	"github.com/opencontainers/go-digest"

	"github.com/lazypull/lazypull/format/toc"
)

// claim returns the fetch that brings member k: a new one (mine), covering
// the members from k up to end that no fetch has claimed and the cache
// does not hold, or the one already in flight, or nil if k is cached.
func (l *Layer) claim(k, end int) (cl *call, mine bool) {
	cl, mine, _ = l.claimAround(k, k, end, "")
	return cl, mine
}

// claimAround is claim that also takes the free members just before k,
// down to lo; start is the first member it claimed. A reader names the
// chunk it wants (want): the call keeps that chunk's bytes for it.
func (l *Layer) claimAround(k, lo, end int, want digest.Digest) (cl *call, mine bool, start int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	defer func() {
		if cl != nil && want != "" {
			cl.want[want]++
		}
	}()
	if cl := l.inflight[k]; cl != nil {
		return cl, false, k
	}
	if l.done[k] {
		return nil, false, k
	}
	cl = &call{done: make(chan struct{}), want: make(map[digest.Digest]int), data: make(map[digest.Digest][]byte)}
	for j := k; j < end && l.inflight[j] == nil && !l.done[j]; j++ {
		l.inflight[j] = cl
	}
	start = k
	for j := k - 1; j >= lo && l.inflight[j] == nil && !l.done[j]; j-- {
		l.inflight[j] = cl
		start = j
	}
	return cl, true, start
}

// Small files are fetched with their neighbours: a program that reads one
// file of a directory (a header, a module, a locale) usually reads others
// of it soon, and each on-demand request costs a round trip, while
// neighbourWindow bytes more cost a fraction of one on a typical link.
const (
	smallMember     = 32 << 10
	neighbourWindow = 32 << 10 // on each side
)

// neighbours returns the members [lo, hi) to fetch with member k, which
// holds a chunk of e: k alone, or with the small members around it that
// hold files of e's directory (or below it), within neighbourWindow.
func (l *Layer) neighbours(e *toc.Entry, k int) (lo, hi int) {
	m := l.members[k]
	if m.size > smallMember {
		return k, k + 1
	}
	dir := e.Parent()
	if dir == nil || dir.Parent() == nil {
		return k, k + 1 // the root's files are not one package
	}
	near := func(j int) bool {
		if l.members[j].size > smallMember {
			return false
		}
		for _, r := range l.chunksOf(j) {
			if e, _ := l.resolve(r); !e.Within(dir) {
				return false
			}
		}
		return true
	}
	lo, hi = k, k+1
	for lo > 0 && m.off-l.members[lo-1].off <= neighbourWindow && near(lo-1) {
		lo--
	}
	for hi < len(l.members) && l.members[hi].end()-m.end() <= neighbourWindow && near(hi) {
		hi++
	}
	return lo, hi
}

// memberOf returns the index of the member that holds chunk c (not a
// hole). Members are sorted by offset and one offset is one member: a
// binary search, where a map from chunks would cost megabytes per layer
// of many files.
func (l *Layer) memberOf(c toc.Chunk) int {
	return sort.Search(len(l.members), func(k int) bool { return l.members[k].off >= c.Offset })
}

// memberSpan returns the first and last members that hold e's data. It
// runs on every read of a large file: two searches, not one per chunk.
func (l *Layer) memberSpan(e *toc.Entry) (first, last int, ok bool) {
	i, j := 0, len(e.Chunks())-1
	for i <= j && e.Chunks()[i].Zero {
		i++
	}
	for j >= i && e.Chunks()[j].Zero {
		j--
	}
	if i > j {
		return -1, -1, false
	}
	return l.memberOf(e.Chunks()[i]), l.memberOf(e.Chunks()[j]), true
}

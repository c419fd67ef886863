package layer

import (
	"cmp"
	"slices"
	"sync"

	"github.com/opencontainers/go-digest"
)

// EarlyGroup runs the Early fetches of layers opened together (an
// image's, at its first mount) as one: it holds them back until every
// layer has its tail (the TOCs, which each mount waits for, get the link
// first), then requests the pieces of all of them in one order (by
// EarlySpan phase and rank: as the workload touched them, whichever layer
// holds them), parallel at once. Requests per image rather than per
// layer: the bytes the workload wants first are not shared with a
// layer's later ones, nor with another workload's.
type EarlyGroup struct {
	parallel int
	ready    chan struct{} // closed once every layer has its tail

	mu      sync.Mutex
	pending map[digest.Digest]bool // layers whose tails have not arrived
	queue   []queuedPiece          // by phase, rank, then as added
	workers int
	open    map[int]int // pieces of each phase queued or on their way
	moved   *sync.Cond  // a piece is done: a later phase may start
}

type queuedPiece struct {
	e  *Early
	pc *piece
}

// NewEarlyGroup returns the group of the Early fetches of layers,
// parallel requests at once (0: Options.Parallel's default).
func NewEarlyGroup(layers []digest.Digest, parallel int) *EarlyGroup {
	if parallel <= 0 {
		parallel = Options{}.withDefaults().Parallel
	}
	g := &EarlyGroup{parallel: parallel, ready: make(chan struct{}), pending: make(map[digest.Digest]bool), open: make(map[int]int)}
	g.moved = sync.NewCond(&g.mu)
	for _, d := range layers {
		g.pending[d] = true
	}
	if len(g.pending) == 0 {
		close(g.ready)
	}
	return g
}

// Arrived says that layer d has its tail, or will not fetch one (its open
// failed); again is harmless.
func (g *EarlyGroup) Arrived(d digest.Digest) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.pending[d] {
		delete(g.pending, d)
		if len(g.pending) == 0 {
			close(g.ready)
		}
	}
}

// add queues the pieces of e in the group's order, and starts requests
// up to the group's bound.
func (g *EarlyGroup) add(e *Early, pieces []*piece) {
	g.mu.Lock()
	defer g.mu.Unlock()
	for _, pc := range pieces {
		g.queue = append(g.queue, queuedPiece{e, pc})
		g.open[pc.phase]++
	}
	slices.SortStableFunc(g.queue, func(a, b queuedPiece) int {
		return cmp.Or(cmp.Compare(a.pc.phase, b.pc.phase), cmp.Compare(a.pc.rank, b.pc.rank))
	})
	for ; g.workers < min(g.parallel, len(g.queue)); g.workers++ {
		go g.work()
	}
}

// work fetches queued pieces, first first, until none is left.
func (g *EarlyGroup) work() {
	for {
		g.mu.Lock()
		for len(g.queue) > 0 && g.held(g.queue[0].pc.phase) {
			g.moved.Wait()
		}
		if len(g.queue) == 0 {
			g.workers--
			g.mu.Unlock()
			return
		}
		q := g.queue[0]
		g.queue = g.queue[1:]
		g.mu.Unlock()

		fetched := q.e.fetchPiece(q.pc)
		q.e.pieceDone(q.pc, fetched)

		g.mu.Lock()
		g.open[q.pc.phase]--
		g.moved.Broadcast()
		g.mu.Unlock()
	}
}

// held reports whether pieces of phase p must wait: p is 2 or later and
// the pieces of an earlier phase are not all done. g.mu is held.
func (g *EarlyGroup) held(p int) bool {
	for q := 0; q < p && p >= 2; q++ {
		if g.open[q] > 0 {
			return true
		}
	}
	return false
}

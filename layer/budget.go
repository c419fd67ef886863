package layer

import (
	"context"
	"fmt"
	"sync"
)

// Budget bounds what the layers of one process hold together: the TOC
// entries of every open layer (they stay in memory while it is mounted)
// and the TOCs being fetched and parsed at once (each costs memory in
// proportion to its size until parsed). One Budget serves every layer the
// FUSE manager mounts, so that images together, hostile ones included,
// cannot exhaust the process that serves all of them.
type Budget struct {
	opening chan struct{}

	mu      sync.Mutex
	entries int64 // held by open layers
	limits  BudgetLimits
}

// BudgetLimits are a Budget's bounds.
type BudgetLimits struct {
	// Entries bounds the TOC entries (files, directories, implicit
	// directories included) of all open layers together.
	Entries int64
	// Opens bounds the TOCs fetched and parsed at once.
	Opens int
}

// DefaultBudget fits a node running many images (2 million files across
// the mounted lazy layers, some hundreds of MiB) while a single layer
// stays within toc.Limits; one TOC parsed at a time (their fetches run in
// parallel): parsing costs several times the TOC in passing.
var DefaultBudget = BudgetLimits{Entries: 2 << 20, Opens: 1}

// NewBudget returns a budget with the given bounds (zero fields: the
// defaults).
func NewBudget(b BudgetLimits) *Budget {
	if b.Entries <= 0 {
		b.Entries = DefaultBudget.Entries
	}
	if b.Opens <= 0 {
		b.Opens = DefaultBudget.Opens
	}
	return &Budget{opening: make(chan struct{}, b.Opens), limits: b}
}

func (b *Budget) startOpen(ctx context.Context) error {
	select {
	case b.opening <- struct{}{}:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (b *Budget) endOpen() { <-b.opening }

// reserve takes n entries for a layer, or fails saying why.
func (b *Budget) reserve(n int64) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.entries+n > b.limits.Entries {
		return fmt.Errorf("its TOC has %d entries and open layers hold %d, over this node's bound of %d (unmount images, or raise it)", n, b.entries, b.limits.Entries)
	}
	b.entries += n
	return nil
}

func (b *Budget) release(n int64) {
	b.mu.Lock()
	b.entries -= n
	b.mu.Unlock()
}

// remaining is how many entries one more layer may hold (at least 1, so
// that a limit of 0 does not read as "the default").
func (b *Budget) remaining() int64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	return max(b.limits.Entries-b.entries, 1)
}

// Entries is how many TOC entries open layers hold.
func (b *Budget) Entries() int64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.entries
}

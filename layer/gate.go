package layer

import (
	"context"
	"sync"
	"time"
)

// Gate orders the fetches of layers that share a link: background fetches
// wait while reads a container is waiting on are being fetched, and for a
// moment after, so that they never queue behind megabytes of background
// data. The mounter keeps one Gate per registry host: a slow registry's
// reads hold back only the background fetches from that registry.
//
// The Gate also bounds the background spans in flight across its layers
// (backgroundSpans): each holds its compressed bytes and decoded chunks in
// memory until cached, and an image of many layers, or many images, must
// not multiply that.
//
// Waiters are woken by the change they wait for, not by polling.
type Gate struct {
	mu      sync.Mutex
	active  int
	lastEnd time.Time
	changed chan struct{} // closed, and replaced, at every enter and leave

	background chan struct{} // a slot per background span in flight
}

// backgroundSpans is how many background spans the layers sharing a Gate
// fetch at once: 4 spans of 2 MiB keep a 100 Mbit/s link with 20 ms round
// trips busy, and bound the memory they take to a few megabytes whatever
// the number of layers.
const backgroundSpans = 4

// quietPeriod is how long after the last foreground fetch the background
// waits: a container's reads come in bursts separated by a little work.
const quietPeriod = 500 * time.Millisecond

// NewGate returns a gate with nothing in flight.
func NewGate() *Gate {
	return &Gate{changed: make(chan struct{}), background: make(chan struct{}, backgroundSpans)}
}

// acquireBackground takes a background span slot, waiting for one.
func (g *Gate) acquireBackground(ctx context.Context) error {
	select {
	case g.background <- struct{}{}:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (g *Gate) releaseBackground() { <-g.background }

func (g *Gate) enter() {
	g.mu.Lock()
	g.active++
	g.signal()
	g.mu.Unlock()
}

func (g *Gate) leave() {
	g.mu.Lock()
	g.active--
	g.lastEnd = time.Now()
	g.signal()
	g.mu.Unlock()
}

func (g *Gate) signal() {
	close(g.changed)
	g.changed = make(chan struct{})
}

func (g *Gate) state() (active int, lastEnd time.Time, changed <-chan struct{}) {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.active, g.lastEnd, g.changed
}

// idleStart is how long a mounted layer waits for its container's first
// read before its background fetch starts anyway.
const idleStart = 3 * time.Second

// waitStart waits until a container has started reading (a foreground
// fetch since mounted) or idleStart has passed: the link's first seconds
// belong to the container's start, not to data it may never read.
func (g *Gate) waitStart(ctx context.Context, mounted time.Time) error {
	deadline := time.NewTimer(time.Until(mounted.Add(idleStart)))
	defer deadline.Stop()
	for {
		active, lastEnd, changed := g.state()
		if active > 0 || lastEnd.After(mounted) {
			return nil
		}
		select {
		case <-changed:
		case <-deadline.C:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// waitQuiet returns once no foreground fetch has run for quietPeriod.
func (g *Gate) waitQuiet(ctx context.Context) error {
	for {
		active, lastEnd, changed := g.state()
		wait := time.Duration(-1) // until something changes
		if active == 0 {
			if wait = quietPeriod - time.Since(lastEnd); wait <= 0 {
				return nil
			}
		}
		if err := waitChange(ctx, changed, wait); err != nil {
			return err
		}
	}
}

// waitChange waits for changed to close, for d (if not negative), or for
// ctx to end (its error).
func waitChange(ctx context.Context, changed <-chan struct{}, d time.Duration) error {
	var timeout <-chan time.Time
	if d >= 0 {
		t := time.NewTimer(d)
		defer t.Stop()
		timeout = t.C
	}
	select {
	case <-changed:
	case <-timeout:
	case <-ctx.Done():
		return ctx.Err()
	}
	return nil
}

package layer

import (
	"context"
	"sync/atomic"
	"time"
)

// Gate orders the fetches of layers that share a link: background fetches
// wait while reads a container is waiting on are being fetched, and for a
// moment after, so that they never queue behind megabytes of background
// data. One Gate serves every layer a daemon mounts.
type Gate struct {
	active  atomic.Int64
	lastEnd atomic.Int64 // unix nanoseconds
}

// quietPeriod is how long after the last foreground fetch the background
// waits: a container's reads come in bursts separated by a little work.
const quietPeriod = 500 * time.Millisecond

// NewGate returns a gate with nothing in flight.
func NewGate() *Gate { return &Gate{} }

func (g *Gate) enter() { g.active.Add(1) }

func (g *Gate) leave() {
	g.lastEnd.Store(time.Now().UnixNano())
	g.active.Add(-1)
}

// idleStart is how long a mounted layer waits for its container's first
// read before its background fetch starts anyway.
const idleStart = 3 * time.Second

// waitStart waits until a container has started reading (a foreground
// fetch since mounted) or idleStart has passed: the link's first seconds
// belong to the container's start, not to data it may never read.
func (g *Gate) waitStart(ctx context.Context, mounted time.Time) error {
	deadline := mounted.Add(idleStart)
	for g.lastEnd.Load() < mounted.UnixNano() && g.active.Load() == 0 && time.Now().Before(deadline) {
		select {
		case <-time.After(10 * time.Millisecond):
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return nil
}

// waitQuiet returns once no foreground fetch has run for quietPeriod.
func (g *Gate) waitQuiet(ctx context.Context) error {
	for {
		if g.active.Load() == 0 {
			idle := time.Since(time.Unix(0, g.lastEnd.Load()))
			if idle >= quietPeriod {
				return nil
			}
			select {
			case <-time.After(quietPeriod - idle):
			case <-ctx.Done():
				return ctx.Err()
			}
			continue
		}
		select {
		case <-time.After(5 * time.Millisecond):
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

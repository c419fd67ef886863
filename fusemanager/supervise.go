package fusemanager

import (
	"context"
	"errors"
	"time"

	"github.com/containerd/log"
	"golang.org/x/sys/unix"
)

// Restarts of a manager that keeps dying are spaced out, from
// minBackoff doubling to maxBackoff; a manager that served for
// stableAfter restarts at once when it dies.
const (
	minBackoff  = time.Second
	maxBackoff  = time.Minute
	stableAfter = time.Minute
)

// Supervise keeps a manager serving root until ctx ends. When the manager
// dies (killed, out of memory), it starts a new one and calls restore,
// which must have it mount again every lazy layer the dead one served
// (the snapshotter's Restore). Containers started afterwards work;
// running containers' lazy layers died with the manager's FUSE sessions.
// A client that was given no command to start a manager only returns
// when ctx ends.
func (c *Client) Supervise(ctx context.Context, restore func(context.Context) error) {
	if len(c.command) == 0 {
		<-ctx.Done()
		return
	}
	var backoff time.Duration
	for restarts := 1; ; restarts++ {
		c.mu.Lock()
		m := c.mgr
		c.mu.Unlock()
		status := c.waitExit(ctx, m)
		if ctx.Err() != nil {
			return
		}
		lived := time.Since(m.since)
		if lived >= stableAfter {
			backoff = 0
		}
		log.G(ctx).WithField("pid", m.pid).WithField("status", status).WithField("served", lived.Round(time.Millisecond)).
			WithField("restart", restarts).WithField("delay", backoff).
			Error("fuse manager died: running containers lose their lazily mounted layers (ENOTCONN); starting a new one")
		for {
			select {
			case <-ctx.Done():
				return
			case <-time.After(backoff):
			}
			backoff = min(max(2*backoff, minBackoff), maxBackoff)
			err := c.startManager(ctx)
			if err == nil {
				break
			}
			if ctx.Err() != nil {
				return
			}
			log.G(ctx).WithError(err).WithField("delay", backoff).Error("fuse manager did not start again; trying again")
		}
		c.mu.Lock()
		pid := c.mgr.pid
		c.mu.Unlock()
		log.G(ctx).WithField("pid", pid).Warn("fuse manager started again; mounting the lazy layers again")
		if err := restore(ctx); err != nil {
			log.G(ctx).WithError(err).Error("some lazily pulled layers could not be mounted again after the fuse manager restarted")
		}
	}
}

// waitExit waits until manager m exits or ctx ends, and says how it ended.
func (c *Client) waitExit(ctx context.Context, m manager) string {
	if m.child != nil {
		select {
		case <-m.child.exited:
			return exitStatus(m.child.err)
		case <-ctx.Done():
			return ""
		}
	}
	exited, stop, err := watchPID(m.pid)
	if errors.Is(err, unix.ESRCH) {
		return "exited (before it was watched)"
	}
	if err != nil {
		// No pidfd (a kernel before 5.3): look once a second instead.
		log.G(ctx).WithError(err).WithField("pid", m.pid).Warn("cannot watch the fuse manager; checking on it every second")
		tick := time.NewTicker(time.Second)
		defer tick.Stop()
		for isManager(m.pid) {
			select {
			case <-tick.C:
			case <-ctx.Done():
				return ""
			}
		}
		return "exited (not started by this daemon: exit status unknown)"
	}
	defer stop()
	if !isManager(m.pid) { // it died between its answer and the watch
		return "exited (before it was watched)"
	}
	select {
	case <-exited:
		// Not our child: its exit status went to its parent.
		return "exited (not started by this daemon: exit status unknown)"
	case <-ctx.Done():
		return ""
	}
}

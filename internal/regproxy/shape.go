package regproxy

import (
	"context"
	"sync"
	"time"
)

// chunkSize is the most body bytes written at once, and the token bucket's
// burst: small enough that concurrent responses interleave on the link.
const chunkSize = 16 << 10

// link models the network between client and registry, shared by all
// connections: a round-trip time paid before each response, and a token
// bucket over response bodies. It is a model for benchmarks, not netem:
// request bodies and headers are not shaped.
type link struct {
	mu     sync.Mutex
	rtt    time.Duration
	rate   float64 // bytes per second; 0 means unlimited
	tokens float64 // bytes that may go now; negative while writers wait
	last   time.Time
}

func (l *link) init() {
	l.tokens = chunkSize
	l.last = time.Now()
}

// SetLink changes the link's round-trip time and bandwidth cap (bits per
// second, 0 for none) for the requests and body chunks that follow.
func (p *Proxy) SetLink(rtt time.Duration, bitsPerSecond int64) {
	p.link.mu.Lock()
	p.link.rtt = rtt
	p.link.mu.Unlock()
	p.link.setRate(bitsPerSecond)
}

// Link reports the current round-trip time and bandwidth cap.
func (p *Proxy) Link() (rtt time.Duration, bitsPerSecond int64) {
	p.link.mu.Lock()
	defer p.link.mu.Unlock()
	return p.link.rtt, int64(p.link.rate * 8)
}

func (l *link) setRate(bitsPerSecond int64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.refill(time.Now())
	l.rate = max(0, float64(bitsPerSecond)/8)
}

// refill adds the tokens earned since last, up to the burst.
func (l *link) refill(now time.Time) {
	if l.rate > 0 {
		l.tokens = min(chunkSize, l.tokens+now.Sub(l.last).Seconds()*l.rate)
	} else {
		l.tokens = chunkSize
	}
	l.last = now
}

// delay holds a request for one round trip before its response goes out,
// and for one more on a new connection (the TCP handshake).
func (l *link) delay(ctx context.Context, newConn bool) error {
	l.mu.Lock()
	d := l.rtt
	l.mu.Unlock()
	if newConn {
		d *= 2
	}
	return sleep(ctx, d)
}

// wait blocks until n body bytes may go on the link. Each caller reserves
// its bytes at once (the bucket goes into debt), so concurrent responses
// share the bandwidth in the order they asked and the total never exceeds
// the cap. Bytes reserved by a caller whose context ends are not given
// back, as bytes already in flight would not be.
func (l *link) wait(ctx context.Context, n int) error {
	l.mu.Lock()
	if l.rate <= 0 {
		l.mu.Unlock()
		return ctx.Err()
	}
	l.refill(time.Now())
	l.tokens -= float64(n)
	var d time.Duration
	if l.tokens < 0 {
		d = time.Duration(-l.tokens / l.rate * float64(time.Second))
	}
	l.mu.Unlock()
	return sleep(ctx, d)
}

// sleep waits for d or until ctx ends, whichever is first.
func sleep(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

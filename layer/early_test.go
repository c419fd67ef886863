package layer

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/lazypull/lazypull/format/toc"
)

// TestEarlyFetchFeedsTheLayer: a layer opened through an Early fetch of
// the spans its profile recorded (Layer.Spans) gets every profiled chunk
// from those requests: its own fetch of the profile's ranges, and the
// reads after, request nothing more from the blob, and what they read is
// the files' bytes.
func TestEarlyFetchFeedsTheLayer(t *testing.T) {
	files := testFiles()
	blob, desc := buildBlob(t, files)

	// The spans, as a recording would have found them.
	rec, _ := openLayer(t, blob, desc)
	lookup := func(l *Layer, i int) *toc.Entry {
		e, _ := l.TOC().Lookup(files[i].name)
		return e
	}
	plan := func(l *Layer) []toc.Range {
		return []toc.Range{{Entry: lookup(l, 9), Offset: 200000, Length: 10000}, {Entry: lookup(l, 3), Offset: 0, Length: 100}, {Entry: lookup(l, 4), Offset: 0, Length: 300000}}
	}
	spans := rec.Spans(plan(rec))
	if len(spans) != 2 {
		t.Fatalf("spans %v; want a's chunk, then b's and c's together", spans)
	}

	f := &blobFetcher{data: blob, corrupt: -1}
	early := FetchEarly(context.Background(), f, desc.Digest, spans, nil)
	l, err := Open(context.Background(), desc, early, newTestCache(t), Options{TailSize: 64 << 10})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(l.Close)
	if err := <-l.FetchRanges(plan(l)); err != nil {
		t.Fatal(err)
	}
	for _, r := range plan(l) {
		p := make([]byte, r.Length)
		if _, err := l.ReadAt(context.Background(), r.Entry, p, r.Offset); err != nil {
			t.Fatal(err)
		}
		i := slices.IndexFunc(files, func(f file) bool { return f.name == r.Entry.Path() })
		if !bytes.Equal(p, files[i].data[r.Offset:r.Offset+r.Length]) {
			t.Fatalf("%s: the bytes read differ from the file's", r.Entry.Path())
		}
	}
	// The tail (the first request), then the spans, and nothing else.
	f.mu.Lock()
	want := f.ranges[0][1] - f.ranges[0][0]
	f.mu.Unlock()
	for _, s := range spans {
		want += s.Length
	}
	if got := f.fetchedBytes(); got != want {
		t.Errorf("fetched %d bytes from the blob; want %d (tail and spans): %v", got, want, f.ranges)
	}
	if o := f.overlaps(); len(o) > 0 {
		t.Errorf("bytes fetched twice: %v", o)
	}
	if got := l.Stats().EarlyBytes; got != want-(f.ranges[0][1]-f.ranges[0][0]) {
		t.Errorf("stats: %d bytes taken from the early fetch; want the spans' %d", got, want-(f.ranges[0][1]-f.ranges[0][0]))
	}
}

// TestEarlyHandsOutOnce: bytes from early pieces are handed out once; a
// second fetch of them (after they failed to verify) and a fetch that
// pieces do not hold wholly go to the blob. The pieces' bytes count
// against the process's bound until taken.
func TestEarlyHandsOutOnce(t *testing.T) {
	data := make([]byte, 6<<20)
	r := rand.New(rand.NewPCG(3, 4))
	for i := range data {
		data[i] = byte(r.Uint32())
	}
	f := &blobFetcher{data: data, corrupt: -1}
	base := earlyHeld.Load()
	// A span of three pieces, one past the blob (refused), a negative one.
	e := FetchEarly(context.Background(), f, "sha256:x", inOrder(Span{1 << 20, 4<<20 + 100}, Span{6 << 20, 1}, Span{-1, 10}), alone("sha256:x", 2))
	t.Cleanup(e.Close)
	fetch := func(off, n int64) {
		t.Helper()
		p := make([]byte, n)
		if err := e.FetchAt(context.Background(), p, off); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(p, data[off:off+n]) {
			t.Fatalf("bytes at %d+%d differ from the blob's", off, n)
		}
	}
	fetch(6<<20-100, 100) // the tail: the pieces start after it
	requests := func() int { f.mu.Lock(); defer f.mu.Unlock(); return len(f.ranges) }
	waitFor(t, "the three pieces", func() bool { return requests() == 4 })
	if held := earlyHeld.Load() - base; held != 4<<20+100 {
		t.Errorf("%d bytes held; want the span's %d", held, 4<<20+100)
	}

	fetch(3<<20-10, 20) // across two pieces
	fetch(1<<20, 100)
	if n := requests(); n != 4 {
		t.Fatalf("%d requests; the pieces held those bytes", n)
	}
	fetch(3<<20, 10)   // taken already: from the blob
	fetch(1<<20-5, 10) // not all in pieces: from the blob
	if n := requests(); n != 6 {
		t.Fatalf("%d requests; want 2 more, to the blob", n)
	}
	fetch(5<<20, 100) // the last piece, all of it: released
	if held := earlyHeld.Load() - base; held != 4<<20 {
		t.Errorf("%d bytes held; want %d once the last piece was taken", held, 4<<20)
	}
	e.Close()
	if held := earlyHeld.Load() - base; held != 0 {
		t.Errorf("%d bytes held after Close", held)
	}
	fetch(1<<20+200, 100) // after Close: from the blob
	if n := requests(); n != 7 {
		t.Fatalf("%d requests; want 7", n)
	}
}

// failingFetcher fails the requests at one offset, once.
type failingFetcher struct {
	*blobFetcher
	mu     sync.Mutex
	failAt int64
}

func (f *failingFetcher) FetchAt(ctx context.Context, p []byte, off int64) error {
	f.mu.Lock()
	fail := off == f.failAt
	if fail {
		f.failAt = -1
	}
	f.mu.Unlock()
	if fail {
		return errors.New("registry went away")
	}
	return f.blobFetcher.FetchAt(ctx, p, off)
}

// TestEarlyPieceFailureFallsBack: a fetch waiting on a piece whose request
// failed gets its bytes from the blob.
func TestEarlyPieceFailureFallsBack(t *testing.T) {
	data := bytes.Repeat([]byte("lazypull"), 1<<16)
	f := &failingFetcher{blobFetcher: &blobFetcher{data: data, corrupt: -1}, failAt: 1000}
	e := FetchEarly(context.Background(), f, "sha256:x", inOrder(Span{1000, 5000}), alone("sha256:x", 1))
	t.Cleanup(e.Close)
	p := make([]byte, 10)
	if err := e.FetchAt(context.Background(), p, 0); err != nil {
		t.Fatal(err)
	}
	p = make([]byte, 4000)
	if err := e.FetchAt(context.Background(), p, 2000); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(p, data[2000:6000]) {
		t.Fatal("bytes differ from the blob's")
	}
}

// TestEarlyWaitsForTheOtherTails: the spans of a layer opened with others
// are not requested before every one of them has its tail.
func TestEarlyWaitsForTheOtherTails(t *testing.T) {
	data := bytes.Repeat([]byte("tails first"), 1<<14)
	f := &blobFetcher{data: data, corrupt: -1}
	var a, b digest.Digest = "sha256:a", "sha256:b"
	tails := NewEarlyGroup([]digest.Digest{a, b}, 1)
	e := FetchEarly(context.Background(), f, a, inOrder(Span{0, 1000}), tails)
	t.Cleanup(e.Close)
	p := make([]byte, 10)
	if err := e.FetchAt(context.Background(), p, int64(len(data))-10); err != nil {
		t.Fatal(err)
	}
	requests := func() int { f.mu.Lock(); defer f.mu.Unlock(); return len(f.ranges) }
	time.Sleep(50 * time.Millisecond)
	if n := requests(); n != 1 {
		t.Fatalf("%d requests before b's tail; want only a's tail", n)
	}
	// Meanwhile a's layer opened and fetched part of the span itself.
	p = make([]byte, 400)
	if err := e.FetchAt(context.Background(), p, 100); err != nil {
		t.Fatal(err)
	}
	tails.Arrived(b)
	waitFor(t, "the rest of a's span", func() bool { return requests() == 4 })
	o := f.overlaps()
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(o) > 0 || len(f.ranges) != 4 || f.ranges[1] != [2]int64{100, 500} || !slices.Contains(f.ranges[2:], [2]int64{0, 100}) || !slices.Contains(f.ranges[2:], [2]int64{500, 1000}) {
		t.Errorf("requests %v (overlapping: %v); want a's tail, [100, 500) by the layer, then [0, 100) and [500, 1000)", f.ranges, o)
	}
}

// inOrder ranks spans in the order given, in one phase.
func inOrder(spans ...Span) []EarlySpan {
	out := make([]EarlySpan, len(spans))
	for i, s := range spans {
		out[i] = EarlySpan{Span: s, Rank: i}
	}
	return out
}

// alone is the group of one layer's Early fetch, parallel requests at once.
func alone(layer digest.Digest, parallel int) *EarlyGroup {
	return NewEarlyGroup([]digest.Digest{layer}, parallel)
}

// TestSpanSet: a set merges what overlaps or touches, and answers which
// parts of a span it holds and which it lacks.
func TestSpanSet(t *testing.T) {
	set := NewSpanSet([]Span{{50, 10}, {0, 10}, {10, 5}, {55, 20}, {100, 0}})
	if want := (SpanSet{{0, 15}, {50, 25}}); !slices.Equal(set, want) {
		t.Fatalf("NewSpanSet = %v; want %v", set, want)
	}
	for _, c := range []struct {
		x        Span
		overlaps bool
		within   []Span
		missing  []Span
	}{
		{Span{15, 35}, false, nil, []Span{{15, 35}}},
		{Span{14, 2}, true, []Span{{14, 1}}, []Span{{15, 1}}},
		{Span{5, 60}, true, []Span{{5, 10}, {50, 15}}, []Span{{15, 35}}},
		{Span{74, 10}, true, []Span{{74, 1}}, []Span{{75, 9}}},
		{Span{75, 10}, false, nil, []Span{{75, 10}}},
	} {
		if got := set.Overlaps(c.x); got != c.overlaps {
			t.Errorf("Overlaps(%v) = %v", c.x, got)
		}
		if got := set.Within(c.x); !slices.Equal(got, c.within) {
			t.Errorf("Within(%v) = %v; want %v", c.x, got, c.within)
		}
		if got := set.Missing(c.x); !slices.Equal(got, c.missing) {
			t.Errorf("Missing(%v) = %v; want %v", c.x, got, c.missing)
		}
	}
	set.Add(Span{15, 35})
	if want := (SpanSet{{0, 75}}); !slices.Equal(set, want) || set.Bytes() != 75 {
		t.Errorf("after Add: %v (%d bytes); want %v", set, set.Bytes(), want)
	}
}

// gatedFetcher holds the requests at one offset until open is closed;
// reached is closed when the first of them arrives.
type gatedFetcher struct {
	*blobFetcher
	at      int64
	open    chan struct{}
	reached chan struct{}
	once    sync.Once
}

// gateAt serves data, holding the requests at offset at.
func gateAt(data []byte, at int64) *gatedFetcher {
	return &gatedFetcher{blobFetcher: &blobFetcher{data: data, corrupt: -1}, at: at, open: make(chan struct{}), reached: make(chan struct{})}
}

func (f *gatedFetcher) FetchAt(ctx context.Context, p []byte, off int64) error {
	if off == f.at {
		f.once.Do(func() { close(f.reached) })
		<-f.open
	}
	return f.blobFetcher.FetchAt(ctx, p, off)
}

// TestEarlyPieceServesEveryTaker: two fetches that took the two halves of
// a piece on its way both get their bytes from it, whichever copies
// first: the piece keeps its bytes until the last taker has copied.
func TestEarlyPieceServesEveryTaker(t *testing.T) {
	data := make([]byte, 3<<20)
	for i := range data {
		data[i] = byte(i * 13)
	}
	const at = 1 << 20
	f := gateAt(data, at)
	e := FetchEarly(context.Background(), f, "sha256:x", inOrder(Span{at, 1 << 20}), alone("sha256:x", 1))
	t.Cleanup(e.Close)
	tail := make([]byte, 10)
	if err := e.FetchAt(context.Background(), tail, int64(len(data))-10); err != nil {
		t.Fatal(err)
	}
	<-f.reached // the piece's request is on its way, held at the gate
	halves := [2][2]int64{{at, at + 1<<19}, {at + 1<<19, at + 1<<20}}
	errs := make(chan error, 2)
	for _, h := range halves {
		go func() {
			p := make([]byte, h[1]-h[0])
			err := e.fetch(context.Background(), p, h[0], false)
			if err == nil && !bytes.Equal(p, data[h[0]:h[1]]) {
				err = errors.New("bytes differ from the blob's")
			}
			errs <- err
		}()
	}
	waitFor(t, "both halves taken", func() bool {
		e.mu.Lock()
		defer e.mu.Unlock()
		return len(e.pieces) == 1 && e.pieces[0].taken.Bytes() == 1<<20
	})
	close(f.open)
	for range halves {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.ranges) != 2 {
		t.Errorf("requests %v; want the tail and the piece: both halves come from the piece", f.ranges)
	}
	if got := e.taken.Load(); got != 1<<20 {
		t.Errorf("%d bytes taken from the piece; want all %d", got, 1<<20)
	}
}

// TestEarlyReadTakesAQueuedPiecesTurn: a fetch of bytes whose piece has
// not started (the early requests are busy with others) gets them from
// the blob at once, and that piece is not requested after.
func TestEarlyReadTakesAQueuedPiecesTurn(t *testing.T) {
	data := make([]byte, 5<<20)
	for i := range data {
		data[i] = byte(i * 7)
	}
	f := gateAt(data, 0)
	e := FetchEarly(context.Background(), f, "sha256:x", inOrder(Span{0, 4 << 20}), alone("sha256:x", 1))
	t.Cleanup(e.Close)
	p := make([]byte, 10)
	if err := e.FetchAt(context.Background(), p, int64(len(data))-10); err != nil {
		t.Fatal(err)
	}
	// The first piece's request is held at the gate: the second waits
	// its turn behind it.
	p = make([]byte, 100)
	done := make(chan error, 1)
	go func() { done <- e.FetchAt(context.Background(), p, 2<<20+10) }()
	select {
	case err := <-done:
		if err != nil || !bytes.Equal(p, data[2<<20+10:2<<20+110]) {
			t.Fatalf("fetch: %v, bytes equal: %v", err, bytes.Equal(p, data[2<<20+10:2<<20+110]))
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the fetch waited for the early requests' order")
	}
	close(f.open)
	waitFor(t, "the first piece", func() bool { f.mu.Lock(); defer f.mu.Unlock(); return len(f.ranges) == 3 })
	p = make([]byte, 100)
	if err := e.FetchAt(context.Background(), p, 100); err != nil || !bytes.Equal(p, data[100:200]) {
		t.Fatalf("fetch from the first piece: %v", err)
	}
	time.Sleep(50 * time.Millisecond)
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.ranges) != 3 || !slices.Contains(f.ranges, [2]int64{2<<20 + 10, 2<<20 + 110}) || slices.Contains(f.ranges, [2]int64{2 << 20, 4 << 20}) {
		t.Errorf("requests %v; want the tail, the first piece and the read, not the second piece", f.ranges)
	}
}

// requestLog notes the requests of several fetchers, in order, as
// "name@offset".
type requestLog struct {
	mu   sync.Mutex
	list []string
}

// of returns f, its requests noted under name.
func (r *requestLog) of(name string, f Fetcher) Fetcher { return &loggedFetcher{f, name, r} }

// requests returns the requests so far.
func (r *requestLog) requests() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.list)
}

type loggedFetcher struct {
	Fetcher
	name string
	log  *requestLog
}

func (f *loggedFetcher) FetchAt(ctx context.Context, p []byte, off int64) error {
	f.log.mu.Lock()
	f.log.list = append(f.log.list, fmt.Sprintf("%s@%d", f.name, off))
	f.log.mu.Unlock()
	return f.Fetcher.FetchAt(ctx, p, off)
}

// TestEarlyGroupOrdersAcrossLayers: the pieces of an image's layers are
// requested in one order, by rank, whichever layer holds them.
func TestEarlyGroupOrdersAcrossLayers(t *testing.T) {
	data := bytes.Repeat([]byte("one order"), 1<<12)
	var log requestLog
	gate := gateAt(data, 0)
	fa, fb := log.of("a", gate), log.of("b", &blobFetcher{data: data, corrupt: -1})
	var a, b digest.Digest = "sha256:a", "sha256:b"
	g := NewEarlyGroup([]digest.Digest{a, b}, 1)
	ea := FetchEarly(context.Background(), fa, a, []EarlySpan{{Span: Span{0, 100}, Rank: 0}, {Span: Span{1000, 100}, Rank: 2}}, g)
	eb := FetchEarly(context.Background(), fb, b, []EarlySpan{{Span: Span{0, 100}, Rank: 1}}, g)
	t.Cleanup(ea.Close)
	t.Cleanup(eb.Close)
	tail := make([]byte, 10)
	for _, e := range []*Early{eb, ea} {
		if err := e.FetchAt(context.Background(), tail, int64(len(data))-10); err != nil {
			t.Fatal(err)
		}
	}
	<-gate.reached // a's first piece is on its way; the rest wait their turn
	waitFor(t, "both layers' pieces queued", func() bool { g.mu.Lock(); defer g.mu.Unlock(); return len(g.queue) == 2 })
	close(gate.open)
	waitFor(t, "every piece", func() bool { return len(log.requests()) == 5 })
	if requests, want := log.requests(), []string{"b@36854", "a@36854", "a@0", "b@0", "a@1000"}; !slices.Equal(requests, want) {
		t.Errorf("requests %v; want %v: the tails, then by rank across the layers", requests, want)
	}
}

// TestEarlyGroupPhases: pieces of phase 0 and 1 share the requests; those
// of a later phase wait until the earlier phases' are done, with requests
// free.
func TestEarlyGroupPhases(t *testing.T) {
	data := bytes.Repeat([]byte("phases"), 1<<12)
	var log requestLog
	gate := gateAt(data, 0)
	f := log.of("a", gate)
	spans := []EarlySpan{{Span: Span{0, 100}, Phase: 0}, {Span: Span{1000, 100}, Phase: 1}, {Span: Span{2000, 100}, Phase: 1}, {Span: Span{3000, 100}, Phase: 2}}
	e := FetchEarly(context.Background(), f, "sha256:a", spans, alone("sha256:a", 3))
	t.Cleanup(e.Close)
	if err := e.FetchAt(context.Background(), make([]byte, 10), int64(len(data))-10); err != nil {
		t.Fatal(err)
	}
	<-gate.reached
	waitFor(t, "phases 0 and 1", func() bool { return len(log.requests()) == 4 })
	time.Sleep(50 * time.Millisecond)
	if requests := log.requests(); slices.Contains(requests, "a@3000") {
		t.Errorf("requests %v: phase 2 started while phase 0 was on its way", requests)
	}
	close(gate.open)
	waitFor(t, "phase 2", func() bool { return slices.Contains(log.requests(), "a@3000") })
}

package layer

import (
	"archive/tar"
	"bytes"
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"slices"
	"sort"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/lazypull/lazypull/cache"
	"github.com/lazypull/lazypull/format"
	"github.com/lazypull/lazypull/format/estargz"
	"github.com/lazypull/lazypull/format/toc"
)

// blobFetcher serves a blob from memory and records every range asked for.
type blobFetcher struct {
	data    []byte
	mu      sync.Mutex
	ranges  [][2]int64
	corrupt int64 // flip the byte at this offset in what is served (-1: none)
}

func (f *blobFetcher) Size() int64 { return int64(len(f.data)) }

func (f *blobFetcher) FetchAt(ctx context.Context, p []byte, off int64) error {
	f.mu.Lock()
	f.ranges = append(f.ranges, [2]int64{off, off + int64(len(p))})
	f.mu.Unlock()
	copy(p, f.data[off:])
	if f.corrupt >= off && f.corrupt < off+int64(len(p)) {
		p[f.corrupt-off] ^= 0xff
	}
	return nil
}

// overlaps reports byte ranges fetched more than once.
func (f *blobFetcher) overlaps() []string {
	f.mu.Lock()
	rs := append([][2]int64(nil), f.ranges...)
	f.mu.Unlock()
	sort.Slice(rs, func(i, j int) bool { return rs[i][0] < rs[j][0] })
	var out []string
	for i := 1; i < len(rs); i++ {
		if rs[i][0] < rs[i-1][1] {
			out = append(out, fmt.Sprintf("%v and %v", rs[i-1], rs[i]))
		}
	}
	return out
}

func (f *blobFetcher) fetchedBytes() int64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	return fetchedIn(f.ranges)
}

// newTestCache is a real cache in a temporary directory.
func newTestCache(t *testing.T) *cache.Cache { return newCacheAt(t, t.TempDir()) }

type file struct {
	name string
	data []byte
}

func testFiles() []file {
	r := rand.New(rand.NewPCG(1, 2))
	var files []file
	for i := range 40 {
		n := []int{0, 10, 4000, 70000, 300000}[i%5]
		data := make([]byte, n)
		for j := range data {
			data[j] = byte(r.Uint32())
		}
		files = append(files, file{fmt.Sprintf("dir%d/file%02d", i%3, i), data})
	}
	return files
}

func buildBlob(t *testing.T, files []file, opts ...estargz.WriterOption) ([]byte, ocispec.Descriptor) {
	t.Helper()
	var tarBuf bytes.Buffer
	tw := tar.NewWriter(&tarBuf)
	for _, f := range files {
		tw.WriteHeader(&tar.Header{Name: f.name, Typeflag: tar.TypeReg, Mode: 0o644, Size: int64(len(f.data))})
		tw.Write(f.data)
	}
	tw.Close()
	var out bytes.Buffer
	w := estargz.NewWriter(&out, append([]estargz.WriterOption{estargz.WithChunkSize(64 << 10)}, opts...)...)
	if err := w.AppendTar(&tarBuf); err != nil {
		t.Fatal(err)
	}
	res, err := w.Close()
	if err != nil {
		t.Fatal(err)
	}
	desc := ocispec.Descriptor{MediaType: ocispec.MediaTypeImageLayerGzip, Digest: digest.FromBytes(out.Bytes()), Size: int64(out.Len()), Annotations: res.Annotations}
	return out.Bytes(), desc
}

func openLayer(t *testing.T, blob []byte, desc ocispec.Descriptor) (*Layer, *blobFetcher) {
	t.Helper()
	return openLayerWith(t, blob, desc, Options{})
}

// openLayerWith is openLayer with opts (a 64 KiB tail unless they say).
func openLayerWith(t *testing.T, blob []byte, desc ocispec.Descriptor, opts Options) (*Layer, *blobFetcher) {
	t.Helper()
	if opts.TailSize == 0 {
		opts.TailSize = 64 << 10
	}
	f := &blobFetcher{data: blob, corrupt: -1}
	l, err := Open(context.Background(), desc, f, newTestCache(t), opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(l.Close)
	return l, f
}

func readFile(t *testing.T, l *Layer, name string) ([]byte, error) {
	e, ok := l.TOC().Lookup(name)
	if !ok {
		return nil, fmt.Errorf("%s not in the TOC", name)
	}
	buf := make([]byte, e.Size)
	n, err := l.ReadAt(context.Background(), e, buf, 0)
	if err == io.EOF && n == len(buf) {
		err = nil
	}
	return buf[:n], err
}

func TestReadsFetchOnlyWhatTheyNeed(t *testing.T) {
	files := testFiles()
	blob, desc := buildBlob(t, files)
	l, f := openLayer(t, blob, desc)
	opened := f.fetchedBytes()

	got, err := readFile(t, l, files[3].name) // 70000 bytes: two chunks
	if err != nil || !bytes.Equal(got, files[3].data) {
		t.Fatalf("read %s: %v", files[3].name, err)
	}
	e, _ := l.TOC().Lookup(files[3].name)
	need := e.Chunks()[len(e.Chunks())-1].EndOffset - e.Chunks()[0].Offset
	// Its members exactly: its neighbours in the blob are files of other
	// directories, and it is under WholeFile (no read-ahead past it).
	if fetched := f.fetchedBytes() - opened; fetched != need {
		t.Errorf("reading one file fetched %d bytes; its chunks take %d", fetched, need)
	}

	// Every file reads back right, from many readers at once.
	var wg sync.WaitGroup
	for _, fl := range files {
		for range 3 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				got, err := readFile(t, l, fl.name)
				if err != nil || !bytes.Equal(got, fl.data) {
					t.Errorf("read %s: %v (%d bytes)", fl.name, err, len(got))
				}
			}()
		}
	}
	wg.Wait()
	if o := f.overlaps(); len(o) > 0 {
		t.Errorf("byte ranges fetched twice: %v", o)
	}
}

func TestBackgroundFetchesEverythingOnce(t *testing.T) {
	files := testFiles()
	blob, desc := buildBlob(t, files)
	l, f := openLayer(t, blob, desc)
	// A foreground read races the background, and reads right.
	raced := make(chan error, 1)
	go func() {
		got, err := readFile(t, l, files[9].name)
		if err == nil && !bytes.Equal(got, files[9].data) {
			err = fmt.Errorf("wrong bytes")
		}
		raced <- err
	}()
	l.StartBackground()
	if err := <-raced; err != nil {
		t.Errorf("the read racing the background fetch: %v", err)
	}
	select {
	case <-l.BackgroundDone():
	case <-time.After(30 * time.Second):
		t.Fatal("background fetch did not finish")
	}
	if o := f.overlaps(); len(o) > 0 {
		t.Errorf("byte ranges fetched twice: %v", o)
	}
	before := f.fetchedBytes()
	for _, fl := range files {
		if got, err := readFile(t, l, fl.name); err != nil || !bytes.Equal(got, fl.data) {
			t.Errorf("read %s after the background fetch: %v", fl.name, err)
		}
	}
	if after := f.fetchedBytes(); after != before {
		t.Errorf("reads after the background fetch fetched %d more bytes", after-before)
	}
	s := l.Stats()
	if s.CachedBytes != s.DataSize {
		t.Errorf("stats: %d of %d data bytes cached after the background fetch", s.CachedBytes, s.DataSize)
	}
	// Every byte of file data once, plus the TOC read (which may take a
	// little of the data area with it, fetched once all the same).
	if total := f.fetchedBytes(); total > int64(len(blob)) {
		t.Errorf("fetched %d bytes of a %d-byte blob", total, len(blob))
	}
}

func TestPrefetch(t *testing.T) {
	files := testFiles()
	blob, desc := buildBlob(t, files, estargz.WithPrioritizedFiles([]string{files[4].name, files[8].name}))
	l, f := openLayer(t, blob, desc)
	if err := l.Prefetch(context.Background(), 10*time.Second); err != nil {
		t.Fatal(err)
	}
	before := f.fetchedBytes()
	for _, i := range []int{4, 8} {
		if got, err := readFile(t, l, files[i].name); err != nil || !bytes.Equal(got, files[i].data) {
			t.Errorf("read prefetched %s: %v", files[i].name, err)
		}
	}
	if after := f.fetchedBytes(); after != before {
		t.Errorf("reading prefetched files fetched %d more bytes", after-before)
	}
}

func TestCorruptChunkNeverServed(t *testing.T) {
	files := testFiles()
	blob, desc := buildBlob(t, files)
	l, f := openLayer(t, blob, desc)
	e, _ := l.TOC().Lookup(files[4].name)
	f.corrupt = e.Chunks()[1].Offset + 20 // inside the compressed member
	got, err := readFile(t, l, files[4].name)
	if err == nil {
		t.Fatalf("a corrupted chunk was served (%d bytes)", len(got))
	}
	if int64(len(got)) > e.Chunks()[1].FileOffset {
		t.Errorf("%d bytes returned, past the start of the bad chunk at %d", len(got), e.Chunks()[1].FileOffset)
	}
	if s := l.Stats(); s.Errors == 0 || s.LastError == "" {
		t.Errorf("stats do not record the error: %+v", s)
	}
	// Once the registry serves good bytes again, the read succeeds.
	f.corrupt = -1
	if got, err := readFile(t, l, files[4].name); err != nil || !bytes.Equal(got, files[4].data) {
		t.Errorf("read after the fault cleared: %v", err)
	}
}

func TestCachedFile(t *testing.T) {
	files := testFiles()
	blob, desc := buildBlob(t, files)
	l, _ := openLayer(t, blob, desc)
	for _, i := range []int{2, 4} { // one chunk; several chunks
		e, _ := l.TOC().Lookup(files[i].name)
		if _, ok := l.CachedFile(e); ok {
			t.Errorf("%s: a cached file before any read", e.Path())
		}
		readFile(t, l, e.Path())
		// A file of several chunks is assembled in the background after
		// the first ask.
		cf, ok := l.CachedFile(e)
		for deadline := time.Now().Add(10 * time.Second); !ok && time.Now().Before(deadline); {
			time.Sleep(5 * time.Millisecond)
			cf, ok = l.CachedFile(e)
		}
		if !ok {
			t.Fatalf("%s: no cached file after reading it whole", e.Path())
		}
		data, _ := io.ReadAll(cf)
		cf.Close()
		if !bytes.Equal(data, files[i].data) {
			t.Errorf("%s: cached file differs", e.Path())
		}
	}
}

func TestOpenRefusesUnverified(t *testing.T) {
	blob, desc := buildBlob(t, testFiles()[:3])
	desc.Annotations = nil
	f := &blobFetcher{data: blob, corrupt: -1}
	if _, err := Open(context.Background(), desc, f, newTestCache(t), Options{}); err == nil {
		t.Errorf("a layer without a TOC digest was opened")
	}
	if _, err := Open(context.Background(), desc, f, newTestCache(t), Options{Unverified: true}); err != nil {
		t.Errorf("with Unverified: %v", err)
	}
}

func TestOpenReadsOnlyTheTOCWhenTheManifestPlacesIt(t *testing.T) {
	files := testFiles()
	blob, desc := buildBlob(t, files)
	_, f := openLayer(t, blob, desc)
	start, _ := format.TOCStart(desc)
	if len(f.ranges) != 1 || f.ranges[0] != [2]int64{start, int64(len(blob))} {
		t.Errorf("Open fetched %v; want the TOC and footer alone, [%d %d]", f.ranges, start, len(blob))
	}

	// A wrong hint costs a request, never the layer.
	desc.Annotations[estargz.TOCOffsetAnnotation] = fmt.Sprint(len(blob) - 10)
	l, f := openLayer(t, blob, desc)
	if len(f.ranges) < 2 {
		t.Errorf("a hint that misses the footer: Open fetched %v", f.ranges)
	}
	if got, err := readFile(t, l, files[3].name); err != nil || !bytes.Equal(got, files[3].data) {
		t.Errorf("read after a wrong hint: %v", err)
	}
}

// fetchedFiles lists the files whose every chunk the layer has cached.
func fetchedFiles(l *Layer) map[string]bool {
	out := map[string]bool{}
	for n, e := range l.TOC().Entries() {
		if e.Type != toc.TypeReg || e.Size == 0 {
			continue
		}
		all := true
		for i, c := range e.Chunks() {
			if !c.Zero && !l.hasChunk(chunkRef{uint32(n), uint32(i)}) {
				all = false
			}
		}
		if all {
			out[e.Path()] = true
		}
	}
	return out
}

// waitFor polls cond for up to ten seconds: fetches alongside a read end
// after it.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !cond(); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("gave up waiting for %s", what)
		}
	}
}

func TestFirstReadFetchesTheWholeFileAlongside(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	random := func(n int) []byte {
		b := make([]byte, n)
		for i := range b {
			b[i] = byte(r.Uint32())
		}
		return b
	}
	files := []file{{"bin/prog", random(600 << 10)}, {"data/big", random(3 << 20)}}
	blob, desc := buildBlob(t, files) // 64 KiB chunks
	f := &blobFetcher{data: blob, corrupt: -1}
	l, err := Open(context.Background(), desc, f, newTestCache(t), Options{WholeFile: 1 << 20, ReadAhead: 256 << 10})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()

	// A read in the middle of a file under WholeFile brings all of it.
	prog, _ := l.TOC().Lookup("bin/prog")
	buf := make([]byte, 4096)
	if _, err := l.ReadAt(context.Background(), prog, buf, 300<<10); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the rest of bin/prog", func() bool { return fetchedFiles(l)["bin/prog"] })
	if got, _ := readFile(t, l, "bin/prog"); !bytes.Equal(got, files[0].data) {
		t.Error("bin/prog reads back wrong")
	}

	// A larger file gets ReadAhead past the read, not all of it.
	big, _ := l.TOC().Lookup("data/big")
	before := f.fetchedBytes()
	if _, err := l.ReadAt(context.Background(), big, buf, 0); err != nil {
		t.Fatal(err)
	}
	// Its first chunk, and the next ReadAhead bytes (four chunks).
	want := big.Chunks()[4].EndOffset - big.Chunks()[0].Offset
	waitFor(t, "the read-ahead", func() bool { return f.fetchedBytes()-before >= want })
	l.Close() // waits for every fetch it started: nothing comes later
	if got := f.fetchedBytes() - before; got != want {
		t.Errorf("one read of a file over WholeFile fetched %d bytes, want %d (its chunk and ReadAhead past it)", got, want)
	}
	if o := f.overlaps(); len(o) > 0 {
		t.Errorf("byte ranges fetched twice: %v", o)
	}
}

func TestSmallFilesComeWithTheirNeighbours(t *testing.T) {
	var files []file
	for i := range 8 {
		files = append(files, file{fmt.Sprintf("include/h%d.h", i), bytes.Repeat([]byte{byte('a' + i)}, 3000)})
	}
	files = append(files, file{"other/x.txt", []byte("elsewhere")})
	blob, desc := buildBlob(t, files)
	l, f := openLayer(t, blob, desc)
	opened := len(f.ranges)

	if _, err := readFile(t, l, "include/h3.h"); err != nil {
		t.Fatal(err)
	}
	got := fetchedFiles(l)
	for i := range 8 {
		if name := fmt.Sprintf("include/h%d.h", i); !got[name] {
			t.Errorf("%s, a small neighbour in the same directory, was not fetched with include/h3.h", name)
		}
	}
	if got["other/x.txt"] {
		t.Error("a file of another directory came along")
	}
	if n := len(f.ranges) - opened; n != 1 {
		t.Errorf("%d requests for a directory of small files; want 1", n)
	}
}

func TestAssembledFileReplacesItsChunks(t *testing.T) {
	files := testFiles()
	blob, desc := buildBlob(t, files)
	c := newTestCache(t)
	f := &blobFetcher{data: blob, corrupt: -1}
	l, err := Open(context.Background(), desc, f, c, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	e, _ := l.TOC().Lookup(files[4].name) // 300000 bytes: five chunks
	if _, err := readFile(t, l, e.Path()); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the assembled file", func() bool { return c.Has(e.Digest()) && !c.Has(e.Chunks()[0].Digest()) })
	for _, ch := range e.Chunks() {
		if c.Has(ch.Digest()) {
			t.Errorf("chunk at %d still cached on its own next to the assembled file", ch.FileOffset)
		}
	}
	if got, err := readFile(t, l, e.Path()); err != nil || !bytes.Equal(got, files[4].data) {
		t.Errorf("read from the assembled file: %v", err)
	}

	// A layer opened again over the same cache (a restart) fetches none of
	// the file again.
	f2 := &blobFetcher{data: blob, corrupt: -1}
	l2, err := Open(context.Background(), desc, f2, c, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer l2.Close()
	opened := len(f2.ranges)
	if got, err := readFile(t, l2, e.Path()); err != nil || !bytes.Equal(got, files[4].data) {
		t.Errorf("read after a restart: %v", err)
	}
	if len(f2.ranges) != opened {
		t.Errorf("a restart fetched the assembled file again: %v", f2.ranges[opened:])
	}
}

// slowFetcher counts the fetches in flight across the layers that share
// it, each taking a moment so that they overlap.
type slowFetcher struct {
	*blobFetcher
	inflight, peak *atomic.Int64
}

func (f slowFetcher) FetchAt(ctx context.Context, p []byte, off int64) error {
	n := f.inflight.Add(1)
	defer f.inflight.Add(-1)
	for {
		old := f.peak.Load()
		if n <= old || f.peak.CompareAndSwap(old, n) {
			break
		}
	}
	time.Sleep(20 * time.Millisecond)
	return f.blobFetcher.FetchAt(ctx, p, off)
}

// TestBackgroundSpansBoundedAcrossLayers: however many layers share a Gate,
// at most backgroundSpans background spans are in flight (each holds its
// bytes in memory), where six layers fetching two at a time would have
// twelve.
func TestBackgroundSpansBoundedAcrossLayers(t *testing.T) {
	files := testFiles()
	blob, desc := buildBlob(t, files)
	gate := NewGate()
	var inflight, peak atomic.Int64
	var layers []*Layer
	for range 6 {
		f := slowFetcher{&blobFetcher{data: blob, corrupt: -1}, &inflight, &peak}
		l, err := Open(context.Background(), desc, f, newTestCache(t), Options{TailSize: 64 << 10, Gate: gate, SpanSize: 256 << 10})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(l.Close)
		// A container's read: the background starts once reads are quiet.
		if got, err := readFile(t, l, files[1].name); err != nil || !bytes.Equal(got, files[1].data) {
			t.Fatalf("read %s: %v", files[1].name, err)
		}
		layers = append(layers, l)
	}
	peak.Store(0)
	for _, l := range layers {
		l.StartBackground()
	}
	for _, l := range layers {
		select {
		case <-l.BackgroundDone():
		case <-time.After(30 * time.Second):
			t.Fatal("background fetch did not finish")
		}
		if s := l.Stats(); s.CachedBytes != s.DataSize {
			t.Fatalf("%d of %d data bytes cached after the background fetch", s.CachedBytes, s.DataSize)
		}
	}
	if p := peak.Load(); p > backgroundSpans || p < 2 {
		t.Fatalf("%d background fetches in flight at once across 6 layers; want 2..%d", p, backgroundSpans)
	}
}

// TestFilesFillInPlace: the chunks of a file of several are written into
// one cache entry for the whole file as they arrive: after the background
// fetch each such file is one whole entry (sealed: Open serves it for
// passthrough) and none of its chunks has an entry of its own; a file half
// read before a restart keeps its chunks (no refetch after).
func TestFilesFillInPlace(t *testing.T) {
	files := testFiles()
	blob, desc := buildBlob(t, files)
	dir := t.TempDir()
	c, err := cache.New(dir)
	if err != nil {
		t.Fatal(err)
	}
	f := &blobFetcher{data: blob, corrupt: -1}
	// No whole-file fetch on a miss, and a read-ahead of one chunk.
	opts := Options{TailSize: 64 << 10, WholeFile: 1, ReadAhead: 1}
	l, err := Open(context.Background(), desc, f, c, opts)
	if err != nil {
		t.Fatal(err)
	}
	big := files[4] // 300000 bytes: five chunks
	e, _ := l.TOC().Lookup(big.name)
	if len(e.Chunks()) < 3 {
		t.Fatalf("%s has %d chunks; the test wants several", big.name, len(e.Chunks()))
	}
	// Its first two chunks only, then a restart.
	p := make([]byte, e.Chunks()[2].FileOffset)
	if _, err := l.ReadAt(context.Background(), e, p, 0); err != nil || !bytes.Equal(p, big.data[:len(p)]) {
		t.Fatalf("read the start of %s: %v", big.name, err)
	}
	l.Close()
	c.Close()

	c = newCacheAt(t, dir)
	l, err = Open(context.Background(), desc, f, c, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(l.Close)
	e, _ = l.TOC().Lookup(big.name)
	before := f.fetchedBytes()
	if _, err := l.ReadAt(context.Background(), e, p, 0); err != nil || !bytes.Equal(p, big.data[:len(p)]) {
		t.Fatalf("read the start of %s after a restart: %v", big.name, err)
	}
	if got := f.fetchedBytes() - before; got != 0 {
		t.Errorf("reading what was cached before the restart fetched %d bytes", got)
	}
	if _, ok := l.CachedFile(e); ok {
		t.Fatal("CachedFile serves a file with chunks missing")
	}

	l.StartBackground()
	<-l.BackgroundDone()
	l.Close() // waits for the seals under way
	entries := 0
	for _, fl := range files {
		e, _ := l.TOC().Lookup(fl.name)
		if len(fl.data) == 0 {
			continue
		}
		entries++
		if len(e.Chunks()) == 1 {
			continue
		}
		for i, ch := range e.Chunks() {
			if c.Has(ch.Digest()) {
				t.Errorf("%s chunk %d has an entry of its own", fl.name, i)
			}
		}
		got, ok := c.Get(e.Digest())
		if !ok || !bytes.Equal(got, fl.data) {
			t.Errorf("%s: whole entry present %v, right bytes %v", fl.name, ok, bytes.Equal(got, fl.data))
		}
	}
	for _, e := range l.TOC().Entries() {
		if e.Type == toc.TypeReg && e.Size > 0 && !slices.ContainsFunc(files, func(f file) bool { return f.name == e.Path() }) {
			entries++ // the landmark
		}
	}
	if st := c.Stats(); st.Entries != entries {
		t.Errorf("the cache holds %d entries; want %d, one per file", st.Entries, entries)
	}
}

func newCacheAt(t *testing.T, dir string) *cache.Cache {
	c, err := cache.New(dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// TestFetchRanges: a profile's ranges are fetched in their first-touch
// order, members near each other in one request, and nothing else; the
// reads that follow fetch nothing.
func TestFetchRanges(t *testing.T) {
	files := testFiles()
	blob, desc := buildBlob(t, files)
	// One request at a time: their order is the plan's.
	l, f := openLayerWith(t, blob, desc, Options{Parallel: 1})
	lookup := func(i int) *toc.Entry {
		e, _ := l.TOC().Lookup(files[i].name)
		return e
	}
	a, b, c := lookup(9), lookup(3), lookup(4) // 300000, 70000, 300000 bytes; b and c adjacent in the blob
	ranges := []toc.Range{{Entry: a, Offset: 200000, Length: 10000}, {Entry: b, Offset: 0, Length: 100}, {Entry: c, Offset: 0, Length: 10}}
	opened := len(f.ranges)
	if err := <-l.FetchRanges(ranges); err != nil {
		t.Fatal(err)
	}
	got := f.ranges[opened:]
	ca, _ := a.ChunkAt(200000)
	within := func(r [2]int64, ch toc.Chunk) bool { return r[0] <= ch.Offset && ch.EndOffset <= r[1] }
	if len(got) != 2 || !within(got[0], a.Chunks()[ca]) || !within(got[1], b.Chunks()[0]) || !within(got[1], c.Chunks()[0]) {
		t.Fatalf("requests %v; want a's chunk %d first, then b's and c's first chunks in one", got, ca)
	}
	// Nothing else: b's second chunk is the gap between b's first and
	// c's, taken along.
	if want := (a.Chunks()[ca].EndOffset - a.Chunks()[ca].Offset) + (c.Chunks()[0].EndOffset - b.Chunks()[0].Offset); f.fetchedBytes()-fetchedIn(f.ranges[:opened]) != want {
		t.Errorf("fetched %d bytes; want %d", f.fetchedBytes()-fetchedIn(f.ranges[:opened]), want)
	}
	if got := l.Stats().ProfiledBytes; got != f.fetchedBytes()-fetchedIn(f.ranges[:opened]) {
		t.Errorf("stats: %d profiled bytes; %d were fetched for the ranges", got, f.fetchedBytes()-fetchedIn(f.ranges[:opened]))
	}
	before := f.fetchedBytes()
	for _, r := range ranges {
		p := make([]byte, r.Length)
		if _, err := l.ReadAt(context.Background(), r.Entry, p, r.Offset); err != nil {
			t.Fatal(err)
		}
	}
	if n := f.fetchedBytes() - before; n != 0 {
		t.Errorf("reads of the profiled ranges fetched %d bytes", n)
	}
}

func fetchedIn(rs [][2]int64) int64 {
	var n int64
	for _, r := range rs {
		n += r[1] - r[0]
	}
	return n
}

// TestFetchRangesInPhases: a later phase's members never join an earlier
// phase's request, however near, and what an earlier phase fetched is
// not fetched again.
func TestFetchRangesInPhases(t *testing.T) {
	files := testFiles()
	blob, desc := buildBlob(t, files)
	l, f := openLayerWith(t, blob, desc, Options{Parallel: 1})
	b, _ := l.TOC().Lookup(files[3].name) // b and c are adjacent in the blob
	c, _ := l.TOC().Lookup(files[4].name)
	opened := len(f.ranges)
	first := []toc.Range{{Entry: b, Offset: 0, Length: 100}}
	then := []toc.Range{{Entry: c, Offset: 0, Length: 10}, {Entry: b, Offset: 0, Length: 100}}
	if err := <-l.FetchRanges(first, then); err != nil {
		t.Fatal(err)
	}
	got := f.ranges[opened:]
	within := func(r [2]int64, ch toc.Chunk) bool { return r[0] <= ch.Offset && ch.EndOffset <= r[1] }
	if len(got) != 2 || !within(got[0], b.Chunks()[0]) || within(got[0], c.Chunks()[0]) || !within(got[1], c.Chunks()[0]) || within(got[1], b.Chunks()[0]) {
		t.Errorf("requests %v; want b's first chunk alone, then c's", got)
	}
}

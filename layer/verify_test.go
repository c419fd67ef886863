package layer

import (
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"io"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/lazypull/lazypull/format"
	"github.com/lazypull/lazypull/format/toc"
)

// diffIDOf is the digest of a gzip blob's uncompressed stream.
func diffIDOf(t *testing.T, blob []byte) digest.Digest {
	t.Helper()
	zr, err := gzip.NewReader(bytes.NewReader(blob))
	if err != nil {
		t.Fatal(err)
	}
	d, err := digest.SHA256.FromReader(zr)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func waitVerification(t *testing.T, l *Layer) (Verification, error) {
	t.Helper()
	if err := l.WaitVerified(context.Background()); err != nil {
		if v, verr := l.Verification(); v == Rejected {
			return v, verr
		}
		t.Fatalf("verification did not end: %v", err)
	}
	return l.Verification()
}

func TestLayerVerifiedAgainstItsDiffID(t *testing.T) {
	files := testFiles()
	blob, desc := buildBlob(t, files)
	f := &blobFetcher{data: blob, corrupt: -1}
	spool := t.TempDir()
	l, err := Open(context.Background(), desc, f, newTestCache(t), Options{TailSize: 64 << 10, Expect: Expect{DiffID: diffIDOf(t, blob)}, SpoolDir: spool})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if _, err := readFile(t, l, files[3].name); err != nil {
		t.Fatal(err)
	}
	l.StartBackground()
	if v, err := waitVerification(t, l); v != Verified {
		t.Fatalf("verification = %s (%v), want %s", v, err, Verified)
	}
	// Verifying took the bytes the fetches brought anyway: the blob was
	// fetched once, not twice.
	if o := f.overlaps(); len(o) > 0 {
		t.Errorf("byte ranges fetched twice: %v", o)
	}
	if got := f.fetchedBytes(); got != int64(len(blob)) {
		t.Errorf("fetched %d bytes of a %d-byte blob", got, len(blob))
	}

	// Opened again (a restart), it is known to be verified: nothing more
	// is fetched to check it.
	f2 := &blobFetcher{data: blob, corrupt: -1}
	l2, err := Open(context.Background(), desc, f2, newTestCache(t), Options{TailSize: 64 << 10, Expect: Expect{DiffID: diffIDOf(t, blob)}, SpoolDir: spool})
	if err != nil {
		t.Fatal(err)
	}
	defer l2.Close()
	if v, _ := l2.Verification(); v != Verified {
		t.Errorf("reopened layer: verification = %s, want %s", v, Verified)
	}
}

func TestLayerOfAnotherDiffIDIsRejected(t *testing.T) {
	files := testFiles()
	blob, desc := buildBlob(t, files)
	other, _ := buildBlob(t, files[:5])
	f := &blobFetcher{data: blob, corrupt: -1}
	// The image claims another layer's diff_id (as an image poisoning
	// a chain ID does).
	opts := Options{TailSize: 64 << 10, Expect: Expect{DiffID: diffIDOf(t, other)}, SpoolDir: t.TempDir()}
	l, err := Open(context.Background(), desc, f, newTestCache(t), opts)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if got, err := readFile(t, l, files[1].name); err != nil || !bytes.Equal(got, files[1].data) {
		t.Fatalf("read before verification: %v", err)
	}
	l.StartBackground()
	v, verr := waitVerification(t, l)
	if v != Rejected || verr == nil || !strings.Contains(verr.Error(), "diff_id") {
		t.Fatalf("verification = %s (%v), want %s naming the diff_id", v, verr, Rejected)
	}
	if _, err := readFile(t, l, files[1].name); err == nil {
		t.Error("a rejected layer still serves reads")
	}
	if e, _ := l.TOC().Lookup(files[4].name); e != nil {
		if f, ok := l.CachedFile(e); ok {
			f.Close()
			t.Error("a rejected layer still hands out cached files")
		}
	}
	if s := l.Stats(); s.Verification != Rejected || !strings.Contains(s.LastError, "not the content its image names") {
		t.Errorf("stats: %+v", s)
	}

	// Opened again (a restart), it is refused from the start.
	l2, err := Open(context.Background(), desc, &blobFetcher{data: blob, corrupt: -1}, newTestCache(t), opts)
	if err != nil {
		t.Fatal(err)
	}
	defer l2.Close()
	if v, _ := l2.Verification(); v != Rejected || !l2.Rejected() {
		t.Errorf("reopened: verification = %s, want %s", v, Rejected)
	}
	if _, err := readFile(t, l2, files[1].name); err == nil {
		t.Error("a layer rejected before serves reads after a restart")
	}
}

func TestVerifyComparesTheTarWithTheTOC(t *testing.T) {
	files := testFiles()[:6]
	blob, _ := buildBlob(t, files)
	// Same names, other bytes in one file: a TOC that serves other
	// content than the tar a full pull unpacks.
	lying := append([]file(nil), files...)
	lying[2] = file{lying[2].name, bytes.Repeat([]byte{'x'}, len(lying[2].data))}
	lyingBlob, lyingDesc := buildBlob(t, lying)
	lf := &blobFetcher{data: lyingBlob, corrupt: -1}
	ll, err := Open(context.Background(), lyingDesc, lf, newTestCache(t), Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer ll.Close()

	err = format.Verify(bytes.NewReader(blob), format.EStargz, ll.TOC(), diffIDOf(t, blob))
	var verr *format.VerifyError
	if !errors.As(err, &verr) || verr.Entry != files[2].name {
		t.Fatalf("tar vs another TOC: err = %v, want a mismatch naming %s", err, files[2].name)
	}
	if err := format.Verify(bytes.NewReader(lyingBlob), format.EStargz, ll.TOC(), diffIDOf(t, lyingBlob)); err != nil {
		t.Fatalf("a blob against its own TOC: %v", err)
	}
}

func TestHoleReadsWithoutAllocating(t *testing.T) {
	blob, desc := buildBlob(t, testFiles()[:2])
	l, _ := openLayer(t, blob, desc)
	// A file that is one hole of 1 TiB, as a TOC may describe it.
	holes, err := toc.Parse([]byte(`{"version":1,"entries":[{"name":"hole","type":"reg","size":1099511627776,"chunkType":"zeros"}]}`), 0, toc.Limits{})
	if err != nil {
		t.Fatal(err)
	}
	e, _ := holes.Lookup("hole")
	buf := bytes.Repeat([]byte{1}, 4096)
	allocs := testing.AllocsPerRun(10, func() {
		n, err := l.ReadAt(context.Background(), e, buf, 1<<39)
		if n != len(buf) || err != nil {
			t.Fatalf("read %d bytes: %v", n, err)
		}
	})
	if !bytes.Equal(buf, make([]byte, 4096)) {
		t.Error("a hole did not read as zeros")
	}
	if allocs > 2 {
		t.Errorf("a read of a hole allocated %v times", allocs)
	}
	n, err := l.ReadAt(context.Background(), e, buf, 1<<40-10)
	if n != 10 || err != io.EOF {
		t.Errorf("read at a hole's end: %d, %v", n, err)
	}
}

// panickyFetcher panics on the reads after the first (the TOC's).
type panickyFetcher struct {
	blobFetcher
	calls int
}

func (f *panickyFetcher) FetchAt(ctx context.Context, p []byte, off int64) error {
	f.mu.Lock()
	f.calls++
	calls := f.calls
	f.mu.Unlock()
	if calls > 1 {
		panic("fetcher bug")
	}
	return f.blobFetcher.FetchAt(ctx, p, off)
}

func TestPanicInAFetchFailsTheReadNotTheProcess(t *testing.T) {
	files := testFiles()
	blob, desc := buildBlob(t, files)
	f := &panickyFetcher{blobFetcher: blobFetcher{data: blob, corrupt: -1}}
	l, err := Open(context.Background(), desc, f, newTestCache(t), Options{TailSize: 4096})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	// Many readers, some waiting on the fetch that panics: all get an
	// error, none hangs.
	errs := make(chan error, 8)
	for range 8 {
		go func() {
			_, err := readFile(t, l, files[4].name)
			errs <- err
		}()
	}
	for range 8 {
		if err := <-errs; err == nil || !strings.Contains(err.Error(), "fetcher bug") {
			t.Errorf("read through a panicking fetcher: err = %v", err)
		}
	}
	if s := l.Stats(); !strings.Contains(s.LastError, "internal error") {
		t.Errorf("the panic is not the layer's last error: %q", s.LastError)
	}
}

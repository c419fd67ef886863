package cache

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containerd/log"
	"github.com/opencontainers/go-digest"
	"golang.org/x/sys/unix"
)

func TestMain(m *testing.M) {
	flag.Parse()
	if !testing.Verbose() {
		// Corruption tests log warnings by design; show them with -v.
		log.SetLevel("error")
	}
	os.Exit(m.Run())
}

// blob returns size deterministic bytes that differ for each seed.
func blob(seed, size int) []byte {
	b := make([]byte, size)
	x := uint32(seed)*2654435761 + 1
	for i := range b {
		x ^= x << 13
		x ^= x >> 17
		x ^= x << 5
		b[i] = byte(x)
	}
	return b
}

func newCache(t testing.TB, dir string, opts ...Option) *Cache {
	t.Helper()
	c, err := New(dir, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func mustPut(t testing.TB, c *Cache, data []byte) digest.Digest {
	t.Helper()
	d := digest.FromBytes(data)
	if err := c.Put(d, data); err != nil {
		t.Fatal(err)
	}
	return d
}

func mustGet(t testing.TB, c *Cache, d digest.Digest, want []byte) {
	t.Helper()
	got, ok := c.Get(d)
	if !ok {
		t.Fatalf("Get(%s): miss", d)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("Get(%s): got %d bytes that differ from the %d put", d, len(got), len(want))
	}
}

func mustMiss(t testing.TB, c *Cache, d digest.Digest) {
	t.Helper()
	if _, ok := c.Get(d); ok {
		t.Fatalf("Get(%s): hit, want miss", d)
	}
}

func TestPutGet(t *testing.T) {
	for _, size := range []int{0, 1, 4096, 1 << 20} {
		t.Run(fmt.Sprint(size), func(t *testing.T) {
			c := newCache(t, t.TempDir())
			data := blob(size, size)
			d := mustPut(t, c, data)
			if !c.Has(d) {
				t.Fatal("Has after Put: false")
			}
			mustGet(t, c, d, data)
			if _, err := os.Stat(c.path(d)); err != nil {
				t.Fatalf("entry file: %v", err)
			}
			s := c.Stats()
			if s.Entries != 1 || s.Bytes != int64(size) || s.DiskHits != 1 || s.Verifications != 0 {
				t.Fatalf("stats %+v", s)
			}
		})
	}
}

func TestGetFromDisk(t *testing.T) {
	c := newCache(t, t.TempDir())
	data := blob(1, 10000)
	d := mustPut(t, c, data)
	mustGet(t, c, d, data)
	mustGet(t, c, d, data)
	if s := c.Stats(); s.DiskHits != 2 {
		t.Fatalf("stats %+v", s)
	}
	mustMiss(t, c, digest.FromString("absent"))
	if s := c.Stats(); s.Misses != 1 {
		t.Fatalf("stats %+v", s)
	}
}

func TestReadAt(t *testing.T) {
	dir := t.TempDir()
	c := newCache(t, dir)
	data := blob(1, 3<<20+5)
	d := mustPut(t, c, data)
	size := int64(len(data))
	for _, r := range []struct{ off, n int64 }{{0, 1}, {0, 128 << 10}, {1<<20 + 3, 128 << 10}, {size - 7, 7}, {size, 0}} {
		p := make([]byte, r.n)
		if !c.ReadAt(d, size, p, r.off) || !bytes.Equal(p, data[r.off:r.off+r.n]) {
			t.Fatalf("ReadAt(%d bytes at %d): wrong bytes or a miss", r.n, r.off)
		}
	}
	p := make([]byte, 8)
	for _, bad := range []struct {
		why       string
		size, off int64
	}{{"past the end", size, size - 7}, {"negative offset", size, -1}, {"another size", size + 1, 0}, {"another size", size - 1, 0}} {
		if c.ReadAt(d, bad.size, p, bad.off) {
			t.Errorf("ReadAt %s: served", bad.why)
		}
	}
	if c.ReadAt(digest.FromString("absent"), 8, p, 0) {
		t.Error("ReadAt of an absent entry: served")
	}
	allocs := testing.AllocsPerRun(100, func() { c.ReadAt(d, size, p, 4096) })
	t.Logf("ReadAt: %v allocations", allocs)

	// An entry found on disk is hashed before its first byte is served: a
	// corrupt one is a miss, and deleted.
	c.Close()
	corrupt := slices.Clone(data)
	corrupt[len(corrupt)-1] ^= 1
	if err := os.WriteFile(filepath.Join(dir, "sha256", d.Encoded()[:2], d.Encoded()), corrupt, 0o600); err != nil {
		t.Fatal(err)
	}
	c = newCache(t, dir)
	if c.ReadAt(d, size, p, 0) {
		t.Fatal("ReadAt served the first bytes of an entry whose last byte was changed on disk")
	}
	if c.Has(d) || c.Stats().Corruptions != 1 {
		t.Fatalf("corrupt entry kept: stats %+v", c.Stats())
	}
}

func TestPutRefusesWrongData(t *testing.T) {
	dir := t.TempDir()
	c := newCache(t, dir)
	d := digest.FromString("the right data")
	err := c.Put(d, []byte("the wrong data"))
	if !errors.Is(err, ErrDigestMismatch) || !strings.Contains(err.Error(), d.String()) {
		t.Fatalf("Put wrong data: err = %v, want a digest mismatch naming %s", err, d)
	}
	err = c.PutFile(d, strings.NewReader("the wrong data"))
	if !errors.Is(err, ErrDigestMismatch) || !strings.Contains(err.Error(), d.String()) {
		t.Fatalf("PutFile wrong data: err = %v, want a digest mismatch naming %s", err, d)
	}
	if c.Has(d) || c.Stats().Entries != 0 {
		t.Fatal("wrong data was stored")
	}
	if _, err := os.Stat(c.path(d)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("entry file after refused Put: %v", err)
	}
	assertNoTempFiles(t, dir)
}

func TestPutRefusesInvalidDigest(t *testing.T) {
	c := newCache(t, t.TempDir())
	for _, d := range []digest.Digest{"", "sha256:xyz", "sha256:../../etc/passwd", "md5:d41d8cd98f00b204e9800998ecf8427e"} {
		if err := c.Put(d, nil); err == nil {
			t.Errorf("Put(%q) succeeded", d)
		}
		if err := c.PutFile(d, strings.NewReader("")); err == nil {
			t.Errorf("PutFile(%q) succeeded", d)
		}
	}
}

func TestPutExistingIsNoop(t *testing.T) {
	c := newCache(t, t.TempDir())
	data := blob(1, 100)
	d := mustPut(t, c, data)
	before, err := os.Stat(c.path(d))
	if err != nil {
		t.Fatal(err)
	}
	mustPut(t, c, data)
	if err := c.PutFile(d, failingReader{}); err != nil {
		t.Fatalf("PutFile of a stored digest read its reader: %v", err)
	}
	after, err := os.Stat(c.path(d))
	if err != nil {
		t.Fatal(err)
	}
	if !os.SameFile(before, after) {
		t.Fatal("Put of a stored digest rewrote the file")
	}
	if s := c.Stats(); s.Entries != 1 || s.Bytes != 100 {
		t.Fatalf("stats %+v", s)
	}
}

type failingReader struct{}

func (failingReader) Read([]byte) (int, error) { return 0, errors.New("read called") }

func TestPutFile(t *testing.T) {
	dir := t.TempDir()
	c := newCache(t, dir)
	data := blob(7, 3<<20+17)
	d := digest.FromBytes(data)
	if err := c.PutFile(d, bytes.NewReader(data)); err != nil {
		t.Fatal(err)
	}
	if s := c.Stats(); s.Bytes != int64(len(data)) {
		t.Fatalf("stats %+v", s)
	}
	mustGet(t, c, d, data)

	// A failing reader leaves nothing behind.
	other := digest.FromString("other")
	err := c.PutFile(other, io.MultiReader(strings.NewReader("part"), failingReader{}))
	if err == nil || c.Has(other) {
		t.Fatalf("PutFile with a failing reader: err = %v, Has = %v", err, c.Has(other))
	}
	assertNoTempFiles(t, dir)
}

func assertNoTempFiles(t *testing.T, dir string) {
	t.Helper()
	des, err := os.ReadDir(filepath.Join(dir, tempDirName))
	if err != nil {
		t.Fatal(err)
	}
	if len(des) != 0 {
		t.Fatalf("%d temp files left", len(des))
	}
}

// corruptions are ways an entry file can go bad on disk.
var corruptions = []struct {
	name    string
	corrupt func(p string, data []byte) error
}{
	{"flip a byte", func(p string, data []byte) error {
		bad := bytes.Clone(data)
		bad[len(bad)/2] ^= 0x40
		return os.WriteFile(p, bad, 0o600)
	}},
	{"truncate", func(p string, data []byte) error { return os.Truncate(p, int64(len(data)-1)) }},
	{"truncate to empty", func(p string, data []byte) error { return os.Truncate(p, 0) }},
	{"replace with another file", func(p string, data []byte) error {
		tmp := p + ".new"
		if err := os.WriteFile(tmp, blob(99, len(data)), 0o600); err != nil {
			return err
		}
		return os.Rename(tmp, p)
	}},
}

// TestGetDetectsCorruption: an entry found on disk is hashed before it is
// served. (Within one Cache's lifetime an entry it wrote or hashed is
// trusted, and only its size is checked at each read: see
// TestGetDetectsTruncation.)
func TestGetDetectsCorruption(t *testing.T) {
	for _, tc := range corruptions {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			c := newCache(t, dir)
			data := blob(3, 8192)
			d := mustPut(t, c, data)
			c.Close()
			if err := tc.corrupt(c.path(d), data); err != nil {
				t.Fatal(err)
			}
			c = newCache(t, dir)
			mustMiss(t, c, d)
			s := c.Stats()
			if s.Corruptions != 1 || s.Entries != 0 || s.Bytes != 0 || s.Misses != 1 {
				t.Fatalf("stats after corrupt Get: %+v", s)
			}
			if c.Has(d) {
				t.Fatal("corrupt entry still indexed")
			}
			if _, err := os.Stat(c.path(d)); !errors.Is(err, os.ErrNotExist) {
				t.Fatalf("corrupt file not deleted: %v", err)
			}
			// The caller refetches and puts again: healed.
			mustPut(t, c, data)
			mustGet(t, c, d, data)
		})
	}
}

// TestGetDetectsTruncation: a trusted entry whose file changed size is a
// miss, and is deleted.
func TestGetDetectsTruncation(t *testing.T) {
	c := newCache(t, t.TempDir())
	data := blob(3, 8192)
	d := mustPut(t, c, data)
	if err := os.Truncate(c.path(d), 100); err != nil {
		t.Fatal(err)
	}
	mustMiss(t, c, d)
	if s := c.Stats(); s.Corruptions != 1 || s.Entries != 0 {
		t.Fatalf("stats after a truncated entry's Get: %+v", s)
	}
}

func TestGetVanishedFile(t *testing.T) {
	c := newCache(t, t.TempDir())
	d := mustPut(t, c, blob(1, 100))
	if err := os.Remove(c.path(d)); err != nil {
		t.Fatal(err)
	}
	mustMiss(t, c, d)
	if s := c.Stats(); s.Corruptions != 0 || s.Entries != 0 {
		t.Fatalf("stats %+v", s)
	}
}

func TestOpen(t *testing.T) {
	c := newCache(t, t.TempDir())
	data := blob(5, 1<<20+3)
	d := mustPut(t, c, data)
	f, ok := c.Open(d)
	if !ok {
		t.Fatal("Open: miss")
	}
	defer f.Close()
	got, err := io.ReadAll(f)
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("content of opened file differs (err %v)", err)
	}
	if _, ok := c.Open(digest.FromString("absent")); ok {
		t.Fatal("Open of an absent digest: hit")
	}

	// Removing or evicting the entry leaves the open file readable.
	if err := c.Remove(d); err != nil {
		t.Fatal(err)
	}
	got = make([]byte, len(data))
	if _, err := f.ReadAt(got, 0); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("open file after Remove: err %v", err)
	}
}

func TestOpenDetectsCorruption(t *testing.T) {
	for _, tc := range corruptions {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			c := newCache(t, dir)
			data := blob(4, 1<<16)
			d := mustPut(t, c, data)
			c.Close()
			if err := tc.corrupt(filepath.Join(dir, "sha256", d.Encoded()[:2], d.Encoded()), data); err != nil {
				t.Fatal(err)
			}

			// Found on disk at New: hashed at first Open.
			c = newCache(t, dir)
			if f, ok := c.Open(d); ok {
				f.Close()
				t.Fatal("Open of a corrupt entry: hit")
			}
			if s := c.Stats(); s.Corruptions != 1 || s.Entries != 0 {
				t.Fatalf("stats %+v", s)
			}
			if _, err := os.Stat(c.path(d)); !errors.Is(err, os.ErrNotExist) {
				t.Fatalf("corrupt file not deleted: %v", err)
			}
			mustPut(t, c, data)
			f, ok := c.Open(d)
			if !ok {
				t.Fatal("Open after healing Put: miss")
			}
			f.Close()
		})
	}
}

func TestOpenVerifiesOncePerLifetime(t *testing.T) {
	dir := t.TempDir()
	c := newCache(t, dir)
	data := blob(4, 1<<16)
	d := mustPut(t, c, data)
	c.Close()

	c = newCache(t, dir)
	f, ok := c.Open(d) // hashes the file
	if !ok {
		t.Fatal("Open: miss")
	}
	f.Close()
	// Same-size corruption after the first Open is not seen by Open (the
	// documented trade-off), but a size change is, and Get always hashes.
	bad := bytes.Clone(data)
	bad[0] ^= 1
	if err := os.WriteFile(c.path(d), bad, 0o600); err != nil {
		t.Fatal(err)
	}
	f, ok = c.Open(d)
	if !ok {
		t.Fatal("second Open hashed the file again")
	}
	f.Close()
	if err := os.Truncate(c.path(d), 10); err != nil {
		t.Fatal(err)
	}
	if f, ok := c.Open(d); ok {
		f.Close()
		t.Fatal("Open of a truncated verified entry: hit")
	}
	if s := c.Stats(); s.Corruptions != 1 {
		t.Fatalf("stats %+v", s)
	}
}

func TestRestartKeepsEntries(t *testing.T) {
	dir := t.TempDir()
	c := newCache(t, dir)
	var ds []digest.Digest
	var total int64
	for i := range 20 {
		data := blob(i, 100*i)
		ds = append(ds, mustPut(t, c, data))
		total += int64(len(data))
	}
	before := c.Stats()
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if err := c.Put(digest.FromString("x"), []byte("x")); !errors.Is(err, ErrClosed) {
		t.Fatalf("Put after Close: %v", err)
	}
	mustMiss(t, c, ds[1])

	c = newCache(t, dir)
	s := c.Stats()
	if s.Entries != before.Entries || s.Bytes != total || s.Bytes != before.Bytes {
		t.Fatalf("after restart %+v, before %+v", s, before)
	}
	for i, d := range ds {
		mustGet(t, c, d, blob(i, 100*i))
	}
}

func TestRestartKeepsLRUOrder(t *testing.T) {
	dir := t.TempDir()
	const size = 1000
	c := newCache(t, dir)
	a, b, cc := mustPut(t, c, blob(1, size)), mustPut(t, c, blob(2, size)), mustPut(t, c, blob(3, size))
	mustGet(t, c, cc, blob(3, size))
	mustGet(t, c, a, blob(1, size)) // use order now: b, c, a
	c.Close()

	c = newCache(t, dir, WithMaxBytes(3*size))
	mustPut(t, c, blob(4, size))
	if c.Has(b) || !c.Has(cc) || !c.Has(a) {
		t.Fatalf("after restart, eviction took the wrong entry: has b %v c %v a %v", c.Has(b), c.Has(cc), c.Has(a))
	}
	mustPut(t, c, blob(5, size))
	if c.Has(cc) || !c.Has(a) {
		t.Fatalf("after restart, second eviction took the wrong entry: has c %v a %v", c.Has(cc), c.Has(a))
	}
}

// Demoted entries (a layer no snapshot uses) go first, however recently
// they were used, and still first after a restart.
func TestDemotedGoFirst(t *testing.T) {
	dir := t.TempDir()
	const size = 1000
	c := newCache(t, dir, WithMaxBytes(4*size))
	a, b, cc, d := mustPut(t, c, blob(1, size)), mustPut(t, c, blob(2, size)), mustPut(t, c, blob(3, size)), mustPut(t, c, blob(4, size))
	mustGet(t, c, cc, blob(3, size))
	mustGet(t, c, d, blob(4, size)) // use order now: a, b, c, d
	c.Demote([]digest.Digest{d, digest.FromString("not cached")})
	mustPut(t, c, blob(5, size))
	if c.Has(d) || !c.Has(a) {
		t.Fatalf("the demoted entry stayed and the least recently used went: has d %v a %v", c.Has(d), c.Has(a))
	}
	c.Demote([]digest.Digest{cc})
	c.Close()

	c = newCache(t, dir, WithMaxBytes(4*size))
	mustPut(t, c, blob(6, size))
	if c.Has(cc) || !c.Has(a) || !c.Has(b) {
		t.Fatalf("after a restart the demoted entry stayed: has c %v a %v b %v", c.Has(cc), c.Has(a), c.Has(b))
	}
}

func TestEvictionOrder(t *testing.T) {
	const size = 1000
	c := newCache(t, t.TempDir(), WithMaxBytes(3*size))
	a, b, cc := mustPut(t, c, blob(1, size)), mustPut(t, c, blob(2, size)), mustPut(t, c, blob(3, size))
	mustGet(t, c, a, blob(1, size)) // a is now the most recently used
	d := mustPut(t, c, blob(4, size))
	if c.Has(b) || !c.Has(a) || !c.Has(cc) || !c.Has(d) {
		t.Fatal("the first eviction did not take b, the least recently used")
	}
	if _, err := os.Stat(c.path(b)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("evicted file still there: %v", err)
	}
	f, ok := c.Open(cc) // Open counts as a use too
	if !ok {
		t.Fatal("Open: miss")
	}
	defer f.Close()
	mustPut(t, c, blob(2, size)) // Put of existing entries also counts; here b comes back
	if c.Has(a) || !c.Has(cc) {
		t.Fatal("the second eviction did not take a")
	}
	s := c.Stats()
	if s.Evictions != 2 || s.Entries != 3 || s.Bytes != 3*size {
		t.Fatalf("stats %+v", s)
	}
	// The evicted-but-open file is still readable.
	if got, err := io.ReadAll(f); err != nil || !bytes.Equal(got, blob(3, size)) {
		t.Fatalf("open file: %v", err)
	}

	// An entry larger than the limit is kept, alone.
	big := blob(9, 5*size)
	bd := mustPut(t, c, big)
	mustGet(t, c, bd, big)
	if s := c.Stats(); s.Entries != 1 || s.Bytes != int64(len(big)) {
		t.Fatalf("stats after a big Put %+v", s)
	}
}

func TestEvictionAtNewWhenLimitLowered(t *testing.T) {
	dir := t.TempDir()
	c := newCache(t, dir)
	for i := range 10 {
		mustPut(t, c, blob(i, 1000))
	}
	c.Close()
	c = newCache(t, dir, WithMaxBytes(4500))
	if s := c.Stats(); s.Entries != 4 || s.Bytes != 4000 || s.Evictions != 6 {
		t.Fatalf("stats %+v", s)
	}
}

func TestTempFilesCleanedAtNew(t *testing.T) {
	dir := t.TempDir()
	c := newCache(t, dir)
	d := mustPut(t, c, blob(1, 10))
	c.Close()
	for i := range 3 {
		if err := os.WriteFile(filepath.Join(dir, tempDirName, fmt.Sprintf("put-%d", i)), blob(i, 100), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	c = newCache(t, dir)
	assertNoTempFiles(t, dir)
	mustGet(t, c, d, blob(1, 10))
}

func TestScanSkipsJunkAndTornFiles(t *testing.T) {
	dir := t.TempDir()
	c := newCache(t, dir)
	good := mustPut(t, c, blob(1, 10))
	empty := mustPut(t, c, nil)
	c.Close()

	torn := digest.FromString("torn by a crash")
	tornPath := filepath.Join(dir, "sha256", torn.Encoded()[:2], torn.Encoded())
	junk := filepath.Join(dir, "sha256", good.Encoded()[:2], "not-a-digest")
	misplaced := filepath.Join(dir, "sha256", "00", torn.Encoded())
	for _, p := range []string{tornPath, junk, misplaced} {
		if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
			t.Fatal(err)
		}
	}
	os.WriteFile(tornPath, nil, 0o600)
	os.WriteFile(junk, []byte("junk"), 0o600)
	os.WriteFile(misplaced, []byte("x"), 0o600)

	c = newCache(t, dir)
	if s := c.Stats(); s.Entries != 2 || s.Bytes != 10 {
		t.Fatalf("stats %+v", s)
	}
	if !c.Has(good) || !c.Has(empty) || c.Has(torn) {
		t.Fatal("wrong entries after scan")
	}
	if _, err := os.Stat(tornPath); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("torn file not deleted: %v", err)
	}
	mustGet(t, c, empty, []byte{})
}

func TestDirectoryLocked(t *testing.T) {
	dir := t.TempDir()
	c := newCache(t, dir)
	if c2, err := New(dir); err == nil {
		c2.Close()
		t.Fatal("second New on a directory in use succeeded")
	}
	c.Close()
	c2 := newCache(t, dir)
	c2.Close()
}

func TestRemove(t *testing.T) {
	c := newCache(t, t.TempDir())
	d := mustPut(t, c, blob(1, 100))
	if err := c.Remove(d); err != nil {
		t.Fatal(err)
	}
	if c.Has(d) || c.Stats().Entries != 0 {
		t.Fatal("entry still there after Remove")
	}
	mustMiss(t, c, d)
	if err := c.Remove(d); err != nil {
		t.Fatalf("Remove of an absent entry: %v", err)
	}
}

func TestConcurrentUse(t *testing.T) {
	const (
		goroutines = 8
		digests    = 32
		rounds     = 200
	)
	dir := t.TempDir()
	c := newCache(t, dir, WithMaxBytes(20*4096), WithSync(false))
	datas := make([][]byte, digests)
	ds := make([]digest.Digest, digests)
	for i := range datas {
		datas[i] = blob(i, 1024+i*200)
		ds[i] = digest.FromBytes(datas[i])
	}
	var wg sync.WaitGroup
	for g := range goroutines {
		wg.Go(func() {
			for r := range rounds {
				i := (g*7 + r*13) % digests
				if r%3 == 0 {
					i = 0 // everyone hammers the same digest too
				}
				switch r % 5 {
				case 0, 1:
					if err := c.Put(ds[i], datas[i]); err != nil {
						t.Error(err)
						return
					}
				case 2:
					if got, ok := c.Get(ds[i]); ok && !bytes.Equal(got, datas[i]) {
						t.Errorf("Get(%d): wrong data", i)
						return
					}
				case 3:
					if f, ok := c.Open(ds[i]); ok {
						got, err := io.ReadAll(f)
						f.Close()
						if err != nil || !bytes.Equal(got, datas[i]) {
							t.Errorf("Open(%d): wrong data (%v)", i, err)
							return
						}
					}
				case 4:
					if r%10 == 4 {
						if err := c.Remove(ds[i]); err != nil {
							t.Error(err)
							return
						}
					} else {
						c.Has(ds[i])
						c.Stats()
					}
				}
			}
		})
	}
	wg.Wait()
	s := c.Stats()
	if s.Bytes > 20*4096 || s.Corruptions != 0 {
		t.Fatalf("stats %+v", s)
	}
	// The index agrees with the files.
	c.Close()
	c = newCache(t, dir)
	if s2 := c.Stats(); s2.Entries != s.Entries || s2.Bytes != s.Bytes {
		t.Fatalf("index %+v, files %+v", s, s2)
	}
	assertNoTempFiles(t, dir)
}

// countingReader counts how many PutFile calls actually read their source.
type countingReader struct {
	r     io.Reader
	count *int
	mu    *sync.Mutex
	once  bool
}

func (r *countingReader) Read(p []byte) (int, error) {
	if !r.once {
		r.once = true
		r.mu.Lock()
		*r.count++
		r.mu.Unlock()
		time.Sleep(time.Millisecond) // let the others pile up
	}
	return r.r.Read(p)
}

func TestConcurrentPutsWriteOnce(t *testing.T) {
	c := newCache(t, t.TempDir())
	data := blob(1, 1<<20)
	d := digest.FromBytes(data)
	var (
		mu    sync.Mutex
		reads int
		wg    sync.WaitGroup
	)
	for range 16 {
		wg.Go(func() {
			if err := c.PutFile(d, &countingReader{r: bytes.NewReader(data), count: &reads, mu: &mu}); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	if reads != 1 {
		t.Fatalf("%d PutFile calls wrote the entry, want 1", reads)
	}
	mustGet(t, c, d, data)
}

// TestConcurrentGetsHashOnce: the kernel reads one chunk in several pieces
// at once; an entry found on disk is hashed once for all of them.
func TestConcurrentGetsHashOnce(t *testing.T) {
	dir := t.TempDir()
	c := newCache(t, dir)
	data := blob(5, 4<<20)
	d := mustPut(t, c, data)
	c.Close()
	c = newCache(t, dir) // the entry is unverified again

	start := make(chan struct{})
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			if got, ok := c.Get(d); !ok || !bytes.Equal(got, data) {
				t.Error("Get: wrong data or a miss")
			}
		}()
	}
	close(start)
	wg.Wait()
	// Whether the others waited for the first hash or came after it, they
	// trust it: one hash for eight reads.
	if s := c.Stats(); s.DiskHits != 8 || s.Verifications != 1 {
		t.Errorf("8 Gets at once: %d reads, %d hashes; want 8 and 1", s.DiskHits, s.Verifications)
	}
}

// TestHoldSparesEntry: a held entry outlives the Puts that would evict it,
// and its release brings the cache back within its limit.
func TestHoldSparesEntry(t *testing.T) {
	const size = 1000
	c := newCache(t, t.TempDir(), WithMaxBytes(size))
	a := digest.FromBytes(blob(1, size))
	release := c.Hold(a) // before the Put: nothing between Put and Get may take it
	mustPut(t, c, blob(1, size))
	b := mustPut(t, c, blob(2, size))
	cc := mustPut(t, c, blob(3, size)) // takes b, the oldest not held
	if !c.Has(a) || c.Has(b) || !c.Has(cc) {
		t.Fatalf("over the limit with a held: has a %v b %v c %v, want a and c", c.Has(a), c.Has(b), c.Has(cc))
	}
	mustGet(t, c, a, blob(1, size))
	if s := c.Stats(); s.Bytes != 2*size {
		t.Fatalf("%d bytes with one entry held, want %d", s.Bytes, 2*size)
	}
	release()
	release() // twice is once
	if s := c.Stats(); s.Bytes != size || s.Evictions != 2 || !c.Has(a) || c.Has(cc) {
		t.Fatalf("after release: %+v, has a %v c %v; want a alone (the most recently used)", s, c.Has(a), c.Has(cc))
	}

	// Holds nest, and hold an entry stored before them.
	d := mustPut(t, c, blob(4, size))
	first, second := c.Hold(d), c.Hold(d)
	first()
	first()
	mustPut(t, c, blob(5, size))
	if !c.Has(d) {
		t.Fatal("an entry held twice, released once, was evicted")
	}
	second()
	if c.Has(d) {
		t.Fatal("the last release left the cache over its limit")
	}
}

// TestWithoutHoldTheLimitEvicts is TestHoldSparesEntry's control: with the
// same Puts and no Hold, the first entry is gone before its Get.
func TestWithoutHoldTheLimitEvicts(t *testing.T) {
	const size = 1000
	c := newCache(t, t.TempDir(), WithMaxBytes(size))
	a := mustPut(t, c, blob(1, size))
	mustPut(t, c, blob(2, size))
	mustMiss(t, c, a)
}

func TestDefaultMaxBytes(t *testing.T) {
	dir := t.TempDir()
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		t.Fatal(err)
	}
	fsSize := float64(st.Blocks) * float64(st.Frsize)
	got := float64(newCache(t, filepath.Join(dir, "default")).Stats().MaxBytes)
	if got < fsSize*0.199 || got > fsSize*0.2 {
		t.Errorf("default limit %.0f bytes on a filesystem of %.0f, want 20%%", got, fsSize)
	}
	if got := newCache(t, filepath.Join(dir, "unlimited"), WithMaxBytes(0)).Stats().MaxBytes; got != 0 {
		t.Errorf("WithMaxBytes(0): limit %d, want 0 (unlimited)", got)
	}
}

package objects

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"testing/iotest"
	"time"

	"github.com/containerd/log"
	"github.com/opencontainers/go-digest"
	"github.com/sirupsen/logrus"
	logtest "github.com/sirupsen/logrus/hooks/test"
	"golang.org/x/sys/unix"

	"github.com/lazypull/lazypull/composefs/verity"
	"github.com/lazypull/lazypull/internal/testenv"
)

func TestMain(m *testing.M) {
	// Every store on this machine's temp dir says once that it has no
	// fs-verity: true, and noise here.
	log.L.Logger.SetLevel(logrus.ErrorLevel)
	os.Exit(m.Run())
}

func open(t testing.TB, root string, opts ...Option) *Store {
	t.Helper()
	s, err := Open(context.Background(), root, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func batch(t testing.TB, s *Store, owner string) *Batch {
	t.Helper()
	b, err := s.Batch(context.Background(), owner)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.Abort)
	return b
}

func put(t testing.TB, b *Batch, data []byte) Object {
	t.Helper()
	obj, err := b.Put(bytes.NewReader(data), "")
	if err != nil {
		t.Fatal(err)
	}
	return obj
}

func sha(data []byte) digest.Digest { return digest.FromBytes(data) }

func content(size int, seed uint64) []byte {
	b := make([]byte, size)
	var key [32]byte
	key[0], key[1] = byte(seed), byte(seed>>8)
	rand.NewChaCha8(key).Read(b)
	return b
}

// files lists the regular files under dir, relative to it.
func files(t testing.TB, dir string) []string {
	t.Helper()
	var out []string
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.Type().IsRegular() {
			rel, _ := filepath.Rel(dir, p)
			out = append(out, rel)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func TestPutAndDedup(t *testing.T) {
	root := t.TempDir()
	s := open(t, root)
	data := content(100_000, 1)
	d := sha(data)

	b := batch(t, s, "layer1")
	first := put(t, b, data)
	if !first.New || first.Digest != d || first.Size != int64(len(data)) {
		t.Fatalf("first Put = %+v, want new %s of %d bytes", first, d, len(data))
	}
	second, err := b.Put(bytes.NewReader(data), d)
	if err != nil {
		t.Fatal(err)
	}
	if second.New {
		t.Errorf("second Put of the same content reports a new object")
	}
	if second.Verity != first.Verity {
		t.Errorf("verity digests differ: %s, %s", first.Verity, second.Verity)
	}
	// Another owner, another batch: still the one file.
	b2 := batch(t, s, "layer2")
	if obj := put(t, b2, data); obj.New {
		t.Errorf("Put in a second batch reports a new object")
	}
	if err := b.Commit(); err != nil {
		t.Fatal(err)
	}
	if err := b2.Commit(); err != nil {
		t.Fatal(err)
	}

	name, _ := Name(d)
	if got := files(t, s.ObjectsDir()); len(got) != 1 || got[0] != name {
		t.Fatalf("objects dir holds %v, want only %s", got, name)
	}
	if got := files(t, filepath.Join(root, tmpName)); len(got) != 0 {
		t.Errorf("temp files left: %v", got)
	}
	p, _ := s.Path(d)
	fi, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o444 {
		t.Errorf("object mode %v, want 0444", fi.Mode().Perm())
	}
	if got, _ := os.ReadFile(p); !bytes.Equal(got, data) {
		t.Errorf("object content differs from what was written")
	}
	if has, err := s.Has(d); !has || err != nil {
		t.Errorf("Has = %v, %v", has, err)
	}
	if has, err := s.Has(sha([]byte("absent"))); has || err != nil {
		t.Errorf("Has(absent) = %v, %v", has, err)
	}
	u, err := s.Usage(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if u.Objects != 1 || u.Size != int64(len(data)) {
		t.Errorf("Usage = %+v, want 1 object of %d bytes", u, len(data))
	}
	for _, owner := range []string{"layer1", "layer2"} {
		refs, err := s.Refs(owner)
		if err != nil || len(refs) != 1 || refs[0] != d {
			t.Errorf("Refs(%s) = %v, %v; want [%s]", owner, refs, err, d)
		}
	}
}

func TestDigestMismatch(t *testing.T) {
	root := t.TempDir()
	s := open(t, root)
	b := batch(t, s, "l")
	data := []byte("the content")
	wrong := sha([]byte("other content"))
	_, err := b.Put(bytes.NewReader(data), wrong)
	if err == nil {
		t.Fatal("Put with the wrong digest succeeded")
	}
	if !strings.Contains(err.Error(), string(wrong)) || !strings.Contains(err.Error(), string(sha(data))) {
		t.Errorf("error %q does not name both digests", err)
	}
	if got := files(t, root); len(got) != 1 || got[0] != lockName {
		t.Errorf("files left after a mismatch: %v (want only the lock)", got)
	}
	// The batch goes on.
	if obj, err := b.Put(bytes.NewReader(data), sha(data)); err != nil || !obj.New {
		t.Fatalf("Put after a mismatch = %+v, %v", obj, err)
	}
	if err := b.Commit(); err != nil {
		t.Fatal(err)
	}
}

func TestWriterCloseDrops(t *testing.T) {
	root := t.TempDir()
	s := open(t, root)
	b := batch(t, s, "l")
	w, err := b.Create()
	if err != nil {
		t.Fatal(err)
	}
	w.Write([]byte("half an object"))
	if err := b.Commit(); err == nil {
		t.Fatal("batch committed with a writer open")
	}
	w.Close()
	if got := files(t, filepath.Join(root, tmpName)); len(got) != 0 {
		t.Errorf("temp files left after Close: %v", got)
	}
	if _, err := w.Commit(""); err == nil {
		t.Error("Commit after Close succeeded")
	}
	if err := b.Commit(); err != nil {
		t.Fatal(err)
	}
	if refs, _ := s.Refs("l"); len(refs) != 0 {
		t.Errorf("refs name %v, want nothing", refs)
	}
}

func TestRefsAndGC(t *testing.T) {
	ctx := context.Background()
	root := t.TempDir()
	s := open(t, root)
	shared, onlyA, unowned := content(5000, 1), content(7000, 2), content(300, 3)

	a := batch(t, s, "a")
	put(t, a, shared)
	put(t, a, onlyA)
	if err := a.Commit(); err != nil {
		t.Fatal(err)
	}
	b := batch(t, s, "b")
	put(t, b, shared)
	if err := b.Commit(); err != nil {
		t.Fatal(err)
	}
	aborted := batch(t, s, "c")
	put(t, aborted, unowned)
	aborted.Abort()
	// Stale temps, as a crashed writer leaves them.
	for _, name := range []string{"obj-123", "refs-456"} {
		if err := os.WriteFile(filepath.Join(root, tmpName, name), []byte("partial"), 0o600); err != nil {
			t.Fatal(err)
		}
	}

	res, err := s.GC(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if res != (GCResult{Objects: 1, Bytes: 300, Temps: 2}) {
		t.Errorf("first GC = %+v, want the unowned object (300 bytes) and 2 temps", res)
	}
	mustHave(t, s, map[string][]byte{"shared": shared, "onlyA": onlyA}, map[string][]byte{"unowned": unowned})

	if err := s.Release("a"); err != nil {
		t.Fatal(err)
	}
	if res, err = s.GC(ctx); err != nil || res != (GCResult{Objects: 1, Bytes: 7000}) {
		t.Errorf("GC after releasing a = %+v, %v; want onlyA (7000 bytes)", res, err)
	}
	mustHave(t, s, map[string][]byte{"shared": shared}, map[string][]byte{"onlyA": onlyA})

	if err := s.Release("b"); err != nil {
		t.Fatal(err)
	}
	if err := s.Release("b"); err != nil {
		t.Errorf("second Release: %v", err)
	}
	if res, err = s.GC(ctx); err != nil || res != (GCResult{Objects: 1, Bytes: 5000}) {
		t.Errorf("GC after releasing b = %+v, %v; want shared (5000 bytes)", res, err)
	}
	mustHave(t, s, nil, map[string][]byte{"shared": shared})
	if u, _ := s.Usage(ctx); u.Objects != 0 {
		t.Errorf("Usage after all released = %+v", u)
	}
}

// TestClaim: a claim names objects present and to come, keeps the present
// ones from GC as a batch's refs do, replaces the owner's earlier claim
// and refuses what is no digest.
func TestClaim(t *testing.T) {
	ctx := context.Background()
	s := open(t, t.TempDir())
	present, later, dropped := content(4000, 4), content(100, 5), content(200, 6)
	lease, _ := s.Lease(ctx)
	put(t, lease, present)
	put(t, lease, dropped)
	lease.Commit()

	if err := s.Claim(ctx, "lazy", []digest.Digest{sha(present), sha(later), sha(present)}); err != nil {
		t.Fatal(err)
	}
	refs, err := s.Refs("lazy")
	if want := sortedDigests(map[digest.Digest]struct{}{sha(present): {}, sha(later): {}}); err != nil || !slices.Equal(refs, want) {
		t.Errorf("refs after the claim = %v, %v; want %v", refs, err, want)
	}
	if res, err := s.GC(ctx); err != nil || res.Objects != 1 {
		t.Errorf("GC = %+v, %v; want the one object no claim names", res, err)
	}
	mustHave(t, s, map[string][]byte{"present": present}, map[string][]byte{"dropped": dropped})
	if err := s.Claim(ctx, "lazy", []digest.Digest{"sha256:../../etc/passwd"}); err == nil {
		t.Error("a claim of a path that is no digest was taken")
	}
	if err := s.Claim(ctx, "lazy", nil); err != nil {
		t.Fatal(err)
	}
	if res, err := s.GC(ctx); err != nil || res.Objects != 1 {
		t.Errorf("GC after an empty claim = %+v, %v; want the object the first named", res, err)
	}
	if err := s.Sync(); err != nil {
		t.Error(err)
	}
}

func mustHave(t *testing.T, s *Store, present, absent map[string][]byte) {
	t.Helper()
	for name, data := range present {
		if has, err := s.Has(sha(data)); !has || err != nil {
			t.Errorf("%s: Has = %v, %v; want present", name, has, err)
		}
	}
	for name, data := range absent {
		if has, err := s.Has(sha(data)); has || err != nil {
			t.Errorf("%s: Has = %v, %v; want gone", name, has, err)
		}
	}
}

// TestBatchPinsAgainstGC: GC does not run while a batch is open, so what
// the batch wrote, found present or added survives until its refs are
// written.
func TestBatchPinsAgainstGC(t *testing.T) {
	ctx := context.Background()
	s := open(t, t.TempDir())
	old := content(1000, 1)
	// An unreferenced object a new batch finds present.
	lease, _ := s.Lease(ctx)
	put(t, lease, old)
	if err := lease.Commit(); err != nil {
		t.Fatal(err)
	}
	b := batch(t, s, "layer")
	if obj := put(t, b, old); obj.New {
		t.Fatal("expected the leftover object to be found present")
	}
	fresh := content(2000, 2)
	put(t, b, fresh)

	// GC can not start while the batch is open: here it gives up when
	// its context ends. (A shared flock held, an exclusive one refused:
	// no timing involved in the outcome.)
	short, cancel := context.WithTimeout(ctx, 20*time.Millisecond)
	defer cancel()
	if _, err := s.GC(short); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("GC with a batch open = %v, want it to wait (deadline exceeded)", err)
	}
	// A GC that waits runs once the batch is done, and keeps its refs.
	done := make(chan error, 1)
	var res GCResult
	go func() {
		var err error
		res, err = s.GC(ctx)
		done <- err
	}()
	if err := b.Commit(); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if res.Objects != 0 {
		t.Errorf("GC removed %d objects, want none", res.Objects)
	}
	mustHave(t, s, map[string][]byte{"old": old, "fresh": fresh}, nil)
}

// TestConcurrentGCAndWriters runs batches and GC at once (go test -race):
// every object named by committed refs must be there at the end, and
// nothing unreferenced.
func TestConcurrentGCAndWriters(t *testing.T) {
	ctx := context.Background()
	root := t.TempDir()
	s := open(t, root, WithBatchSync())
	s2 := open(t, root) // a second Store on the same root, as another process would be
	const writers, perBatch, rounds = 4, 8, 6
	var wg sync.WaitGroup
	errs := make(chan error, writers*rounds+rounds+1)
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			st := s
			if w%2 == 1 {
				st = s2
			}
			for r := range rounds {
				owner := fmt.Sprintf("w%d", w)
				b, err := st.Batch(ctx, owner)
				if err != nil {
					errs <- err
					return
				}
				for i := range perBatch {
					// Some content shared between writers and rounds.
					data := content(100+i*37, uint64((w*rounds+r)*perBatch+i)%17)
					if _, err := b.Put(bytes.NewReader(data), sha(data)); err != nil {
						errs <- err
						b.Abort()
						return
					}
				}
				if err := b.Commit(); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	// An owner that comes and goes: Release takes no lock, so GC meets
	// refs files that vanish under it.
	wg.Add(1)
	go func() {
		defer wg.Done()
		for r := range 4 * rounds {
			b, err := s2.Batch(ctx, "transient")
			if err == nil {
				_, err = b.Put(bytes.NewReader(content(50, uint64(r%3))), "")
				if err == nil {
					err = b.Commit()
				} else {
					b.Abort()
				}
			}
			if err == nil {
				err = s.Release("transient")
			}
			if err != nil {
				errs <- err
				return
			}
		}
	}()
	gcDone := make(chan struct{})
	go func() {
		defer close(gcDone)
		for range rounds {
			if _, err := s2.GC(ctx); err != nil {
				errs <- err
				return
			}
		}
	}()
	wg.Wait()
	<-gcDone
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if _, err := s.GC(ctx); err != nil {
		t.Fatal(err)
	}
	named := map[digest.Digest]bool{}
	owners, _ := s.Owners()
	if len(owners) != writers {
		t.Errorf("owners %v, want %d", owners, writers)
	}
	for _, o := range owners {
		refs, err := s.Refs(o)
		if err != nil {
			t.Fatal(err)
		}
		if len(refs) == 0 {
			t.Errorf("owner %s names nothing", o)
		}
		for _, d := range refs {
			named[d] = true
			f, err := s.Open(d)
			if err != nil {
				t.Errorf("owner %s names %s: %v", o, d, err)
				continue
			}
			h := sha256.New()
			f.WriteTo(h)
			f.Close()
			if got := digest.NewDigest(digest.SHA256, h); got != d {
				t.Errorf("object %s holds content %s", d, got)
			}
		}
	}
	u, _ := s.Usage(ctx)
	if u.Objects != int64(len(named)) {
		t.Errorf("%d objects after GC, %d named", u.Objects, len(named))
	}
}

// TestCrashLeftovers: what a crash leaves (temp files of objects and of
// refs, never a half-written refs file) is cleaned by GC once the store
// is opened again, and the committed refs are intact.
func TestCrashLeftovers(t *testing.T) {
	ctx := context.Background()
	root := t.TempDir()
	s := open(t, root)
	data := content(4097, 1)
	b := batch(t, s, "layer")
	put(t, b, data)
	if err := b.Commit(); err != nil {
		t.Fatal(err)
	}
	// A crash mid-way: a half-written refs temp, an object temp, an
	// object written and renamed but whose batch never committed.
	os.WriteFile(filepath.Join(root, tmpName, "refs-999"), []byte(refsHeader+"\nsha256:12"), 0o600)
	os.WriteFile(filepath.Join(root, tmpName, "obj-998"), []byte("partial"), 0o600)
	crashed := batch(t, s, "crashed")
	orphan := content(10, 2)
	put(t, crashed, orphan)
	crashed.Abort()
	s.Close()

	s = open(t, root)
	res, err := s.GC(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if res != (GCResult{Objects: 1, Bytes: 10, Temps: 2}) {
		t.Errorf("GC after the crash = %+v, want the orphan and 2 temps", res)
	}
	mustHave(t, s, map[string][]byte{"committed": data}, map[string][]byte{"orphan": orphan})
	if refs, err := s.Refs("layer"); err != nil || len(refs) != 1 {
		t.Errorf("Refs(layer) = %v, %v", refs, err)
	}
	if owners, _ := s.Owners(); len(owners) != 1 {
		t.Errorf("owners %v, want [layer]", owners)
	}
}

// TestGCRefusesBadRefs: a refs file GC cannot read stops it before it
// removes anything.
func TestGCRefusesBadRefs(t *testing.T) {
	ctx := context.Background()
	root := t.TempDir()
	s := open(t, root)
	lease, _ := s.Lease(ctx)
	orphan := content(10, 1)
	put(t, lease, orphan)
	lease.Commit()
	for name, text := range map[string]string{
		"truncated": refsHeader + "\nsha256:0123",
		"empty":     "",
		"header":    "something else\n",
		".hidden":   refsHeader + "\n",
	} {
		p := filepath.Join(root, refsName, name)
		os.WriteFile(p, []byte(text), 0o600)
		if _, err := s.GC(ctx); err == nil || !strings.Contains(err.Error(), name) {
			t.Errorf("GC with refs file %s (%q): %v, want an error naming it", name, text, err)
		}
		os.Remove(p)
	}
	mustHave(t, s, map[string][]byte{"orphan": orphan}, nil)
}

func TestHostileDigestsAndOwners(t *testing.T) {
	ctx := context.Background()
	root := t.TempDir()
	s := open(t, root)
	good := sha([]byte("x"))
	hexPart := good.Encoded()
	for _, d := range []digest.Digest{
		"",
		"sha256:../../x",
		"sha256:../../../etc/passwd",
		"sha256:" + digest.Digest(hexPart[:63]),
		"sha256:" + digest.Digest(hexPart) + "0",
		"sha256:" + digest.Digest(strings.ToUpper(hexPart)),
		"sha256:" + digest.Digest(hexPart[:62]) + "/x",
		"sha256:" + digest.Digest(hexPart[:63]) + "\x00",
		"sha512:" + digest.Digest(strings.Repeat("ab", 64)),
		"md5:d41d8cd98f00b204e9800998ecf8427e",
		"SHA256:" + digest.Digest(hexPart),
		digest.Digest(hexPart),
	} {
		if _, err := s.Path(d); err == nil {
			t.Errorf("Path(%q) accepted it", d)
		}
		if _, err := s.Has(d); err == nil {
			t.Errorf("Has(%q) accepted it", d)
		}
		if _, err := s.Stat(ctx, d); err == nil {
			t.Errorf("Stat(%q) accepted it", d)
		}
		_, err := s.Open(d)
		if err == nil {
			t.Errorf("Open(%q) accepted it", d)
		} else if !strings.Contains(err.Error(), fmt.Sprintf("%.100q", d)) {
			t.Errorf("Open(%q): error %q does not name the digest", d, err)
		}
		b := batch(t, s, "l")
		if err := b.Add(d); err == nil {
			t.Errorf("Add(%q) accepted it", d)
		}
		if d == "" {
			// "" is Commit's "take the computed digest": not a name.
		} else if _, err := b.Put(strings.NewReader("x"), d); err == nil {
			t.Errorf("Put with expected %q accepted it", d)
		}
		b.Abort()
	}
	for _, owner := range []string{"", "../x", "a/b", ".hidden", "..", "a\x00b", "a b", strings.Repeat("a", 201)} {
		if _, err := s.Batch(ctx, owner); err == nil {
			t.Errorf("Batch(%q) accepted it", owner)
		}
		if err := s.Release(owner); err == nil {
			t.Errorf("Release(%q) accepted it", owner)
		}
	}
	if got := files(t, root); len(got) != 1 {
		t.Errorf("files after hostile calls: %v, want only the lock", got)
	}
}

// TestNoSymlinksOutOfRoot: a symlink where a fan-out directory or an
// object should be is not followed.
func TestNoSymlinksOutOfRoot(t *testing.T) {
	ctx := context.Background()
	root, outside := t.TempDir(), t.TempDir()
	s := open(t, root)
	secret := []byte("outside the store")
	d := sha(secret)
	enc := d.Encoded()
	os.MkdirAll(filepath.Join(outside, enc[:2]), 0o700)
	os.WriteFile(filepath.Join(outside, enc[:2], enc[2:]), secret, 0o600)
	if err := os.Symlink(filepath.Join(outside, enc[:2]), filepath.Join(s.ObjectsDir(), enc[:2])); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Open(d); err == nil {
		t.Error("Open followed a symlinked fan-out directory")
	}
	if _, err := s.Stat(ctx, d); err == nil {
		t.Error("Stat followed a symlinked fan-out directory")
	}
	os.Remove(filepath.Join(s.ObjectsDir(), enc[:2]))
	os.Mkdir(filepath.Join(s.ObjectsDir(), enc[:2]), 0o700)
	os.Symlink(filepath.Join(outside, enc[:2], enc[2:]), filepath.Join(s.ObjectsDir(), enc[:2], enc[2:]))
	if _, err := s.Open(d); err == nil {
		t.Error("Open followed a symlinked object")
	}
	if has, _ := s.Has(d); has {
		t.Error("Has counts a symlink as the object")
	}
	if _, err := s.GC(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(outside, enc[:2], enc[2:])); err != nil {
		t.Errorf("GC touched the file outside the store: %v", err)
	}
}

// fsverityDigest is `fsverity digest` of a file: Debian's fsverity, not
// our code.
func fsverityDigest(t *testing.T, path string) string {
	t.Helper()
	bin := testenv.NeedBinary(t, "fsverity")
	out, err := exec.Command(bin, "digest", "--compact", "--hash-alg=sha256", "--block-size=4096", path).CombinedOutput()
	if err != nil {
		t.Fatalf("fsverity digest %s: %v: %s", path, err, out)
	}
	return strings.TrimPrefix(strings.TrimSpace(string(out)), "sha256:")
}

func TestStatVerity(t *testing.T) {
	ctx := context.Background()
	root := t.TempDir()
	s := open(t, root)
	b := batch(t, s, "l")
	var objs []Object
	for i, size := range []int{0, 1, 4096, 4097, 128*4096 + 1, 1 << 20} {
		objs = append(objs, put(t, b, content(size, uint64(i))))
	}
	if err := b.Commit(); err != nil {
		t.Fatal(err)
	}
	s.Close()
	s = open(t, root) // what was recorded survives reopening
	for _, obj := range objs {
		p, _ := s.Path(obj.Digest)
		want := fsverityDigest(t, p)
		if obj.Verity.String() != want {
			t.Errorf("%d bytes: Commit's verity %s, fsverity digest %s", obj.Size, obj.Verity, want)
		}
		info, err := s.Stat(ctx, obj.Digest)
		if err != nil {
			t.Fatal(err)
		}
		if info.Verity.String() != want || info.Size != obj.Size {
			t.Errorf("%d bytes: Stat = %+v, want verity %s", obj.Size, info, want)
		}
	}

	// A stored digest that does not fit its object is not trusted: a
	// value recorded for another size, a malformed one, none at all.
	obj := objs[4]
	p, _ := s.Path(obj.Digest)
	want := fsverityDigest(t, p)
	var forged [verityXattrSize]byte
	forged[0], forged[1] = 1, 1
	forged[8] = 1 // size 1
	copy(forged[16:], bytes.Repeat([]byte{0xee}, 32))
	for name, value := range map[string][]byte{
		"other size": forged[:],
		"short":      forged[:20],
		"version 2":  append([]byte{2}, forged[1:]...),
		"none":       nil,
	} {
		if value == nil {
			unix.Removexattr(p, verityXattr)
		} else if err := unix.Setxattr(p, verityXattr, value, 0); err != nil {
			t.Fatal(err)
		}
		info, err := s.Stat(ctx, obj.Digest)
		if err != nil {
			t.Fatal(err)
		}
		if info.Verity.String() != want {
			t.Errorf("xattr %s: Stat's verity %s, want %s", name, info.Verity, want)
		}
		// Recomputed and recorded again.
		var v [64]byte
		if n, err := unix.Getxattr(p, verityXattr, v[:]); err != nil || n != verityXattrSize || !bytes.Equal(v[16:n], info.Verity[:]) {
			t.Errorf("xattr %s: not recorded again (%d bytes, %v)", name, n, err)
		}
	}
}

// TestVerityStatusLoggedOnce: the store finds out at Open whether fs-verity
// can be enabled, and a filesystem that cannot is said once, however many
// objects are written.
func TestVerityStatusLoggedOnce(t *testing.T) {
	hook := logtest.NewLocal(log.L.Logger)
	defer hook.Reset()
	log.L.Logger.SetLevel(logrus.InfoLevel)
	defer log.L.Logger.SetLevel(logrus.ErrorLevel)
	s := open(t, t.TempDir())
	st := s.Verity()
	t.Logf("fs-verity on the temp dir's filesystem: %s", st)
	if st == VerityUnknown {
		t.Fatal("Open did not find out whether fs-verity can be enabled")
	}
	b := batch(t, s, "l")
	for i := range 5 {
		put(t, b, content(100, uint64(i)))
	}
	b.Commit()
	warnings := 0
	for _, e := range hook.AllEntries() {
		if e.Level <= logrus.WarnLevel && strings.Contains(e.Message, "fs-verity") {
			warnings++
		}
	}
	want := 0
	if st == VerityUnsupported {
		want = 1
	}
	if warnings != want {
		t.Errorf("%d warnings about fs-verity, want %d (status %s)", warnings, want, st)
	}
}

// TestStreamedWrites: content streamed from a reader that is not a
// bytes.Reader goes through Writer.ReadFrom's buffer, in pieces that do
// not line up with blocks, and lands whole.
func TestStreamedWrites(t *testing.T) {
	s := open(t, t.TempDir())
	b := batch(t, s, "l")
	for i, size := range []int{0, 1, 4095, 1 << 20, 3<<20 + 5} {
		data := content(size, uint64(i))
		obj, err := b.Put(iotest.HalfReader(bytes.NewReader(data)), sha(data))
		if err != nil {
			t.Fatalf("%d bytes: %v", size, err)
		}
		want, _ := verity.Digest(bytes.NewReader(data))
		if obj.Size != int64(size) || obj.Verity != want {
			t.Errorf("%d bytes: %+v, want verity %s", size, obj, want)
		}
		f, err := s.Open(obj.Digest)
		if err != nil {
			t.Fatal(err)
		}
		got, _ := io.ReadAll(f)
		f.Close()
		if !bytes.Equal(got, data) {
			t.Errorf("%d bytes: object holds %d bytes, not what was written", size, len(got))
		}
	}
}

// FuzzName: whatever a hostile image calls a digest, an accepted one is
// a file two levels below the objects directory, spelled one way only.
func FuzzName(f *testing.F) {
	for _, seed := range []string{"sha256:" + strings.Repeat("ab", 32), "sha256:../../x", "sha512:00", "", "sha256:" + strings.Repeat("AB", 32)} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, s string) {
		name, err := Name(digest.Digest(s))
		if err != nil {
			return
		}
		if len(name) != 65 || name[2] != '/' || filepath.Clean(name) != name || strings.Contains(name, "..") {
			t.Fatalf("Name(%q) = %q", s, name)
		}
		if "sha256:"+name[:2]+name[3:] != s {
			t.Fatalf("Name(%q) = %q: not the digest's own hex", s, name)
		}
		if _, err := hex.DecodeString(name[:2] + name[3:]); err != nil || strings.ToLower(s) != s {
			t.Fatalf("Name(%q) accepted non-lower-case hex", s)
		}
	})
}

// TestDamagedObjectReplaced: an object that is plainly not its content
// (truncated) is replaced by the next write of that content rather than
// kept as a duplicate.
func TestDamagedObjectReplaced(t *testing.T) {
	s := open(t, t.TempDir())
	b := batch(t, s, "l")
	data := content(10000, 1)
	obj := put(t, b, data)
	p, _ := s.Path(obj.Digest)
	os.Chmod(p, 0o644)
	if err := os.Truncate(p, 100); err != nil {
		t.Fatal(err)
	}
	again := put(t, b, data)
	if !again.New {
		t.Error("the damaged object was kept")
	}
	if got, _ := os.ReadFile(p); !bytes.Equal(got, data) {
		t.Errorf("object holds %d bytes, want the %d written", len(got), len(data))
	}
}

// fakeVerity stands in for a kernel with fs-verity: it records what was
// enabled (by inode, as a rename keeps it) and measures what it enabled.
type fakeVerity struct {
	mu      sync.Mutex
	enabled map[uint64]verity.Sum
	calls   int
}

func (v *fakeVerity) options(o *options) {
	v.enabled = map[uint64]verity.Sum{}
	o.enable = func(f *os.File) error {
		v.mu.Lock()
		defer v.mu.Unlock()
		v.calls++
		var st unix.Stat_t
		if err := unix.Fstat(int(f.Fd()), &st); err != nil {
			return err
		}
		sum, err := verity.Digest(f) // (the probe's inode may be reused: no EEXIST here)
		v.enabled[st.Ino] = sum
		return err
	}
	o.measure = func(f *os.File) (verity.Sum, error) {
		v.mu.Lock()
		defer v.mu.Unlock()
		var st unix.Stat_t
		unix.Fstat(int(f.Fd()), &st)
		sum, ok := v.enabled[st.Ino]
		if !ok {
			return sum, verity.ErrNoVerity
		}
		return sum, nil
	}
}

// TestVerityWhereSupported: on a filesystem with fs-verity (the kernel
// stood in for), every new object is enabled once before it is in
// place, a duplicate is not enabled at all, and Stat without the xattr
// takes the kernel's measurement rather than reading the object.
func TestVerityWhereSupported(t *testing.T) {
	ctx := context.Background()
	fake := &fakeVerity{}
	s := open(t, t.TempDir(), fake.options)
	if st := s.Verity(); st != VerityEnabled {
		t.Fatalf("Verity() = %s, want enabled", st)
	}
	probes := fake.calls
	b := batch(t, s, "l")
	data := content(9000, 1)
	obj := put(t, b, data)
	if fake.calls != probes+1 {
		t.Errorf("%d enables for one new object, want 1", fake.calls-probes)
	}
	put(t, b, data)
	if fake.calls != probes+1 {
		t.Errorf("the duplicate was enabled too (%d enables)", fake.calls-probes)
	}
	p, _ := s.Path(obj.Digest)
	var st unix.Stat_t
	unix.Stat(p, &st)
	if fake.enabled[st.Ino] != obj.Verity {
		t.Errorf("the object in place has verity %s, want %s", fake.enabled[st.Ino], obj.Verity)
	}
	// The measurement answers for a missing xattr: forge it to tell.
	unix.Removexattr(p, verityXattr)
	forged := verity.Sum{1, 2, 3}
	fake.enabled[st.Ino] = forged
	if info, err := s.Stat(ctx, obj.Digest); err != nil || info.Verity != forged {
		t.Errorf("Stat = %+v, %v; want the kernel's measurement %s", info, err, forged)
	}
}

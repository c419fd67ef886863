package cache_test

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/opencontainers/go-digest"
	"golang.org/x/sys/unix"

	"github.com/lazypull/lazypull/cache"
	"github.com/lazypull/lazypull/internal/testenv"
)

// smallFilesystem mounts a tmpfs of size bytes for the test, and unmounts
// it when the test ends.
func smallFilesystem(t *testing.T, size int) string {
	t.Helper()
	testenv.NeedRoot(t)
	dir := t.TempDir()
	if err := unix.Mount("tmpfs", dir, "tmpfs", 0, fmt.Sprintf("size=%d,mode=0700", size)); err != nil {
		t.Fatalf("mount a %d-byte tmpfs at %s: %v", size, dir, err)
	}
	t.Cleanup(func() {
		if err := unix.Unmount(dir, 0); err != nil {
			t.Errorf("unmount %s: %v", dir, err)
		}
	})
	return dir
}

func openCache(t *testing.T, dir string, opts ...cache.Option) *cache.Cache {
	t.Helper()
	c, err := cache.New(dir, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// chunk is 64 KiB (less a byte) that differ for each i.
func chunk(i int) []byte {
	return bytes.Repeat([]byte(fmt.Sprintf("chunk %8d\n", i)), 64<<10/15)
}

// TestFullFilesystem: on a full filesystem Put and PutFile fail with
// ErrNoSpace, counted, store nothing and leave no temp file; what was
// stored before still reads right; freeing space lets the next Put in.
func TestFullFilesystem(t *testing.T) {
	dir := smallFilesystem(t, 1<<20)
	c := openCache(t, dir, cache.WithMaxBytes(0)) // only the filesystem bounds it

	var stored []int
	var full digest.Digest
	var err error
	for i := range 32 { // 2 MiB into 1 MiB
		data := chunk(i)
		d := digest.FromBytes(data)
		if err = c.Put(d, data); err != nil {
			full = d
			break
		}
		stored = append(stored, i)
	}
	if !errors.Is(err, cache.ErrNoSpace) || !errors.Is(err, unix.ENOSPC) {
		t.Fatalf("Put of 2 MiB into a 1 MiB filesystem: %v, want ErrNoSpace wrapping ENOSPC", err)
	}
	t.Logf("after %d chunks: %v", len(stored), err)
	if c.Has(full) {
		t.Error("the Put that failed stored its entry")
	}
	if _, ok := c.Get(full); ok {
		t.Error("Get of the entry whose Put failed: hit")
	}

	big := bytes.Repeat([]byte("x"), 512<<10)
	bigDigest := digest.FromBytes(big)
	err = c.PutFile(bigDigest, bytes.NewReader(big))
	if !errors.Is(err, cache.ErrNoSpace) || c.Has(bigDigest) {
		t.Fatalf("PutFile on a full filesystem: %v (stored: %v), want ErrNoSpace", err, c.Has(bigDigest))
	}
	if s := c.Stats(); s.NoSpace != 2 || s.Entries != len(stored) {
		t.Errorf("stats %+v, want NoSpace 2 and %d entries", s, len(stored))
	}
	if des, err := os.ReadDir(filepath.Join(dir, "tmp")); err != nil || len(des) != 0 {
		t.Errorf("temp files left after the failed Puts: %d (%v)", len(des), err)
	}
	for _, i := range stored {
		data := chunk(i)
		if got, ok := c.Get(digest.FromBytes(data)); !ok || !bytes.Equal(got, data) {
			t.Fatalf("chunk %d stored before the filesystem filled: hit %v, right bytes %v", i, ok, bytes.Equal(got, data))
		}
	}

	for _, i := range stored[:2] {
		if err := c.Remove(digest.FromBytes(chunk(i))); err != nil {
			t.Fatal(err)
		}
	}
	data := chunk(len(stored))
	if err := c.Put(full, data); err != nil {
		t.Fatalf("Put after freeing space: %v", err)
	}
	if got, ok := c.Get(full); !ok || !bytes.Equal(got, data) {
		t.Fatal("Get after freeing space: a miss or wrong bytes")
	}
}

// TestDefaultLimitKeepsTheFilesystemFree: without WithMaxBytes, the cache
// keeps to a fifth of its filesystem however much is put.
func TestDefaultLimitKeepsTheFilesystemFree(t *testing.T) {
	dir := smallFilesystem(t, 1<<20)
	c := openCache(t, dir)
	if got := c.Stats().MaxBytes; got < (1<<20)*199/1000 || got > (1<<20)/5 {
		t.Fatalf("default limit on a 1 MiB filesystem: %d bytes, want 20%%", got)
	}
	for i := range 64 { // 4 MiB through a 1 MiB filesystem
		data := chunk(i)
		if err := c.Put(digest.FromBytes(data), data); err != nil {
			t.Fatalf("Put %d: %v", i, err)
		}
	}
	file := bytes.Repeat([]byte("y"), 128<<10)
	if err := c.PutFile(digest.FromBytes(file), bytes.NewReader(file)); err != nil {
		t.Fatalf("PutFile: %v", err)
	}
	if s := c.Stats(); s.NoSpace != 0 || s.Bytes > s.MaxBytes || s.Evictions == 0 {
		t.Errorf("stats %+v: want no full filesystem, bytes within the limit, evictions", s)
	}
}

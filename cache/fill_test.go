package cache

import (
	"bytes"
	"errors"
	"io"
	"os"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"
)

// pieces splits data into pieces of n bytes: their offsets and digests.
func pieces(data []byte, n int) (offs []int64, ds []digest.Digest) {
	for off := 0; off < len(data); off += n {
		end := min(off+n, len(data))
		offs = append(offs, int64(off))
		ds = append(ds, digest.FromBytes(data[off:end]))
	}
	return offs, ds
}

// putPieces puts the pieces of data listed by idx, and returns the bytes
// in after the last.
func putPieces(t *testing.T, c *Cache, data []byte, n int, idx ...int) int64 {
	t.Helper()
	d := digest.FromBytes(data)
	offs, ds := pieces(data, n)
	var filled int64
	for _, i := range idx {
		end := min(int(offs[i])+n, len(data))
		var err error
		if filled, err = c.PutPart(d, int64(len(data)), offs[i], ds[i], data[offs[i]:end]); err != nil {
			t.Fatal(err)
		}
	}
	return filled
}

// TestFillInPlace: a file filled a piece at a time serves its pieces and
// not itself until sealed, then is a whole entry (one file on disk, no
// sidecar), opened for passthrough like any other.
func TestFillInPlace(t *testing.T) {
	dir := t.TempDir()
	c := newCache(t, dir)
	data := blob(1, 10<<10+123)
	d := digest.FromBytes(data)
	offs, ds := pieces(data, 4<<10)

	if got := putPieces(t, c, data, 4<<10, 2, 0); got != int64(len(data)-4<<10) {
		t.Fatalf("filled %d bytes after two pieces; want %d", got, len(data)-4<<10)
	}
	if c.Has(d) {
		t.Fatal("Has reports a file with a piece missing")
	}
	if _, ok := c.Open(d); ok {
		t.Fatal("Open serves a file with a piece missing")
	}
	if !c.HasPart(d, offs[0], ds[0]) || c.HasPart(d, offs[1], ds[1]) {
		t.Fatal("HasPart does not tell the pieces in from the missing one")
	}
	p := make([]byte, 100)
	if !c.ReadPart(d, int64(len(data)), offs[2], ds[2], int64(len(data))-offs[2], p, 7) || !bytes.Equal(p, data[offs[2]+7:offs[2]+107]) {
		t.Fatal("ReadPart of a piece in: wrong bytes or a miss")
	}
	if c.ReadPart(d, int64(len(data)), offs[1], ds[1], 4<<10, p, 0) {
		t.Fatal("ReadPart of the missing piece hit")
	}
	if got := putPieces(t, c, data, 4<<10, 1); got != int64(len(data)) {
		t.Fatalf("filled %d bytes after every piece; want %d", got, len(data))
	}
	if err := c.Seal(d); err != nil {
		t.Fatal(err)
	}
	mustGet(t, c, d, data)
	f, ok := c.Open(d)
	if !ok {
		t.Fatal("Open misses a sealed file")
	}
	f.Close()
	if !c.ReadPart(d, int64(len(data)), offs[1], ds[1], 4<<10, p, 0) || !bytes.Equal(p, data[offs[1]:offs[1]+100]) {
		t.Fatal("ReadPart of a sealed file: wrong bytes or a miss")
	}
	if _, err := os.Stat(c.path(d) + partsSuffix); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the sidecar outlives Seal: %v", err)
	}
	if got := putPieces(t, c, data, 4<<10, 0); got != int64(len(data)) {
		t.Errorf("a piece put to a whole file reports %d bytes in; want %d", got, len(data))
	}
	if st := c.Stats(); st.Entries != 1 || st.Bytes != int64(len(data)) {
		t.Errorf("stats %+v; want one entry of %d bytes", st, len(data))
	}
}

// TestFillRefusesWrongPieces: a piece that does not hash to its digest, or
// falls outside the file, is not stored; pieces that do not make the file
// fail Seal, which deletes the entry.
func TestFillRefusesWrongPieces(t *testing.T) {
	c := newCache(t, t.TempDir())
	data := blob(2, 8<<10)
	d := digest.FromBytes(data)
	offs, ds := pieces(data, 4<<10)
	if _, err := c.PutPart(d, 8<<10, 0, ds[0], data[4<<10:]); !errors.Is(err, ErrDigestMismatch) {
		t.Errorf("PutPart of wrong bytes = %v; want ErrDigestMismatch", err)
	}
	if _, err := c.PutPartFrom(d, 8<<10, 0, ds[0], 4<<10, bytes.NewReader(data[4<<10:])); !errors.Is(err, ErrDigestMismatch) {
		t.Errorf("PutPartFrom of wrong bytes = %v; want ErrDigestMismatch", err)
	}
	if _, err := c.PutPartFrom(d, 8<<10, 0, ds[0], 4<<10, bytes.NewReader(data)); !errors.Is(err, ErrDigestMismatch) {
		t.Errorf("PutPartFrom of a longer stream = %v; want ErrDigestMismatch", err)
	}
	if c.HasPart(d, 0, ds[0]) {
		t.Error("a refused piece is in")
	}
	if _, err := c.PutPart(d, 8<<10, 6<<10, ds[1], data[4<<10:]); err == nil {
		t.Error("PutPart past the file's end succeeded")
	}
	// Two right pieces of another file make no file of d.
	other := blob(3, 8<<10)
	oo, od := pieces(other, 4<<10)
	for i := range oo {
		if _, err := c.PutPartFrom(d, 8<<10, oo[i], od[i], 4<<10, bytes.NewReader(other[oo[i]:oo[i]+4<<10])); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.Seal(d); !errors.Is(err, ErrDigestMismatch) {
		t.Fatalf("Seal of pieces that do not make the file = %v; want ErrDigestMismatch", err)
	}
	if c.HasPart(d, offs[0], od[0]) {
		t.Error("the pieces of a file that failed Seal are still in")
	}
	if _, err := os.Stat(c.path(d)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the file that failed Seal is still on disk: %v", err)
	}
	if _, err := os.Stat(c.path(d) + partsSuffix); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the sidecar of the file that failed Seal is still on disk: %v", err)
	}
}

// TestFillAcrossRestart: the pieces put before a restart are found again,
// hashed at their first read: a piece damaged on disk meanwhile is dropped
// (a miss, the caller fetches it again), never served.
func TestFillAcrossRestart(t *testing.T) {
	dir := t.TempDir()
	c, err := New(dir)
	if err != nil {
		t.Fatal(err)
	}
	data := blob(4, 12<<10)
	d := digest.FromBytes(data)
	offs, ds := pieces(data, 4<<10)
	putPieces(t, c, data, 4<<10, 0, 1)
	c.Close()

	// Damage piece 1 on disk; tear a line onto the sidecar, as a crash may.
	f, err := os.OpenFile(c.path(d), os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteAt([]byte("xx"), offs[1]+10)
	f.Close()
	side, err := os.OpenFile(c.path(d)+partsSuffix, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	io.WriteString(side, "8192 40")
	side.Close()

	c = newCache(t, dir)
	if !c.HasPart(d, offs[0], ds[0]) || !c.HasPart(d, offs[1], ds[1]) || c.HasPart(d, offs[2], ds[2]) {
		t.Fatal("the pieces recorded before the restart are not the ones found")
	}
	p := make([]byte, 4<<10)
	if !c.ReadPart(d, int64(len(data)), offs[0], ds[0], 4<<10, p, 0) || !bytes.Equal(p, data[:4<<10]) {
		t.Fatal("an intact piece after the restart: wrong bytes or a miss")
	}
	if c.ReadPart(d, int64(len(data)), offs[1], ds[1], 4<<10, p, 0) {
		t.Fatal("a piece damaged on disk was served")
	}
	if c.HasPart(d, offs[1], ds[1]) {
		t.Fatal("a piece damaged on disk is still in after its read failed")
	}
	if st := c.Stats(); st.Corruptions != 1 {
		t.Errorf("corruptions = %d; want 1", st.Corruptions)
	}
	if got := putPieces(t, c, data, 4<<10, 1, 2); got != int64(len(data)) {
		t.Fatalf("filled %d bytes; want %d", got, len(data))
	}
	if err := c.Seal(d); err != nil {
		t.Fatal(err)
	}
	mustGet(t, c, d, data)
}

// TestFillEvicted: a file being filled is evicted like any entry, its
// sidecar with it, and a piece put after fills it anew.
func TestFillEvicted(t *testing.T) {
	dir := t.TempDir()
	c := newCache(t, dir, WithMaxBytes(8<<10))
	data := blob(5, 8<<10)
	d := digest.FromBytes(data)
	putPieces(t, c, data, 4<<10, 0)
	mustPut(t, c, blob(6, 6<<10)) // 4 + 6 KiB > 8 KiB: the fill, least recent, goes
	if c.HasPart(d, 0, digest.FromBytes(data[:4<<10])) {
		t.Fatal("the evicted fill still has its piece")
	}
	for _, p := range []string{c.path(d), c.path(d) + partsSuffix} {
		if _, err := os.Stat(p); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s outlives eviction: %v", p, err)
		}
	}
	if got := putPieces(t, c, data, 4<<10, 1); got != 4<<10 {
		t.Errorf("filled %d bytes after a piece put to an evicted file; want %d", got, 4<<10)
	}
	if c.Remove(d) != nil || c.HasPart(d, 4<<10, digest.FromBytes(data[4<<10:])) {
		t.Error("Remove left the fill")
	}
	ls, _ := os.ReadDir(strings.TrimSuffix(c.path(d), "/"+d.Encoded()))
	if len(ls) != 0 {
		t.Errorf("the fill's directory holds %d files after Remove", len(ls))
	}
}

// TestFillCountsItsPieces: a file being filled counts the bytes of its
// pieces against the limit, not its size: an image's file of 1 TiB of
// holes and one chunk takes a chunk's room, and evicts nothing; so after
// a restart.
func TestFillCountsItsPieces(t *testing.T) {
	dir := t.TempDir()
	c, err := New(dir, WithMaxBytes(64<<10))
	if err != nil {
		t.Fatal(err)
	}
	other := mustPut(t, c, blob(7, 16<<10))
	piece := blob(8, 4<<10)
	d := digest.FromString("a file of 1 TiB, mostly holes")
	if _, err := c.PutPart(d, 1<<40, 1<<30, digest.FromBytes(piece), piece); err != nil {
		t.Fatal(err)
	}
	if st := c.Stats(); st.Bytes != 20<<10 || !c.Has(other) {
		t.Fatalf("stats %+v, other entry kept %v; want 20 KiB counted and the other entry kept", st, c.Has(other))
	}
	c.Close()
	c = newCache(t, dir, WithMaxBytes(64<<10))
	if st := c.Stats(); st.Bytes != 20<<10 || !c.Has(other) {
		t.Fatalf("after a restart: stats %+v, other entry kept %v; want 20 KiB counted and the other entry kept", st, c.Has(other))
	}
}

package cache

import (
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
)

func newTestEntry(name string, size int64) *entry {
	return &entry{digest: digest.FromString(name), size: size}
}

func diskOrder(x *index) []digest.Digest {
	var ds []digest.Digest
	for el := x.disk.Back(); el != nil; el = el.Prev() {
		ds = append(ds, el.Value.(*entry).digest)
	}
	return ds
}

func TestIndexEvictsLeastRecentlyUsed(t *testing.T) {
	x := newIndex(0)
	a, b, c := newTestEntry("a", 10), newTestEntry("b", 10), newTestEntry("c", 10)
	x.add(a)
	x.add(b)
	x.add(c)
	x.touch(a, time.Now()) // order, oldest first: b, c, a
	if got := diskOrder(x); got[0] != b.digest || got[1] != c.digest || got[2] != a.digest {
		t.Fatalf("order %v", got)
	}
	victims := x.evict(20, nil)
	if len(victims) != 1 || victims[0] != b || x.diskBytes != 20 || x.get(b.digest) != nil {
		t.Fatalf("victims %v, bytes %d", victims, x.diskBytes)
	}
	if x.evict(0, nil) != nil {
		t.Fatal("maxBytes 0 must mean unlimited")
	}
}

func TestIndexEvictSpares(t *testing.T) {
	x := newIndex(0)
	old, big := newTestEntry("old", 10), newTestEntry("big", 100)
	x.add(old)
	x.add(big)
	x.touch(old, time.Now()) // big is now the oldest
	victims := x.evict(50, func(e *entry) bool { return e == big })
	if len(victims) != 1 || victims[0] != old || !x.current(big) || x.diskBytes != 100 {
		t.Fatalf("victims %v, bytes %d", victims, x.diskBytes)
	}
}

func TestIndexMemory(t *testing.T) {
	x := newIndex(400) // entries up to 100 bytes
	var es []*entry
	for i := range 10 {
		e := newTestEntry(string(rune('a'+i)), 100)
		x.add(e)
		x.keepInMemory(e, make([]byte, 100))
		es = append(es, e)
	}
	if x.memoryBytes != 400 || x.memory.Len() != 4 || es[5].data != nil || es[0].data != nil || es[9].data == nil {
		t.Fatalf("memory %d bytes, %d entries", x.memoryBytes, x.memory.Len())
	}
	big := newTestEntry("big", 101)
	x.add(big)
	x.keepInMemory(big, make([]byte, 101))
	if big.data != nil || x.fitsMemory(101) || !x.fitsMemory(100) {
		t.Fatal("an entry over 1/4 of the memory cache was kept")
	}
	// Removing from disk drops the memory copy.
	x.remove(es[9])
	if x.memoryBytes != 300 || es[9].memElem != nil {
		t.Fatalf("memory %d bytes after remove", x.memoryBytes)
	}
	// Disk eviction of a memory entry drops it too.
	x.evict(100*2, nil)
	if x.memoryBytes > 200 {
		t.Fatalf("memory %d bytes after evicting to 200 disk bytes", x.memoryBytes)
	}
}

func TestIndexNoMemory(t *testing.T) {
	x := newIndex(0)
	e := newTestEntry("a", 1)
	x.add(e)
	x.keepInMemory(e, []byte{1})
	if e.data != nil || x.memory.Len() != 0 {
		t.Fatal("memory cache disabled, yet an entry was kept")
	}
}

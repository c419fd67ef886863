package cache

import (
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
)

func newTestEntry(name string, size int64) *entry {
	return &entry{digest: digest.FromString(name), size: size, disk: size}
}

func diskOrder(x *index) []digest.Digest {
	var ds []digest.Digest
	for el := x.disk.Back(); el != nil; el = el.Prev() {
		ds = append(ds, el.Value.(*entry).digest)
	}
	return ds
}

func TestIndexEvictsLeastRecentlyUsed(t *testing.T) {
	x := newIndex()
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
	x := newIndex()
	old, big := newTestEntry("old", 10), newTestEntry("big", 100)
	x.add(old)
	x.add(big)
	x.touch(old, time.Now()) // big is now the oldest
	victims := x.evict(50, func(e *entry) bool { return e == big })
	if len(victims) != 1 || victims[0] != old || !x.current(big) || x.diskBytes != 100 {
		t.Fatalf("victims %v, bytes %d", victims, x.diskBytes)
	}
}

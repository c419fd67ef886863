package cache

import (
	"container/list"
	"time"

	"github.com/opencontainers/go-digest"
)

// entry is one cached blob. Its fields are guarded by Cache.mu.
type entry struct {
	digest digest.Digest
	size   int64
	// disk is what the entry takes on disk, what the limit counts: its
	// size, less the holes of a sparse file (an image's file of 1 TiB of
	// holes and one chunk must not evict the whole cache).
	disk int64

	// verified is set once the bytes on disk were hashed (or written) by this
	// process; reads trust a verified entry and hash an unverified one.
	verified bool
	// verifying is non-nil while a read is hashing the file; others wait on
	// it so a large file is hashed once, not once per concurrent read.
	verifying chan struct{}
	// parts is non-nil while the entry is being filled in place (fill.go):
	// then it serves its pieces only, never the whole file.
	parts *parts

	// lastUse and touched record a use since the file was written or loaded,
	// to be written back as the file's mtime at Close (see disk.go).
	lastUse time.Time
	touched bool

	diskElem *list.Element // in index.disk
}

// index is the in-memory view of the cache: every entry on disk, in
// least-recently-used order. It does no I/O; the Cache calls it under its
// mutex and does the file work around it. It holds no entry's bytes: the
// kernel's page cache keeps hot entries in memory already, and a copy here
// would count twice against the node's memory.
type index struct {
	entries   map[digest.Digest]*entry
	disk      *list.List // front = most recently used
	diskBytes int64
}

func newIndex() *index {
	return &index{entries: make(map[digest.Digest]*entry), disk: list.New()}
}

func (x *index) get(d digest.Digest) *entry { return x.entries[d] }

// add inserts a new entry as the most recently used (New adds the entries
// found on disk oldest first, so the order comes out right).
func (x *index) add(e *entry) {
	x.entries[e.digest] = e
	e.diskElem = x.disk.PushFront(e)
	x.diskBytes += e.disk
}

// grow counts n more bytes on disk for e, an entry in the index.
func (x *index) grow(e *entry, n int64) {
	e.disk += n
	x.diskBytes += n
}

// touch marks e as just used.
func (x *index) touch(e *entry, now time.Time) {
	x.disk.MoveToFront(e.diskElem)
	e.lastUse = now
	e.touched = true
}

// demote makes e the least recently used, now and, through the mtime Close
// writes, after a restart.
func (x *index) demote(e *entry) {
	x.disk.MoveToBack(e.diskElem)
	e.lastUse = demotedUse
	e.touched = true
}

// demotedUse is a demoted entry's last use: older than any real one.
var demotedUse = time.Unix(1, 0)

// remove drops e from the index.
func (x *index) remove(e *entry) {
	x.disk.Remove(e.diskElem)
	x.diskBytes -= e.disk
	delete(x.entries, e.digest)
}

// current reports whether e is still the live entry for its digest; an entry
// looked up before the mutex was released may have been removed (and even
// replaced by a new Put) meanwhile.
func (x *index) current(e *entry) bool { return x.entries[e.digest] == e }

// evict removes least recently used entries until the disk bytes are at most
// maxBytes, never removing those spare says to keep (the entry being put,
// which may alone exceed the limit; held ones). spare may be nil. It returns
// the removed entries, whose files the caller deletes.
func (x *index) evict(maxBytes int64, spare func(*entry) bool) []*entry {
	if maxBytes <= 0 {
		return nil
	}
	var victims []*entry
	for el := x.disk.Back(); el != nil && x.diskBytes > maxBytes; {
		e := el.Value.(*entry)
		el = el.Prev()
		if spare != nil && spare(e) {
			continue
		}
		x.remove(e)
		victims = append(victims, e)
	}
	return victims
}

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

	// verified is set once the bytes on disk were hashed (or written) by this
	// process; Open trusts a verified entry and hashes an unverified one.
	verified bool
	// verifying is non-nil while an Open is hashing the file; others wait on it
	// so a large file is hashed once, not once per concurrent Open.
	verifying chan struct{}
	// loading is non-nil while a Get reads the file into memory; other Gets
	// wait for it and take the memory copy, so that the many small reads
	// the kernel makes of one chunk at once hash it once.
	loading chan struct{}

	// lastUse and touched record a use since the file was written or loaded,
	// to be written back as the file's mtime at Close (see disk.go).
	lastUse time.Time
	touched bool

	// data holds the bytes while the entry is in the memory LRU.
	data []byte

	diskElem *list.Element // in index.disk, always
	memElem  *list.Element // in index.memory while data != nil
}

// index is the in-memory view of the cache: every entry on disk, in
// least-recently-used order, and the subset also held in memory. It does no
// I/O; the Cache calls it under its mutex and does the file work around it.
// Memory entries are a subset of disk entries, so a memory hit keeps the disk
// entry young too and evicting from disk drops the memory copy.
type index struct {
	entries   map[digest.Digest]*entry
	disk      *list.List // front = most recently used
	diskBytes int64

	memory      *list.List // front = most recently used
	memoryBytes int64
	memoryMax   int64 // 0: no memory cache
	memoryEntry int64 // largest entry kept in memory
}

func newIndex(memoryMax int64) *index {
	return &index{
		entries:     make(map[digest.Digest]*entry),
		disk:        list.New(),
		memory:      list.New(),
		memoryMax:   memoryMax,
		memoryEntry: memoryMax / memoryEntryFraction,
	}
}

// memoryEntryFraction bounds one memory entry to a fraction of the memory
// cache, so one large blob cannot flush all the small hot ones. A quarter:
// with the default 16 MiB, a 4 MiB chunk (the formats' default), which the
// kernel reads in 1 MiB pieces, is read from disk and hashed once.
const memoryEntryFraction = 4

func (x *index) get(d digest.Digest) *entry { return x.entries[d] }

// add inserts a new entry as the most recently used (New adds the entries
// found on disk oldest first, so the order comes out right).
func (x *index) add(e *entry) {
	x.entries[e.digest] = e
	e.diskElem = x.disk.PushFront(e)
	x.diskBytes += e.size
}

// touch marks e as just used.
func (x *index) touch(e *entry, now time.Time) {
	x.disk.MoveToFront(e.diskElem)
	if e.memElem != nil {
		x.memory.MoveToFront(e.memElem)
	}
	e.lastUse = now
	e.touched = true
}

// remove drops e from the index (and from memory).
func (x *index) remove(e *entry) {
	x.dropMemory(e)
	x.disk.Remove(e.diskElem)
	x.diskBytes -= e.size
	delete(x.entries, e.digest)
}

// current reports whether e is still the live entry for its digest; an entry
// looked up before the mutex was released may have been removed (and even
// replaced by a new Put) meanwhile.
func (x *index) current(e *entry) bool { return x.entries[e.digest] == e }

// keepInMemory stores data (owned by the index from now on) as e's memory
// copy if it is small enough, evicting older memory entries to make room.
func (x *index) keepInMemory(e *entry, data []byte) {
	if e.memElem != nil || int64(len(data)) > x.memoryEntry || x.memoryMax == 0 {
		return
	}
	e.data = data
	e.memElem = x.memory.PushFront(e)
	x.memoryBytes += int64(len(data))
	for x.memoryBytes > x.memoryMax {
		x.dropMemory(x.memory.Back().Value.(*entry))
	}
}

// fitsMemory reports whether an entry of size n would be kept in memory.
func (x *index) fitsMemory(n int) bool {
	return x.memoryMax > 0 && int64(n) <= x.memoryEntry
}

func (x *index) dropMemory(e *entry) {
	if e.memElem == nil {
		return
	}
	x.memory.Remove(e.memElem)
	x.memoryBytes -= int64(len(e.data))
	e.memElem = nil
	e.data = nil
}

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

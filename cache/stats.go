package cache

import "sync/atomic"

// Stats are plain counters since New and the current size of the cache.
type Stats struct {
	MemoryHits  int64 // Get served from memory
	DiskHits    int64 // Get or Open served from disk
	Misses      int64 // Get or Open of an absent, vanished or corrupt entry
	Evictions   int64 // entries deleted to stay under MaxBytes
	Corruptions int64 // entries found not to match their digest, and deleted
	NoSpace     int64 // Puts refused because the filesystem was full (ErrNoSpace)

	Entries       int   // entries on disk
	Bytes         int64 // content bytes on disk
	MaxBytes      int64 // the limit on Bytes in force (0: unlimited)
	MemoryEntries int   // entries also held in memory
	MemoryBytes   int64 // bytes held in memory
}

// counters are bumped outside the mutex, on the read path.
type counters struct {
	memoryHits, diskHits, misses, evictions, corruptions, noSpace atomic.Int64
}

package cache

import "sync/atomic"

// Stats are plain counters since New and the current size of the cache.
type Stats struct {
	DiskHits int64 // Get, ReadAt or Open served
	Misses   int64 // Get, ReadAt or Open of an absent, vanished or corrupt entry
	// Verifications counts entries found on disk at New and hashed whole
	// at their first read.
	Verifications int64
	Evictions     int64 // entries deleted to stay under MaxBytes
	Corruptions   int64 // entries found not to match their digest, and deleted
	NoSpace       int64 // Puts refused because the filesystem was full (ErrNoSpace)

	Entries  int   // entries on disk
	Bytes    int64 // content bytes on disk
	MaxBytes int64 // the limit on Bytes in force (0: unlimited)
}

// counters are bumped outside the mutex, on the read path.
type counters struct {
	diskHits, verifications, misses, evictions, corruptions, noSpace atomic.Int64
}

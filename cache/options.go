package cache

// Option configures a Cache.
type Option func(*options)

type options struct {
	maxBytes    int64
	memoryBytes int64
	sync        bool
}

// DefaultMemoryBytes is the size of the in-memory LRU unless WithMemoryBytes
// says otherwise.
const DefaultMemoryBytes = 16 << 20

func defaultOptions() options {
	return options{memoryBytes: DefaultMemoryBytes, sync: true}
}

// WithMaxBytes limits the bytes of content kept on disk (file sizes, not
// filesystem blocks); least recently used entries are deleted to stay under
// it. 0 means unlimited. An entry larger than the limit is still stored, and
// then is all the cache holds.
func WithMaxBytes(n int64) Option {
	return func(o *options) { o.maxBytes = max(n, 0) }
}

// WithMemoryBytes sizes the in-memory LRU that keeps hot small entries
// (entries up to 1/8 of it) so repeated reads of a chunk make no syscall.
// 0 disables it.
func WithMemoryBytes(n int64) Option {
	return func(o *options) { o.memoryBytes = max(n, 0) }
}

// WithSync sets whether Put and PutFile fsync a new entry before renaming it
// into place (default true). Without it a crash can leave an entry empty or
// torn; that is harmless, because every entry is verified before it is served
// and a bad one is dropped and refetched, but it costs a refetch. With it,
// each Put waits for the disk, which on the read path of a lazily fetched file
// is latency the container sees.
func WithSync(sync bool) Option {
	return func(o *options) { o.sync = sync }
}

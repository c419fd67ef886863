package cache

// Option configures a Cache.
type Option func(*options)

type options struct {
	maxBytes    int64
	maxBytesSet bool // else New bounds the cache to DefaultMaxPercent of its filesystem
	sync        bool
}

// DefaultMaxPercent is the share of its filesystem's size that the cache
// keeps at most, unless WithMaxBytes says otherwise. The cache usually
// shares that filesystem with images, containers and logs, so it takes a
// fifth and leaves the rest to them; a share rather than a fixed size,
// because no one number suits both a 20 GiB node and a 2 TiB one.
const DefaultMaxPercent = 20

func defaultOptions() options {
	return options{sync: true}
}

// WithMaxBytes limits the bytes of content kept on disk (file sizes, not
// filesystem blocks); least recently used entries are deleted to stay under
// it. 0 means unlimited. Without this option the limit is DefaultMaxPercent
// of the size of the filesystem holding the cache, measured by New. An
// entry larger than the limit is still stored, and then is all the cache
// holds; entries under a Hold are not deleted, and may keep the cache over
// the limit until they are released.
func WithMaxBytes(n int64) Option {
	return func(o *options) { o.maxBytes, o.maxBytesSet = max(n, 0), true }
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

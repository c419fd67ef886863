package estargz

import (
	"bytes"
	"fmt"
	"sync"

	"github.com/klauspost/compress/gzip"
)

// compressor compresses members on several cores and writes them in order,
// so that the blob is the same whatever the concurrency.
type compressor struct {
	out     *countingWriter
	level   int
	workers int
	next    int           // index of the next member added
	queue   chan *pending // in member order
	slots   chan struct{} // bounds the members being compressed
	done    chan struct{}
	offsets []int64 // where each member starts in the blob
	err     error
}

type pending struct {
	data  []byte
	err   error
	ready chan struct{}
}

func newCompressor(out *countingWriter, level, workers int) *compressor {
	c := &compressor{
		out: out, level: level, workers: workers,
		// Members waiting to be written hold memory: a few per worker.
		queue: make(chan *pending, 2*workers),
		slots: make(chan struct{}, workers),
		done:  make(chan struct{}),
	}
	go c.writeInOrder()
	return c
}

// add queues one member's uncompressed bytes, which it then owns.
func (c *compressor) add(raw []byte) {
	p := &pending{ready: make(chan struct{})}
	c.next++
	if c.workers == 1 {
		p.data, p.err = compressMember(raw, c.level)
		close(p.ready)
	} else {
		c.slots <- struct{}{}
		go func() {
			p.data, p.err = compressMember(raw, c.level)
			<-c.slots
			close(p.ready)
		}()
	}
	c.queue <- p
}

func (c *compressor) writeInOrder() {
	defer close(c.done)
	for p := range c.queue {
		<-p.ready
		if c.err != nil {
			continue
		}
		if p.err != nil {
			c.err = p.err
			continue
		}
		c.offsets = append(c.offsets, c.out.n)
		if _, err := c.out.Write(p.data); err != nil {
			c.err = err
		}
	}
}

// finish waits for every member to be written and returns their offsets.
func (c *compressor) finish() ([]int64, error) {
	close(c.queue)
	<-c.done
	return c.offsets, c.err
}

var gzipWriters sync.Map // level → *sync.Pool of *gzip.Writer

// compressMember compresses raw into one gzip member.
func compressMember(raw []byte, level int) ([]byte, error) {
	pool, _ := gzipWriters.LoadOrStore(level, new(sync.Pool))
	var buf bytes.Buffer
	buf.Grow(len(raw)/2 + 64)
	zw, _ := pool.(*sync.Pool).Get().(*gzip.Writer)
	if zw == nil {
		var err error
		if zw, err = gzip.NewWriterLevel(&buf, level); err != nil {
			return nil, fmt.Errorf("gzip level %d: %w", level, err)
		}
	} else {
		zw.Reset(&buf)
	}
	defer pool.(*sync.Pool).Put(zw)
	if _, err := zw.Write(raw); err != nil {
		return nil, err
	}
	if err := zw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

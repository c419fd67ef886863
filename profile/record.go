package profile

import (
	"slices"
	"sync"

	"github.com/opencontainers/go-digest"

	"github.com/lazypull/lazypull/format/toc"
)

// Recorder collects the reads of a workload, layer by layer, as they
// happen: contiguous and overlapping reads of a file merge into one range,
// which keeps the rank of its first touch. It is safe for concurrent use.
type Recorder struct {
	mu    sync.Mutex
	files map[fileKey][]span
	next  int
}

type fileKey struct {
	layer digest.Digest
	path  string
}

// span is a recorded range [off, end) and when it was first touched.
type span struct {
	off, end int64
	rank     int
}

// NewRecorder returns an empty Recorder.
func NewRecorder() *Recorder { return &Recorder{files: make(map[fileKey][]span)} }

// Record notes that n bytes at off of the file at path (a regular file of
// the layer, hard links resolved) were read.
func (r *Recorder) Record(layer digest.Digest, path string, off, n int64) {
	if n <= 0 || off < 0 {
		return
	}
	k := fileKey{layer, path}
	end := off + n
	r.mu.Lock()
	defer r.mu.Unlock()
	spans := r.files[k]
	// The spans are sorted and apart: merge every one that touches
	// [off, end).
	i := firstTouching(spans, off)
	j := i
	rank := -1
	for j < len(spans) && spans[j].off <= end {
		off, end = min(off, spans[j].off), max(end, spans[j].end)
		if rank < 0 || spans[j].rank < rank {
			rank = spans[j].rank
		}
		j++
	}
	if rank < 0 {
		rank = r.next
		r.next++
	}
	r.files[k] = slices.Replace(spans, i, j, span{off, end, rank})
}

// firstTouching returns the index of the first span that ends at or after off.
func firstTouching(spans []span, off int64) int {
	i, _ := slices.BinarySearchFunc(spans, off, func(s span, off int64) int {
		if s.end < off {
			return -1
		}
		return 1
	})
	return i
}

// Profile builds the profile of what was recorded, for the layers given in
// order (the image's, bottom first) with their TOCs, to name each read's
// chunks. Reads of layers not given are left out.
func (r *Recorder) Profile(w Workload, layers []digest.Digest, tocs []*toc.TOC) *Profile {
	p := &Profile{SchemaVersion: 1, MediaType: MediaType, Workload: w}
	index := make(map[digest.Digest]int)
	for i, d := range layers {
		index[d] = i
		p.Layers = append(p.Layers, Layer{Digest: d})
	}
	type ranked struct {
		read Read
		rank int
	}
	var all []ranked
	r.mu.Lock()
	for k, spans := range r.files {
		li, ok := index[k.layer]
		if !ok {
			continue
		}
		var e *toc.Entry
		if tocs[li] != nil {
			e, _ = tocs[li].Lookup(k.path)
		}
		for _, s := range spans {
			all = append(all, ranked{Read{Layer: li, Path: k.path, Offset: s.off, Length: s.end - s.off, Chunks: chunksIn(e, s.off, s.end)}, s.rank})
		}
	}
	r.mu.Unlock()
	slices.SortFunc(all, func(a, b ranked) int { return a.rank - b.rank })
	for _, a := range all {
		p.Reads = append(p.Reads, a.read)
	}
	return p
}

// chunksIn lists the digests of e's chunks (not holes) that [off, end)
// falls in, in file order.
func chunksIn(e *toc.Entry, off, end int64) []digest.Digest {
	if e == nil || e.Type != toc.TypeReg {
		return nil
	}
	var ds []digest.Digest
	first, ok := e.ChunkAt(off)
	if !ok {
		return nil
	}
	for i := first; i < len(e.Chunks()) && e.Chunks()[i].FileOffset < end; i++ {
		if c := e.Chunks()[i]; !c.Zero {
			ds = append(ds, c.Digest())
		}
	}
	return ds
}

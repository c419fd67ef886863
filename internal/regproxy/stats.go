package regproxy

import (
	"cmp"
	"maps"
	"math"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/opencontainers/go-digest"
)

// PathKind sorts requests by what they ask the registry for.
type PathKind string

const (
	Manifest  PathKind = "manifest"   // /v2/<name>/manifests/<ref>
	Blob      PathKind = "blob"       // /v2/<name>/blobs/<digest> without Range
	BlobRange PathKind = "blob-range" // the same with a Range header
	Upload    PathKind = "upload"     // /v2/<name>/blobs/uploads/...
	Token     PathKind = "token"      // the proxy's own /token
	Other     PathKind = "other"      // /v2/, tags, referrers, anything else
)

// classify names r's kind and, for blob requests, the blob's digest.
func classify(r *http.Request) (PathKind, digest.Digest) {
	path := r.URL.Path
	if path == tokenPath {
		return Token, ""
	}
	if !strings.HasPrefix(path, "/v2/") {
		return Other, ""
	}
	if i := strings.LastIndex(path, "/blobs/"); i >= 0 {
		rest := path[i+len("/blobs/"):]
		if rest == "uploads" || strings.HasPrefix(rest, "uploads/") {
			return Upload, ""
		}
		if r.Header.Get("Range") != "" {
			return BlobRange, digest.Digest(rest)
		}
		return Blob, digest.Digest(rest)
	}
	if strings.Contains(path, "/manifests/") {
		return Manifest, ""
	}
	return Other, ""
}

// repository is the repository name in a /v2/ path, or "".
func repository(path string) string {
	rest, ok := strings.CutPrefix(path, "/v2/")
	if !ok {
		return ""
	}
	end := -1
	for _, marker := range []string{"/manifests/", "/blobs/", "/tags/", "/referrers/"} {
		end = max(end, strings.LastIndex(rest, marker))
	}
	if end <= 0 {
		return ""
	}
	return rest[:end]
}

// Stats counts what crossed the proxy since it started or ResetStats.
type Stats struct {
	Requests     int64
	ByMethod     map[string]int64
	ByKind       map[PathKind]int64
	BytesSent    int64 // response body bytes written to clients
	FaultsFired  int64
	FaultsByKind map[FaultKind]int64
}

// RequestRecord describes one answered request, for WithRequestHook.
type RequestRecord struct {
	Method string
	Path   string
	Kind   PathKind
	Digest digest.Digest // blob requests only
	// Ranges are the byte ranges of a blob GET answered 200 or 206, as
	// inclusive [first, last] offsets; last is -1 when the end is unknown.
	Ranges   [][2]int64
	NewConn  bool      // the first request on its connection (a handshake paid)
	Status   int       // 0 if the request ended before a status was sent
	Fault    FaultKind // the fault injected, if any
	Bytes    int64     // body bytes sent
	Start    time.Time
	Duration time.Duration
}

type stats struct {
	mu     sync.Mutex
	s      Stats
	ranges map[digest.Digest][][2]int64
}

func (st *stats) request(method string, kind PathKind) {
	st.mu.Lock()
	defer st.mu.Unlock()
	st.s.Requests++
	if st.s.ByMethod == nil {
		st.s.ByMethod = make(map[string]int64)
		st.s.ByKind = make(map[PathKind]int64)
	}
	st.s.ByMethod[method]++
	st.s.ByKind[kind]++
}

func (st *stats) sent(n int) {
	st.mu.Lock()
	defer st.mu.Unlock()
	st.s.BytesSent += int64(n)
}

func (st *stats) fault(kind FaultKind) {
	st.mu.Lock()
	defer st.mu.Unlock()
	st.s.FaultsFired++
	if st.s.FaultsByKind == nil {
		st.s.FaultsByKind = make(map[FaultKind]int64)
	}
	st.s.FaultsByKind[kind]++
}

func (st *stats) addRanges(d digest.Digest, rs [][2]int64) {
	if len(rs) == 0 {
		return
	}
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.ranges == nil {
		st.ranges = make(map[digest.Digest][][2]int64)
	}
	st.ranges[d] = append(st.ranges[d], rs...)
}

// Stats returns a copy of the counters.
func (p *Proxy) Stats() Stats {
	p.stats.mu.Lock()
	defer p.stats.mu.Unlock()
	s := p.stats.s
	s.ByMethod = maps.Clone(s.ByMethod)
	s.ByKind = maps.Clone(s.ByKind)
	s.FaultsByKind = maps.Clone(s.FaultsByKind)
	return s
}

// ResetStats zeroes the counters and forgets the recorded ranges.
func (p *Proxy) ResetStats() {
	p.stats.mu.Lock()
	defer p.stats.mu.Unlock()
	p.stats.s = Stats{}
	p.stats.ranges = nil
}

// Ranges returns the byte ranges fetched of the blob, in the order they were
// answered (see RequestRecord.Ranges).
func (p *Proxy) Ranges(d digest.Digest) [][2]int64 {
	p.stats.mu.Lock()
	defer p.stats.mu.Unlock()
	return slices.Clone(p.stats.ranges[d])
}

// Refetched returns, for each blob of which some bytes were fetched more
// than once, those bytes' ranges (see Overlaps). Empty means no byte of any
// blob crossed the proxy twice.
func (p *Proxy) Refetched() map[digest.Digest][][2]int64 {
	p.stats.mu.Lock()
	defer p.stats.mu.Unlock()
	out := make(map[digest.Digest][][2]int64)
	for d, rs := range p.stats.ranges {
		if o := Overlaps(rs); len(o) > 0 {
			out[d] = o
		}
	}
	return out
}

// Overlaps returns the bytes covered by more than one of the inclusive
// ranges, as sorted, merged inclusive ranges. An end of -1 means "to the
// end" and overlaps everything after its start.
func Overlaps(ranges [][2]int64) [][2]int64 {
	rs := make([][2]int64, 0, len(ranges))
	for _, r := range ranges {
		if r[1] < 0 {
			r[1] = math.MaxInt64
		}
		if r[1] >= r[0] {
			rs = append(rs, r)
		}
	}
	slices.SortFunc(rs, func(a, b [2]int64) int { return cmp.Compare(a[0], b[0]) })
	var out [][2]int64
	// reach is the furthest byte the ranges before r cover; with starts
	// sorted, r's bytes up to it are covered twice.
	reach := int64(-1)
	for _, r := range rs {
		if r[0] <= reach {
			o := [2]int64{r[0], min(r[1], reach)}
			if n := len(out); n > 0 && o[0] <= out[n-1][1] {
				out[n-1][1] = max(out[n-1][1], o[1])
			} else {
				out = append(out, o)
			}
		}
		reach = max(reach, r[1])
	}
	for i := range out {
		if out[i][1] == math.MaxInt64 {
			out[i][1] = -1
		}
	}
	return out
}

// contentLength is the declared body length, or -1.
func contentLength(h http.Header) int64 {
	n, err := strconv.ParseInt(h.Get("Content-Length"), 10, 64)
	if err != nil || n < 0 {
		return -1
	}
	return n
}

// fetchedRanges says which bytes of a blob a 200 or 206 answer carries: the
// whole blob for 200, the Content-Range for a single-range 206, and the
// requested ranges for a multi-range one (whose suffix ranges cannot be
// placed without the blob's size, and are left out).
func fetchedRanges(rangeHeader string, code int, h http.Header, size int64) [][2]int64 {
	if code == http.StatusOK {
		switch {
		case size == 0:
			return nil
		case size < 0:
			return [][2]int64{{0, -1}}
		}
		return [][2]int64{{0, size - 1}}
	}
	if cr := h.Get("Content-Range"); cr != "" {
		if r, ok := parseContentRange(cr); ok {
			return [][2]int64{r}
		}
	}
	return parseRangeHeader(rangeHeader)
}

// parseContentRange reads "bytes first-last/total".
func parseContentRange(s string) ([2]int64, bool) {
	s, ok := strings.CutPrefix(strings.TrimSpace(s), "bytes ")
	if !ok {
		return [2]int64{}, false
	}
	span, _, _ := strings.Cut(s, "/")
	a, b, ok := strings.Cut(span, "-")
	if !ok {
		return [2]int64{}, false
	}
	first, err1 := strconv.ParseInt(strings.TrimSpace(a), 10, 64)
	last, err2 := strconv.ParseInt(strings.TrimSpace(b), 10, 64)
	if err1 != nil || err2 != nil || first < 0 || last < first {
		return [2]int64{}, false
	}
	return [2]int64{first, last}, true
}

// parseRangeHeader reads "bytes=a-b, c-, -n" into [a,b], [c,-1]; suffix
// ranges and malformed parts are skipped.
func parseRangeHeader(s string) [][2]int64 {
	spec, ok := strings.CutPrefix(strings.TrimSpace(s), "bytes=")
	if !ok {
		return nil
	}
	var out [][2]int64
	for part := range strings.SplitSeq(spec, ",") {
		a, b, ok := strings.Cut(strings.TrimSpace(part), "-")
		if !ok || a == "" {
			continue
		}
		first, err := strconv.ParseInt(a, 10, 64)
		if err != nil || first < 0 {
			continue
		}
		last := int64(-1)
		if b != "" {
			if last, err = strconv.ParseInt(b, 10, 64); err != nil || last < first {
				continue
			}
		}
		out = append(out, [2]int64{first, last})
	}
	return out
}

package regproxy

import (
	"fmt"
	"net/http"
	"slices"
	"sync"
	"time"
)

// FaultKind names what an injected fault does to a response.
type FaultKind string

const (
	// ResetMidBody sends the headers and part of the body, then resets the
	// TCP connection (RST): the client sees a connection error mid-body.
	ResetMidBody FaultKind = "reset-mid-body"
	// Status503 answers 503 Service Unavailable without asking upstream.
	Status503 FaultKind = "status-503"
	// StatusCode answers Fault.Status without asking upstream.
	StatusCode FaultKind = "status"
	// Stall holds the response for Fault.Stall, then answers normally; with
	// Stall zero it holds until the client gives up (or the proxy closes).
	Stall FaultKind = "stall"
	// Unauthorized401 answers 401 with a Bearer challenge pointing at the
	// proxy's token endpoint and error="invalid_token", as a registry does
	// when a token has expired: a client must fetch a new token and retry.
	Unauthorized401 FaultKind = "unauthorized-401"
	// CorruptBody inverts one byte of the body; length and headers stay.
	CorruptBody FaultKind = "corrupt-body"
	// Truncate ends the body early and closes the connection: the client
	// gets fewer bytes than Content-Length said.
	Truncate FaultKind = "truncate"
)

// Fault is a rule for injecting a fault into the responses to requests it
// matches. Rules are tried in the order they were added; the first that
// matches and has not used up its Count fires.
type Fault struct {
	Match func(*http.Request) bool // nil matches every request; called under a lock, so quick
	Kind  FaultKind
	Count int // how many times it fires; 0 means every time

	Status int           // StatusCode: the status to answer
	Stall  time.Duration // Stall: how long to hold the response; 0 until the client gives up
	// At is the body offset where ResetMidBody, Truncate and CorruptBody
	// act; 0 means the middle of the body. It is kept inside the body, so
	// a truncated body always misses at least its last byte.
	At int64
}

// MatchKind matches requests whose path is of one of the kinds.
func MatchKind(kinds ...PathKind) func(*http.Request) bool {
	return func(r *http.Request) bool {
		k, _ := classify(r)
		return slices.Contains(kinds, k)
	}
}

type faultRule struct {
	Fault
	fired int
}

// faults is the ordered list of rules.
type faults struct {
	mu    sync.Mutex
	rules []*faultRule
}

// AddFault adds a rule after the existing ones. It panics on a kind it does
// not know, or a StatusCode fault without a status: those are mistakes in
// the test, not conditions to handle.
func (p *Proxy) AddFault(f Fault) {
	switch f.Kind {
	case ResetMidBody, Status503, Stall, Unauthorized401, CorruptBody, Truncate:
	case StatusCode:
		if f.Status < 100 || f.Status > 999 {
			panic(fmt.Sprintf("regproxy: AddFault: StatusCode fault with status %d", f.Status))
		}
	default:
		panic(fmt.Sprintf("regproxy: AddFault: unknown fault kind %q", f.Kind))
	}
	p.faults.mu.Lock()
	defer p.faults.mu.Unlock()
	p.faults.rules = append(p.faults.rules, &faultRule{Fault: f})
}

// ClearFaults removes every rule.
func (p *Proxy) ClearFaults() {
	p.faults.mu.Lock()
	defer p.faults.mu.Unlock()
	p.faults.rules = nil
}

// pick returns the fault to inject into the response to r, if any, and
// counts it as fired.
func (fs *faults) pick(r *http.Request) *Fault {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	for _, rule := range fs.rules {
		if rule.Count > 0 && rule.fired >= rule.Count {
			continue
		}
		if rule.Match != nil && !rule.Match(r) {
			continue
		}
		rule.fired++
		f := rule.Fault
		return &f
	}
	return nil
}

// applyFault injects f into the response to r. It reports whether the
// response is complete; if not, the request goes on (to upstream or the
// token server), with a body fault armed on w.
func (p *Proxy) applyFault(w *responseWriter, r *http.Request, f *Fault) (done bool) {
	switch f.Kind {
	case Status503:
		faultStatus(w, r, http.StatusServiceUnavailable)
		return true
	case StatusCode:
		faultStatus(w, r, f.Status)
		return true
	case Unauthorized401:
		p.challenge(w, r, "invalid_token")
		return true
	case Stall:
		if f.Stall <= 0 {
			<-r.Context().Done()
		} else if sleep(r.Context(), f.Stall) == nil {
			return false
		}
		// Ended by the client or by Close: answer nothing, not an empty 200.
		panic(http.ErrAbortHandler)
	default:
		w.fault = &bodyFault{kind: f.Kind, at: f.At}
		return false
	}
}

func faultStatus(w http.ResponseWriter, r *http.Request, code int) {
	http.Error(w, fmt.Sprintf("regproxy: injected fault: %d %s for %s %s", code, http.StatusText(code), r.Method, r.URL.Path), code)
}

// bodyFault is a fault armed on a response body.
type bodyFault struct {
	kind FaultKind
	at   int64 // body offset where it acts
	done bool
}

// resolve fixes the offset once the body's length is known (-1: unknown).
func (f *bodyFault) resolve(size int64) {
	if f.at <= 0 && size > 0 {
		f.at = size / 2
	}
	if size > 0 && f.at >= size {
		f.at = size - 1
	}
	f.at = max(f.at, 0)
}

// write sends b through w, acting on the byte at f.at when b reaches it.
func (f *bodyFault) write(w *responseWriter, b []byte) (int, error) {
	switch {
	case f.done && f.kind == ResetMidBody:
		return 0, errReset // nothing may follow a cut body
	case f.done && f.kind == Truncate:
		return 0, errTruncated
	case f.done || f.at >= w.written+int64(len(b)):
		return w.send(b)
	}
	i := f.at - w.written
	f.done = true
	switch f.kind {
	case CorruptBody:
		c := slices.Clone(b) // a Writer must not modify the caller's slice
		c[i] ^= 0xff
		return w.send(c)
	case Truncate:
		n, err := w.send(b[:i])
		if err != nil {
			return n, err
		}
		// Flush, so that the short body reaches the client before the
		// server closes the connection.
		http.NewResponseController(w.ResponseWriter).Flush()
		return n, errTruncated
	default: // ResetMidBody
		n, err := w.send(b[:i])
		if err != nil {
			return n, err
		}
		return n, w.reset()
	}
}

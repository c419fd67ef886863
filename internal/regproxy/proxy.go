// Package regproxy is an HTTP proxy that sits between a registry client
// (lazypull, containerd) and a real registry on loopback, for tests and
// benchmarks only. It shapes the link (round-trip time, a bandwidth cap
// shared by all responses), injects faults (connection resets, error
// statuses, stalls, token expiry, corrupt and short bodies), can demand
// bearer tokens from its own tiny token server, and counts what crossed it,
// down to the byte ranges fetched of each blob.
//
// It knows the OCI distribution API only as far as naming request paths for
// its counters and auth scopes. It refuses non-loopback upstreams, and
// nothing in the product may import it.
package regproxy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync/atomic"
	"time"

	"github.com/containerd/log"
)

// Proxy is a running proxy on a free 127.0.0.1 port.
type Proxy struct {
	upstream  *url.URL
	addr      string // host:port the proxy listens on
	srv       *http.Server
	rp        *httputil.ReverseProxy
	transport *http.Transport
	cancel    context.CancelFunc // ends every request's context on Close
	served    chan struct{}      // closed when Serve has returned

	link   link
	faults faults
	tokens tokens
	stats  stats
	hook   func(RequestRecord)
}

// Option configures a Proxy at Start.
type Option func(*Proxy)

// WithRTT delays every response by d before its headers go out, and the
// first response on a new connection by another d for the TCP handshake.
func WithRTT(d time.Duration) Option {
	return func(p *Proxy) { p.link.rtt = d }
}

// WithBandwidth caps the response bodies of all connections together at
// bitsPerSecond; 0 means no cap.
func WithBandwidth(bitsPerSecond int64) Option {
	return func(p *Proxy) { p.link.setRate(bitsPerSecond) }
}

// WithTokenLifetime sets how long the tokens the proxy issues stay valid
// (default 5 minutes).
func WithTokenLifetime(d time.Duration) Option {
	return func(p *Proxy) { p.tokens.lifetime = d }
}

// WithRequestHook calls fn after each request has been answered, as its
// handler returns (which may be just after the client has read the last
// byte). It runs on the request's goroutine, so it must be quick and safe
// for concurrent use.
func WithRequestHook(fn func(RequestRecord)) Option {
	return func(p *Proxy) { p.hook = fn }
}

// Start starts a proxy to upstream, the base URL of a registry on loopback
// ("http://127.0.0.1:5000", or just "127.0.0.1:5000").
func Start(upstream string, opts ...Option) (*Proxy, error) {
	u, err := parseUpstream(upstream)
	if err != nil {
		return nil, err
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("regproxy: listen on loopback: %w", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	p := &Proxy{
		upstream: u,
		addr:     l.Addr().String(),
		cancel:   cancel,
		served:   make(chan struct{}),
		tokens:   tokens{lifetime: 5 * time.Minute},
		// Plain transport: no proxy from the environment, and no transparent
		// gzip, which would change bodies and drop their Content-Length.
		transport: &http.Transport{
			DialContext:           (&net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
			MaxIdleConnsPerHost:   64,
			IdleConnTimeout:       90 * time.Second,
			ExpectContinueTimeout: time.Second,
			DisableCompression:    true,
		},
	}
	p.link.init()
	for _, opt := range opts {
		opt(p)
	}
	p.rp = &httputil.ReverseProxy{
		Rewrite:        p.rewrite,
		ModifyResponse: p.modifyResponse,
		ErrorHandler:   p.proxyError,
		Transport:      p.transport,
		FlushInterval:  -1, // bytes leave at the pace the shaper lets them, not when a buffer fills
	}
	p.srv = &http.Server{
		Handler:           http.HandlerFunc(p.serve),
		ReadHeaderTimeout: 30 * time.Second,
		BaseContext:       func(net.Listener) context.Context { return ctx },
		ConnContext: func(ctx context.Context, _ net.Conn) context.Context {
			return context.WithValue(ctx, connKey{}, new(atomic.Bool))
		},
	}
	go func() {
		defer close(p.served)
		p.srv.Serve(l) // returns ErrServerClosed on Close
	}()
	return p, nil
}

// parseUpstream accepts only plain-HTTP base URLs on loopback: the proxy must
// never become a way to reach (or hammer) a real remote registry.
func parseUpstream(s string) (*url.URL, error) {
	raw := s
	if !strings.Contains(s, "://") {
		s = "http://" + s
	}
	u, err := url.Parse(s)
	if err != nil {
		return nil, fmt.Errorf("regproxy: upstream %q: %w", raw, err)
	}
	if u.Scheme != "http" {
		return nil, fmt.Errorf("regproxy: upstream %q: only plain http is supported", raw)
	}
	if (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.User != nil {
		return nil, fmt.Errorf("regproxy: upstream %q: want a base URL (scheme://host:port) without path, query or user", raw)
	}
	if !isLoopback(u.Hostname()) {
		return nil, fmt.Errorf("regproxy: upstream %q is not a loopback address; the proxy is for tests and benchmarks only", raw)
	}
	u.Path = ""
	return u, nil
}

func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// Addr is the proxy's host:port, as used in image references.
func (p *Proxy) Addr() string { return p.addr }

// URL is the proxy's base URL, "http://" + Addr().
func (p *Proxy) URL() string { return "http://" + p.addr }

// Close stops the proxy: it ends stalls and shaping waits, lets the requests
// in flight finish for a moment, then closes every connection.
func (p *Proxy) Close() error {
	p.cancel()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	err := p.srv.Shutdown(ctx)
	if err != nil {
		err = p.srv.Close()
	}
	<-p.served
	p.transport.CloseIdleConnections()
	if err != nil {
		return fmt.Errorf("regproxy: close %s: %w", p.addr, err)
	}
	return nil
}

// connKey keys a per-connection flag in request contexts: whether the
// connection has already served a request (and so paid for its handshake).
type connKey struct{}

func newConnection(r *http.Request) bool {
	used, ok := r.Context().Value(connKey{}).(*atomic.Bool)
	return ok && !used.Swap(true)
}

// serve answers one request: link delay, auth, faults, then the token
// server or the upstream registry.
func (p *Proxy) serve(w http.ResponseWriter, r *http.Request) {
	kind, dgst := classify(r)
	rec := RequestRecord{Method: r.Method, Path: r.URL.Path, Kind: kind, Digest: dgst, Start: time.Now()}
	p.stats.request(r.Method, kind)
	rw := &responseWriter{ResponseWriter: w, p: p, req: r, rec: &rec}
	// Deferred so that the record is kept even when the reverse proxy aborts
	// the handler (panic(http.ErrAbortHandler)) after a cut body.
	defer func() {
		rec.Duration = time.Since(rec.Start)
		if p.hook != nil {
			p.hook(rec)
		}
	}()

	rec.NewConn = newConnection(r)
	if err := p.link.delay(r.Context(), rec.NewConn); err != nil {
		panic(http.ErrAbortHandler) // the client left or the proxy closes: drop the connection, answer nothing
	}
	if ok, reason := p.tokens.check(r); !ok {
		p.challenge(rw, r, reason)
		return
	}
	if f := p.faults.pick(r); f != nil {
		rec.Fault = f.Kind
		p.stats.fault(f.Kind)
		if done := p.applyFault(rw, r, f); done {
			return
		}
	}
	if r.URL.Path == tokenPath {
		p.serveToken(rw, r)
	} else {
		p.rp.ServeHTTP(rw, r)
	}
	rw.finish()
}

// rewrite sends a request upstream as the client sent it to us.
func (p *Proxy) rewrite(pr *httputil.ProxyRequest) {
	pr.SetURL(p.upstream)
	// Our own tokens mean nothing upstream; any other credentials are the
	// upstream's business and pass through.
	if isOurToken(pr.In.Header.Get("Authorization")) {
		pr.Out.Header.Del("Authorization")
	}
}

// modifyResponse points redirects at the upstream back at the proxy, so
// that the client's next request (an upload's Location, say) crosses the
// link too.
func (p *Proxy) modifyResponse(resp *http.Response) error {
	for _, h := range []string{"Location", "Content-Location"} {
		v := resp.Header.Get(h)
		if v == "" {
			continue
		}
		u, err := url.Parse(v)
		if err != nil || u.Scheme != p.upstream.Scheme || u.Host != p.upstream.Host {
			continue // relative, or elsewhere: leave it
		}
		u.Scheme, u.Host = "http", p.addr
		resp.Header.Set(h, u.String())
	}
	return nil
}

func (p *Proxy) proxyError(w http.ResponseWriter, r *http.Request, err error) {
	if r.Context().Err() != nil {
		return // the client has gone (or the proxy is closing): nobody to tell
	}
	log.G(r.Context()).WithError(err).Debugf("regproxy: %s %s upstream", r.Method, r.URL.Path)
	http.Error(w, fmt.Sprintf("regproxy: %s %s: upstream %s: %v", r.Method, r.URL.Path, p.upstream.Host, err), http.StatusBadGateway)
}

// responseWriter is what every response goes through: it shapes the body
// to the link, applies body faults, counts bytes and records blob ranges.
type responseWriter struct {
	http.ResponseWriter
	p           *Proxy
	req         *http.Request
	rec         *RequestRecord
	wroteHeader bool
	written     int64      // body bytes sent to the client
	fault       *bodyFault // nil when no body fault is armed
	hijacked    bool       // the connection was reset: nothing more may touch it
}

func (w *responseWriter) WriteHeader(code int) {
	if code < 200 { // 1xx: informational, the real header follows
		w.ResponseWriter.WriteHeader(code)
		return
	}
	if w.wroteHeader {
		return
	}
	w.wroteHeader = true
	w.rec.Status = code
	size := contentLength(w.Header())
	if w.fault != nil {
		w.fault.resolve(size)
	}
	if w.req.Method == http.MethodGet && (w.rec.Kind == Blob || w.rec.Kind == BlobRange) && (code == http.StatusOK || code == http.StatusPartialContent) {
		w.rec.Ranges = fetchedRanges(w.req.Header.Get("Range"), code, w.Header(), size)
		w.p.stats.addRanges(w.rec.Digest, w.rec.Ranges)
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *responseWriter) Write(b []byte) (int, error) {
	if !w.wroteHeader {
		w.WriteHeader(http.StatusOK)
	}
	if w.fault == nil {
		return w.send(b)
	}
	return w.fault.write(w, b)
}

// send writes b in pieces the shared link lets through.
func (w *responseWriter) send(b []byte) (int, error) {
	sent := 0
	for len(b) > 0 {
		n := min(len(b), chunkSize)
		if err := w.p.link.wait(w.req.Context(), n); err != nil {
			return sent, err
		}
		n, err := w.ResponseWriter.Write(b[:n])
		sent += n
		w.written += int64(n)
		w.rec.Bytes += int64(n)
		w.p.stats.sent(n)
		if err != nil {
			return sent, err
		}
		b = b[n:]
	}
	return sent, nil
}

// finish runs after a handler that returned normally: a reset armed past the
// end of a short (or HEAD) body still happens.
func (w *responseWriter) finish() {
	if w.fault != nil && !w.fault.done && w.fault.kind == ResetMidBody {
		w.fault.done = true
		w.reset()
	}
}

// reset flushes what was written and aborts the connection with a TCP RST,
// as a dropped link or a crashed server looks to a client.
func (w *responseWriter) reset() error {
	rc := http.NewResponseController(w.ResponseWriter)
	rc.Flush()
	conn, _, err := rc.Hijack()
	if err != nil {
		return fmt.Errorf("regproxy: reset %s: hijack: %w", w.req.URL.Path, err)
	}
	w.hijacked = true
	if tcp, ok := conn.(*net.TCPConn); ok {
		tcp.SetLinger(0) // close sends RST instead of FIN
	}
	conn.Close()
	return errReset
}

var (
	errReset     = errors.New("regproxy: connection reset by fault")
	errTruncated = errors.New("regproxy: body truncated by fault")
)

// Unwrap lets http.ResponseController reach Flush and Hijack.
func (w *responseWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// Flush is here for code that type-asserts http.Flusher. The reverse proxy
// flushes after every write, even one that failed because of a reset.
func (w *responseWriter) Flush() {
	if w.hijacked {
		return
	}
	if !w.wroteHeader { // flushing sends the header: let it pass through here
		w.WriteHeader(http.StatusOK)
	}
	http.NewResponseController(w.ResponseWriter).Flush()
}

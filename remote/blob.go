package remote

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/containerd/containerd/v2/core/remotes/docker"
	"github.com/containerd/containerd/v2/pkg/reference"
	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/lazypull/lazypull/metrics"
)

// Tuning of ranged reads; see BlobOptions.
const (
	DefaultMaxRetries     = 5
	DefaultRequestTimeout = 60 * time.Second
	DefaultParallel       = 8
)

// BlobOptions tune ranged reads of one registry.
type BlobOptions struct {
	MaxRetries     int           // attempts after the first, on connection errors and 5xx
	RequestTimeout time.Duration // per attempt
	Parallel       int           // requests in flight per blob
}

func (o BlobOptions) withDefaults() BlobOptions {
	if o.MaxRetries <= 0 {
		o.MaxRetries = DefaultMaxRetries
	}
	if o.RequestTimeout <= 0 {
		o.RequestTimeout = DefaultRequestTimeout
	}
	if o.Parallel <= 0 {
		o.Parallel = DefaultParallel
	}
	return o
}

// BlobStats count one blob's traffic.
type BlobStats struct {
	Requests, Retries, Errors, Bytes int64
}

// Blob reads one registry blob with HTTP Range requests: through the
// hosts (mirrors first, then the origin) that hosts.toml configures, with
// the registry's authentication, retrying connection errors and 5xx
// responses with backoff. It remembers where the registry redirected it (a
// blob store) until that fails.
type Blob struct {
	opts     Options
	bopts    BlobOptions
	refspec  reference.Spec
	repo     string // repository path, without the host
	desc     ocispec.Descriptor
	slots    chan struct{}
	requests atomic.Int64
	retries  atomic.Int64
	errs     atomic.Int64
	bytes    atomic.Int64

	mu         sync.Mutex
	hosts      []docker.RegistryHost
	redirected string // the blob store URL the registry sent us to, if any
}

// OpenBlob prepares ranged reads of the blob desc in the repository ref
// names ("host/repo:tag" or "host/repo@digest").
func OpenBlob(ctx context.Context, ref string, desc ocispec.Descriptor, opts Options, bopts BlobOptions) (*Blob, error) {
	refspec, err := reference.Parse(ref)
	if err != nil {
		return nil, fmt.Errorf("blob %s: reference %q: %w", desc.Digest, ref, err)
	}
	b := &Blob{opts: opts, bopts: bopts.withDefaults(), refspec: refspec, desc: desc}
	b.repo = strings.TrimPrefix(refspec.Locator, refspec.Hostname()+"/")
	b.slots = make(chan struct{}, b.bopts.Parallel)
	if err := b.setHosts(ctx, false); err != nil {
		return nil, err
	}
	return b, nil
}

// setHosts takes the registry's hosts, shared in the process; fresh
// builds them anew, and with them fresh authorizers.
func (b *Blob) setHosts(ctx context.Context, fresh bool) error {
	hosts, err := sharedHosts.get(ctx, b.opts, b.refspec.Hostname(), b.refspec.Locator, fresh)
	if err != nil {
		return fmt.Errorf("blob %s: hosts of %s: %w", b.desc.Digest, b.refspec.Hostname(), err)
	}
	var pull []docker.RegistryHost
	for _, h := range hosts {
		if h.Capabilities.Has(docker.HostCapabilityPull) {
			pull = append(pull, h)
		}
	}
	if len(pull) == 0 {
		return fmt.Errorf("blob %s: no host to pull from for %s", b.desc.Digest, b.refspec.Hostname())
	}
	b.mu.Lock()
	b.hosts = pull
	b.mu.Unlock()
	return nil
}

// Size is the blob's size.
func (b *Blob) Size() int64 { return b.desc.Size }

// Stats returns the blob's traffic so far.
func (b *Blob) Stats() BlobStats {
	return BlobStats{Requests: b.requests.Load(), Retries: b.retries.Load(), Errors: b.errs.Load(), Bytes: b.bytes.Load()}
}

// ReadAt reads len(p) bytes at off in one ranged request (retried).
func (b *Blob) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 || off > b.desc.Size {
		return 0, fmt.Errorf("blob %s: read at %d outside its %d bytes", b.desc.Digest, off, b.desc.Size)
	}
	want := min(int64(len(p)), b.desc.Size-off)
	if want == 0 {
		return 0, io.EOF
	}
	if err := b.fetch(context.Background(), off, p[:want]); err != nil {
		return 0, err
	}
	if want < int64(len(p)) {
		return int(want), io.EOF
	}
	return len(p), nil
}

// FetchAt fills p with the bytes at off, in one ranged request (retried
// and resumed as needed).
func (b *Blob) FetchAt(ctx context.Context, p []byte, off int64) error {
	if off < 0 || off+int64(len(p)) > b.desc.Size {
		return fmt.Errorf("blob %s: range %d+%d outside its %d bytes", b.desc.Digest, off, len(p), b.desc.Size)
	}
	if len(p) == 0 {
		return nil
	}
	return b.fetch(ctx, off, p)
}

// StatusError is an HTTP answer other than the bytes asked for, from a
// registry, a mirror or a blob store.
type StatusError struct {
	Host   string // host[:port] that answered
	Code   int    // HTTP status code
	Status string // as the server said it, e.g. "404 Not Found"
}

func (e *StatusError) Error() string { return e.Host + ": " + e.Status }

// Is makes a 404 an errdefs.ErrNotFound, which containerd inspects.
func (e *StatusError) Is(target error) bool {
	return target == errdefs.ErrNotFound && e.Code == http.StatusNotFound
}

func statusError(resp *http.Response) *StatusError {
	return &StatusError{Host: resp.Request.URL.Host, Code: resp.StatusCode, Status: resp.Status}
}

// errNoRetry marks failures that another attempt will not mend.
type errNoRetry struct{ error }

func (e errNoRetry) Unwrap() error { return e.error }

// fetch fills dst with the bytes at off, retrying what can be retried and
// resuming after what was already read.
func (b *Blob) fetch(ctx context.Context, off int64, dst []byte) error {
	select {
	case b.slots <- struct{}{}:
	case <-ctx.Done():
		return ctx.Err()
	}
	defer func() { <-b.slots }()

	got := 0
	backoff := 100 * time.Millisecond
	unauthorized := 0
	for attempt := 0; ; attempt++ {
		n, err := b.try(ctx, off+int64(got), dst[got:])
		err = redact(err)
		got += n
		b.bytes.Add(int64(n))
		if err == nil {
			return nil
		}
		var noRetry errNoRetry
		if errors.As(err, &noRetry) || ctx.Err() != nil || attempt >= b.bopts.MaxRetries {
			b.errs.Add(1)
			return fmt.Errorf("fetch bytes %d-%d of %s from %s: %w", off, off+int64(len(dst))-1, b.desc.Digest, b.refspec.Locator, err)
		}
		if errors.Is(err, errUnauthorized) {
			// A second refusal in a row: start over with fresh
			// authorizers (an expired token the authorizer still trusts).
			// A fresh authorizer's first request is refused too (it has
			// not seen the challenge yet): count from zero again, or that
			// refusal would reset it again, and so on until the retries
			// run out.
			if unauthorized++; unauthorized > 1 {
				if rerr := b.setHosts(ctx, true); rerr != nil {
					return rerr
				}
				unauthorized = 0
			}
			b.retries.Add(1)
			continue
		}
		unauthorized = 0
		b.retries.Add(1)
		log.G(ctx).WithError(err).WithField("blob", b.desc.Digest).Debugf("retrying ranged read in %v", backoff)
		select {
		case <-time.After(backoff):
		case <-ctx.Done():
			return ctx.Err()
		}
		backoff = min(backoff*2, 5*time.Second)
	}
}

var errUnauthorized = errors.New("unauthorized")

// try makes one ranged request and reads as much of dst as it can.
func (b *Blob) try(ctx context.Context, off int64, dst []byte) (int, error) {
	ctx, cancel := context.WithTimeout(ctx, b.bopts.RequestTimeout)
	defer cancel()
	b.requests.Add(1)
	registry := b.refspec.Hostname()
	start := time.Now()

	b.mu.Lock()
	redirected, hosts := b.redirected, b.hosts
	b.mu.Unlock()

	var resp *http.Response
	var err error
	if redirected != "" {
		resp, err = b.get(ctx, http.DefaultClient, nil, redirected, nil, off, len(dst))
		if err != nil || resp.StatusCode >= 400 {
			// Signed blob store URLs expire: go back to the registry.
			if resp != nil {
				resp.Body.Close()
			}
			b.mu.Lock()
			b.redirected = ""
			b.mu.Unlock()
			if err == nil {
				err = statusError(resp)
			}
			return 0, fmt.Errorf("blob store %s: %w", redactURL(redirected), err)
		}
	} else {
		resp, err = b.getFromHosts(ctx, hosts, off, len(dst))
		if err != nil {
			metrics.RegistryRequests.WithLabelValues(registry, "error").Inc()
			return 0, err
		}
	}
	defer resp.Body.Close()
	metrics.RegistryLatency.WithLabelValues(registry).Observe(time.Since(start).Seconds())
	metrics.RegistryRequests.WithLabelValues(registry, strconv.Itoa(resp.StatusCode)).Inc()

	switch resp.StatusCode {
	case http.StatusPartialContent:
		if start, ok := contentRangeStart(resp.Header.Get("Content-Range")); !ok || start != off {
			return 0, errNoRetry{fmt.Errorf("asked for bytes from %d, got Content-Range %q", off, resp.Header.Get("Content-Range"))}
		}
	case http.StatusOK:
		if off != 0 {
			return 0, errNoRetry{errors.New("the registry ignores Range requests (answered 200 to a ranged read)")}
		}
	default:
		return 0, statusError(resp)
	}
	n, err := io.ReadFull(resp.Body, dst)
	metrics.RegistryBytes.WithLabelValues(registry).Add(float64(n))
	if err != nil {
		return n, fmt.Errorf("read body after %d of %d bytes: %w", n, len(dst), err)
	}
	return n, nil
}

// getFromHosts tries each host in order (mirrors, then the origin) and
// returns the first response that is not a failure.
func (b *Blob) getFromHosts(ctx context.Context, hosts []docker.RegistryHost, off int64, n int) (*http.Response, error) {
	ctx = docker.ContextWithAppendPullRepositoryScope(ctx, b.repo)
	var lastErr error
	for _, h := range hosts {
		u := url.URL{Scheme: h.Scheme, Host: h.Host, Path: h.Path + "/" + b.repo + "/blobs/" + b.desc.Digest.String()}
		if h.Host != b.refspec.Hostname() {
			u.RawQuery = "ns=" + url.QueryEscape(b.refspec.Hostname()) // a mirror serves several registries
		}
		resp, err := b.get(ctx, h.Client, h.Authorizer, u.String(), h.Header, off, n)
		if err != nil {
			lastErr = err
			continue
		}
		switch {
		case resp.StatusCode == http.StatusUnauthorized && h.Authorizer != nil:
			aerr := h.Authorizer.AddResponses(ctx, []*http.Response{resp})
			resp.Body.Close()
			if aerr != nil {
				return nil, errNoRetry{fmt.Errorf("authenticate to %s: %w", h.Host, aerr)}
			}
			return nil, errUnauthorized
		case resp.StatusCode == http.StatusNotFound || resp.StatusCode >= 500 || resp.StatusCode == http.StatusTooManyRequests:
			lastErr = statusError(resp)
			resp.Body.Close()
			continue
		case resp.StatusCode >= 400:
			resp.Body.Close()
			return nil, errNoRetry{statusError(resp)}
		}
		if final := resp.Request.URL; final.Host != h.Host {
			b.mu.Lock()
			b.redirected = final.String()
			b.mu.Unlock()
		}
		return resp, nil
	}
	if errdefs.IsNotFound(lastErr) {
		return nil, errNoRetry{lastErr}
	}
	return nil, lastErr
}

func (b *Blob) get(ctx context.Context, client *http.Client, authorizer docker.Authorizer, u string, header http.Header, off int64, n int) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, errNoRetry{err}
	}
	for k, v := range header {
		req.Header[k] = v
	}
	req.Header.Set("Range", fmt.Sprintf("bytes=%d-%d", off, off+int64(n)-1))
	if authorizer != nil {
		if err := authorizer.Authorize(ctx, req); err != nil {
			return nil, fmt.Errorf("authorize: %w", err)
		}
	}
	return client.Do(req)
}

func contentRangeStart(h string) (int64, bool) {
	rest, ok := strings.CutPrefix(h, "bytes ")
	if !ok {
		return 0, false
	}
	start, _, ok := strings.Cut(rest, "-")
	if !ok {
		return 0, false
	}
	n, err := strconv.ParseInt(start, 10, 64)
	return n, err == nil
}

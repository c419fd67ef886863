package remote

import (
	"context"
	"errors"
	"io"
	"net/url"
	"regexp"
	"strings"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/remotes"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/sirupsen/logrus"
)

// Errors from net/http name the URL of the request that failed, and a
// registry redirects blob reads to signed blob-store URLs whose query holds
// credentials (X-Amz-Signature, tokens); a URL's userinfo may hold a
// password. These errors reach logs, lazypull status and a state file that
// containers can read, so every error that leaves an HTTP call here goes
// through redact first.

// redactURL returns the URL s as scheme://host/path: without userinfo,
// query or fragment.
func redactURL(s string) string {
	scheme, rest, ok := strings.Cut(s, "://")
	if !ok {
		return s
	}
	if i := strings.IndexAny(rest, "?#"); i >= 0 {
		rest = rest[:i]
	}
	authority, path := rest, ""
	if i := strings.IndexByte(rest, '/'); i >= 0 {
		authority, path = rest[:i], rest[i:]
	}
	if i := strings.LastIndexByte(authority, '@'); i >= 0 {
		authority = authority[i+1:]
	}
	return scheme + "://" + authority + path
}

// urlInText finds URLs in an error message or a log line. It stops at
// white space, quotes and backslashes: Go quotes the URL in a *url.Error's
// message, and log formatters escape those quotes.
var urlInText = regexp.MustCompile(`[a-zA-Z][a-zA-Z0-9+.-]*://[^\s"\\]+`)

// redact returns err with every URL in its message reduced by redactURL.
// A *url.Error stays one (callers test for timeouts), with its URL
// redacted; any other error whose message names a URL is wrapped so that
// its message is redacted, while errors.Is and errors.As still see what
// it wraps.
func redact(err error) error {
	if err == nil {
		return nil
	}
	if ue, ok := err.(*url.Error); ok {
		return &url.Error{Op: ue.Op, URL: redactURL(ue.URL), Err: redact(ue.Err)}
	}
	msg := err.Error()
	clean := urlInText.ReplaceAllStringFunc(msg, redactURL)
	if clean == msg {
		return err
	}
	return &redactedError{msg: clean, err: err}
}

// RedactLogs makes logger write every URL as redactURL does, whoever
// logs it: containerd's resolver logs its failed requests' errors itself,
// signed redirect URLs included.
func RedactLogs(logger *logrus.Logger) {
	logger.SetFormatter(redactingFormatter{logger.Formatter})
}

type redactingFormatter struct{ logrus.Formatter }

func (f redactingFormatter) Format(e *logrus.Entry) ([]byte, error) {
	b, err := f.Formatter.Format(e)
	return urlInText.ReplaceAllFunc(b, func(u []byte) []byte { return []byte(redactURL(string(u))) }), err
}

type redactedError struct {
	msg string
	err error
}

func (e *redactedError) Error() string { return e.msg }
func (e *redactedError) Unwrap() error { return e.err }

// redactingResolver redacts the errors of containerd's resolver and of the
// fetchers, readers, pushers and writers it hands out: a manifest or a
// config blob is redirected to a signed URL as a layer is.
type redactingResolver struct{ remotes.Resolver }

func (r redactingResolver) Resolve(ctx context.Context, ref string) (string, ocispec.Descriptor, error) {
	name, desc, err := r.Resolver.Resolve(ctx, ref)
	return name, desc, redact(err)
}

func (r redactingResolver) Fetcher(ctx context.Context, ref string) (remotes.Fetcher, error) {
	f, err := r.Resolver.Fetcher(ctx, ref)
	if err != nil {
		return nil, redact(err)
	}
	return redactingFetcher{f}, nil
}

func (r redactingResolver) Pusher(ctx context.Context, ref string) (remotes.Pusher, error) {
	p, err := r.Resolver.Pusher(ctx, ref)
	if err != nil {
		return nil, redact(err)
	}
	return redactingPusher{p}, nil
}

type redactingFetcher struct{ remotes.Fetcher }

// FetchReferrers passes the referrers listing through (containerd's
// fetcher has it), its errors redacted.
func (f redactingFetcher) FetchReferrers(ctx context.Context, d digest.Digest, opts ...remotes.FetchReferrersOpt) ([]ocispec.Descriptor, error) {
	rf, ok := f.Fetcher.(remotes.ReferrersFetcher)
	if !ok {
		return nil, errors.New("this registry client cannot list referrers")
	}
	descs, err := rf.FetchReferrers(ctx, d, opts...)
	return descs, redact(err)
}

func (f redactingFetcher) Fetch(ctx context.Context, desc ocispec.Descriptor) (io.ReadCloser, error) {
	rc, err := f.Fetcher.Fetch(ctx, desc)
	if err != nil {
		return nil, redact(err)
	}
	// content.Copy seeks to resume a partial download when it can.
	if rs, ok := rc.(io.ReadSeekCloser); ok {
		return redactingReadSeeker{rs}, nil
	}
	return redactingReader{rc}, nil
}

type redactingReader struct{ io.ReadCloser }

func (r redactingReader) Read(p []byte) (int, error) {
	n, err := r.ReadCloser.Read(p)
	return n, redact(err)
}

type redactingReadSeeker struct{ io.ReadSeekCloser }

func (r redactingReadSeeker) Read(p []byte) (int, error) {
	n, err := r.ReadSeekCloser.Read(p)
	return n, redact(err)
}

func (r redactingReadSeeker) Seek(offset int64, whence int) (int64, error) {
	n, err := r.ReadSeekCloser.Seek(offset, whence)
	return n, redact(err)
}

type redactingPusher struct{ remotes.Pusher }

func (p redactingPusher) Push(ctx context.Context, desc ocispec.Descriptor) (content.Writer, error) {
	w, err := p.Pusher.Push(ctx, desc)
	if err != nil {
		return nil, redact(err)
	}
	return redactingWriter{w}, nil
}

type redactingWriter struct{ content.Writer }

func (w redactingWriter) Write(p []byte) (int, error) {
	n, err := w.Writer.Write(p)
	return n, redact(err)
}

func (w redactingWriter) Commit(ctx context.Context, size int64, expected digest.Digest, opts ...content.Opt) error {
	return redact(w.Writer.Commit(ctx, size, expected, opts...))
}

func (w redactingWriter) Close() error { return redact(w.Writer.Close()) }

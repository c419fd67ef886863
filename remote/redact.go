package remote

import (
	"net/url"
	"regexp"
	"strings"
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

// urlInText finds URLs in an error message. It stops at white space and
// quotes: Go quotes the URL in a *url.Error's message.
var urlInText = regexp.MustCompile(`[a-zA-Z][a-zA-Z0-9+.-]*://[^\s"]+`)

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

type redactedError struct {
	msg string
	err error
}

func (e *redactedError) Error() string { return e.msg }
func (e *redactedError) Unwrap() error { return e.err }

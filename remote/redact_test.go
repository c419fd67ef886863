package remote

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/sirupsen/logrus"
)

func TestRedactURL(t *testing.T) {
	for in, want := range map[string]string{
		"https://s3.example/bucket/blob?X-Amz-Signature=abc&X-Amz-Credential=def": "https://s3.example/bucket/blob",
		"http://user:pass@host:5000/v2/x#frag":                                    "http://host:5000/v2/x",
		"https://user:***@host/p?token=t":                                         "https://host/p",
		"https://host?sig=s":                                                      "https://host",
		"https://host/plain/path":                                                 "https://host/plain/path",
		"not a url":                                                               "not a url",
	} {
		if got := redactURL(in); got != want {
			t.Errorf("redactURL(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestRedactKeepsWhatErrorsAre(t *testing.T) {
	ue := &url.Error{Op: "Get", URL: "https://u:pw@store.example/b?sig=SECRET", Err: context.DeadlineExceeded}
	err := redact(fmt.Errorf("fetch: %w", ue))
	if strings.Contains(err.Error(), "SECRET") || strings.Contains(err.Error(), "pw") {
		t.Errorf("redacted error %q still holds the credentials", err)
	}
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("redacted error %q is no longer a deadline", err)
	}
	if got := redact(ue); got.Error() != `Get "https://store.example/b": context deadline exceeded` {
		t.Errorf("redacted *url.Error = %q", got)
	}
	if _, ok := redact(ue).(*url.Error); !ok {
		t.Errorf("redact of a *url.Error is a %T", redact(ue))
	}
	plain := errors.New("no url here")
	if redact(plain) != plain {
		t.Errorf("an error without a URL was wrapped")
	}
}

// testBlob is a blob of a registry that the test's handler serves.
func testBlob(t *testing.T, registry http.Handler) *Blob {
	t.Helper()
	srv := httptest.NewServer(registry)
	t.Cleanup(srv.Close)
	desc := ocispec.Descriptor{MediaType: ocispec.MediaTypeImageLayerGzip, Digest: digest.FromString("test blob"), Size: 1000}
	opts := Options{HostsDir: t.TempDir(), DockerConfigDir: t.TempDir()}
	ref := srv.Listener.Addr().String() + "/test/repo@" + desc.Digest.String()
	b, err := OpenBlob(context.Background(), ref, desc, opts, BlobOptions{MaxRetries: 1})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// serveRange answers a ranged GET with bytes of the repeated letter 'x'.
func serveRange(w http.ResponseWriter, r *http.Request) {
	var start, end int
	if _, err := fmt.Sscanf(r.Header.Get("Range"), "bytes=%d-%d", &start, &end); err != nil {
		http.Error(w, "no range", http.StatusBadRequest)
		return
	}
	w.Header().Set("Content-Range", fmt.Sprintf("bytes %d-%d/1000", start, end))
	w.Header().Set("Content-Length", strconv.Itoa(end-start+1))
	w.WriteHeader(http.StatusPartialContent)
	w.Write(bytes.Repeat([]byte("x"), end-start+1))
}

// A registry redirects to a signed URL on a blob store that then breaks
// its connections: neither the error nor the debug log shows the
// signature or the password of that URL.
func TestSignedRedirectNotInErrors(t *testing.T) {
	var mu sync.Mutex
	storeRequests := 0
	store := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		storeRequests++
		first := storeRequests == 1
		mu.Unlock()
		if first {
			serveRange(w, r)
			return
		}
		conn, _, err := w.(http.Hijacker).Hijack()
		if err == nil {
			conn.Close()
		}
	}))
	defer store.Close()
	signed := "http://reader:PASSWORD-SECRET@" + store.Listener.Addr().String() +
		"/bucket/blob?X-Amz-Credential=CREDENTIAL-SECRET&X-Amz-Signature=SIGNATURE-SECRET"
	b := testBlob(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, signed, http.StatusTemporaryRedirect)
	}))

	var logs bytes.Buffer
	logger := logrus.New()
	logger.SetOutput(&logs)
	logger.SetLevel(logrus.DebugLevel)
	ctx := log.WithLogger(context.Background(), logrus.NewEntry(logger))

	// The first read goes through the redirect and succeeds, so the
	// second starts at the remembered blob-store URL.
	if err := b.FetchAt(ctx, make([]byte, 10), 0); err != nil {
		t.Fatal(err)
	}
	err := b.FetchAt(ctx, make([]byte, 10), 10)
	if err == nil {
		t.Fatal("a read from a blob store that closes its connections succeeded")
	}
	for _, secret := range []string{"PASSWORD-SECRET", "CREDENTIAL-SECRET", "SIGNATURE-SECRET", "reader"} {
		if strings.Contains(err.Error(), secret) {
			t.Errorf("error shows %s: %v", secret, err)
		}
		if strings.Contains(logs.String(), secret) {
			t.Errorf("log shows %s:\n%s", secret, logs.String())
		}
	}
	if want := store.Listener.Addr().String() + "/bucket/blob"; !strings.Contains(err.Error(), want) {
		t.Errorf("error %q does not name the blob store %s", err, want)
	}
	if !strings.Contains(logs.String(), "retrying") {
		t.Errorf("no retry was logged, so the log was not checked:\n%s", logs.String())
	}
}

// withTenantHeader returns options whose hosts.toml gives the registry
// the header X-Tenant-Token: HEADER-SECRET.
func withTenantHeader(t *testing.T, registry *httptest.Server) Options {
	t.Helper()
	opts := Options{HostsDir: t.TempDir(), DockerConfigDir: t.TempDir()}
	// containerd's directory for host:port is host_port_.
	hostDir := filepath.Join(opts.HostsDir, strings.Replace(registry.Listener.Addr().String(), ":", "_", 1)+"_")
	os.MkdirAll(hostDir, 0o755)
	hostsTOML := fmt.Sprintf("server = %q\n[header]\n  X-Tenant-Token = \"HEADER-SECRET\"\n", registry.URL)
	if err := os.WriteFile(filepath.Join(hostDir, "hosts.toml"), []byte(hostsTOML), 0o644); err != nil {
		t.Fatal(err)
	}
	return opts
}

// Headers configured in hosts.toml and the registry's credentials go to
// the registry, not to the blob store it redirects to.
func TestRedirectDropsConfiguredHeaders(t *testing.T) {
	var mu sync.Mutex
	var atRegistry, atStore http.Header
	store := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		atStore = r.Header.Clone()
		mu.Unlock()
		serveRange(w, r)
	}))
	defer store.Close()
	registry := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") == "" {
			w.Header().Set("WWW-Authenticate", `Basic realm="test"`)
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		mu.Lock()
		atRegistry = r.Header.Clone()
		mu.Unlock()
		http.Redirect(w, r, store.URL+"/bucket/blob?sig=s", http.StatusTemporaryRedirect)
	}))
	defer registry.Close()

	host := registry.Listener.Addr().String()
	opts := withTenantHeader(t, registry)
	auth := base64.StdEncoding.EncodeToString([]byte("alice:PASSWORD-SECRET"))
	dockerConfig := fmt.Sprintf(`{"auths": {%q: {"auth": %q}}}`, host, auth)
	if err := os.WriteFile(filepath.Join(opts.DockerConfigDir, "config.json"), []byte(dockerConfig), 0o600); err != nil {
		t.Fatal(err)
	}
	desc := ocispec.Descriptor{MediaType: ocispec.MediaTypeImageLayerGzip, Digest: digest.FromString("test blob"), Size: 1000}
	b, err := OpenBlob(context.Background(), host+"/test/repo@"+desc.Digest.String(), desc, opts, BlobOptions{MaxRetries: 1})
	if err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 10)
	if err := b.FetchAt(context.Background(), got, 0); err != nil || string(got) != "xxxxxxxxxx" {
		t.Fatalf("FetchAt = %q, %v", got, err)
	}

	mu.Lock()
	defer mu.Unlock()
	// Both were sent where they belong, so their absence below means
	// something.
	if atRegistry.Get("X-Tenant-Token") != "HEADER-SECRET" || atRegistry.Get("Authorization") == "" {
		t.Fatalf("the registry did not get the configured header and credentials: %v", atRegistry)
	}
	if atStore == nil {
		t.Fatal("the blob store was never asked")
	}
	for _, h := range []string{"X-Tenant-Token", "Authorization"} {
		if v := atStore.Get(h); v != "" {
			t.Errorf("the blob store on another host got %s: %s", h, v)
		}
	}
	if atStore.Get("Range") == "" {
		t.Errorf("the blob store did not get the Range header")
	}
}

func TestStatusErrors(t *testing.T) {
	b := testBlob(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.NotFound(w, r)
	}))
	err := b.FetchAt(context.Background(), make([]byte, 10), 0)
	var se *StatusError
	if !errors.As(err, &se) || se.Code != http.StatusNotFound || !errdefs.IsNotFound(err) {
		t.Errorf("a 404 gave %v, want a not-found *StatusError", err)
	}
	if r := b.Stats().Retries; r != 0 {
		t.Errorf("a 404 was retried %d times", r)
	}

	b = testBlob(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "later", http.StatusServiceUnavailable)
	}))
	err = b.FetchAt(context.Background(), make([]byte, 10), 0)
	if !errors.As(err, &se) || se.Code != http.StatusServiceUnavailable || errdefs.IsNotFound(err) {
		t.Errorf("a 503 gave %v, want a *StatusError that is not not-found", err)
	}
	if r := b.Stats().Retries; r != 1 {
		t.Errorf("a 503 was retried %d times, want 1 (MaxRetries)", r)
	}
}

// The resolver that fetches manifests and configs neither shows a signed
// redirect's URL in its errors nor sends hosts.toml headers to it.
func TestResolverRedactsAndKeepsHeaders(t *testing.T) {
	var mu sync.Mutex
	var atStore []http.Header
	store := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		atStore = append(atStore, r.Header.Clone())
		mu.Unlock()
		conn, _, err := w.(http.Hijacker).Hijack()
		if err == nil {
			conn.Close()
		}
	}))
	defer store.Close()
	signed := store.URL + "/bucket/object?X-Amz-Signature=SIGNATURE-SECRET"
	registry := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/v2/" {
			return
		}
		http.Redirect(w, r, signed, http.StatusTemporaryRedirect)
	}))
	defer registry.Close()

	host := registry.Listener.Addr().String()
	opts := withTenantHeader(t, registry)

	ctx := context.Background()
	resolver := NewResolver(ctx, opts)
	_, _, err := resolver.Resolve(ctx, host+"/test/repo:v1")
	if err == nil || strings.Contains(err.Error(), "SIGNATURE-SECRET") {
		t.Errorf("Resolve through a broken signed redirect: %v", err)
	}
	fetcher, err := resolver.Fetcher(ctx, host+"/test/repo:v1")
	if err != nil {
		t.Fatal(err)
	}
	desc := ocispec.Descriptor{MediaType: ocispec.MediaTypeImageConfig, Digest: digest.FromString("config"), Size: 6}
	rc, err := fetcher.Fetch(ctx, desc)
	if err == nil {
		// The request is made at the first read.
		_, err = io.ReadAll(rc)
		rc.Close()
	}
	if err == nil || strings.Contains(err.Error(), "SIGNATURE-SECRET") {
		t.Errorf("Fetch through a broken signed redirect: %v", err)
	}

	mu.Lock()
	defer mu.Unlock()
	if len(atStore) == 0 {
		t.Fatal("the blob store was never asked, so nothing was tested")
	}
	for _, h := range atStore {
		if v := h.Get("X-Tenant-Token"); v != "" {
			t.Errorf("the blob store on another host got X-Tenant-Token: %s", v)
		}
	}
}

func TestRedactLogs(t *testing.T) {
	var out bytes.Buffer
	logger := logrus.New()
	logger.SetOutput(&out)
	logger.SetFormatter(&logrus.TextFormatter{DisableTimestamp: true})
	RedactLogs(logger)
	err := &url.Error{Op: "Head", URL: "https://u:pw@store.example/b?X-Amz-Signature=SECRET", Err: io.EOF}
	logger.WithError(fmt.Errorf("failed to do request: %w", err)).Info("fetch failed")
	want := `level=info msg="fetch failed" error="failed to do request: Head \"https://store.example/b\": EOF"` + "\n"
	if out.String() != want {
		t.Errorf("logged %q, want %q", out.String(), want)
	}
}

package regproxy

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/core/remotes"
	"github.com/containerd/containerd/v2/core/remotes/docker"
	"github.com/containerd/containerd/v2/core/remotes/docker/config"
	"github.com/opencontainers/go-digest"
	specs "github.com/opencontainers/image-spec/specs-go"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

func TestTokenAuth(t *testing.T) {
	p := startProxy(t, WithTokenLifetime(300*time.Millisecond))
	c := newClient(t)
	data := randomBytes(10 << 10)
	dgst, _ := pushBlob(t, c, p.URL(), "regproxy/token", data) // before auth is on
	blobURL := p.URL() + "/v2/regproxy/token/blobs/" + dgst.String()
	p.EnableTokenAuth()

	resp, _ := get(t, c, p.URL()+"/v2/")
	wantStatus(t, resp, http.StatusUnauthorized)
	ch := parseChallenge(t, resp.Header.Get("WWW-Authenticate"))
	if ch["realm"] != p.URL()+"/token" || ch["service"] != "regproxy" || ch["scope"] != "" || ch["error"] != "" {
		t.Errorf("GET /v2/ without a token: challenge %v", ch)
	}

	resp, _ = get(t, c, blobURL)
	wantStatus(t, resp, http.StatusUnauthorized)
	ch = parseChallenge(t, resp.Header.Get("WWW-Authenticate"))
	if ch["scope"] != "repository:regproxy/token:pull" || ch["error"] != "" {
		t.Errorf("GET blob without a token: challenge %v", ch)
	}
	resp = do(t, c, http.MethodPost, p.URL()+"/v2/regproxy/token/blobs/uploads/", nil)
	resp.Body.Close()
	wantStatus(t, resp, http.StatusUnauthorized)
	if got := parseChallenge(t, resp.Header.Get("WWW-Authenticate"))["scope"]; got != "repository:regproxy/token:pull,push" {
		t.Errorf("POST upload without a token: scope %q", got)
	}

	tok := fetchToken(t, c, ch)
	resp, got := get(t, c, blobURL, "Authorization", "Bearer "+tok)
	wantStatus(t, resp, http.StatusOK)
	if !bytes.Equal(got, data) {
		t.Error("blob differs through token auth")
	}
	// Pushing works with a token too: the upstream never sees it.
	pushBlob(t, c, p.URL(), "regproxy/token", randomBytes(1000), "Authorization", "Bearer "+tok)

	refused := func(why, tok string) {
		t.Helper()
		resp, _ := get(t, c, blobURL, "Authorization", "Bearer "+tok)
		wantStatus(t, resp, http.StatusUnauthorized)
		if e := parseChallenge(t, resp.Header.Get("WWW-Authenticate"))["error"]; e != "invalid_token" {
			t.Errorf("%s: challenge error %q, want invalid_token", why, e)
		}
	}
	refused("unknown token", tokenPrefix+"forged")
	p.ExpireTokens()
	refused("after ExpireTokens", tok)

	tok = fetchToken(t, c, ch)
	resp, _ = get(t, c, blobURL, "Authorization", "Bearer "+tok)
	wantStatus(t, resp, http.StatusOK)
	time.Sleep(400 * time.Millisecond) // past the 300ms lifetime
	refused("after its lifetime", tok)

	if n := p.Stats().ByKind[Token]; n != 2 {
		t.Errorf("Stats().ByKind[Token] = %d, want 2", n)
	}
}

// TestContainerdResolver pulls through the proxy with containerd's own
// resolver and token auth on, then again after every token has expired: the
// resolver must follow the challenge and re-authenticate by itself.
func TestContainerdResolver(t *testing.T) {
	var unauthorized atomic.Int64
	p := startProxy(t, WithRequestHook(func(r RequestRecord) {
		if r.Status == http.StatusUnauthorized {
			unauthorized.Add(1)
		}
	}))
	c := newClient(t)
	layer := randomBytes(200 << 10)
	cfg := []byte(`{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":["` + digest.FromBytes(layer).String() + `"]}}`)
	cfgDigest, _ := pushBlob(t, c, p.URL(), "regproxy/ctrd", cfg)
	layerDigest, _ := pushBlob(t, c, p.URL(), "regproxy/ctrd", layer)
	manifest, err := json.Marshal(ocispec.Manifest{
		Versioned: specs.Versioned{SchemaVersion: 2},
		MediaType: ocispec.MediaTypeImageManifest,
		Config:    ocispec.Descriptor{MediaType: ocispec.MediaTypeImageConfig, Digest: cfgDigest, Size: int64(len(cfg))},
		Layers:    []ocispec.Descriptor{{MediaType: ocispec.MediaTypeImageLayer, Digest: layerDigest, Size: int64(len(layer))}},
	})
	if err != nil {
		t.Fatal(err)
	}
	resp := do(t, c, http.MethodPut, p.URL()+"/v2/regproxy/ctrd/manifests/v1", bytes.NewReader(manifest), "Content-Type", ocispec.MediaTypeImageManifest)
	resp.Body.Close()
	wantStatus(t, resp, http.StatusCreated)

	p.EnableTokenAuth()
	ctx := ctxTimeout(t, 30*time.Second)
	resolver := docker.NewResolver(docker.ResolverOptions{
		Hosts: config.ConfigureHosts(ctx, config.HostOptions{DefaultScheme: "http"}),
	})
	ref := p.Addr() + "/regproxy/ctrd:v1"
	name, desc, err := resolver.Resolve(ctx, ref)
	if err != nil {
		t.Fatalf("resolve %s through the proxy: %v", ref, err)
	}
	if desc.Digest != digest.FromBytes(manifest) {
		t.Fatalf("resolve %s: digest %s, want %s", ref, desc.Digest, digest.FromBytes(manifest))
	}
	fetcher, err := resolver.Fetcher(ctx, name)
	if err != nil {
		t.Fatal(err)
	}
	fetch := func(d ocispec.Descriptor, want []byte) {
		t.Helper()
		got, err := fetchAll(ctx, fetcher, d)
		if err != nil {
			t.Fatalf("fetch %s through the proxy: %v", d.Digest, err)
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("fetch %s: wrong bytes", d.Digest)
		}
	}
	layerDesc := ocispec.Descriptor{MediaType: ocispec.MediaTypeImageLayer, Digest: layerDigest, Size: int64(len(layer))}
	fetch(desc, manifest)
	fetch(layerDesc, layer)

	tokens, refusals := p.Stats().ByKind[Token], unauthorized.Load()
	if tokens == 0 {
		t.Fatalf("the resolver got %d tokens after %d challenges; want it to have followed the challenge", tokens, refusals)
	}
	p.ExpireTokens()
	fetch(layerDesc, layer)
	fetch(desc, manifest)
	if got := p.Stats().ByKind[Token]; got <= tokens {
		t.Errorf("after ExpireTokens the resolver fetched no new token (%d tokens before, %d after)", tokens, got)
	}
	// The hook runs as a handler returns; give the last one a moment.
	for deadline := time.Now().Add(time.Second); unauthorized.Load() <= refusals && time.Now().Before(deadline); {
		time.Sleep(5 * time.Millisecond)
	}
	if got := unauthorized.Load(); got <= refusals {
		t.Errorf("after ExpireTokens no request was refused (%d refusals before, %d after)", refusals, got)
	}
}

func fetchAll(ctx context.Context, f remotes.Fetcher, d ocispec.Descriptor) ([]byte, error) {
	rc, err := f.Fetch(ctx, d)
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	return io.ReadAll(rc)
}

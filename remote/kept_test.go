package remote

import (
	"context"
	"testing"

	"github.com/lazypull/lazypull/internal/regproxy"
	"github.com/lazypull/lazypull/internal/testenv"
)

// TestKeptCredentials: credentials kept for a repository of a private
// registry (tokens only for them) let the resolver and ranged reads of
// that repository in, again after the tokens expire; another repository
// on the same registry does not get them.
func TestKeptCredentials(t *testing.T) {
	ref, layer, _ := pushedLayer(t)
	host := hostOf(t, ref)
	layout, err := testenv.HelloLayout(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if err := testenv.Push(context.Background(), layout, "v1", host+"/other/hello:v1"); err != nil {
		t.Fatal(err)
	}
	p, err := regproxy.Start(host)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	p.EnableTokenAuth()
	p.RequireCredentials("tenant", "s3cret")
	mine, other := p.Addr()+"/test/hello:v1", p.Addr()+"/other/hello:v1"

	ctx := context.Background()
	opts := Options{HostsDir: t.TempDir()}
	read := func(ref string) error {
		if _, _, err := NewResolver(ctx, opts).Resolve(ctx, ref); err != nil {
			return err
		}
		b, err := OpenBlob(ctx, ref, layer, opts, BlobOptions{})
		if err != nil {
			return err
		}
		return b.FetchAt(ctx, make([]byte, 100), 0)
	}
	if err := read(mine); err == nil {
		t.Fatalf("%s read with no credentials", mine)
	}
	forget, err := KeepCredentials(mine, "tenant", "s3cret")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(forget)
	if err := read(mine); err != nil {
		t.Fatalf("%s with its kept credentials: %v", mine, err)
	}
	if err := read(other); err == nil {
		t.Errorf("%s read with the credentials kept for %s", other, mine)
	}

	// A token that expires under an open blob: it authenticates again.
	b, err := OpenBlob(ctx, mine, layer, opts, BlobOptions{})
	if err != nil {
		t.Fatal(err)
	}
	tokens := p.Stats().ByKind[regproxy.Token]
	p.ExpireTokens()
	if err := b.FetchAt(ctx, make([]byte, 100), 1000); err != nil {
		t.Errorf("a read after the tokens expired: %v", err)
	}
	if got := p.Stats().ByKind[regproxy.Token]; got <= tokens {
		t.Errorf("no new token after the tokens expired (%d before, %d after)", tokens, got)
	}
}

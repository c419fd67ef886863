package e2e

import (
	"archive/tar"
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	"github.com/opencontainers/image-spec/identity"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/lazypull/lazypull/internal/testenv"
	"github.com/lazypull/lazypull/labels"
)

// TestChainIDPoisoning: an attacker's image whose config claims the
// victim's diff_ids (so that its layer gets the victim layer's chain ID),
// pulled first through lazypull, must never make a container of the victim
// image see the attacker's files: it sees the victim's, or is refused with
// a message that says what to do.
func TestChainIDPoisoning(t *testing.T) { testenv.ForEachContainerd(t, testChainIDPoisoning) }

func testChainIDPoisoning(t *testing.T, containerd testenv.Option) {
	// Once the background fetch has the attacker's layer, it is found not
	// to be the diff_id its config claims: containers on it are refused,
	// and removing the images lets the victim be pulled right.
	t.Run("verified", func(t *testing.T) {
		metricsAddr := freeAddr(t)
		env := testenv.New(t, containerd, testenv.WithDaemonConfig(fmt.Sprintf("metrics_address = %q\n", metricsAddr)))
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		p := newPoison(t, ctx, env)
		out, err := pullLazy(t, env, p.attackerRef)
		if err != nil {
			t.Logf("the attacker's image was refused: %v\n%s", err, out)
		}
		lazy := strings.Contains(layerLine(out, p.attacker.Desc.Digest), "mounted lazily")
		if lazy {
			waitUntil(t, ctx, "the attacker's layer is rejected", func() error {
				return p.verification(t, p.attacker.Desc.Digest, "rejected")
			})
			if m := scrape(t, metricsAddr); !strings.Contains(m, `lazypull_layer_verifications_total{result="rejected"} 1`) {
				t.Errorf("the metrics do not count the rejection:\n%s", grepLines(m, "verifications"))
			}
		}
		for _, pull := range p.pulls(t) {
			if out, err := pull.do(ctx); err != nil {
				t.Logf("%s of the victim failed: %v\n%s", pull.name, err, out)
				continue
			}
			refused := p.runVictim(t, ctx, "victim-"+pull.name)
			if lazy && !refused {
				t.Errorf("after %s, a container of the victim image ran on a snapshot whose layer was rejected", pull.name)
			}
		}

		// What the refusal says to do makes it right.
		if _, err := env.Containerd.Ctr(ctx, "images", "rm", "--sync", p.attackerRef, p.victimRef); err != nil {
			t.Fatal(err)
		}
		if out, err := pullLazy(t, env, p.victimRef); err != nil {
			t.Fatalf("pull the victim again: %v\n%s", err, out)
		}
		if refused := p.runVictim(t, ctx, "victim-again"); refused {
			t.Errorf("the victim, pulled again after its images were removed, is still refused")
		}
		waitUntil(t, ctx, "the victim's layer is verified", func() error {
			return p.verification(t, p.victim.Desc.Digest, "verified")
		})

		testMovedTag(t, ctx, p)
	})

	// Until the attacker's layer has been verified, containerd hands its
	// snapshot to every image that names its chain ID, and a container's
	// Prepare carries nothing that says which image it is for: the
	// default configuration has that window (README: "The window before
	// verification"). Sites that cannot accept it verify before use: the
	// attacker's layer is then checked before it is ever committed, found
	// wrong, and unpacked instead, which containerd refuses (wrong
	// diff_id), so the victim's containers see the victim's files.
	for _, strict := range []struct{ name, config string }{
		{"verify-before-use", "[fetch]\nverify_before_use = true\n"},
		{"verify-before-use-without-background", "[fetch]\nverify_before_use = true\nbackground = false\n"},
	} {
		t.Run(strict.name, func(t *testing.T) {
			env := testenv.New(t, containerd, testenv.WithDaemonConfig(strict.config))
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
			defer cancel()
			p := newPoison(t, ctx, env)
			if out, err := pullLazy(t, env, p.attackerRef); err == nil && strings.Contains(layerLine(out, p.attacker.Desc.Digest), "mounted lazily") {
				t.Errorf("the attacker's layer was mounted lazily under a chain ID it does not make:\n%s", out)
			} else {
				t.Logf("the attacker's image: %v\n%s", err, out)
			}
			for _, pull := range p.pulls(t) {
				if out, err := pull.do(ctx); err != nil {
					t.Fatalf("%s of the victim failed: %v\n%s", pull.name, err, out)
				}
				if refused := p.runVictim(t, ctx, "victim-"+pull.name); refused {
					t.Errorf("the victim (%s) was refused: nothing of the attacker's should have been committed", pull.name)
				}
			}
		})
	}
}

// poison is a victim image and an attacker's image that claims its layer.
type poison struct {
	env              *testenv.Env
	base             testenv.Layer // the hello program, in both
	victim, attacker testenv.Layer
	victimRef        string
	attackerRef      string
}

const (
	victimOutput = "hello from lazypull\n/data/\n/data/secret.txt: the victim's own file\n"
	attackerMark = "attacker"
)

func newPoison(t *testing.T, ctx context.Context, env *testenv.Env) *poison {
	t.Helper()
	p := &poison{env: env, base: helloLayer(t, env)}
	p.victim = eStargzLayer(t, []testenv.Entry{testenv.Dir("data"), testenv.File("data/secret.txt", "the victim's own file")})
	// 1 MiB first, so that the attacker's files are in the blob's tail.
	pad := make([]byte, 1<<20)
	rand.NewChaCha8([32]byte{1}).Read(pad)
	p.attacker = eStargzLayer(t, []testenv.Entry{
		{Path: "pad", Type: tar.TypeReg, Mode: 0o644, Data: pad},
		testenv.Dir("data"),
		testenv.File("data/secret.txt", "the attacker's file"),
		testenv.File("data/evil.txt", "planted by the attacker"),
	})
	p.victimRef = env.Registry.Host + "/victim:v1"
	p.attackerRef = env.Registry.Host + "/attacker:v1"
	pushImage(t, ctx, p.victimRef, testenv.LayerImage{Layers: []testenv.Layer{p.base, p.victim}})
	pushImage(t, ctx, p.attackerRef, testenv.LayerImage{
		Layers:  []testenv.Layer{p.base, p.attacker},
		DiffIDs: []digest.Digest{p.base.DiffID, p.victim.DiffID}, // the lie
	})
	return p
}

type pullMethod struct {
	name string
	do   func(context.Context) (string, error)
}

// pulls are the ways the victim is pulled: `lazypull pull`, and ctr's own
// (through the transfer service with 2.x).
func (p *poison) pulls(t *testing.T) []pullMethod {
	return []pullMethod{
		{"lazypull-pull", func(context.Context) (string, error) { return pullLazy(t, p.env, p.victimRef) }},
		{"ctr-pull", func(ctx context.Context) (string, error) {
			return p.env.Containerd.Ctr(ctx, "images", "pull", "--plain-http", "--snapshotter", "lazypull", p.victimRef)
		}},
	}
}

// runVictim runs a container of the victim image that lists /data. It
// must list the victim's files, or be refused saying to pull again; it
// reports whether it was refused.
func (p *poison) runVictim(t *testing.T, ctx context.Context, name string) (refused bool) {
	t.Helper()
	// Its files are small and read at once: a minute is plenty.
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	out, err := p.env.Containerd.Ctr(ctx, "run", "--rm", "--snapshotter", "lazypull", p.victimRef, ctrID(p.env, name), "/hello", "/data")
	switch {
	case strings.Contains(out, attackerMark) || err != nil && strings.Contains(err.Error(), attackerMark):
		t.Errorf("POISONED: a container of the victim image (%s) sees the attacker's files: %v\n%s", name, err, out)
	case err == nil && out == victimOutput:
		return false
	case err != nil && strings.Contains(err.Error(), "pull them again"):
		t.Logf("%s refused: %v", name, err)
		return true
	default:
		t.Errorf("a container of the victim image (%s): %v\n%s\nwant:\n%s(or a refusal saying to pull again)", name, err, out, victimOutput)
	}
	return false
}

// verification fails unless the FUSE manager serves layer d with the
// given verification state.
func (p *poison) verification(t *testing.T, d digest.Digest, want string) error {
	st, err := statusOf(t, p.env)
	if err != nil {
		return err
	}
	var states []string
	for _, l := range st.Layers {
		if l.Digest == d.String() {
			if l.Verification == want {
				return nil
			}
			states = append(states, l.Verification)
		}
	}
	return fmt.Errorf("layer %s: %v", d, states)
}

// testMovedTag prepares a layer through containerd with `lazypull pull`'s
// labels, naming a manifest by digest and a tag that has since moved to
// another image which lacks the layer: the mounter must fetch the manifest
// containerd pinned, not what the tag now names, and mount the layer.
// The victim's base snapshot must exist.
func testMovedTag(t *testing.T, ctx context.Context, p *poison) {
	t.Helper()
	ref := p.env.Registry.Host + "/moving:v1"
	first := eStargzLayer(t, []testenv.Entry{testenv.File("first.txt", "the image the tag named first")})
	pinned := pushImage(t, ctx, ref, testenv.LayerImage{Layers: []testenv.Layer{p.base, first}})
	second := eStargzLayer(t, []testenv.Entry{testenv.File("second.txt", "the image the tag names now")})
	if moved := pushImage(t, ctx, ref, testenv.LayerImage{Layers: []testenv.Layer{p.base, second}}); moved == pinned {
		t.Fatal("the tag did not move")
	}

	client, err := containerd.New(p.env.Containerd.Address)
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	ctx = namespaces.WithNamespace(ctx, testenv.Namespace)
	lbls := labels.ForLayer(ref, pinned, first.Desc, []ocispec.Descriptor{p.base.Desc, first.Desc})
	chain := identity.ChainID([]digest.Digest{p.base.DiffID, first.DiffID})
	lbls[snapshots.LabelSnapshotRef] = chain.String()
	lbls["containerd.io/gc.root"] = time.Now().UTC().Format(time.RFC3339) // kept until the Env goes
	_, err = client.SnapshotService("lazypull").Prepare(ctx, "moved-tag", p.base.DiffID.String(), snapshots.WithLabels(lbls))
	if !errdefs.IsAlreadyExists(err) {
		t.Fatalf("Prepare of a layer of the manifest %s, its tag moved since: %v; want it mounted lazily (AlreadyExists)", pinned, err)
	}
	mp := mountpointOf(t, p.env, first.Desc.Digest)
	if b, err := os.ReadFile(filepath.Join(mp, "first.txt")); err != nil || string(b) != "the image the tag named first" {
		t.Errorf("the layer mounted for the pinned manifest: %q, %v", b, err)
	}
}

// scrape returns the FUSE manager's metrics.
func scrape(t *testing.T, addr string) string {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatalf("scrape metrics: %v", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("scrape metrics: %v", err)
	}
	return string(body)
}

// grepLines keeps the lines of s that contain sub.
func grepLines(s, sub string) string {
	var keep []string
	for _, line := range strings.Split(s, "\n") {
		if strings.Contains(line, sub) {
			keep = append(keep, line)
		}
	}
	return strings.Join(keep, "\n")
}

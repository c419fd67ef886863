package e2e

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/lazypull/lazypull/fusemanager"
	"github.com/lazypull/lazypull/internal/testenv"
	"github.com/lazypull/lazypull/profile"
	"github.com/lazypull/lazypull/profile/artifact"
	"github.com/lazypull/lazypull/remote"
	"github.com/lazypull/lazypull/transport"
)

// TestProfile is the workload profile's path through the CLI, with real
// containerd, runc and registry: lazypull profile record runs the hello
// image's workload and writes what it read; convert --profile puts those
// files first in each eStargz layer and attaches the profile for the new
// image's layers; a lazy pull of that image finds it among the manifest's
// referrers and fetches what it names (lazypull status), and the
// container prints what it should.
func TestProfile(t *testing.T) {
	env := testenv.New(t, testenv.WithDaemonConfig("[fetch]\nbackground = false\n"))
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	plain, err := env.PushHello(ctx)
	if err != nil {
		t.Fatal(err)
	}
	esgz := env.Registry.Host + "/hello:esgz"
	if _, err := lazypull(t, env.BinDir, "convert", "-q", "--prioritize-startup=false", "docker://"+plain, "docker://"+esgz); err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(t.TempDir(), "hello.json")
	if _, err := lazypull(t, env.BinDir, "profile", "record", "--quiet", "--address", env.Containerd.Address, "--namespace", testenv.Namespace,
		"--wait-for", "/data/opaque/new.txt", "-o", file, "docker://"+esgz); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	p, err := profile.Parse(data)
	if err != nil {
		t.Fatal(err)
	}
	if paths := p.Paths(); len(paths) == 0 || paths[0] != "hello" {
		t.Fatalf("the recorded profile reads %v; want hello first", paths)
	}

	tuned := env.Registry.Host + "/hello:tuned"
	out, err := lazypull(t, env.BinDir, "convert", "-q", "--profile", file, "docker://"+plain, "docker://"+tuned)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out, "profile sha256:") {
		t.Errorf("convert --profile did not say it attached the profile:\n%s", out)
	}
	// The files the workload read lead the base layer, before its
	// prefetch landmark; without a profile (and without the startup
	// files) there is none.
	for ref, want := range map[string]bool{tuned: true, esgz: false} {
		out, err := lazypull(t, env.BinDir, "inspect", "--json", "docker://"+ref)
		if err != nil {
			t.Fatal(err)
		}
		var ms []struct {
			Layers []struct {
				PrefetchSize int64 `json:"prefetchSize"`
			} `json:"layers"`
		}
		if err := json.Unmarshal([]byte(out), &ms); err != nil || len(ms) != 1 || len(ms[0].Layers) != 2 {
			t.Fatalf("lazypull inspect --json %s: %v\n%s", ref, err, out)
		}
		if got := ms[0].Layers[0].PrefetchSize > 0; got != want {
			t.Errorf("%s: its base layer has a prefetch area: %v; want %v", ref, got, want)
		}
	}
	m := manifestOf(t, "docker://"+tuned)
	loc, err := transport.Open(ctx, transport.Ref{Transport: transport.Docker, Name: tuned}, remote.Options{})
	if err != nil {
		t.Fatal(err)
	}
	root, err := loc.Resolve(ctx)
	if err != nil {
		t.Fatal(err)
	}
	found, err := artifact.Find(ctx, loc, root.Digest)
	if err != nil || len(found) != 1 {
		t.Fatalf("profiles attached to %s: %d, %v; want the one convert attached", tuned, len(found), err)
	}
	for i, l := range found[0].Layers {
		if l.Digest != m.Layers[i].Digest {
			t.Errorf("the attached profile's layer %d is %s; the image's is %s", i, l.Digest, m.Layers[i].Digest)
		}
	}

	if _, err := pullLazy(t, env, tuned); err != nil {
		t.Fatal(err)
	}
	run, err := env.Containerd.Ctr(ctx, "run", "--rm", "--snapshotter", "lazypull", tuned, "tuned")
	if err != nil || run != testenv.HelloOutput {
		t.Fatalf("the profiled container: %v\n%s", err, run)
	}
	// Profiles are looked up after the manifest: the base layer's fetch
	// of what the profile read is under way or done by now.
	base := m.Layers[0].Digest
	deadline := time.Now().Add(30 * time.Second)
	for profiledBytes(t, env, base) == 0 {
		if time.Now().After(deadline) {
			t.Fatalf("lazypull status shows no profiled bytes for the base layer %s", base)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// profiledBytes is what lazypull status --json says workload profiles
// asked of layer d.
func profiledBytes(t *testing.T, env *testenv.Env, d digest.Digest) int64 {
	t.Helper()
	out, err := lazypull(t, env.BinDir, "status", "--root", env.DaemonRoot, "--json")
	if err != nil {
		t.Fatal(err)
	}
	var st fusemanager.StatusReply
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		t.Fatalf("lazypull status --json: %v\n%s", err, out)
	}
	for _, l := range st.Layers {
		if l.Digest == d.String() {
			return l.ProfiledBytes
		}
	}
	return 0
}

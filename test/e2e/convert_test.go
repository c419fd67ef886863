package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/lazypull/lazypull/format/estargz"
	"github.com/lazypull/lazypull/internal/testenv"
	"github.com/lazypull/lazypull/remote"
	"github.com/lazypull/lazypull/transport"
)

// lazypull runs the built CLI and returns its stdout; stderr goes in the error.
func lazypull(t *testing.T, bin string, args ...string) (string, error) {
	t.Helper()
	cmd := exec.Command(filepath.Join(bin, "lazypull"), args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	if err != nil {
		return stdout.String(), &cliError{err: err, stderr: stderr.String()}
	}
	return stdout.String(), nil
}

type cliError struct {
	err    error
	stderr string
}

func (e *cliError) Error() string { return e.err.Error() + ": " + e.stderr }

// manifestOf fetches the manifest a reference names.
func manifestOf(t *testing.T, ref string) ocispec.Manifest {
	t.Helper()
	ctx := context.Background()
	r, err := transport.ParseRef(ref)
	if err != nil {
		t.Fatal(err)
	}
	loc, err := transport.Open(ctx, r, remote.Options{})
	if err != nil {
		t.Fatal(err)
	}
	desc, err := loc.Resolve(ctx)
	if err != nil {
		t.Fatal(err)
	}
	rc, err := loc.Fetch(ctx, desc)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	data, err := io.ReadAll(rc)
	if err != nil {
		t.Fatal(err)
	}
	var m ocispec.Manifest
	if err := json.Unmarshal(data, &m); err != nil {
		t.Fatal(err)
	}
	return m
}

// TestConvertRunsEverywhere converts the test image to eStargz between a
// registry and an OCI layout, and runs the result with containerd's own
// overlayfs snapshotter (it is still an ordinary image) and with ours.
func TestConvertRunsEverywhere(t *testing.T) {
	env := testenv.New(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	ref, err := env.PushHello(ctx)
	if err != nil {
		t.Fatal(err)
	}
	host := env.Registry.Host
	esgz := host + "/hello:esgz"
	if _, err := lazypull(t, env.BinDir, "convert", "--quiet", "docker://"+ref, "docker://"+esgz); err != nil {
		t.Fatal(err)
	}
	m := manifestOf(t, "docker://"+esgz)
	if len(m.Layers) != 2 {
		t.Fatalf("converted manifest has %d layers, want 2", len(m.Layers))
	}
	for i, l := range m.Layers {
		if l.Annotations[estargz.TOCDigestAnnotation] == "" || l.MediaType != ocispec.MediaTypeImageLayerGzip {
			t.Errorf("layer %d: %s with annotations %v, want gzip with a TOC digest", i, l.MediaType, l.Annotations)
		}
	}

	// Through an OCI layout and back; a second conversion keeps the layers.
	layout := filepath.Join(t.TempDir(), "layout")
	if _, err := lazypull(t, env.BinDir, "convert", "-q", "docker://"+esgz, "oci:"+layout+":v1"); err != nil {
		t.Fatal(err)
	}
	again := host + "/hello:esgz-again"
	if _, err := lazypull(t, env.BinDir, "convert", "-q", "oci:"+layout+":v1", "docker://"+again); err != nil {
		t.Fatal(err)
	}
	for i, l := range manifestOf(t, "docker://"+again).Layers {
		if l.Digest != m.Layers[i].Digest {
			t.Errorf("layer %d was converted again (%s), want it kept (%s)", i, l.Digest, m.Layers[i].Digest)
		}
	}

	ctr := env.Containerd.Ctr
	for _, snapshotter := range []string{"overlayfs", "lazypull"} {
		if _, err := ctr(ctx, "images", "pull", "--plain-http", "--snapshotter", snapshotter, esgz); err != nil {
			t.Fatal(err)
		}
		out, err := ctr(ctx, "run", "--rm", "--snapshotter", snapshotter, esgz, "conv-"+snapshotter)
		if err != nil {
			t.Fatalf("%s: %v", snapshotter, err)
		}
		if out != testenv.HelloOutput {
			t.Errorf("%s: the converted image printed:\n%s", snapshotter, out)
		}
	}
}

// TestConvertFailureLeavesNothing: a source layer whose bytes do not match
// its digest stops the conversion before anything reaches the destination.
func TestConvertFailureLeavesNothing(t *testing.T) {
	bin := buildCommands(t)
	work := t.TempDir()
	hello, err := testenv.BuildHello(work)
	if err != nil {
		t.Fatal(err)
	}
	img, err := testenv.HelloImage(hello)
	if err != nil {
		t.Fatal(err)
	}
	src := filepath.Join(work, "src")
	if _, err := img.WriteOCILayout(src, "v1"); err != nil {
		t.Fatal(err)
	}
	// Damage the second layer's blob, keeping its size.
	m := manifestOf(t, "oci:"+src+":v1")
	blob := filepath.Join(src, "blobs", "sha256", m.Layers[1].Digest.Encoded())
	data, _ := os.ReadFile(blob)
	data[len(data)/2] ^= 0xff
	os.WriteFile(blob, data, 0o644)

	dst := filepath.Join(work, "dst")
	_, err = lazypull(t, bin, "convert", "-q", "oci:"+src+":v1", "oci:"+dst+":v1")
	if err == nil || !strings.Contains(err.Error(), m.Layers[1].Digest.String()) {
		t.Fatalf("converting a damaged image: err = %v, want one naming layer %s", err, m.Layers[1].Digest)
	}
	if entries, _ := os.ReadDir(dst); len(entries) > 0 {
		t.Errorf("a failed conversion left %d entries in %s", len(entries), dst)
	}
}

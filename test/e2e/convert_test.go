package e2e

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/lazypull/lazypull/format/estargz"
	"github.com/lazypull/lazypull/format/zstdchunked"
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

// TestConvertRunsEverywhere converts the test image to eStargz (between a
// registry and an OCI layout) and to zstd:chunked, verifies both, and runs
// them with containerd's own overlayfs snapshotter (they are still ordinary
// images) and with ours.
func TestConvertRunsEverywhere(t *testing.T) { testenv.ForEachContainerd(t, testConvertRunsEverywhere) }

func testConvertRunsEverywhere(t *testing.T, containerd testenv.Option) {
	env := testenv.New(t, containerd)
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

	zstd := host + "/hello:zstd"
	if _, err := lazypull(t, env.BinDir, "convert", "-q", "--format", "zstdchunked", "docker://"+ref, "docker://"+zstd); err != nil {
		t.Fatal(err)
	}
	for i, l := range manifestOf(t, "docker://"+zstd).Layers {
		if l.Annotations[zstdchunked.ManifestChecksumAnnotation] == "" || l.MediaType != zstdchunked.MediaType {
			t.Errorf("zstd layer %d: %s with annotations %v", i, l.MediaType, l.Annotations)
		}
	}
	for _, converted := range []string{esgz, zstd} {
		if out, err := lazypull(t, env.BinDir, "inspect", "--verify", "docker://"+converted); err != nil || strings.Count(out, " ok") != 2 {
			t.Errorf("inspect --verify %s: %v\n%s", converted, err, out)
		}
	}

	ctr := env.Containerd.Ctr
	for _, image := range []string{esgz, zstd} {
		for _, snapshotter := range []string{"overlayfs", "lazypull"} {
			if _, err := ctr(ctx, "images", "pull", "--plain-http", "--snapshotter", snapshotter, image); err != nil {
				t.Fatal(err)
			}
			out, err := ctr(ctx, "run", "--rm", "--snapshotter", snapshotter, image, "conv-"+snapshotter)
			if err != nil {
				t.Fatalf("%s with %s: %v", image, snapshotter, err)
			}
			if out != testenv.HelloOutput {
				t.Errorf("%s with %s: the converted image printed:\n%s", image, snapshotter, out)
			}
		}
	}
}

// TestConvertFailureLeavesNothing: a source layer whose bytes do not match
// its digest stops the conversion before anything reaches the destination.
func TestConvertFailureLeavesNothing(t *testing.T) {
	bin := buildCommands(t)
	work := t.TempDir()
	src, err := testenv.HelloLayout(work)
	if err != nil {
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

// TestInspectVerify converts the test image into an OCI layout, verifies it,
// then forges a layer whose blob digest is consistent but whose chunk is
// not what its TOC says: --verify must name the file.
func TestInspectVerify(t *testing.T) {
	bin := buildCommands(t)
	work := t.TempDir()
	src, err := testenv.HelloLayout(work)
	if err != nil {
		t.Fatal(err)
	}
	dst := filepath.Join(work, "dst")
	if _, err := lazypull(t, bin, "convert", "-q", "oci:"+src+":v1", "oci:"+dst+":v1"); err != nil {
		t.Fatal(err)
	}
	out, err := lazypull(t, bin, "inspect", "--verify", "oci:"+dst+":v1")
	if err != nil {
		t.Fatalf("inspect --verify of a fresh conversion: %v\n%s", err, out)
	}
	if strings.Count(out, " ok") != 2 || strings.Count(out, "estargz") != 2 {
		t.Errorf("inspect output does not show two verified eStargz layers:\n%s", out)
	}

	forgeLayer(t, dst, "v1", filepath.Join(work, "hello"))
	out, err = lazypull(t, bin, "inspect", "--verify", "oci:"+dst+":v1")
	if err == nil || !strings.Contains(err.Error(), `file "hello"`) {
		t.Errorf("inspect --verify of a forged layer: err = %v, want one naming file \"hello\"\n%s", err, out)
	}
}

// forgeLayer replaces the layout's first layer with one whose TOC is intact
// (and matches its annotation) but whose copy of the file at path differs by
// one byte, with a blob digest and manifest that agree with the forgery: only
// the chunk digest can tell.
func forgeLayer(t *testing.T, dir, tag, path string) {
	t.Helper()
	ctx := context.Background()
	loc, err := transport.Open(ctx, transport.Ref{Transport: transport.OCI, Name: dir, Tag: tag}, remote.Options{})
	if err != nil {
		t.Fatal(err)
	}
	root, err := loc.Resolve(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var m ocispec.Manifest
	if _, err := transport.FetchJSON(ctx, loc, root, &m); err != nil {
		t.Fatal(err)
	}
	rc, err := loc.Fetch(ctx, m.Layers[0])
	if err != nil {
		t.Fatal(err)
	}
	zr, err := gzip.NewReader(rc)
	if err != nil {
		t.Fatal(err)
	}
	layerTar, err := io.ReadAll(zr)
	rc.Close()
	if err != nil {
		t.Fatal(err)
	}
	// Level 0 stores the file verbatim, so a byte can be flipped in place.
	var blob bytes.Buffer
	w := estargz.NewWriter(&blob, estargz.WithCompressionLevel(0))
	if err := w.AppendTar(bytes.NewReader(layerTar)); err != nil {
		t.Fatal(err)
	}
	res, err := w.Close()
	if err != nil {
		t.Fatal(err)
	}
	original, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	forged := blob.Bytes()
	i := bytes.Index(forged, original[1000:1064])
	if i < 0 {
		t.Fatal("the file's bytes are not stored verbatim in the level-0 blob")
	}
	forged[i] ^= 0xff

	layer := ocispec.Descriptor{MediaType: ocispec.MediaTypeImageLayerGzip, Digest: digest.FromBytes(forged), Size: int64(len(forged)), Annotations: res.Annotations}
	if err := loc.Push(ctx, layer, bytes.NewReader(forged)); err != nil {
		t.Fatal(err)
	}
	m.Layers[0] = layer
	manifest, _ := json.Marshal(m)
	desc := ocispec.Descriptor{MediaType: ocispec.MediaTypeImageManifest, Digest: digest.FromBytes(manifest), Size: int64(len(manifest))}
	if err := loc.Push(ctx, desc, bytes.NewReader(manifest)); err != nil {
		t.Fatal(err)
	}
	if err := loc.Tag(ctx, desc); err != nil {
		t.Fatal(err)
	}
}

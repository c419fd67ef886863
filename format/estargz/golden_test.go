package estargz

import (
	"bytes"
	"flag"
	"os"
	"path/filepath"
	"testing"

	"github.com/opencontainers/go-digest"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/golden")

// TestGolden pins the bytes the writer produces for a fixed layer, and
// reads the committed blob back: a change to either shows up here.
// Regenerate with: go test ./format/estargz -run Golden -update
func TestGolden(t *testing.T) {
	layer := makeTar(t, sampleLayer())
	blob, res := build(t, layer, WithChunkSize(1<<16), WithPrioritizedFiles([]string{"etc/hostname"}))
	dir := filepath.Join("testdata", "golden")
	if *update {
		os.MkdirAll(dir, 0o755)
		os.WriteFile(filepath.Join(dir, "layer.tar.esgz"), blob, 0o644)
		os.WriteFile(filepath.Join(dir, "toc.digest"), []byte(res.TOCDigest.String()+"\n"), 0o644)
	}
	golden, err := os.ReadFile(filepath.Join(dir, "layer.tar.esgz"))
	if err != nil {
		t.Fatalf("%v (regenerate with -update)", err)
	}
	wantTOC, _ := os.ReadFile(filepath.Join(dir, "toc.digest"))
	if !bytes.Equal(blob, golden) {
		t.Errorf("the writer's output changed (%s, golden %s): if on purpose, run with -update", digest.FromBytes(blob), digest.FromBytes(golden))
	}
	r := open(t, golden, WithTOCDigest(digest.Digest(bytes.TrimSpace(wantTOC))))
	checkLayer(t, r, sampleLayer())
}

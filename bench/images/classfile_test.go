package images

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/lazypull/lazypull/internal/testenv"
)

// TestPrintlnClass runs the assembled class on the host's JVM; the full
// build (TestBuildAll) runs it on the image's own JRE too.
func TestPrintlnClass(t *testing.T) {
	java := testenv.NeedBinary(t, "java")
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "Ready.class"), printlnClass("Ready", "READY java"), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(java, "-cp", dir, "Ready").CombinedOutput()
	if err != nil {
		t.Fatalf("java Ready: %v: %s", err, out)
	}
	if string(out) != "READY java\n" {
		t.Fatalf("java Ready printed %q, want %q", out, "READY java\n")
	}
}

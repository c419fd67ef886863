package images

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// TestPrintlnClass runs the assembled class on the host's JVM when there is
// one; the gated full build (TestBuildAll) runs it on the image's own JRE.
func TestPrintlnClass(t *testing.T) {
	java, err := exec.LookPath("java")
	if err != nil {
		t.Skip("no java on PATH; TestBuildAll (LAZYPULL_BENCH_IMAGES=1) runs the class in the java image")
	}
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

package testenv

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestUnescapeMountinfo(t *testing.T) {
	if got := unescapeMountinfo(`/tmp/a\040b\134c\012`); got != "/tmp/a b\\c\n" {
		t.Errorf("got %q", got)
	}
}

// The release the tests look for is the one the install script builds.
func TestContainerd2MatchesInstallScript(t *testing.T) {
	script, err := os.ReadFile(filepath.Join(SourceRoot(), "scripts", "install-deps.sh"))
	if err != nil {
		t.Fatal(err)
	}
	cache := strings.Replace(filepath.Dir(Containerd2.BinDir), Containerd2Version, "$CONTAINERD2_VERSION", 1)
	for _, want := range []string{"CONTAINERD2_VERSION=" + Containerd2Version + "\n", "containerd2=" + cache + "\n"} {
		if !strings.Contains(string(script), want) {
			t.Errorf("scripts/install-deps.sh has no line %q: it builds another containerd than testenv.Containerd2 (%s in %s)", strings.TrimSpace(want), Containerd2Version, Containerd2.BinDir)
		}
	}
}

func TestContainerdByName(t *testing.T) {
	for name, want := range map[string]string{"1.6": "1.6", "2": Containerd2.Name, Containerd2.Name: Containerd2.Name} {
		r, err := ContainerdByName(name)
		if err != nil || r.Name != want {
			t.Errorf("ContainerdByName(%q) = %q, %v; want %q", name, r.Name, err, want)
		}
	}
	if _, err := ContainerdByName("3"); err == nil || !strings.Contains(err.Error(), "1.6, "+Containerd2.Name) {
		t.Errorf("ContainerdByName(\"3\") = %v, want an error listing the releases", err)
	}
}

package testenv

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
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

// Right after StartDaemon, containerd's calls reach the new daemon, even
// when one was made while it was down: containerd then backs off redialing
// it, and the next calls failed for a second or more.
func TestStartDaemonReachable(t *testing.T) {
	NeedFUSE(t)
	ForEachContainerd(t, func(t *testing.T, containerd Option) {
		env := New(t, containerd)
		for i := 0; i < 3; i++ {
			if err := env.Daemon.Stop(15 * time.Second); err != nil {
				t.Fatal(err)
			}
			if err := env.reachDaemon(); err == nil {
				t.Fatal("containerd reached the daemon after it had stopped")
			}
			if err := env.StartDaemon(); err != nil {
				t.Fatal(err)
			}
			if err := env.reachDaemon(); err != nil {
				t.Fatalf("restart %d: %v", i+1, err)
			}
		}
	})
}

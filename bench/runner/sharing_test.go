package runner

import (
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

// TestDiskUsage checks the footprint's two measures on files of known
// size: a file's blocks are counted once however many links it has (as the
// object store links one object into many places), a missing root is
// empty, and the resident pages follow what was read.
func TestDiskUsage(t *testing.T) {
	dir := t.TempDir()
	a, b := filepath.Join(dir, "a"), filepath.Join(dir, "b")
	page := os.Getpagesize()
	data := make([]byte, 16*page)
	for i := range data {
		data[i] = byte(i)
	}
	f, err := os.Create(filepath.Join(a))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Write(data); err != nil {
		t.Fatal(err)
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	os.Mkdir(b, 0o755)
	if err := os.Link(a, filepath.Join(b, "link")); err != nil {
		t.Fatal(err)
	}
	var st unix.Stat_t
	if err := unix.Stat(a, &st); err != nil {
		t.Fatal(err)
	}
	one := st.Blocks * 512
	if one < int64(len(data)) {
		t.Fatalf("the file takes %d bytes of blocks for %d bytes written", one, len(data))
	}

	// Evicted (clean pages, after the sync), then read whole.
	if err := unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED); err != nil {
		t.Fatal(err)
	}
	u, err := diskUsage(dir, b, filepath.Join(dir, "missing"))
	if err != nil {
		t.Fatal(err)
	}
	// b is walked twice (under dir and as a root): counted once too.
	if want := one + dirBlocks(t, dir) + dirBlocks(t, b); u.files != 1 || u.bytes != want {
		t.Errorf("usage %+v: want 1 file and %d bytes (the file once, two directories)", u, want)
	}
	if u.fileBytes != one {
		t.Errorf("%d bytes of regular files, want %d", u.fileBytes, one)
	}
	if u.resident != 0 {
		t.Errorf("%d bytes resident after the pages were dropped", u.resident)
	}
	if _, err := f.ReadAt(make([]byte, len(data)), 0); err != nil {
		t.Fatal(err)
	}
	f.Close()
	u, err = diskUsage(b)
	if err != nil {
		t.Fatal(err)
	}
	if u.resident != int64(len(data)) {
		t.Errorf("%d bytes resident after reading the file's %d", u.resident, len(data))
	}
}

func dirBlocks(t *testing.T, dir string) int64 {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat(dir, &st); err != nil {
		t.Fatal(err)
	}
	return st.Blocks * 512
}

// TestScenarioDaemonConfig checks where lazypull's daemon configuration
// comes from: the scenario's own (lazypull-composefs turns its mode on)
// else the run's, which reaches every other lazypull scenario unchanged.
func TestScenarioDaemonConfig(t *testing.T) {
	cfg := Config{DaemonConfig: "log_level = \"debug\"\n"}
	if got := cfg.daemonConfig(LazypullComposefs); got != "[composefs]\nenable = true\n" {
		t.Errorf("lazypull-composefs runs with %q", got)
	}
	for _, sc := range []Scenario{Overlayfs, LazypullEStargz, LazypullZstd} {
		if got := cfg.daemonConfig(sc); got != cfg.DaemonConfig {
			t.Errorf("%s runs with %q, not the run's configuration", sc.Name, got)
		}
	}
	// A scenario file's config is its own daemon's, not lazypull's.
	other := Scenario{Name: "x", Snapshotter: "x", Daemon: []string{"x"}, Config: "y = 1\n"}
	if got := cfg.daemonConfig(other); got != cfg.DaemonConfig {
		t.Errorf("another daemon's config reached lazypull's: %q", got)
	}
	for _, sc := range Scenarios() {
		if !footprintScenario(sc) {
			t.Errorf("no footprint for %s", sc.Name)
		}
	}
	if footprintScenario(other) {
		t.Error("a footprint for another snapshotter, whose roots the runner does not know")
	}
}

package service

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/lazypull/lazypull/cache"
)

func writeConfig(t *testing.T, text string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "config.toml")
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestLoadConfigMissingFileMeansDefaults(t *testing.T) {
	cfg, err := LoadConfig(filepath.Join(t.TempDir(), "absent.toml"))
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(cfg, DefaultConfig()) {
		t.Errorf("got %+v, want the defaults %+v", cfg, DefaultConfig())
	}
}

func TestLoadConfig(t *testing.T) {
	cfg, err := LoadConfig(writeConfig(t, `
root = "/srv/lazypull"
log_level = "debug"
[snapshotter]
async_remove = true
upperdir_label = true
mount_options = ["volatile"]
[fuse]
read_ahead_kb = 128
`))
	if err != nil {
		t.Fatal(err)
	}
	want := DefaultConfig()
	want.Path = cfg.Path
	want.Root = "/srv/lazypull"
	want.LogLevel = "debug"
	want.Snapshotter = SnapshotterConfig{AsyncRemove: true, UpperdirLabel: true, MountOptions: []string{"volatile"}}
	want.FUSE.ReadAheadKiB = 128
	if !reflect.DeepEqual(cfg, want) {
		t.Errorf("got %+v, want %+v", cfg, want)
	}
	if got := cfg.mounterOptions().FUSE.ReadAheadKiB; got != 128 {
		t.Errorf("the mounts' read-ahead is %d KiB, want the configured 128", got)
	}
	if n := len(cfg.Snapshotter.snapshotOpts()); n != 3 {
		t.Errorf("%d snapshotter options, want 3", n)
	}
}

func TestLoadConfigErrorsNameTheProblem(t *testing.T) {
	for _, tc := range []struct{ text, want string }{
		{"bogus = 1", `unknown key "bogus" (line 1)`},
		{"[snapshotter]\nasync = true", `unknown key "snapshotter.async" (line 2)`},
		{"[snapshotter]\nasync_remove = \"yes\"", "snapshotter.async_remove: want a bool, got a string"},
		{`log_level = "loud"`, `log_level "loud"`},
		{`root = "relative/dir"`, `root "relative/dir": must be an absolute path`},
		{`address = "lazypull.sock"`, `address "lazypull.sock"`},
		{"[snapshotter]\nmount_options = [\"upperdir=/x\"]", `"upperdir=/x" is set per snapshot`},
		{"root = ", "line 1"},
		{"[cache]\nmax_bytes = -1", "cannot be negative"},
		{"[fuse]\nread_ahead_kb = -4", "fuse.read_ahead_kb -4: want 0 (the default, 64) to 16384"},
		{`metrics_address = "0.0.0.0:9110"`, "set metrics_allow_remote = true"},
		{`metrics_address = ":9110"`, `metrics_address ":9110": other hosts could reach it`},
		{`metrics_address = "metrics.sock"`, "metrics_address: "},
		{"metrics_allow_remote = true\ndebug_address = \"0.0.0.0:6060\"", `debug_address "0.0.0.0:6060": other hosts could reach it`},
		{`cri_image_service_address = "cri.sock"`, `cri_image_service_address "cri.sock": must be the absolute path`},
		{"containerd_address = \"\"\ncri_image_service_address = \"/run/cri.sock\"", "needs containerd_address"},
		{"metrics_address = \"127.0.0.1:9110\"\ndebug_address = \"127.0.0.1:9110\"", "give profiles an address of their own"},
	} {
		path := writeConfig(t, tc.text)
		_, err := LoadConfig(path)
		if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), path) {
			t.Errorf("config %q: err = %v, want one naming %s and containing %q", tc.text, err, path, tc.want)
		}
	}
}

// TestCacheMaxBytes: unset, the cache takes its default share of the
// filesystem; an explicit 0 is unbounded.
func TestCacheMaxBytes(t *testing.T) {
	for _, tc := range []struct {
		text    string
		limited bool
		want    int64
	}{
		{"", true, 0},
		{"[cache]\nmax_bytes = 0", false, 0},
		{"[cache]\nmax_bytes = 1000", true, 1000},
	} {
		cfg, err := LoadConfig(writeConfig(t, tc.text))
		if err != nil {
			t.Fatal(err)
		}
		c, err := cache.New(t.TempDir(), cfg.Cache.cacheOptions()...)
		if err != nil {
			t.Fatal(err)
		}
		got := c.Stats().MaxBytes
		c.Close()
		if limited := got != 0; limited != tc.limited || tc.want != 0 && got != tc.want {
			t.Errorf("config %q: cache limit %d bytes, want limited %v (%d)", tc.text, got, tc.limited, tc.want)
		}
	}
}

func TestLoadConfigEndpoints(t *testing.T) {
	for _, text := range []string{
		`metrics_address = "127.0.0.1:9110"`,
		`metrics_address = "/run/lazypull/metrics.sock"`,
		"metrics_address = \"0.0.0.0:9110\"\nmetrics_allow_remote = true",
		`debug_address = "localhost:6060"`,
	} {
		if _, err := LoadConfig(writeConfig(t, text)); err != nil {
			t.Errorf("config %q: %v", text, err)
		}
	}
}

package service

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
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
`))
	if err != nil {
		t.Fatal(err)
	}
	want := DefaultConfig()
	want.Path = cfg.Path
	want.Root = "/srv/lazypull"
	want.LogLevel = "debug"
	want.Snapshotter = SnapshotterConfig{AsyncRemove: true, UpperdirLabel: true, MountOptions: []string{"volatile"}}
	if !reflect.DeepEqual(cfg, want) {
		t.Errorf("got %+v, want %+v", cfg, want)
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
	} {
		path := writeConfig(t, tc.text)
		_, err := LoadConfig(path)
		if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), path) {
			t.Errorf("config %q: err = %v, want one naming %s and containing %q", tc.text, err, path, tc.want)
		}
	}
}

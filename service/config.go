// Package service wires lazypull's parts into the snapshotter daemon: it
// reads the configuration, owns the daemon's root and socket, and serves
// containerd's snapshots API. It knows the parts' options, not their
// internals; command-line parsing stays in cmd/.
package service

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"

	"github.com/pelletier/go-toml/v2"
	"github.com/sirupsen/logrus"

	"github.com/lazypull/lazypull/snapshot"
)

// Defaults, as a fresh install uses them.
const (
	DefaultConfigPath = "/etc/lazypull/config.toml"
	DefaultAddress    = "/run/lazypull/lazypull.sock"
	DefaultRoot       = "/var/lib/lazypull"
	DefaultLogLevel   = "info"
)

// Config is the daemon's configuration file (TOML). Every key is documented
// in the README with its default; keep the two in step.
type Config struct {
	// Root holds the daemon's state: snapshot metadata and directories.
	Root string `toml:"root"`
	// Address is the unix socket that containerd's proxy plugin dials.
	Address string `toml:"address"`
	// LogLevel is one of trace, debug, info, warn, error.
	LogLevel string `toml:"log_level"`

	Snapshotter SnapshotterConfig `toml:"snapshotter"`
}

// SnapshotterConfig mirrors the options of containerd's overlayfs plugin.
type SnapshotterConfig struct {
	// AsyncRemove leaves removed snapshots' directories to Cleanup
	// (containerd's garbage collector calls it).
	AsyncRemove bool `toml:"async_remove"`
	// UpperdirLabel adds containerd.io/snapshot/overlay.upperdir to snapshot info.
	UpperdirLabel bool `toml:"upperdir_label"`
	// RemapIDs passes uidmap=/gidmap= to the overlay mount for user-namespaced
	// containers; needs containerd 2.x.
	RemapIDs bool `toml:"remap_ids"`
	// MountOptions are added to every overlay mount.
	MountOptions []string `toml:"mount_options"`
}

// DefaultConfig is the configuration when no file says otherwise.
func DefaultConfig() Config {
	return Config{Root: DefaultRoot, Address: DefaultAddress, LogLevel: DefaultLogLevel}
}

// LoadConfig reads the configuration file at path over the defaults. A
// missing file means the defaults; an unknown key or a bad value is an error
// that names it.
func LoadConfig(path string) (Config, error) {
	cfg := DefaultConfig()
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return cfg, nil
	}
	if err != nil {
		return cfg, fmt.Errorf("read config: %w", err)
	}
	dec := toml.NewDecoder(bytes.NewReader(data)).DisallowUnknownFields()
	if err := dec.Decode(&cfg); err != nil {
		return cfg, fmt.Errorf("config %s: %s", path, describeTOMLError(err))
	}
	if err := cfg.Validate(); err != nil {
		return cfg, fmt.Errorf("config %s: %w", path, err)
	}
	return cfg, nil
}

var typeMismatch = regexp.MustCompile(`cannot decode TOML (\w+) into .* of type (\S+)$`)

func describeTOMLError(err error) string {
	var strict *toml.StrictMissingError
	if errors.As(err, &strict) {
		var keys []string
		for _, e := range strict.Errors {
			row, _ := e.Position()
			keys = append(keys, fmt.Sprintf("%q (line %d)", strings.Join(e.Key(), "."), row))
		}
		return "unknown key " + strings.Join(keys, ", ") + "; see the README for the keys lazypull knows"
	}
	var decErr *toml.DecodeError
	if errors.As(err, &decErr) {
		row, col := decErr.Position()
		msg := decErr.Error()
		// The decoder names Go types and fields; say it in the file's terms.
		if m := typeMismatch.FindStringSubmatch(msg); m != nil {
			msg = fmt.Sprintf("want a %s, got a %s", m[2], m[1])
		}
		if key := strings.Join(decErr.Key(), "."); key != "" {
			msg = key + ": " + msg
		}
		return fmt.Sprintf("line %d, column %d: %s", row, col, msg)
	}
	return err.Error()
}

// Validate checks values that TOML's types cannot.
func (c Config) Validate() error {
	if !filepath.IsAbs(c.Root) {
		return fmt.Errorf("root %q: must be an absolute path", c.Root)
	}
	if !filepath.IsAbs(c.Address) {
		return fmt.Errorf("address %q: must be the absolute path of a unix socket", c.Address)
	}
	if _, err := logrus.ParseLevel(c.LogLevel); err != nil {
		return fmt.Errorf("log_level %q: want one of trace, debug, info, warn, error", c.LogLevel)
	}
	for _, o := range c.Snapshotter.MountOptions {
		if k, _, _ := strings.Cut(o, "="); k == "lowerdir" || k == "upperdir" || k == "workdir" {
			return fmt.Errorf("snapshotter.mount_options: %q is set per snapshot and cannot be configured", o)
		}
	}
	return nil
}

// snapshotOpts turns the configuration into the snapshotter's options.
func (c SnapshotterConfig) snapshotOpts() []snapshot.Opt {
	var opts []snapshot.Opt
	if c.AsyncRemove {
		opts = append(opts, snapshot.WithAsyncRemove)
	}
	if c.UpperdirLabel {
		opts = append(opts, snapshot.WithUpperdirLabel)
	}
	if c.RemapIDs {
		opts = append(opts, snapshot.WithRemapIDs)
	}
	if len(c.MountOptions) > 0 {
		opts = append(opts, snapshot.WithMountOptions(c.MountOptions...))
	}
	return opts
}

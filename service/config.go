// Package service wires lazypull's parts into the snapshotter daemon: it
// reads the configuration, owns the daemon's root and socket, and serves
// containerd's snapshots API. It knows the parts' options, not their
// internals; command-line parsing stays in cmd/.
package service

import (
	"bytes"
	"cmp"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"github.com/containerd/containerd/v2/plugins/snapshots/overlay/overlayutils"
	"github.com/containerd/log"
	"github.com/moby/sys/userns"
	"github.com/pelletier/go-toml/v2"
	"github.com/sirupsen/logrus"

	"github.com/lazypull/lazypull/cache"
	"github.com/lazypull/lazypull/fusefs"
	"github.com/lazypull/lazypull/layer"
	"github.com/lazypull/lazypull/mounter"
	"github.com/lazypull/lazypull/remote"
	"github.com/lazypull/lazypull/service/status"
	"github.com/lazypull/lazypull/snapshot"
)

// Defaults, as a fresh install uses them.
const (
	DefaultConfigPath = "/etc/lazypull/config.toml"
	DefaultAddress    = status.DefaultAddress
	DefaultRoot       = status.DefaultRoot
	DefaultLogLevel   = "info"
	DefaultContainerd = "/run/containerd/containerd.sock"
)

// Config is the daemon's configuration file (TOML). Every key is documented
// in the README with its default; keep the two in step.
type Config struct {
	// Path is the file the configuration was read from, if any.
	Path string `toml:"-"`
	// Root holds the daemon's state: snapshot metadata and directories.
	Root string `toml:"root"`
	// Address is the unix socket that containerd's proxy plugin dials.
	Address string `toml:"address"`
	// LogLevel is one of trace, debug, info, warn, error.
	LogLevel string `toml:"log_level"`
	// MetricsAddress, if set, is where the FUSE manager serves Prometheus
	// metrics on /metrics (host:port on loopback, or a unix socket path).
	MetricsAddress string `toml:"metrics_address"`
	// MetricsAllowRemote lets MetricsAddress be reachable from other
	// hosts (e.g. "0.0.0.0:9110" for a Prometheus elsewhere).
	MetricsAllowRemote bool `toml:"metrics_allow_remote"`
	// DebugAddress, if set, is where the FUSE manager serves Go's profiles
	// on /debug/pprof/ (host:port on loopback, or a unix socket path).
	DebugAddress string `toml:"debug_address"`
	// ContainerdAddress is containerd's socket, where the daemon reads the
	// manifest and config of an image being pulled from containerd's
	// content store instead of the registry (see imageContent); "" turns
	// that off.
	ContainerdAddress string `toml:"containerd_address"`
	// CRIImageServiceAddress, if set, is a unix socket where the process
	// that fetches lazy layers serves the CRI image service for the
	// kubelet (--image-service-endpoint), forwarded to containerd's CRI
	// plugin at ContainerdAddress: the pull secrets the kubelet gives a
	// pull then reach that image's lazy layers (see package cri).
	CRIImageServiceAddress string `toml:"cri_image_service_address"`

	Snapshotter SnapshotterConfig `toml:"snapshotter"`
	Cache       CacheConfig       `toml:"cache"`
	Fetch       FetchConfig       `toml:"fetch"`
	FUSE        FUSEConfig        `toml:"fuse"`
	Composefs   ComposefsConfig   `toml:"composefs"`
	// KubeconfigKeychain finds registry credentials in a cluster's image
	// pull secrets (package kubesecrets).
	KubeconfigKeychain KubeconfigKeychainConfig `toml:"kubeconfig_keychain"`
}

// KubeconfigKeychainConfig says whether and how the process that fetches
// lazy layers reads a cluster's image pull secrets (type
// kubernetes.io/dockerconfigjson) for registries the docker config has no
// credentials for.
type KubeconfigKeychainConfig struct {
	Enable bool `toml:"enable"`
	// KubeconfigPath is the kubeconfig ("" is the in-cluster
	// configuration of a pod's service account).
	KubeconfigPath string `toml:"kubeconfig_path"`
	// Namespaces whose secrets are read (none: every namespace).
	Namespaces []string `toml:"namespaces"`
}

// CacheConfig places and bounds the cache of fetched chunks.
type CacheConfig struct {
	// Dir holds the cache (default <root>/cache).
	Dir string `toml:"dir"`
	// MaxBytes bounds the cache on disk; least recently used data goes
	// first. Unset, it is 20% of the size of the cache's filesystem
	// (cache.DefaultMaxPercent), measured at start; 0 is unbounded.
	MaxBytes *int64 `toml:"max_bytes"`
	// MemoryBytes is ignored: it sized an in-memory copy of hot chunks,
	// which the kernel's page cache keeps already. Still read, so that
	// configurations that set it keep loading (with a warning).
	MemoryBytes int64 `toml:"memory_bytes"`
	// Sync fsyncs every cached chunk (default false: every chunk is
	// verified when read, so a torn write after a crash costs only a
	// refetch, while an fsync would delay the container's first reads).
	Sync bool `toml:"sync"`
}

// cacheOptions turns the configuration into the cache's options; what is
// unset keeps the cache's default.
func (c CacheConfig) cacheOptions() []cache.Option {
	opts := []cache.Option{cache.WithSync(c.Sync)}
	if c.MaxBytes != nil {
		opts = append(opts, cache.WithMaxBytes(*c.MaxBytes))
	}
	return opts
}

// FetchConfig says how layers are fetched from registries.
type FetchConfig struct {
	// Prefetch fetches the files an image marks as needed first as soon
	// as a layer mounts, without holding the mount up (default true).
	Prefetch *bool `toml:"prefetch"`
	// PrefetchTimeout bounds that prefetch (default "10s").
	PrefetchTimeout Duration `toml:"prefetch_timeout"`
	// ProfileDir holds workload profiles (`lazypull profile record`):
	// a layer one names fetches what the workload read, in its order,
	// instead of the files the image marks (default <root>/profiles).
	ProfileDir string `toml:"profile_dir"`
	// ProfileReferrers looks for workload profiles among the artifacts
	// that refer to an image's manifest in its registry (`lazypull
	// profile push`), after the manifest, without delaying the mount
	// (default true).
	ProfileReferrers *bool `toml:"profile_referrers"`
	// Background fetches the rest of each layer after it is mounted
	// (default true).
	Background *bool `toml:"background"`
	// AllowUnverified mounts lazy layers whose descriptor has no TOC
	// digest; otherwise they are downloaded and unpacked.
	AllowUnverified bool `toml:"allow_unverified"`
	// HostsDir holds containerd-style <host>/hosts.toml mirror files.
	HostsDir string `toml:"hosts_dir"`
	// RequestTimeout bounds one ranged request (default "60s").
	RequestTimeout Duration `toml:"request_timeout"`
	// MaxRetries is how often a failed request is retried (default 5).
	MaxRetries int `toml:"max_retries"`
	// Parallel is how many requests one layer has in flight (default 8).
	Parallel int `toml:"parallel"`
	// VerifyBeforeUse makes every lazy mount wait until its layer has
	// been fetched whole and checked against its image's diff_id (no lazy
	// start; for sites that never show unverified content).
	VerifyBeforeUse bool `toml:"verify_before_use"`
	// MaxImageEntries bounds the TOC entries (files, directories) of one
	// image's lazily mounted layers together; layers past it are
	// unpacked (default 524288).
	MaxImageEntries int64 `toml:"max_image_entries"`
}

// FUSEConfig tunes the layer filesystems.
type FUSEConfig struct {
	// Passthrough serves cached files with FUSE passthrough where the
	// kernel has it (default true).
	Passthrough *bool `toml:"passthrough"`
	// OpaqueXattr is "trusted", "user", "both", or "auto" (default):
	// user when the overlay mounts use userxattr, else trusted.
	OpaqueXattr string `toml:"opaque_xattr"`
	// ReadAheadKiB is the kernel's read-ahead on each layer's mount, in
	// KiB (default fusefs.DefaultReadAheadKiB). Workload profiles record
	// what a start read with it: record them with the value nodes use.
	ReadAheadKiB int `toml:"read_ahead_kb"`
	// Manager serves the layers from a separate, long-lived process so
	// that running containers keep them when the daemon restarts or
	// crashes (default true).
	Manager *bool `toml:"manager"`
}

// ComposefsConfig sets up the composefs mode.
type ComposefsConfig struct {
	// Enable stores every layer the snapshotter unpacks as an EROFS
	// metadata image over one object store (<root>/composefs) that holds
	// each distinct file once for every image on the node (default false).
	// It needs real root (not a user namespace) and Linux 6.6 or later
	// (overlayfs data-only lower layers came in 6.5, the verity= option
	// the stacks name in 6.6); stacks too deep for one mount(2) need 6.8
	// (lowerdir+, datadir+).
	Enable bool `toml:"enable"`
	// PartialPull pulls zstd:chunked layers that carry tar-split data
	// straight into the object store, fetching only the files it lacks
	// and checking the layer against its image's diff_id (default true;
	// only with enable). Other lazily pullable layers (eStargz) are
	// mounted lazily as in the FUSE mode.
	PartialPull *bool `toml:"partial_pull"`
	// Lazy mounts lazily pullable layers (eStargz, zstd:chunked) in the
	// lazy composefs form (default false; only with enable): each one's
	// metadata image is written from its TOC with no file data fetched,
	// and the data comes from the registry on demand through one FUSE
	// object filesystem (<root>/objfs) stacked as the overlay's data-only
	// lower layer; stat and readdir never leave the kernel. Layers it
	// cannot serve so are pulled partially (partial_pull), mounted over
	// FUSE or unpacked.
	Lazy bool `toml:"lazy"`
}

// Duration is a TOML string such as "10s".
type Duration struct{ time.Duration }

// UnmarshalText parses a Go duration.
func (d *Duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	if err != nil {
		return fmt.Errorf("%q is not a duration such as \"10s\"", b)
	}
	d.Duration = v
	return nil
}

func enabled(b *bool) bool { return b == nil || *b }

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
	return Config{Root: DefaultRoot, Address: DefaultAddress, LogLevel: DefaultLogLevel, ContainerdAddress: DefaultContainerd}
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
	cfg.Path = path
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
	if cfg.Cache.MemoryBytes != 0 {
		log.L.Warnf("config %s: [cache] memory_bytes is no longer used (the kernel's page cache keeps hot chunks): remove it", path)
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
	if c.ContainerdAddress != "" && !filepath.IsAbs(c.ContainerdAddress) {
		return fmt.Errorf("containerd_address %q: must be the absolute path of containerd's socket, or \"\" for none", c.ContainerdAddress)
	}
	if c.CRIImageServiceAddress != "" && (!filepath.IsAbs(c.CRIImageServiceAddress) || c.ContainerdAddress == "") {
		return fmt.Errorf("cri_image_service_address %q: must be the absolute path of a unix socket, and needs containerd_address (where the CRI plugin is) set", c.CRIImageServiceAddress)
	}
	if err := c.checkEndpoints(); err != nil {
		return err
	}
	if _, err := logrus.ParseLevel(c.LogLevel); err != nil {
		return fmt.Errorf("log_level %q: want one of trace, debug, info, warn, error", c.LogLevel)
	}
	switch c.FUSE.OpaqueXattr {
	case "", "auto", "trusted", "user", "both":
	default:
		return fmt.Errorf("fuse.opaque_xattr %q: want auto, trusted, user or both", c.FUSE.OpaqueXattr)
	}
	if c.Cache.MaxBytes != nil && *c.Cache.MaxBytes < 0 || c.Fetch.MaxRetries < 0 || c.Fetch.Parallel < 0 {
		return errors.New("cache sizes, fetch.max_retries and fetch.parallel cannot be negative")
	}
	if c.FUSE.ReadAheadKiB < 0 || c.FUSE.ReadAheadKiB > 16<<10 {
		return fmt.Errorf("fuse.read_ahead_kb %d: want 0 (the default, %d) to %d", c.FUSE.ReadAheadKiB, fusefs.DefaultReadAheadKiB, 16<<10)
	}
	if c.Cache.Dir != "" && !filepath.IsAbs(c.Cache.Dir) {
		return fmt.Errorf("cache.dir %q: must be an absolute path", c.Cache.Dir)
	}
	if c.Composefs.Lazy && !c.Composefs.Enable {
		return errors.New("composefs.lazy needs composefs.enable = true: the lazy composefs form is a composefs mode")
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

// mounterOptions turns the configuration into the mounter's options.
func (c Config) mounterOptions() mounter.Options {
	passthrough, note := c.passthrough()
	opts := mounter.Options{
		Registry:           remote.Options{HostsDir: c.Fetch.HostsDir},
		Blob:               remote.BlobOptions{MaxRetries: c.Fetch.MaxRetries, RequestTimeout: c.Fetch.RequestTimeout.Duration, Parallel: c.Fetch.Parallel},
		Layer:              layer.Options{Unverified: c.Fetch.AllowUnverified, SpoolDir: filepath.Join(c.Root, "verify")},
		VerifyBeforeUse:    c.Fetch.VerifyBeforeUse,
		MaxImageEntries:    c.Fetch.MaxImageEntries,
		FUSE:               fusefs.Options{Passthrough: passthrough, ReadAheadKiB: c.FUSE.ReadAheadKiB},
		PassthroughNote:    note,
		PrefetchTimeout:    c.Fetch.PrefetchTimeout.Duration,
		NoPrefetch:         !enabled(c.Fetch.Prefetch),
		ProfileDir:         cmp.Or(c.Fetch.ProfileDir, filepath.Join(c.Root, "profiles")),
		NoProfileReferrers: !enabled(c.Fetch.ProfileReferrers),
		NoBackground:       !enabled(c.Fetch.Background),
	}
	switch c.FUSE.OpaqueXattr {
	case "trusted":
		opts.FUSE.OpaqueXattrs = []string{fusefs.TrustedOpaque}
	case "user":
		opts.FUSE.OpaqueXattrs = []string{fusefs.UserOpaque}
	case "both":
		opts.FUSE.OpaqueXattrs = []string{fusefs.TrustedOpaque, fusefs.UserOpaque}
	default:
		// What the overlay mounts will read: user.* inside a user
		// namespace (userxattr), trusted.* otherwise.
		opts.FUSE.OpaqueXattrs = []string{fusefs.TrustedOpaque}
		if need, err := overlayutils.NeedsUserXAttr(c.Root); err == nil && need {
			opts.FUSE.OpaqueXattrs = []string{fusefs.UserOpaque}
		}
	}
	return opts
}

// passthrough tells whether lazy layers hand cached files to the kernel
// (FUSE passthrough), and why. The kernel lets only a process with
// CAP_SYS_ADMIN in the initial user namespace register a backing file:
// rootless, every attempt would fail and go-fuse would turn it off per
// mount after the first failure.
func (c Config) passthrough() (bool, string) {
	switch {
	case !enabled(c.FUSE.Passthrough):
		return false, "off (fuse.passthrough = false): cached files are read through the FUSE manager"
	case userns.RunningInUserNS():
		return false, "off: in a user namespace (rootless) the kernel refuses it; cached files are read through the FUSE manager"
	}
	return true, "on where the kernel has it (Linux 6.9 or later): cached files are read by the kernel"
}

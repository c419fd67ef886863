package runner

import (
	"fmt"
	"io"
	"slices"
	"strings"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/lazypull/lazypull/internal/testenv"
)

// Image is one image to measure: an OCI layout and the line its command
// prints once it has done its first useful work.
type Image struct {
	Name   string
	Layout string // OCI image layout directory
	Tag    string // the layout's tag for the image
	Ready  string // the line the workload prints when it is ready
	Size   int64  // compressed size (layers, config, manifest), for the report
}

// Scenario is one way of getting an image to run: which form of the image,
// which snapshotter, which pull command. Besides the built-in ones, a
// scenario file (TOML, these keys) describes another snapshotter, so that
// it is measured on the same images and link; see bench/scenarios/.
type Scenario struct {
	Name string `toml:"name"`
	// Format is the form of the image pulled: "" as built (gzip layers),
	// or a lazy format `lazypull convert` writes: estargz, zstdchunked.
	Format string `toml:"format"`
	// Snapshotter is the containerd snapshotter `ctr run` uses: "" for
	// overlayfs, "lazypull" for ours, else the scenario's own daemon's
	// or, with no Daemon, one of containerd's own (erofs, containerd
	// 2.1 and later).
	Snapshotter string `toml:"snapshotter"`
	// Pull is the pull command, with {ref}, {containerd} (its socket),
	// {namespace}, {snapshotter} and {bin} (lazypull's binaries) replaced. Empty: `ctr images pull`, or
	// `lazypull pull` for lazypull with a lazy format (a gzip image goes
	// through `ctr images pull` into it, as into overlayfs).
	Pull []string `toml:"pull"`
	// Daemon is the command serving Snapshotter on {socket}, keeping its
	// state under {root} and reading {config} ({bin} too): another snapshotter's
	// daemon, which the runner starts, stops and empties for each cold run.
	Daemon []string `toml:"daemon"`
	// Config is written to {config} before Daemon starts. For lazypull's
	// own daemon (snapshotter "lazypull", no Daemon) it is
	// lazypull-snapshotter's configuration for this scenario's runs,
	// replacing the run's Config.DaemonConfig: a scenario is a mode of the
	// daemon as much as a form of the image.
	Config string `toml:"config"`
	// Settles: lazypull's lazy composefs mode, whose layers move into the
	// object store once fetched (leaving composefs.SettledMarker beside
	// their images). The warm start waits for that: it measures the
	// settled stack, with no FUSE in its path.
	Settles bool `toml:"settles"`
	// Profiled: the image's workload is recorded once, before the runs
	// and not measured (`lazypull profile record`, until its ready line),
	// and each run's daemon finds that profile in its profile directory:
	// its layers fetch what the workload read, in its order.
	Profiled bool `toml:"profiled"`
	// Images, if set, are the only images the scenario runs on: its Args
	// are one image's workload.
	Images []string `toml:"images"`
	// Args, if set, replace the image's command in the runs (and in the
	// recording of its profile): another workload of the image, which
	// prints the image's ready line too.
	Args []string `toml:"args"`
	// ProfileArgs (profiled scenarios) are the workloads, each as its
	// args (empty: the image's command), whose profiles the daemon's
	// profile directory holds in each run, as if they travelled with the
	// image together; by default, the run's own.
	ProfileArgs [][]string `toml:"profile_args"`
	// Optimized (estargz): the image is converted with its workload's
	// profile (`lazypull convert --profile`; the profile recorded once
	// on the image's plain form, as for Profiled), so that each layer
	// holds the files the workload reads first, in its order, before the
	// prefetch landmark: the image `ctr-remote image optimize` makes for
	// stargz-snapshotter, its file list taken from our recorder rather
	// than its fanotify analyzer.
	Optimized bool `toml:"optimized"`
	// ConvertArgs are more `lazypull convert` flags for this scenario's
	// form of the image: another converter's defaults, say (ctr-remote
	// writes 4 MiB chunks at gzip level 9).
	ConvertArgs []string `toml:"convert_args"`
}

// form names the form of the image a scenario pulls: its tag in the
// registry. Scenarios of one form share the image (and its profiles).
func (s Scenario) form() string {
	form := s.Format
	if form == "" {
		form = "orig"
	}
	if s.Optimized {
		form += "-optimized"
	}
	if len(s.ConvertArgs) > 0 {
		form += "-" + digest.FromString(strings.Join(s.ConvertArgs, "\x00")).Encoded()[:12]
	}
	return form
}

// plain is the scenario's form of the image without its optimization and
// extra convert flags: the form its workload's profile is recorded on.
func (s Scenario) plain() Scenario {
	return Scenario{Name: s.Name, Format: s.Format, Snapshotter: s.Snapshotter, Args: s.Args, Images: s.Images}
}

// runsOn tells whether the scenario runs on the image named img.
func (s Scenario) runsOn(img string) bool {
	return len(s.Images) == 0 || slices.Contains(s.Images, img)
}

// profiled lists the workloads (their args) whose profiles a run of the
// scenario has.
func (s Scenario) profiled() [][]string {
	if !s.Profiled {
		return nil
	}
	if len(s.ProfileArgs) > 0 {
		return s.ProfileArgs
	}
	return [][]string{s.Args}
}

// external tells whether the runner starts the scenario's daemon.
func (s Scenario) external() bool { return len(s.Daemon) > 0 }

// builtin tells whether the scenario uses one of containerd's own
// snapshotters other than overlayfs.
func (s Scenario) builtin() bool {
	return !s.external() && s.Snapshotter != "" && s.Snapshotter != "lazypull" && s.Snapshotter != "overlayfs"
}

// The built-in scenarios, in report order; the first is the baseline the
// ratios are taken against.
var (
	Overlayfs       = Scenario{Name: "overlayfs"}
	LazypullEStargz = Scenario{Name: "lazypull-estargz", Format: "estargz", Snapshotter: "lazypull"}
	LazypullZstd    = Scenario{Name: "lazypull-zstd", Format: "zstdchunked", Snapshotter: "lazypull"}
	// LazypullComposefs pulls the image as overlayfs does (gzip, every
	// byte before the start) into lazypull's composefs mode: its cold run
	// is the pull and the conversion of each layer to a metadata image
	// over the object store, its warm start what the mode costs a
	// container against overlayfs's plain directories.
	LazypullComposefs = Scenario{Name: "lazypull-composefs", Snapshotter: "lazypull", Config: "[composefs]\nenable = true\n"}
	// LazypullComposefsZstd pulls the zstd:chunked image into the
	// composefs mode: each layer's files that the object store lacks
	// fetched by ranged reads, checked against the image's diff_ids, and
	// a metadata image written from its TOC (partial pull).
	LazypullComposefsZstd = Scenario{Name: "lazypull-composefs-zstd", Format: "zstdchunked", Snapshotter: "lazypull", Config: "[composefs]\nenable = true\n"}
	// LazypullLazyComposefs mounts the eStargz image in the lazy
	// composefs mode: each layer's metadata image written from its TOC,
	// its data fetched on demand through the object filesystem.
	LazypullLazyComposefs = Scenario{Name: "lazypull-lazy-composefs", Format: "estargz", Snapshotter: "lazypull", Config: "[composefs]\nenable = true\nlazy = true\n", Settles: true}
	// LazypullEStargzProfiled is lazypull-estargz with a workload
	// profile of the image's own workload.
	LazypullEStargzProfiled = Scenario{Name: "lazypull-estargz-profiled", Format: "estargz", Snapshotter: "lazypull", Profiled: true}
)

// Scenarios lists the built-in scenarios.
func Scenarios() []Scenario {
	return []Scenario{Overlayfs, LazypullEStargz, LazypullZstd, LazypullComposefs, LazypullComposefsZstd, LazypullLazyComposefs, LazypullEStargzProfiled}
}

// ScenariosByName picks built-in scenarios by name, and reads scenario
// files given by a path ending in .toml.
func ScenariosByName(names []string) ([]Scenario, error) {
	var out []Scenario
	for _, n := range names {
		if strings.HasSuffix(n, ".toml") {
			sc, err := LoadScenario(n)
			if err != nil {
				return nil, err
			}
			out = append(out, sc)
			continue
		}
		found := false
		for _, s := range Scenarios() {
			if s.Name == n {
				out, found = append(out, s), true
			}
		}
		if !found {
			return nil, fmt.Errorf("no scenario %q (there are %s, or a scenario file ending in .toml)", n, strings.Join(ScenarioNames(), ", "))
		}
	}
	return out, nil
}

// ScenarioNames lists the built-in scenarios' names.
func ScenarioNames() []string {
	var names []string
	for _, s := range Scenarios() {
		names = append(names, s.Name)
	}
	return names
}

// daemonConfig is lazypull-snapshotter's configuration for a run of sc:
// the scenario's own, else the run's.
func (c Config) daemonConfig(sc Scenario) string {
	if sc.Snapshotter == "lazypull" && !sc.external() && sc.Config != "" {
		return sc.Config
	}
	return c.DaemonConfig
}

// Config says how to run the benchmark.
type Config struct {
	Runs      int           // cold runs per image and scenario
	RTT       time.Duration // round-trip delay the proxy adds per request
	Bandwidth int64         // bits per second shared by all responses; 0: no cap
	Scenarios []Scenario
	// DaemonConfig is lazypull-snapshotter's TOML configuration; empty for
	// its defaults. A scenario with a Config of its own (lazypull-composefs)
	// runs with that instead.
	DaemonConfig string
	// Footprint, after the runs, pulls all the images into each of
	// overlayfs's and lazypull's scenarios and measures its disk and page
	// cache (see Footprint).
	Footprint bool
	// RunTimeout bounds one run (pull and run until the ready line).
	RunTimeout time.Duration
	Progress   io.Writer // one line per run; nil for none
	// LogDir, if set, receives the daemons' logs when a run fails, or
	// always with KeepLogs (with log_level = "debug" in DaemonConfig,
	// every fetch and what it was for).
	LogDir   string
	KeepLogs bool
	// Containerd is the containerd release to start: testenv's default
	// (the 2.x one) when zero.
	Containerd testenv.ContainerdRelease
	// Rootless runs containerd and lazypull as an unprivileged user in
	// containerd's rootless recipe (testenv.WithRootless): every scenario,
	// the baseline included, and their containers without a cgroup.
	Rootless bool
	// CRI pulls and starts through containerd's CRI plugin, as a kubelet
	// does (see kubelet): PullImage, then a pod's RunPodSandbox,
	// CreateContainer and StartContainer until the ready line.
	CRI bool
}

func (c Config) withDefaults() Config {
	if c.Runs <= 0 {
		c.Runs = 5
	}
	if len(c.Scenarios) == 0 {
		c.Scenarios = Scenarios()
	}
	if c.RunTimeout <= 0 {
		c.RunTimeout = 10 * time.Minute
	}
	if c.Progress == nil {
		c.Progress = io.Discard
	}
	return c
}

// ParseBandwidth reads "100M", "1G", "500k" or a plain number as bits per
// second ("0" is no cap).
func ParseBandwidth(s string) (int64, error) {
	s = strings.TrimSuffix(strings.TrimSuffix(strings.ToLower(strings.TrimSpace(s)), "bit/s"), "bps")
	mult := int64(1)
	switch {
	case strings.HasSuffix(s, "k"):
		mult, s = 1e3, strings.TrimSuffix(s, "k")
	case strings.HasSuffix(s, "m"):
		mult, s = 1e6, strings.TrimSuffix(s, "m")
	case strings.HasSuffix(s, "g"):
		mult, s = 1e9, strings.TrimSuffix(s, "g")
	}
	var f float64
	if _, err := fmt.Sscanf(s, "%g", &f); err != nil || f < 0 {
		return 0, fmt.Errorf("bandwidth %q: want bits per second like 100M", s)
	}
	return int64(f * float64(mult)), nil
}

package runner

import (
	"fmt"
	"os"
	"runtime"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Result is one cold run. Times are in seconds; memory in bytes.
type Result struct {
	Image    string `json:"image"`
	Scenario string `json:"scenario"`
	Run      int    `json:"run"`
	// Pull is the pull command's time; FirstOutput the time from starting
	// `ctr run` until the ready line; Total their sum.
	Pull        float64 `json:"pullSeconds"`
	FirstOutput float64 `json:"firstOutputSeconds"`
	Total       float64 `json:"totalSeconds"`
	// Bytes and Requests crossed the proxy from the start of the pull until
	// the ready line (background fetch after it is not counted).
	Bytes    int64 `json:"bytes"`
	Requests int64 `json:"requests"`
	// Peak resident memory (VmHWM) of the snapshotter's daemon (lazypull:
	// and its FUSE manager), started fresh for the run, read once the
	// background fetch has settled, so it covers pull, start and
	// background fetch; 0 for overlayfs.
	DaemonPeak  int64 `json:"daemonPeakBytes"`
	ManagerPeak int64 `json:"managerPeakBytes"`
	// SettledBytes crossed the proxy from the pull's start until the
	// background fetch ended (after the ready line, the link quiet for
	// settleQuiet with ImageBytes fetched, or for settleIdle): a lazy
	// snapshotter's background fetch included. ImageBytes is the size of
	// the pulled image's blobs (manifest, config, layers) in the
	// scenario's form.
	SettledBytes int64 `json:"settledBytes"`
	ImageBytes   int64 `json:"imageBytes"`
	// BackgroundBytes crossed the proxy after the ready line, in
	// BackgroundSeconds of the link carrying them (stretches of idleGap
	// without a byte left out).
	BackgroundBytes   int64   `json:"backgroundBytes"`
	BackgroundSeconds float64 `json:"backgroundSeconds"`
	// Warm is the time from `ctr run` to the ready line with the image
	// present (and, for a lazy snapshotter, settled), page cache dropped.
	Warm float64 `json:"warmSeconds"`
	// FUSEOps and WarmFUSEOps count the FUSE operations (lookups, opens,
	// reads: not answered by the kernel's caches or passthrough) that
	// lazypull's FUSE manager served from `ctr run` to the ready line, cold
	// and warm; -1 where not measured (other snapshotters).
	FUSEOps     int64 `json:"fuseOps"`
	WarmFUSEOps int64 `json:"warmFuseOps"`
}

// BackgroundRate is the background fetch's rate in bits per second, 0 if
// it moved too little to tell.
func (r Result) BackgroundRate() float64 {
	if r.BackgroundBytes < 1<<20 || r.BackgroundSeconds <= 0 {
		return 0
	}
	return float64(r.BackgroundBytes) * 8 / r.BackgroundSeconds
}

func (r Result) progressLine(runs int) string {
	mem := ""
	if r.DaemonPeak+r.ManagerPeak > 0 {
		mem = fmt.Sprintf(" mem %.0f MiB", mib(r.DaemonPeak+r.ManagerPeak))
	}
	bg := ""
	if rate := r.BackgroundRate(); rate > 0 {
		bg = fmt.Sprintf(" background %.0f Mbit/s", rate/1e6)
	}
	return fmt.Sprintf("run %d/%d %-7s %-17s pull %6.2fs  first output %6.2fs  total %6.2fs  %7.1f MB %5d requests%s  settled %.1f MB%s  warm %.2fs",
		r.Run, runs, r.Image, r.Scenario, r.Pull, r.FirstOutput, r.Total, mb(r.Bytes), r.Requests, mem, mb(r.SettledBytes), bg, r.Warm)
}

// ImageInfo describes a measured image in the report.
type ImageInfo struct {
	Name  string `json:"name"`
	Size  int64  `json:"compressedBytes"`
	Ready string `json:"ready"`
}

// Report is everything one Run measured and the conditions it ran in.
type Report struct {
	Started time.Time `json:"started"`
	Machine string    `json:"machine"`
	// Containerd is the version the started containerd reported (empty
	// in reports written before it was recorded: Debian's 1.6.20).
	Containerd string      `json:"containerd,omitempty"`
	RTT        string      `json:"rtt"`
	Bandwidth  int64       `json:"bandwidthBitsPerSecond"`
	Runs       int         `json:"runsPerScenario"`
	Scenarios  []string    `json:"scenarios"` // report order; the first is the baseline
	Images     []ImageInfo `json:"images"`
	Results    []Result    `json:"results"`
	// Footprints: all the images on one node at once, per scenario that
	// keeps whole layers (Config.Footprint).
	Footprints []Footprint `json:"footprints,omitempty"`
}

func newReport(cfg Config, imgs []Image) *Report {
	rep := &Report{Started: time.Now(), Machine: machine(), RTT: cfg.RTT.String(), Bandwidth: cfg.Bandwidth, Runs: cfg.Runs}
	for _, s := range cfg.Scenarios {
		rep.Scenarios = append(rep.Scenarios, s.Name)
	}
	for _, img := range imgs {
		rep.Images = append(rep.Images, ImageInfo{Name: img.Name, Size: img.Size, Ready: img.Ready})
	}
	return rep
}

// machine names the host: kernel, CPUs and memory, for the report's header.
func machine() string {
	var u unix.Utsname
	unix.Uname(&u)
	var si unix.Sysinfo_t
	unix.Sysinfo(&si)
	host, _ := os.Hostname()
	return fmt.Sprintf("%s, Linux %s, %d CPUs, %.0f GiB RAM", host,
		strings.TrimRight(string(u.Release[:]), "\x00"), runtime.NumCPU(), float64(si.Totalram)*float64(si.Unit)/(1<<30))
}

func mb(n int64) float64  { return float64(n) / 1e6 }
func mib(n int64) float64 { return float64(n) / (1 << 20) }

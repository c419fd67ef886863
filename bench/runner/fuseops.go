package runner

import (
	"bufio"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// fuseOpsMetric is the FUSE manager's histogram of the FUSE operations it
// serves (metrics.FUSEOperations); its _count lines count them.
const fuseOpsMetric = "lazypull_fuse_operation_seconds_count{"

// opCount is a count of FUSE operations; -1: not measured.
type opCount int64

// since is the operations served between before and c.
func (c opCount) since(before opCount) int64 {
	if c < 0 || before < 0 || c < before {
		return -1 // not lazypull, or its manager restarted in between
	}
	return int64(c - before)
}

// daemonConfig is lazypull-snapshotter's configuration for a run of sc,
// with the FUSE manager's metrics served where fuseOps reads them.
func (r *bench) daemonConfig(sc Scenario) string {
	cfg := r.cfg.daemonConfig(sc)
	if r.metricsAddr == "" {
		return cfg
	}
	// A top-level key: before the first [table].
	return fmt.Sprintf("metrics_address = %q\n", r.metricsAddr) + cfg
}

// fuseOps counts the FUSE operations lazypull's FUSE manager has served,
// from its metrics; -1 for another snapshotter, or when it cannot tell.
func (r *bench) fuseOps(sc Scenario) opCount {
	if sc.Snapshotter != "lazypull" || sc.external() || r.metricsAddr == "" {
		return -1
	}
	client := http.Client{Timeout: 5 * time.Second}
	resp, err := client.Get("http://" + r.metricsAddr + "/metrics")
	if err != nil {
		return -1
	}
	defer resp.Body.Close()
	var n float64
	scanner := bufio.NewScanner(resp.Body)
	scanner.Buffer(make([]byte, 64<<10), 1<<20)
	for scanner.Scan() {
		line := scanner.Text()
		if !strings.HasPrefix(line, fuseOpsMetric) {
			continue
		}
		f := strings.Fields(line)
		v, err := strconv.ParseFloat(f[len(f)-1], 64)
		if err != nil {
			return -1
		}
		n += v
	}
	if scanner.Err() != nil {
		return -1
	}
	return opCount(n)
}

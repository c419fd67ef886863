package runner

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/lazypull/lazypull/fusemanager"
	"github.com/lazypull/lazypull/internal/testenv"
)

// coldState brings the node back to what a fresh node has: no image, no
// snapshots, an empty lazypull cache, a FUSE manager and daemon that start
// from nothing (so that their peak memory is this run's) with sc's
// configuration, and no page cache; in a profiled scenario, img's profile
// in the daemon's profile directory (img is nil for a footprint, which
// uses none).
func (r *bench) coldState(ctx context.Context, img *Image, sc Scenario) error {
	if err := RemoveImages(ctx, r.env.Containerd); err != nil {
		return err
	}
	if r.kubelet != nil {
		if err := r.kubelet.removeImages(ctx, r.env.DaemonRoot); err != nil {
			return err
		}
	}
	// Snapshots left in a lazy snapshotter would keep layers mounted and
	// their chunks cached, and in any other its layers unpacked: a run
	// after them would not be cold.
	for _, sn := range r.snapshotters() {
		if out, err := r.env.Containerd.Ctr(ctx, "snapshots", "--snapshotter", sn, "ls"); err == nil {
			if lines := strings.Split(strings.TrimSpace(out), "\n"); len(lines) > 1 {
				return fmt.Errorf("snapshots still in %s after removing every image:\n%s", sn, out)
			}
		}
	}
	err := RestartEmpty(r.env, func() error {
		// The daemon's profile directory ([fetch] profile_dir's default)
		// holds the image's profiles in a profiled scenario (its
		// workload's, or those the scenario names), nothing else.
		profiles := filepath.Join(r.env.DaemonRoot, "profiles")
		if err := os.RemoveAll(profiles); err != nil {
			return err
		}
		for i, args := range sc.profiled() {
			if img == nil {
				break
			}
			data, err := os.ReadFile(r.profilePath(*img, sc, args))
			if err != nil {
				return err
			}
			if err := os.MkdirAll(profiles, 0o700); err != nil {
				return err
			}
			if err := os.WriteFile(filepath.Join(profiles, fmt.Sprintf("%s-%d.json", img.Name, i)), data, 0o600); err != nil {
				return err
			}
		}
		if err := os.WriteFile(r.env.ConfigPath(), []byte(r.daemonConfig(sc)), 0o644); err != nil {
			return fmt.Errorf("the daemon's configuration: %w", err)
		}
		return nil
	})
	if err != nil {
		return err
	}
	for _, d := range r.daemons {
		if err := d.reset(); err != nil {
			return err
		}
	}
	return testenv.DropCaches()
}

// RestartEmpty stops lazypull's daemon and its FUSE manager, empties its
// cache, calls prepare (if not nil) while neither runs, and starts the
// daemon again, which starts a fresh manager: a node that has fetched
// nothing. The images must be gone already (RemoveImages): their layers'
// mounts would keep the old manager's data in use.
func RestartEmpty(env *testenv.Env, prepare func() error) error {
	// The daemon first: it supervises its FUSE manager and would start a
	// new one (on the cache being removed) the moment the old one stops.
	if err := env.Daemon.Stop(15 * time.Second); err != nil {
		return err
	}
	if err := fusemanager.Stop(env.DaemonRoot, 15*time.Second); err != nil {
		return err
	}
	if err := os.RemoveAll(filepath.Join(env.DaemonRoot, "cache")); err != nil {
		return err
	}
	if prepare != nil {
		if err := prepare(); err != nil {
			return err
		}
	}
	// StartDaemon returns once containerd's calls reach it: had any call
	// failed while it was down, containerd would redial it only after a
	// backoff, and the next pull fail.
	return env.StartDaemon()
}

// snapshotters lists the snapshotters other than overlayfs the scenarios
// use.
func (r *bench) snapshotters() []string {
	seen := map[string]bool{}
	var out []string
	for _, sc := range r.cfg.Scenarios {
		if sc.Snapshotter != "" && !seen[sc.Snapshotter] {
			seen[sc.Snapshotter] = true
			out = append(out, sc.Snapshotter)
		}
	}
	return out
}

// RemoveImages removes every image and waits for containerd's garbage
// collector to delete their content and snapshots (in every snapshotter).
func RemoveImages(ctx context.Context, c *testenv.Containerd) error {
	out, err := c.Ctr(ctx, "images", "ls", "-q")
	if err != nil {
		return err
	}
	if refs := strings.Fields(out); len(refs) > 0 {
		args := append([]string{"images", "rm", "--sync"}, refs...)
		if _, err := c.Ctr(ctx, args...); err != nil {
			return err
		}
	}
	return nil
}

// peakMemory is a process's peak resident set (VmHWM) in bytes; 0 when
// the process is gone.
func peakMemory(pid int) int64 {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "VmHWM:"); ok {
			f := strings.Fields(v) // "1234 kB"
			if len(f) > 0 {
				kb, _ := strconv.ParseInt(f[0], 10, 64)
				return kb << 10
			}
		}
	}
	return 0
}

// managerPID is the running FUSE manager's pid, from its lock file.
func managerPID(root string) int {
	b, err := os.ReadFile(fusemanager.PIDPath(root))
	if err != nil {
		return 0
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	return pid
}

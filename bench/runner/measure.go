package runner

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"os/exec"
	"strings"
	"time"

	"github.com/lazypull/lazypull/internal/testenv"
)

// measure does one cold run of img in scenario sc: pull, then run until
// the workload prints its ready line.
func (r *bench) measure(ctx context.Context, img Image, sc Scenario, iteration int) (Result, error) {
	res := Result{Image: img.Name, Scenario: sc.Name, Run: iteration}
	if err := r.coldState(ctx); err != nil {
		return res, fmt.Errorf("cold state: %w", err)
	}
	ctx, cancel := context.WithTimeout(ctx, r.cfg.RunTimeout)
	defer cancel()
	// Through the proxy: every byte any client fetches is shaped and counted.
	ref := r.proxy.Addr() + "/" + repo(img, sc)

	r.proxy.ResetStats()
	start := time.Now()
	if err := r.pull(ctx, sc, ref); err != nil {
		return res, err
	}
	pulled := time.Now()
	name := fmt.Sprintf("bench-%s-%s-%d", img.Name, sc.Name, iteration)
	wait, err := r.runUntilReady(ctx, sc, ref, name, img.Ready)
	ready := time.Now()
	if err != nil {
		return res, err
	}
	st := r.proxy.Stats()
	res.Pull = seconds(pulled.Sub(start))
	res.FirstOutput = seconds(ready.Sub(pulled))
	res.Total = seconds(ready.Sub(start))
	res.Bytes, res.Requests = st.BytesSent, st.Requests
	if sc.Lazy() {
		res.DaemonPeak = peakMemory(r.env.Daemon.PID())
		res.ManagerPeak = peakMemory(managerPID(r.env.DaemonRoot))
	}
	return res, wait()
}

func (r *bench) pull(ctx context.Context, sc Scenario, ref string) error {
	if !sc.Lazy() {
		_, err := r.env.Containerd.Ctr(ctx, "images", "pull", "--plain-http", ref)
		return err
	}
	_, err := r.lazypull(ctx, "pull", "--plain-http", "--address", r.env.Containerd.Address,
		"--namespace", testenv.Namespace, ref)
	return err
}

// runUntilReady starts `ctr run --rm` and returns once the container has
// printed ready on its standard output. The returned wait lets the
// container finish (and be removed) outside the timed part.
func (r *bench) runUntilReady(ctx context.Context, sc Scenario, ref, name, ready string) (wait func() error, err error) {
	ctrBin, err := exec.LookPath("ctr")
	if err != nil {
		return nil, err
	}
	args := []string{"--address", r.env.Containerd.Address, "--namespace", testenv.Namespace, "run", "--rm"}
	if sc.Lazy() {
		args = append(args, "--snapshotter", "lazypull")
	}
	args = append(args, ref, name)
	cmd := exec.CommandContext(ctx, ctrBin, args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	failed := func(err error) error {
		return fmt.Errorf("ctr %s: %w: %s", strings.Join(args[4:], " "), err, strings.TrimSpace(stderr.String()))
	}
	sc2 := bufio.NewScanner(stdout)
	var seen []string
	for sc2.Scan() {
		line := sc2.Text()
		if strings.TrimSpace(line) == strings.TrimSpace(ready) {
			return func() error {
				io.Copy(io.Discard, stdout) // the rest of its output, or it blocks writing
				if err := cmd.Wait(); err != nil {
					return failed(err)
				}
				return nil
			}, nil
		}
		if len(seen) < 20 {
			seen = append(seen, line)
		}
	}
	err = cmd.Wait()
	if err == nil {
		err = fmt.Errorf("exited without printing %q; it printed %q", ready, seen)
	}
	return nil, failed(err)
}

func seconds(d time.Duration) float64 { return d.Seconds() }

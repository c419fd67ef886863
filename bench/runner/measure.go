package runner

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/lazypull/lazypull/composefs"
	"github.com/lazypull/lazypull/internal/testenv"
	"github.com/lazypull/lazypull/remote"
	"github.com/lazypull/lazypull/transport"
)

// measure does one cold run of img in scenario sc: pull, then run until
// the workload prints its ready line; then, the image present, it waits
// for the background fetch to settle and measures a warm start.
func (r *bench) measure(ctx context.Context, img Image, sc Scenario, iteration int) (Result, error) {
	res := Result{Image: img.Name, Scenario: sc.Name, Run: iteration}
	if err := r.coldState(ctx, &img, sc); err != nil {
		return res, fmt.Errorf("cold state: %w", err)
	}
	ctx, cancel := context.WithTimeout(ctx, r.cfg.RunTimeout)
	defer cancel()
	// Through the proxy: every byte any client fetches is shaped and counted.
	ref := r.proxy.Addr() + "/" + repo(img, sc)

	r.proxy.ResetStats()
	start := time.Now()
	if err := r.pull(ctx, sc, ref); err != nil {
		if d := r.daemons[sc.Name]; d != nil {
			err = errors.Join(err, d.alive())
		}
		return res, err
	}
	pulled := time.Now()
	name := fmt.Sprintf("bench-%s-%s-%d", img.Name, sc.Name, iteration)
	ops := r.fuseOps(sc)
	wait, err := r.runUntilReady(ctx, sc, ref, name, img.Ready)
	ready := time.Now()
	res.FUSEOps = r.fuseOps(sc).since(ops)
	if err != nil {
		return res, err
	}
	st := r.proxy.Stats()
	res.Pull = seconds(pulled.Sub(start))
	res.FirstOutput = seconds(ready.Sub(pulled))
	res.Total = seconds(ready.Sub(start))
	res.Bytes, res.Requests = st.BytesSent, st.Requests
	if err := wait(); err != nil {
		return res, err
	}

	// What the node ends up fetching, and how fast the background did it.
	res.ImageBytes = r.imageSizes[repo(img, sc)]
	bg := r.settle(ctx, res.ImageBytes)
	res.SettledBytes, res.BackgroundBytes, res.BackgroundSeconds = r.proxy.Stats().BytesSent, bg.bytes, bg.seconds
	// Peak memory is read once the background fetch has ended, so that it
	// covers the fetch as well as the start, whenever the snapshotter
	// begins it.
	switch {
	case sc.Snapshotter == "lazypull":
		res.DaemonPeak = peakMemory(r.env.Daemon.PID())
		res.ManagerPeak = peakMemory(managerPID(r.env.DaemonRoot))
	case sc.external():
		res.DaemonPeak = peakMemory(r.daemons[sc.Name].pid())
	}

	if sc.Settles {
		if err := r.waitSettled(ctx); err != nil {
			return res, err
		}
	}
	// A warm start: the image is there (for a lazy snapshotter, mounted
	// and cached), the page cache dropped.
	if err := testenv.DropCaches(); err != nil {
		return res, err
	}
	ops = r.fuseOps(sc)
	warmStart := time.Now()
	wait, err = r.runUntilReady(ctx, sc, ref, name+"-warm", img.Ready)
	if err != nil {
		return res, fmt.Errorf("warm start: %w", err)
	}
	res.Warm = seconds(time.Since(warmStart))
	res.WarmFUSEOps = r.fuseOps(sc).since(ops)
	return res, wait()
}

// When the background fetch has ended. A snapshotter may start it well
// after the ready line: stargz-snapshotter waits until no file has been
// read for 5 s. So quiet alone does not mean done unless it lasts longer
// than such a wait (settleIdle); quiet once every byte of the image has
// crossed the link since the pull began (settleQuiet) does.
const (
	settleQuiet = 3 * time.Second
	settleIdle  = 15 * time.Second
)

// transfer is what crossed the link after the ready line: bytes, and the
// seconds the link carried them.
type transfer struct {
	bytes   int64
	seconds float64
}

// Sampling of the proxy's byte count while the background fetch runs: a
// stretch of idleGap or more without a byte is the snapshotter waiting on
// purpose (for quiet after a container's reads), not the link's rate.
const (
	sampleEvery = 20 * time.Millisecond
	idleGap     = 300 * time.Millisecond
)

// settle waits for the background fetch to end, sampling the proxy's byte
// count (which counts from the pull's start): until nothing has crossed
// for settleQuiet and the count has reached imageBytes, or nothing has
// crossed for settleIdle whatever the count (a snapshotter that fetches
// less than the whole image), or the run's context ends.
func (r *bench) settle(ctx context.Context, imageBytes int64) transfer {
	base := r.proxy.Stats().BytesSent
	last, lastChange := base, time.Now()
	var busy time.Duration
	moved := false
	for ctx.Err() == nil {
		quiet := time.Since(lastChange)
		if quiet >= settleIdle || (quiet >= settleQuiet && last >= imageBytes) {
			break
		}
		time.Sleep(sampleEvery)
		n := r.proxy.Stats().BytesSent
		if n == last {
			continue
		}
		now := time.Now()
		switch gap := now.Sub(lastChange); {
		case !moved || gap >= idleGap:
			busy += sampleEvery
		default:
			busy += gap
		}
		moved, last, lastChange = true, n, now
	}
	if !moved {
		return transfer{}
	}
	return transfer{bytes: last - base, seconds: busy.Seconds()}
}

// imageBytes sums the blobs of the image in the scenario's form: its
// manifest, config and layers, as the registry holds them.
func (r *bench) imageBytes(ctx context.Context, img Image, sc Scenario) (int64, error) {
	ref, err := transport.ParseRef("docker://" + r.env.Registry.Host + "/" + repo(img, sc))
	if err != nil {
		return 0, err
	}
	loc, err := transport.Open(ctx, ref, remote.Options{PlainHTTP: true})
	if err != nil {
		return 0, err
	}
	desc, err := loc.Resolve(ctx)
	if err != nil {
		return 0, err
	}
	var mf ocispec.Manifest
	if _, err := transport.FetchJSON(ctx, loc, desc, &mf); err != nil {
		return 0, err
	}
	n := desc.Size + mf.Config.Size
	for _, l := range mf.Layers {
		n += l.Size
	}
	return n, nil
}

func (r *bench) pull(ctx context.Context, sc Scenario, ref string) error {
	switch {
	case r.kubelet != nil:
		return r.kubelet.pull(ctx, ref)
	case len(sc.Pull) > 0:
		args := expand(sc.Pull, map[string]string{"ref": ref, "containerd": r.env.Containerd.Address,
			"namespace": testenv.Namespace, "snapshotter": sc.Snapshotter, "bin": r.env.BinDir})
		out, err := exec.CommandContext(ctx, args[0], args[1:]...).CombinedOutput()
		if err != nil {
			return fmt.Errorf("%s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
		}
		return nil
	case sc.Snapshotter == "lazypull" && sc.Format != "":
		_, err := r.lazypull(ctx, "pull", "--plain-http", "--address", r.env.Containerd.Address,
			"--namespace", testenv.Namespace, ref)
		return err
	default:
		args := []string{"images", "pull", "--plain-http"}
		if sc.Snapshotter != "" {
			args = append(args, "--snapshotter", sc.Snapshotter)
		}
		_, err := r.env.Containerd.Ctr(ctx, append(args, ref)...)
		return err
	}
}

// runUntilReady starts the scenario's `ctr run --rm` of ref (see
// RunUntilReady).
func (r *bench) runUntilReady(ctx context.Context, sc Scenario, ref, name, ready string) (wait func() error, err error) {
	if r.kubelet != nil {
		if len(sc.Args) > 0 {
			return nil, fmt.Errorf("scenario %s: args are not run through the CRI", sc.Name)
		}
		return r.kubelet.runUntilReady(ctx, ref, name, ready)
	}
	args := []string{"run", "--rm"}
	if r.cfg.Rootless {
		// The user has no cgroup delegated to it (cgroup v1 here).
		args = append(args, "--cgroup", "", "--cpu-shares", "0")
	}
	if sc.Snapshotter != "" {
		args = append(args, "--snapshotter", sc.Snapshotter)
	}
	return RunUntilReady(ctx, r.env.Containerd, append(append(args, ref, name), sc.Args...), ready)
}

// RunUntilReady runs the started containerd's own ctr with args (in
// testenv.Namespace) and returns once the container has printed ready on
// its standard output. The returned wait lets the container finish (and be
// removed) outside the timed part.
func RunUntilReady(ctx context.Context, c *testenv.Containerd, args []string, ready string) (wait func() error, err error) {
	cmd := c.CtrCommand(ctx, args...)
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
		return fmt.Errorf("ctr %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	lines := bufio.NewScanner(stdout)
	var seen []string
	for lines.Scan() {
		line := lines.Text()
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

// waitSettled waits until every lazy composefs layer of lazypull's root
// has settled (see Scenario.Settles).
func (r *bench) waitSettled(ctx context.Context) error {
	for {
		images, err := filepath.Glob(filepath.Join(r.env.DaemonRoot, "snapshots", "*", "layer.erofs"))
		if err != nil {
			return err
		}
		left := 0
		for _, image := range images {
			if _, err := os.Stat(composefs.SettledMarker(image)); err != nil {
				left++
			}
		}
		if left == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%d of %d lazy composefs layers did not settle: %w", left, len(images), ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

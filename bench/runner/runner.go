package runner

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/lazypull/lazypull/internal/regproxy"
	"github.com/lazypull/lazypull/internal/testenv"
	"github.com/lazypull/lazypull/profile"
)

// Run starts a private stack, puts every image into its registry in each
// scenario's form (unshaped: that is setup, not the measure), then measures
// cfg.Runs cold runs of every image and scenario through the shaped proxy.
// It tears the stack down before it returns, even on error, and returns
// what it measured so far along with any error.
func Run(ctx context.Context, cfg Config, imgs []Image) (rep *Report, err error) {
	cfg = cfg.withDefaults()
	rep = newReport(cfg, imgs)

	var opts []testenv.Option
	if cfg.Containerd.Name != "" {
		opts = append(opts, testenv.WithContainerd(cfg.Containerd))
	}
	if cfg.DaemonConfig != "" {
		opts = append(opts, testenv.WithDaemonConfig(cfg.DaemonConfig))
	}
	if cfg.Rootless {
		opts = append(opts, testenv.WithRootless())
	}
	if cfg.CRI {
		if cfg.Rootless {
			return rep, errors.New("the CRI runs are not rootless")
		}
		opts = append(opts, testenv.WithCRI())
	}
	daemonOf := map[string]string{} // scenario by snapshotter, for those with a daemon
	for _, sc := range cfg.Scenarios {
		if sc.external() {
			// Each daemon serves its snapshotter's socket: two on one
			// name would take turns behind it.
			if other, ok := daemonOf[sc.Snapshotter]; ok {
				return rep, fmt.Errorf("scenarios %s and %s both run a daemon for snapshotter %q: give each its own snapshotter name", other, sc.Name, sc.Snapshotter)
			}
			daemonOf[sc.Snapshotter] = sc.Name
		}
		if cfg.CRI && (sc.external() || sc.builtin() || sc.Settles) {
			return rep, fmt.Errorf("scenario %s: the CRI runs pull into lazypull, the CRI plugin's snapshotter (scenarios overlayfs and lazypull's FUSE mode only)", sc.Name)
		}
		switch {
		case sc.external():
			opts = append(opts, testenv.WithProxySnapshotter(sc.Snapshotter))
		case sc.builtin():
			if cfg.Containerd.Name != "" && cfg.Containerd.Major < 2 {
				return rep, fmt.Errorf("scenario %s: containerd %s has no %s snapshotter of its own: run it with containerd 2.x", sc.Name, cfg.Containerd.Name, sc.Snapshotter)
			}
			opts = append(opts, testenv.WithBuiltinSnapshotter(sc.Snapshotter))
		}
	}
	env, err := testenv.Start("", opts...)
	if err != nil {
		return rep, err
	}
	defer func() {
		if cerr := env.Close(); cerr != nil {
			err = errors.Join(err, fmt.Errorf("tearing down: %w", cerr))
		}
	}()
	rep.Containerd = env.Containerd.Version
	if cfg.Rootless {
		rep.Containerd += " (rootless)"
	}
	if cfg.CRI {
		rep.Containerd += " through its CRI plugin (overlayfs: the image as built, unpacked by lazypull)"
	}
	proxy, err := regproxy.Start(env.Registry.Host, regproxy.WithRTT(cfg.RTT), regproxy.WithBandwidth(cfg.Bandwidth))
	if err != nil {
		return rep, err
	}
	defer func() {
		if cerr := proxy.Close(); cerr != nil {
			err = errors.Join(err, fmt.Errorf("closing the proxy: %w", cerr))
		}
	}()
	r := &bench{cfg: cfg, env: env, proxy: proxy, daemons: make(map[string]*daemon), imageSizes: make(map[string]int64)}
	if cfg.CRI {
		if r.kubelet, err = newKubelet(env); err != nil {
			return rep, err
		}
		defer r.kubelet.close()
	}
	if r.metricsAddr, err = testenv.FreeLoopbackAddr(); err != nil {
		return rep, err
	}
	defer func() {
		for _, d := range r.daemons {
			if derr := d.stop(); derr != nil {
				err = errors.Join(err, derr)
			}
		}
	}()
	for _, sc := range cfg.Scenarios {
		if sc.external() {
			d := newDaemon(sc, env)
			r.daemons[sc.Name] = d
			if err := d.start(); err != nil {
				return rep, err
			}
		}
	}
	if cfg.KeepLogs {
		defer r.keepLogs()
	}

	for _, img := range imgs {
		if err := r.publish(ctx, img); err != nil {
			return rep, err
		}
	}
	// Scenarios take turns within each round, so that a drift of the
	// machine over time (other load, thermal) spreads over all of them.
	for i := 1; i <= cfg.Runs; i++ {
		for _, img := range imgs {
			for _, sc := range cfg.Scenarios {
				if !sc.runsOn(img.Name) {
					continue
				}
				res, err := r.measure(ctx, img, sc, i)
				if err != nil {
					if !cfg.KeepLogs {
						r.keepLogs()
					}
					return rep, fmt.Errorf("%s/%s run %d: %w", img.Name, sc.Name, i, err)
				}
				rep.Results = append(rep.Results, res)
				fmt.Fprintln(cfg.Progress, res.progressLine(cfg.Runs))
			}
		}
	}
	if cfg.Footprint {
		for _, sc := range cfg.Scenarios {
			if !footprintScenario(sc) {
				continue
			}
			fp, err := r.footprint(ctx, imgs, sc)
			if err != nil {
				if !cfg.KeepLogs {
					r.keepLogs()
				}
				return rep, fmt.Errorf("%s footprint: %w", sc.Name, err)
			}
			rep.Footprints = append(rep.Footprints, fp)
			fmt.Fprintln(cfg.Progress, fp.progressLine())
		}
	}
	return rep, r.finalClean(ctx)
}

// bench is one Run's stack.
type bench struct {
	cfg     Config
	env     *testenv.Env
	proxy   *regproxy.Proxy
	daemons map[string]*daemon // other snapshotters', by scenario name
	// imageSizes holds each published image's blob bytes, by repo().
	imageSizes map[string]int64
	// metricsAddr is where lazypull's FUSE manager serves its metrics.
	metricsAddr string
	kubelet     *kubelet // with Config.CRI
}

// repo is where an image lives in the registry in a scenario's form.
func repo(img Image, sc Scenario) string {
	return "bench/" + img.Name + ":" + sc.form()
}

// publish pushes the image as built and converts it once per form the
// scenarios pull, straight into the registry, not through the shaped
// link; then records the profiles the scenarios use, and converts the
// optimized forms with theirs.
func (r *bench) publish(ctx context.Context, img Image) error {
	done := map[string]bool{}
	var optimized []Scenario
	for _, sc := range r.cfg.Scenarios {
		forms := []Scenario{sc}
		if sc.Optimized {
			if !sc.runsOn(img.Name) {
				continue
			}
			// Its profile is recorded on the plain form, published
			// first; the optimized form once that profile is there.
			forms = []Scenario{sc.plain()}
			optimized = append(optimized, sc)
		}
		for _, f := range forms {
			if done[f.form()] {
				continue
			}
			done[f.form()] = true
			if err := r.publishForm(ctx, img, f, ""); err != nil {
				return err
			}
		}
	}
	for _, sc := range r.cfg.Scenarios {
		if !sc.runsOn(img.Name) {
			continue
		}
		for _, args := range sc.profiled() {
			if err := r.recordProfile(ctx, img, sc, args); err != nil {
				return err
			}
		}
	}
	for _, sc := range optimized {
		if done[sc.form()] {
			continue
		}
		done[sc.form()] = true
		if err := r.recordProfile(ctx, img, sc.plain(), sc.Args); err != nil {
			return err
		}
		if err := r.publishForm(ctx, img, sc, r.profilePath(img, sc.plain(), sc.Args)); err != nil {
			return err
		}
	}
	return nil
}

// publishForm pushes img in sc's form to the registry: as built, or
// converted (with the workload profile at profilePath, if any, first in
// each layer).
func (r *bench) publishForm(ctx context.Context, img Image, sc Scenario, profilePath string) error {
	dst := r.env.Registry.Host + "/" + repo(img, sc)
	start := time.Now()
	if sc.Format == "" {
		if err := testenv.Push(ctx, img.Layout, img.Tag, dst); err != nil {
			return err
		}
	} else {
		args := append([]string{"convert", "--quiet", "--plain-http", "--format", sc.Format}, sc.ConvertArgs...)
		if profilePath != "" {
			args = append(args, "--profile", profilePath)
		}
		if _, err := r.lazypull(ctx, append(args, "oci:"+img.Layout+":"+img.Tag, "docker://"+dst)...); err != nil {
			return err
		}
	}
	size, err := r.imageBytes(ctx, img, sc)
	if err != nil {
		return err
	}
	r.imageSizes[repo(img, sc)] = size
	fmt.Fprintf(r.cfg.Progress, "setup %s: %s in %v\n", img.Name, dst, time.Since(start).Round(time.Millisecond))
	return nil
}

// profilePath is where the profile of img's workload args (nil: its
// command) in sc's form is kept between runs.
func (r *bench) profilePath(img Image, sc Scenario, args []string) string {
	name := img.Name + "-" + sc.form()
	if len(args) > 0 {
		name += "-" + digest.FromString(strings.Join(args, "\x00")).Encoded()[:12]
	}
	return filepath.Join(r.env.Dir, "profiles", name+".json")
}

// recordProfile records img's workload args (nil: its command) in sc's
// form once, straight from the registry (not through the shaped link),
// until its ready line.
func (r *bench) recordProfile(ctx context.Context, img Image, sc Scenario, args []string) error {
	p := r.profilePath(img, sc, args)
	if _, err := os.Stat(p); err == nil {
		return nil // the same form, for another scenario
	}
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return err
	}
	start := time.Now()
	if _, err := r.lazypull(ctx, append([]string{"profile", "record", "--quiet", "--plain-http", "--address", r.env.Containerd.Address,
		"--namespace", testenv.Namespace, "--wait-for", img.Ready, "-o", p, "docker://" + r.env.Registry.Host + "/" + repo(img, sc)}, args...)...); err != nil {
		return err
	}
	data, err := os.ReadFile(p)
	if err != nil {
		return err
	}
	prof, err := profile.Parse(data)
	if err != nil {
		return fmt.Errorf("the profile recorded of %s: %w", img.Name, err)
	}
	chunks := make(map[digest.Digest]bool)
	for _, rd := range prof.Reads {
		for _, c := range rd.Chunks {
			chunks[c] = true
		}
	}
	workload := "its workload's"
	if len(args) > 0 {
		workload = fmt.Sprintf("the workload %q's", strings.Join(args, " "))
	}
	fmt.Fprintf(r.cfg.Progress, "setup %s: recorded %s profile (%s) in %v: %d reads of %d files, %.1f MB of file data in %d chunks\n",
		img.Name, workload, sc.form(), time.Since(start).Round(time.Millisecond), len(prof.Reads), len(prof.Paths()), float64(prof.Bytes())/1e6, len(chunks))
	return nil
}

// keepLogs copies the daemons' logs to cfg.LogDir, since Close removes
// them with the rest of the stack and a failed run needs them.
func (r *bench) keepLogs() {
	if r.cfg.LogDir == "" {
		return
	}
	logs := map[string]string{
		"lazypull-snapshotter.log": r.env.Daemon.Log,
		"fusemanager.log":          filepath.Join(r.env.DaemonRoot, "fusemanager.log"),
		"containerd.log":           r.env.Containerd.Log,
	}
	for name, d := range r.daemons {
		logs[name+".log"] = d.logPath()
	}
	os.MkdirAll(r.cfg.LogDir, 0o755)
	for name, src := range logs {
		if b, err := os.ReadFile(src); err == nil {
			os.WriteFile(filepath.Join(r.cfg.LogDir, name), b, 0o644)
		}
	}
	fmt.Fprintln(r.cfg.Progress, "daemon logs in", r.cfg.LogDir)
}

// lazypull runs our CLI and returns its combined output.
func (r *bench) lazypull(ctx context.Context, args ...string) (string, error) {
	out, err := exec.CommandContext(ctx, filepath.Join(r.env.BinDir, "lazypull"), args...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("lazypull %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}

// finalClean removes the last image, so that Env.Close finds no container
// mounts; it checks that nothing of ours stays mounted outside the Env's
// directory either.
func (r *bench) finalClean(ctx context.Context) error {
	if err := RemoveImages(ctx, r.env.Containerd); err != nil {
		return err
	}
	if r.kubelet != nil {
		if err := r.kubelet.removeImages(ctx, r.env.DaemonRoot); err != nil {
			return err
		}
	}
	if m := testenv.MountsUnder(r.env.Dir); len(m) > 0 {
		fmt.Fprintf(os.Stderr, "bench: mounts still under %s before teardown (Close unmounts them): %v\n", r.env.Dir, m)
	}
	return nil
}

// Command demo is `make demo`: on a bare machine it starts a private
// registry behind a link shaper (20 ms round trip, 100 Mbit/s), our daemon
// and containerd under a temporary root; builds a real image (python3 on
// Debian, cached after the first time), converts it to eStargz with
// `lazypull convert`, runs it once after a full pull with containerd's
// overlayfs snapshotter and once lazily through lazypull, prints both times
// and what each fetched, and tears everything down again.
//
//	go run ./bench/demo [--image python|gcc|java] [--rtt 20ms] [--bandwidth 100M] [--containerd 2|1.6]
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/lazypull/lazypull/bench/images"
	"github.com/lazypull/lazypull/bench/runner"
	"github.com/lazypull/lazypull/internal/regproxy"
	"github.com/lazypull/lazypull/internal/testenv"
)

func main() {
	image := flag.String("image", "python", "the image to run (of "+strings.Join(images.Names(), ", ")+")")
	rtt := flag.Duration("rtt", 20*time.Millisecond, "round-trip time the link shaper adds per request")
	bandwidth := flag.String("bandwidth", "100M", "link bandwidth in bit/s (k, M, G suffixes)")
	cache := flag.String("cache", images.DefaultCacheDir(), "image build cache `DIR`")
	containerd := flag.String("containerd", "2", "containerd `release`: 2 ("+testenv.Containerd2.Name+", what users run; built by `make deps`) or 1.6 (Debian's)")
	flag.Parse()
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "demo: containerd and overlay mounts need root; run `sudo make demo`")
		os.Exit(1)
	}
	bps, err := runner.ParseBandwidth(*bandwidth)
	if err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(2)
	}
	release, err := testenv.ContainerdByName(*containerd)
	if err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, *image, *cache, *rtt, bps, release); err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(1)
	}
}

// outcome is one way of running the image.
type outcome struct {
	pull, run time.Duration
	bytes     int64
	requests  int64
}

func run(ctx context.Context, name, cache string, rtt time.Duration, bps int64, containerd testenv.ContainerdRelease) (err error) {
	step(fmt.Sprintf("building the %s image from Debian packages (the first time takes a few minutes; cached in %s)", name, cache))
	b, err := images.New(cache, images.WithProgress(os.Stdout))
	if err != nil {
		return err
	}
	img, err := b.Build(ctx, name)
	if err != nil {
		return err
	}
	fmt.Printf("   %s: %d layers, %.1f MB compressed; it prints %q when ready\n", img.Ref(), len(img.Layers), float64(img.Size())/1e6, img.Ready)

	step("building lazypull; starting a registry, a link shaper, lazypull-snapshotter and containerd")
	env, err := testenv.Start("", testenv.WithContainerd(containerd))
	if err != nil {
		return err
	}
	defer func() {
		step("tearing down")
		if cerr := env.Close(); cerr != nil && err == nil {
			err = cerr
		}
		if err == nil {
			fmt.Println("   stopped every process it started; no mounts left behind")
		}
	}()
	link, err := regproxy.Start(env.Registry.Host, regproxy.WithRTT(rtt), regproxy.WithBandwidth(bps))
	if err != nil {
		return err
	}
	defer link.Close()
	fmt.Printf("   registry             http://%s (pid %d)\n", env.Registry.Host, env.Registry.PID())
	fmt.Printf("   link shaper          http://%s: %v round trip, %s, counting bytes\n", link.Addr(), rtt, mbits(bps))
	fmt.Printf("   lazypull-snapshotter %s (pid %d)\n", env.DaemonSocket, env.Daemon.PID())
	fmt.Printf("   containerd           %s (pid %d, version %s), proxy snapshotter \"lazypull\"\n", env.Containerd.Address, env.Containerd.PID(), env.Containerd.Version)

	plain, lazy := env.Registry.Host+"/demo/"+name+":v1", env.Registry.Host+"/demo/"+name+":v1-esgz"
	direct := lazy // the registry itself, not through the link: for the profile
	step("pushing it, and converting it to eStargz: lazypull convert " + img.Ref() + " docker://" + lazy)
	if err := testenv.Push(ctx, img.Layout, img.Tag, plain); err != nil {
		return err
	}
	if err := lazypull(env, "convert", "--quiet", "--plain-http", img.Ref(), "docker://"+lazy); err != nil {
		return err
	}
	// From here on every byte goes through the shaped link.
	plain, lazy = strings.Replace(plain, env.Registry.Host, link.Addr(), 1), strings.Replace(lazy, env.Registry.Host, link.Addr(), 1)

	step("the usual way: ctr images pull " + plain + ", then ctr run")
	full, err := timed(ctx, env, link, img.Ready,
		func() error {
			_, err := env.Containerd.Ctr(ctx, "images", "pull", "--plain-http", plain)
			return err
		},
		[]string{"run", "--rm", plain, "demo-full"})
	if err != nil {
		return err
	}

	step("lazily: lazypull pull " + lazy + ", then ctr run --snapshotter lazypull")
	lazily, err := timed(ctx, env, link, img.Ready,
		func() error {
			return lazypull(env, "pull", "--plain-http", "--address", env.Containerd.Address, "--namespace", testenv.Namespace, lazy)
		},
		[]string{"run", "--rm", "--snapshotter", "lazypull", lazy, "demo-lazy"})
	if err != nil {
		return err
	}

	profile := filepath.Join(env.Dir, "profile.json")
	step("recording what the workload reads, once: lazypull profile record --wait-for " + fmt.Sprintf("%q", img.Ready) + " docker://" + direct)
	if err := lazypull(env, "profile", "record", "--quiet", "--plain-http", "--address", env.Containerd.Address, "--namespace", testenv.Namespace,
		"--wait-for", img.Ready, "-o", profile, "docker://"+direct); err != nil {
		return err
	}
	step("attaching it to the image (the image's digest does not change): lazypull profile push docker://" + direct + " profile.json")
	if err := lazypull(env, "profile", "push", "--plain-http", "docker://"+direct, profile); err != nil {
		return err
	}
	step("a node that has fetched nothing again: the image removed, lazypull's cache emptied, its daemon restarted")
	if err := runner.RemoveImages(ctx, env.Containerd); err != nil {
		return err
	}
	if err := runner.RestartEmpty(env, nil); err != nil {
		return err
	}
	if err := testenv.DropCaches(); err != nil {
		return err
	}
	step("lazily with the profile: lazypull pull " + lazy + ", then ctr run --snapshotter lazypull")
	profiled, err := timed(ctx, env, link, img.Ready,
		func() error {
			return lazypull(env, "pull", "--plain-http", "--address", env.Containerd.Address, "--namespace", testenv.Namespace, lazy)
		},
		[]string{"run", "--rm", "--snapshotter", "lazypull", lazy, "demo-profiled"})
	if err != nil {
		return err
	}

	step(fmt.Sprintf("time until %q, and what crossed the link until then", img.Ready))
	fmt.Printf("   %-26s %8s %8s %8s %10s %9s\n", "", "pull", "run", "total", "fetched", "requests")
	for _, r := range []struct {
		name string
		o    outcome
	}{{"full pull, overlayfs", full}, {"lazy pull, lazypull", lazily}, {"lazy pull with a profile", profiled}} {
		fmt.Printf("   %-26s %7.2fs %7.2fs %7.2fs %7.1f MB %9d\n", r.name, r.o.pull.Seconds(), r.o.run.Seconds(),
			(r.o.pull + r.o.run).Seconds(), float64(r.o.bytes)/1e6, r.o.requests)
	}
	speedup := (full.pull + full.run).Seconds() / (lazily.pull + lazily.run).Seconds()
	fmt.Printf("   lazypull started it %.1f× sooner, having fetched %.0f%% of the bytes; the rest follows in the background.\n",
		speedup, 100*float64(lazily.bytes)/float64(full.bytes))
	fmt.Printf("   With the workload's profile, %.1f× sooner: what it reads was on its way while the container started.\n",
		(full.pull+full.run).Seconds()/(profiled.pull+profiled.run).Seconds())

	step("what each layer has fetched by now: lazypull status")
	return lazypull(env, "status", "--root", env.DaemonRoot)
}

// timed pulls, then runs the container until it prints ready, counting the
// link's bytes and requests from the pull's start until then.
func timed(ctx context.Context, env *testenv.Env, link *regproxy.Proxy, ready string, pull func() error, ctrRun []string) (outcome, error) {
	link.ResetStats()
	start := time.Now()
	if err := pull(); err != nil {
		return outcome{}, err
	}
	pulled := time.Now()
	wait, err := runner.RunUntilReady(ctx, env.Containerd, ctrRun, ready)
	if err != nil {
		return outcome{}, err
	}
	st := link.Stats()
	o := outcome{pull: pulled.Sub(start), run: time.Since(pulled), bytes: st.BytesSent, requests: st.Requests}
	if err := wait(); err != nil {
		return o, err
	}
	fmt.Printf("   pulled in %.2fs, printed %q %.2fs later; %.1f MB in %d requests over the link\n",
		o.pull.Seconds(), ready, o.run.Seconds(), float64(o.bytes)/1e6, o.requests)
	return o, nil
}

// lazypull runs our CLI with its output shown, indented.
func lazypull(env *testenv.Env, args ...string) error {
	cmd := exec.Command(filepath.Join(env.BinDir, "lazypull"), args...)
	out, err := cmd.CombinedOutput()
	fmt.Print(indent(string(out)))
	if err != nil {
		return fmt.Errorf("lazypull %s: %w", strings.Join(args, " "), err)
	}
	return nil
}

func mbits(bps int64) string { return fmt.Sprintf("%g Mbit/s", float64(bps)/1e6) }

func step(s string) { fmt.Println("==>", s) }

func indent(s string) string {
	lines := strings.SplitAfter(s, "\n")
	for i, l := range lines {
		if l != "" {
			lines[i] = "   " + l
		}
	}
	return strings.Join(lines, "")
}

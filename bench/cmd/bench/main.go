// Command bench is issue 6's benchmark: cold time to first output of real
// images, overlayfs full pull against lazypull, through a shaped link.
//
//	go run ./bench/cmd/bench [-n 5] [--images python,gcc,java] [--scenarios ...]
//	                         [--rtt 20ms] [--bandwidth 100M] [--containerd 2.x|1.6] [--out bench/results]
//	go run ./bench/cmd/bench --rerender bench/results/<timestamp>
//
// It writes results.json, results.md and totals.png under
// <out>/<timestamp>/ and a progress line per run on stderr. It needs root.
// The logic is in bench/runner; this parses flags.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/lazypull/lazypull/bench/images"
	"github.com/lazypull/lazypull/bench/runner"
	"github.com/lazypull/lazypull/internal/testenv"
)

func main() {
	runs := flag.Int("n", 5, "cold runs per image and scenario")
	imageList := flag.String("images", "python,gcc,java", "comma-separated images (of "+strings.Join(images.Names(), ", ")+")")
	scenarioList := flag.String("scenarios", "overlayfs,lazypull-estargz,lazypull-zstd", "comma-separated scenarios (built in: "+strings.Join(runner.ScenarioNames(), ", ")+"; or scenario .toml files)")
	rtt := flag.Duration("rtt", 20*time.Millisecond, "round-trip time the proxy adds per request")
	bandwidth := flag.String("bandwidth", "100M", "link bandwidth in bit/s (k, M, G suffixes; 0: no cap)")
	out := flag.String("out", filepath.Join(testenv.SourceRoot(), "bench", "results"), "results `DIR`; each run writes DIR/<timestamp>/")
	cache := flag.String("cache", images.DefaultCacheDir(), "image build cache `DIR`")
	dataSize := flag.Int64("data-size", images.DefaultDataSize, "size in bytes of the data image's data layer")
	daemonConfig := flag.String("daemon-config", "", "lazypull-snapshotter TOML `FILE` (default: its defaults)")
	footprint := flag.Bool("footprint", true, "after the runs, measure disk and page cache with all the images pulled into each of overlayfs's and lazypull's scenarios")
	keepLogs := flag.Bool("keep-logs", false, "keep the daemons' logs under the results directory (else only when a run fails)")
	containerd := flag.String("containerd", "2.x", "containerd `RELEASE` to start: 2.x ("+testenv.Containerd2.Name+", built by scripts/install-deps.sh) or 1.6 (Debian's)")
	rootless := flag.Bool("rootless", false, "run containerd and lazypull as an unprivileged user in containerd's rootless recipe (rootlesskit); every scenario, overlayfs included")
	cri := flag.Bool("cri", false, "pull and start through containerd's CRI plugin, as a kubelet does (PullImage through lazypull's image-service proxy, then a pod); scenarios overlayfs (the image as built, unpacked) and lazypull's FUSE mode; no footprint")
	rerender := flag.String("rerender", "", "only rewrite results.md and totals.png of the results `DIR` from its results.json")
	flag.Parse()

	if *rerender != "" {
		if err := runner.Rerender(*rerender); err != nil {
			fail(err)
		}
		return
	}

	if os.Geteuid() != 0 {
		fail(fmt.Errorf("containerd, mounts and dropping the page cache need root"))
	}
	bps, err := runner.ParseBandwidth(*bandwidth)
	if err != nil {
		fail(err)
	}
	scenarios, err := runner.ScenariosByName(split(*scenarioList))
	if err != nil {
		fail(err)
	}
	release, err := testenv.ContainerdByName(strings.TrimSuffix(*containerd, ".x"))
	if err != nil {
		fail(fmt.Errorf("--containerd %s: %w", *containerd, err))
	}
	cfg := runner.Config{Runs: *runs, RTT: *rtt, Bandwidth: bps, Scenarios: scenarios, Progress: os.Stderr, Containerd: release, Footprint: *footprint, Rootless: *rootless, CRI: *cri}
	if *cri {
		cfg.Footprint = false
	}
	if *daemonConfig != "" {
		b, err := os.ReadFile(*daemonConfig)
		if err != nil {
			fail(err)
		}
		cfg.DaemonConfig = string(b)
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	imgs, err := build(ctx, *cache, *dataSize, split(*imageList))
	if err != nil {
		fail(err)
	}
	dir := filepath.Join(*out, time.Now().Format("20060102-150405"))
	cfg.LogDir, cfg.KeepLogs = filepath.Join(dir, "logs"), *keepLogs
	rep, err := runner.Run(ctx, cfg, imgs)
	// Whatever was measured is written, even when a later run failed.
	if rep != nil && len(rep.Results) > 0 {
		if werr := rep.Write(dir); werr != nil {
			fmt.Fprintln(os.Stderr, "bench: writing results:", werr)
		} else {
			fmt.Fprintln(os.Stderr, "bench: results in", dir)
			md, _ := os.ReadFile(filepath.Join(dir, "results.md"))
			os.Stdout.Write(md)
		}
	}
	if err != nil {
		fail(err)
	}
}

// build takes the benchmark images from the builder's cache (building them
// the first time, which takes minutes).
func build(ctx context.Context, cache string, dataSize int64, names []string) ([]runner.Image, error) {
	b, err := images.New(cache, images.WithDataSize(dataSize), images.WithProgress(os.Stderr))
	if err != nil {
		return nil, err
	}
	var imgs []runner.Image
	for _, name := range names {
		img, err := b.Build(ctx, name)
		if err != nil {
			return nil, err
		}
		imgs = append(imgs, runner.Image{Name: img.Name, Layout: img.Layout, Tag: img.Tag, Ready: img.Ready, Size: img.Size()})
	}
	return imgs, nil
}

func split(s string) []string {
	var out []string
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "bench:", err)
	os.Exit(1)
}

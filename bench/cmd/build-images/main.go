// Command build-images builds the benchmark images (see package
// bench/images) into its cache, optionally exports their OCI layouts, and
// prints one line per image:
//
//	go run ./bench/cmd/build-images [--cache DIR] [--data-size BYTES] [--out DIR] [--verify] [NAME...]
//
// Without names it builds them all. It needs root (chroot, overlay mounts).
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/lazypull/lazypull/bench/images"
)

func main() {
	cache := flag.String("cache", images.DefaultCacheDir(), "cache directory for built images and the base layer")
	dataSize := flag.Int64("data-size", images.DefaultDataSize, "size in bytes of the data image's data layer")
	out := flag.String("out", "", "also put each image's OCI layout at DIR/NAME (hard links into the cache where possible)")
	mirror := flag.String("mirror", "", "Debian mirror (default: the one this machine's apt sources use)")
	verify := flag.Bool("verify", false, "run each image's workload in a chroot and check what it prints")
	quiet := flag.Bool("quiet", false, "do not print build progress on stderr")
	flag.Usage = func() {
		fmt.Fprintf(flag.CommandLine.Output(), "usage: build-images [flags] [NAME...]   (names: %v; default all)\n", images.Names())
		flag.PrintDefaults()
	}
	flag.Parse()
	names := flag.Args()
	if len(names) == 0 {
		names = images.Names()
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	opts := []images.Option{images.WithDataSize(*dataSize), images.WithMirror(*mirror)}
	if !*quiet {
		opts = append(opts, images.WithProgress(os.Stderr))
	}
	b, err := images.New(*cache, opts...)
	if err != nil {
		fail(err)
	}
	for _, name := range names {
		img, err := b.Build(ctx, name)
		if err != nil {
			fail(err)
		}
		if *out != "" {
			if img, err = images.Export(img, filepath.Join(*out, name)); err != nil {
				fail(err)
			}
		}
		if *verify {
			if err := images.Verify(ctx, img); err != nil {
				fail(err)
			}
		}
		how := fmt.Sprintf("built in %v", img.BuildTime.Round(time.Second))
		if img.Cached {
			how = fmt.Sprintf("cached (built in %v)", img.BuildTime.Round(time.Second))
		}
		fmt.Printf("%-6s  %7.1f MB  %d layers  %-26s  %s\n", img.Name, float64(img.Size())/1e6, len(img.Layers), how, img.Layout)
	}
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "build-images:", err)
	os.Exit(1)
}

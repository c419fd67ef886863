// Command demo is `make demo`: on a bare machine it starts a private
// registry, our daemon and containerd under a temporary root, runs a
// container through the lazypull snapshotter, shows what happened and tears
// everything down again.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/lazypull/lazypull/internal/testenv"
)

func main() {
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "demo: containerd and overlay mounts need root; run `sudo make demo`")
		os.Exit(1)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := run(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context) (err error) {
	step("building lazypull and starting registry, lazypull-snapshotter and containerd")
	env, err := testenv.Start("")
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
	fmt.Printf("   registry             http://%s (pid %d)\n", env.Registry.Host, env.Registry.PID())
	fmt.Printf("   lazypull-snapshotter %s (pid %d)\n", env.DaemonSocket, env.Daemon.PID())
	fmt.Printf("   containerd           %s (pid %d), proxy snapshotter \"lazypull\"\n", env.Containerd.Address, env.Containerd.PID())

	step("building a two-layer image (a static Go program; the upper layer deletes files) and pushing it")
	ref, err := env.PushHello(ctx)
	if err != nil {
		return err
	}
	fmt.Println("  ", ref)

	ctr := env.Containerd.Ctr
	step("pulling with the lazypull snapshotter (an ordinary image: its layers are unpacked)")
	start := time.Now()
	if _, err := ctr(ctx, "images", "pull", "--plain-http", "--snapshotter", "lazypull", ref); err != nil {
		return err
	}
	fmt.Printf("   pulled in %v\n", time.Since(start).Round(time.Millisecond))

	step("running it: ctr run --rm --snapshotter lazypull " + ref)
	start = time.Now()
	out, err := ctr(ctx, "run", "--rm", "--snapshotter", "lazypull", ref, "demo")
	if err != nil {
		return err
	}
	fmt.Print(indent(out))
	fmt.Printf("   ran in %v\n", time.Since(start).Round(time.Millisecond))
	if out != testenv.HelloOutput {
		return fmt.Errorf("the container printed something unexpected; want:\n%s", testenv.HelloOutput)
	}

	step("the snapshots containerd keeps in lazypull")
	list, err := ctr(ctx, "snapshots", "--snapshotter", "lazypull", "ls")
	if err != nil {
		return err
	}
	fmt.Print(indent(list))
	return nil
}

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

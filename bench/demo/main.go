// Command demo is `make demo`: on a bare machine it starts a private
// registry, our daemon and containerd under a temporary root, converts an
// image to eStargz, pulls it lazily and runs it, shows what was fetched and
// tears everything down again.
package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
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

	step("building a two-layer image (a static Go program, 8 MiB it never reads; the upper layer deletes files) and pushing it")
	ref, err := env.PushHello(ctx)
	if err != nil {
		return err
	}
	fmt.Println("  ", ref)

	lazy := env.Registry.Host + "/hello:esgz"
	step("converting it to eStargz: lazypull convert docker://" + ref + " docker://" + lazy)
	if err := lazypull(env, "convert", "--quiet", "docker://"+ref, "docker://"+lazy); err != nil {
		return err
	}

	step("pulling it lazily: lazypull pull " + lazy)
	start := time.Now()
	if err := lazypull(env, "pull", "--address", env.Containerd.Address, "--namespace", testenv.Namespace, lazy); err != nil {
		return err
	}
	fmt.Printf("   pulled in %v\n", time.Since(start).Round(time.Millisecond))

	step("running it: ctr run --rm --snapshotter lazypull " + lazy)
	start = time.Now()
	out, err := env.Containerd.Ctr(ctx, "run", "--rm", "--snapshotter", "lazypull", lazy, "demo")
	if err != nil {
		return err
	}
	fmt.Print(indent(out))
	fmt.Printf("   ran in %v\n", time.Since(start).Round(time.Millisecond))
	if out != testenv.HelloOutput {
		return fmt.Errorf("the container printed something unexpected; want:\n%s", testenv.HelloOutput)
	}

	step("what the layers fetched: lazypull status")
	return lazypull(env, "status", "--root", env.DaemonRoot)
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

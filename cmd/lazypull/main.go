// Command lazypull is lazypull's command-line tool: it converts images to
// the lazily pullable formats, pulls them for the lazypull snapshotter,
// inspects layers and runs benchmarks. Each subcommand parses its flags and
// calls library code.
package main

import (
	"fmt"
	"os"

	"github.com/containerd/log"
	"github.com/urfave/cli/v2"

	"github.com/lazypull/lazypull/version"
)

func main() {
	app := &cli.App{
		Name:  "lazypull",
		Usage: "run containers before their images are downloaded",
		Description: `lazypull works with the lazypull-snapshotter daemon, a containerd
snapshotter that mounts eStargz and zstd:chunked layers straight from the
registry and fetches file contents on demand.

Examples:
  lazypull convert docker://registry.example/app:1.0 docker://registry.example/app:1.0-esgz
  lazypull inspect --verify docker://registry.example/app:1.0-esgz`,
		Version: version.String(),
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "log-level", Value: "warn", Usage: "trace, debug, info, warn or error"},
		},
		Before: func(c *cli.Context) error {
			return log.SetLevel(c.String("log-level"))
		},
		Commands: []*cli.Command{convertCommand, inspectCommand, pullCommand, profileCommand, statusCommand, versionCommand},
	}
	if err := app.Run(os.Args); err != nil {
		fmt.Fprintln(os.Stderr, "lazypull:", err)
		os.Exit(1)
	}
}

var versionCommand = &cli.Command{
	Name:  "version",
	Usage: "print the version",
	Action: func(c *cli.Context) error {
		fmt.Println("lazypull", version.String())
		return nil
	},
}

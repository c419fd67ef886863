package main

import (
	"fmt"
	"os"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/urfave/cli/v2"

	"github.com/lazypull/lazypull/fusefs"
	"github.com/lazypull/lazypull/internal/progress"
	"github.com/lazypull/lazypull/profile"
	"github.com/lazypull/lazypull/profile/artifact"
	"github.com/lazypull/lazypull/record"
	"github.com/lazypull/lazypull/transport"
)

var profileCommand = &cli.Command{
	Name:  "profile",
	Usage: "record what a workload reads of its image, so that lazy pulls fetch exactly that first",
	Subcommands: []*cli.Command{
		profileRecordCommand,
		profilePushCommand,
	},
}

var profilePushCommand = &cli.Command{
	Name:      "push",
	Usage:     "attach a workload profile to an image in its registry, without changing the image",
	ArgsUsage: "IMAGE FILE",
	Description: `Pushes the profile in FILE (from lazypull profile record) as an OCI
artifact (artifact type ` + profile.MediaType + `) whose subject is
IMAGE's manifest for this machine's platform, and lists it among the
manifest's referrers: through the registry's referrers API where it has one,
and in the index tagged sha256-<digest> (the referrers tag schema) for
registries without it, such as Distribution 2.8. The image's digest does not
change; an image can carry the profiles of several workloads. The
snapshotter finds them when it mounts the image's layers
([fetch] profile_referrers).

Examples:
  lazypull profile push docker://registry.example/app:1.0-esgz app.json
  lazypull profile push --plain-http docker://127.0.0.1:5000/python:esgz python.json`,
	Flags: registryFlags,
	Action: func(c *cli.Context) error {
		if c.NArg() != 2 {
			return cli.Exit("profile push takes an IMAGE and a FILE (see lazypull profile push --help)", 2)
		}
		ref, err := transport.ParseRef(c.Args().Get(0))
		if err != nil {
			return err
		}
		data, err := os.ReadFile(c.Args().Get(1))
		if err != nil {
			return err
		}
		p, err := profile.Parse(data)
		if err != nil {
			return fmt.Errorf("%s: %w", c.Args().Get(1), err)
		}
		loc, err := transport.Open(c.Context, ref, registryOptions(c))
		if err != nil {
			return err
		}
		root, err := loc.Resolve(c.Context)
		if err != nil {
			return err
		}
		img, err := transport.ReadImage(c.Context, loc, root)
		if err != nil {
			return err
		}
		if missing := p.MissingLayers(img.Manifest.Layers); len(missing) > 0 {
			return fmt.Errorf("the profile in %s names layers %s is without (%v): it was recorded on another image", c.Args().Get(1), ref, missing)
		}
		desc, err := artifact.Push(c.Context, loc, img.Desc, p)
		if err != nil {
			return fmt.Errorf("push the profile to %s: %w", ref, err)
		}
		fmt.Printf("%s: profile %s refers to %s\n", ref, desc.Digest, img.Desc.Digest)
		return nil
	},
}

var profileRecordCommand = &cli.Command{
	Name:      "record",
	Usage:     "run an image's workload once and write the profile of what it read",
	ArgsUsage: "IMAGE [ARG...]",
	Description: `Runs IMAGE's workload (its entrypoint and command, or ARGs) through
containerd and runc, on the image's layers mounted lazily in record mode in
this process (no passthrough, so every read is seen), and writes the
workload profile: for each layer, the byte ranges of each file read, in the
order they were first read, with the chunks they fall in. The workload is
stopped when it prints --wait-for's text, after --period, or when it exits.
A page fault reads --read-ahead-kb around its page, as on the nodes: give
it their [fuse] read_ahead_kb if they do not use the default.

Put the profile in the snapshotter's profile directory ([fetch] profile_dir,
default /var/lib/lazypull/profiles): the layers it names then fetch what it
read, in that order and in parallel, as soon as they are mounted.

IMAGE is docker://REFERENCE (a registry) or oci:DIR[:TAG] (an OCI layout).
Needs root (mounts) and containerd.

Examples:
  lazypull profile record --wait-for ready -o /var/lib/lazypull/profiles/app.json docker://registry.example/app:1.0-esgz
  lazypull profile record --period 5s docker://127.0.0.1:5000/python:esgz python3 -c 'print("ready")'
  lazypull profile record --entrypoint /bin/sh -o sh.json oci:./layout:esgz -c 'ls /'`,
	Flags: append([]cli.Flag{
		&cli.StringFlag{Name: "address", Aliases: []string{"a"}, Value: "/run/containerd/containerd.sock", EnvVars: []string{"CONTAINERD_ADDRESS"}, Usage: "containerd's `SOCKET`"},
		&cli.StringFlag{Name: "namespace", Aliases: []string{"n"}, Value: "default", EnvVars: []string{"CONTAINERD_NAMESPACE"}, Usage: "containerd `NAMESPACE`"},
		&cli.StringSliceFlag{Name: "args", Usage: "the workload's command `ARG`s, in place of the image's (repeat; or give them after IMAGE)"},
		&cli.StringSliceFlag{Name: "entrypoint", Usage: "the workload's entrypoint, in place of the image's (repeat for each `ARG`)"},
		&cli.StringSliceFlag{Name: "env", Aliases: []string{"e"}, Usage: "add `KEY=VALUE` to the workload's environment (repeat)"},
		&cli.StringFlag{Name: "wait-for", Usage: "stop the workload when it prints `TEXT`"},
		&cli.DurationFlag{Name: "period", Usage: "stop the workload after `DURATION` (without --wait-for)"},
		&cli.StringFlag{Name: "output", Aliases: []string{"o"}, Value: "-", Usage: "write the profile to `FILE` (- for standard output)"},
		&cli.BoolFlag{Name: "quiet", Aliases: []string{"q"}, Usage: "do not copy the workload's output to standard error"},
		&cli.IntFlag{Name: "read-ahead-kb", Value: fusefs.DefaultReadAheadKiB, Usage: "the layers' read-ahead in `KIB`: the nodes' [fuse] read_ahead_kb"},
	}, registryFlags...),
	Action: func(c *cli.Context) error {
		if c.NArg() < 1 {
			return cli.Exit("profile record takes an IMAGE (see lazypull profile record --help)", 2)
		}
		if c.String("wait-for") != "" && c.Duration("period") > 0 {
			return cli.Exit("give --wait-for or --period, not both", 2)
		}
		ref, err := transport.ParseRef(c.Args().First())
		if err != nil {
			return err
		}
		client, err := containerd.New(c.String("address"), containerd.WithDefaultNamespace(c.String("namespace")))
		if err != nil {
			return fmt.Errorf("connect to containerd at %s: %w", c.String("address"), err)
		}
		defer client.Close()
		args := c.StringSlice("args")
		if c.NArg() > 1 {
			args = append(args, c.Args().Tail()...)
		}
		opts := record.Options{
			Client:       client,
			Args:         args,
			Entrypoint:   c.StringSlice("entrypoint"),
			Env:          c.StringSlice("env"),
			WaitFor:      c.String("wait-for"),
			Period:       c.Duration("period"),
			ReadAheadKiB: c.Int("read-ahead-kb"),
			Registry:     registryOptions(c),
		}
		if !c.Bool("quiet") {
			opts.Output = os.Stderr
		}
		p, err := record.Run(c.Context, ref, opts)
		if err != nil {
			return fmt.Errorf("record a profile of %s: %w", ref, err)
		}
		data, err := p.Marshal()
		if err != nil {
			return err
		}
		data = append(data, '\n')
		if out := c.String("output"); out != "-" {
			if err := os.WriteFile(out, data, 0o644); err != nil {
				return err
			}
		} else if _, err := os.Stdout.Write(data); err != nil {
			return err
		}
		fmt.Fprintf(os.Stderr, "recorded %d reads, %s of file data, in %d layers\n", len(p.Reads), progress.Bytes(p.Bytes()), len(p.Layers))
		return nil
	},
}

package main

import (
	"fmt"
	"os"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/distribution/reference"
	"github.com/urfave/cli/v2"

	"github.com/lazypull/lazypull/internal/progress"
	"github.com/lazypull/lazypull/pull"
)

var pullCommand = &cli.Command{
	Name:      "pull",
	Usage:     "pull an image into containerd so that it runs before it is downloaded",
	ArgsUsage: "REF",
	Description: `Fetches REF's manifest and config through containerd and unpacks it with
the lazypull snapshotter, labelling every layer so that eStargz and
zstd:chunked layers are mounted straight from the registry instead of being
downloaded. Other layers are downloaded and unpacked as usual. Then
'ctr run --snapshotter lazypull REF' starts at once.

Examples:
  lazypull pull registry.example/app:1.0-esgz
  lazypull pull --plain-http 127.0.0.1:5000/app:lazy
  lazypull pull --address /run/containerd/containerd.sock --namespace k8s.io registry.example/app:1.0-esgz`,
	Flags: append([]cli.Flag{
		&cli.StringFlag{Name: "address", Aliases: []string{"a"}, Value: "/run/containerd/containerd.sock", EnvVars: []string{"CONTAINERD_ADDRESS"}, Usage: "containerd's `SOCKET`"},
		&cli.StringFlag{Name: "namespace", Aliases: []string{"n"}, Value: "default", EnvVars: []string{"CONTAINERD_NAMESPACE"}, Usage: "containerd `NAMESPACE`"},
		&cli.StringFlag{Name: "snapshotter", Value: "lazypull", Usage: "the lazypull proxy snapshotter's `NAME` in containerd's config"},
		&cli.StringFlag{Name: "platform", Usage: "pull this `PLATFORM` (default: this machine's)"},
	}, registryFlags...),
	Action: func(c *cli.Context) error {
		if c.NArg() != 1 {
			return cli.Exit("pull takes one REF (see lazypull pull --help)", 2)
		}
		named, err := reference.ParseDockerRef(c.Args().First())
		if err != nil {
			return fmt.Errorf("image reference %q: %w", c.Args().First(), err)
		}
		ref := named.String()
		client, err := containerd.New(c.String("address"), containerd.WithDefaultNamespace(c.String("namespace")))
		if err != nil {
			return fmt.Errorf("connect to containerd at %s: %w", c.String("address"), err)
		}
		defer client.Close()
		res, err := pull.Image(c.Context, client, ref, pull.Options{
			Snapshotter: c.String("snapshotter"),
			Platform:    c.String("platform"),
			Registry:    registryOptions(c),
		})
		if err != nil {
			return err
		}
		for _, l := range res.Layers {
			how := "mounted lazily"
			switch {
			case l.LazyComposefs:
				how = "mounted lazily in the composefs form"
			case l.Filled:
				how = "pulled into the composefs store (the files it lacked)"
			case !l.Lazy:
				how = "downloaded"
				if l.Reason != "" {
					how += ": " + l.Reason
				}
			}
			if l.NotLazyComposefs != "" && (l.Lazy || l.Filled) {
				how += " (not in the lazy composefs form: " + l.NotLazyComposefs + ")"
			}
			fmt.Fprintf(os.Stdout, "%s  %9s  %s\n", l.Digest, progress.Bytes(l.Size), how)
		}
		fmt.Printf("%s %s\n", ref, res.Image.Target().Digest)
		return nil
	},
}

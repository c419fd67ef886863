package main

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/containerd/platforms"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/urfave/cli/v2"

	"github.com/lazypull/lazypull/convert"
	"github.com/lazypull/lazypull/internal/progress"
	"github.com/lazypull/lazypull/profile"
	"github.com/lazypull/lazypull/profile/artifact"
	"github.com/lazypull/lazypull/transport"
)

var convertCommand = &cli.Command{
	Name:      "convert",
	Usage:     "convert an image's layers to eStargz or zstd:chunked",
	ArgsUsage: "SRC DST",
	Description: `Converts every layer of SRC (layers already in the format are kept),
rewrites the config's diff_ids and writes an OCI manifest (and an index for a
multi-platform source) to DST. Nothing is pushed until everything converted.
SRC and DST are docker://HOST/REPO:TAG (a registry) or oci:DIR[:TAG] (an OCI
image layout). Credentials come from $DOCKER_CONFIG/config.json or
~/.docker/config.json; mirrors and TLS from hosts.toml under --hosts-dir.

Examples:
  lazypull convert docker://registry.example/app:1.0 docker://registry.example/app:1.0-esgz
  lazypull convert --format zstdchunked oci:./app:1.0 oci:./app-zstd:1.0
  lazypull convert --plain-http --all-platforms docker://127.0.0.1:5000/app docker://127.0.0.1:5000/app:lazy
  lazypull convert --prioritized-files startup.txt docker://r.example/app docker://r.example/app:tuned
  lazypull convert --prioritize-startup=false docker://r.example/app docker://r.example/app:plain
  lazypull convert --profile app.json docker://r.example/app:1.0 docker://r.example/app:1.0-esgz`,
	Flags: append([]cli.Flag{
		&cli.StringFlag{Name: "format", Value: string(convert.EStargz), Usage: "layer format: estargz or zstdchunked"},
		&cli.IntFlag{Name: "chunk-size", Usage: "split files into chunks of at most `BYTES`; once a layer has 32768 chunks, its later files get 4 MiB ones", DefaultText: "64 KiB"},
		&cli.IntFlag{Name: "min-chunk-size", Usage: "eStargz: let files under `BYTES` share a gzip member with their neighbours", DefaultText: "off"},
		&cli.IntFlag{Name: "compression-level", Usage: "gzip 1-9 or zstd 1-4 `LEVEL`", DefaultText: "the format's"},
		&cli.StringFlag{Name: "prioritized-files", Usage: "`FILE` listing paths (one per line) a workload reads first; they go first, for prefetch"},
		&cli.BoolFlag{Name: "prioritize-startup", Value: true, Usage: "eStargz, with neither --prioritized-files nor --profile: put first the files the image's program loads before it runs (the Entrypoint or Cmd found on the config's PATH, a script's interpreter, ELF interpreters and libraries), which a lazy mount prefetches"},
		&cli.StringFlag{Name: "profile", Usage: "a workload profile `FILE` (lazypull profile record) of this image in any form: the files it reads go first in each eStargz layer, in its order, and it is attached to DST (profile push) for DST's layers"},
		&cli.StringFlag{Name: "zstdchunked-for", Value: "containers-storage", Usage: "zstd:chunked: whose annotations the layers carry, for nodes that mount them lazily besides lazypull: `PULLER` containers-storage (podman, CRI-O) or stargz-snapshotter (one descriptor cannot carry both)"},
		&cli.StringSliceFlag{Name: "platform", Usage: "convert this `PLATFORM` of a multi-platform image (repeatable; default: this machine's)"},
		&cli.BoolFlag{Name: "all-platforms", Usage: "convert every platform of a multi-platform image"},
		&cli.BoolFlag{Name: "quiet", Aliases: []string{"q"}, Usage: "print only the result"},
	}, registryFlags...),
	Action: func(c *cli.Context) error {
		if c.NArg() != 2 {
			return cli.Exit("convert takes SRC and DST (see lazypull convert --help)", 2)
		}
		src, err := transport.ParseRef(c.Args().Get(0))
		if err != nil {
			return err
		}
		dst, err := transport.ParseRef(c.Args().Get(1))
		if err != nil {
			return err
		}
		format, err := convert.ParseFormat(c.String("format"))
		if err != nil {
			return err
		}
		opts := convert.Options{
			Format:            format,
			ChunkSize:         c.Int("chunk-size"),
			MinChunkSize:      c.Int("min-chunk-size"),
			CompressionLevel:  c.Int("compression-level"),
			AllPlatforms:      c.Bool("all-platforms"),
			PrioritizeStartup: c.Bool("prioritize-startup"),
		}
		switch who := c.String("zstdchunked-for"); who {
		case "containers-storage":
		case "stargz-snapshotter":
			opts.ForStargz = true
		default:
			return cli.Exit(fmt.Sprintf("--zstdchunked-for %q: want containers-storage or stargz-snapshotter", who), 2)
		}
		if path := c.String("prioritized-files"); path != "" {
			if opts.PrioritizedFiles, err = readLines(path); err != nil {
				return err
			}
		}
		var prof *profile.Profile
		if path := c.String("profile"); path != "" {
			data, err := os.ReadFile(path)
			if err != nil {
				return err
			}
			if prof, err = profile.Parse(data); err != nil {
				return fmt.Errorf("%s: %w", path, err)
			}
			if format == convert.EStargz && len(opts.PrioritizedFiles) == 0 {
				opts.PrioritizedFiles = prof.Paths()
			}
		}
		if ps := c.StringSlice("platform"); len(ps) > 0 {
			var specs []ocispec.Platform
			for _, p := range ps {
				spec, err := platforms.Parse(p)
				if err != nil {
					return fmt.Errorf("--platform %q: %w", p, err)
				}
				specs = append(specs, spec)
			}
			opts.Platforms = platforms.Ordered(specs...)
		}
		display := progress.New(c.Bool("quiet"))
		opts.Progress = progressAdapter{display}

		ctx := c.Context
		from, err := transport.Open(ctx, src, registryOptions(c))
		if err != nil {
			return err
		}
		to, err := transport.Open(ctx, dst, registryOptions(c))
		if err != nil {
			return err
		}
		desc, err := convert.Image(ctx, from, to, opts)
		display.Wait()
		if err != nil {
			return fmt.Errorf("convert %s: %w", src, err)
		}
		fmt.Printf("%s %s\n", dst, desc.Digest)
		if prof != nil {
			return attachProfile(c, to, desc, prof)
		}
		return nil
	},
}

// attachProfile pushes prof, recorded on the converted image in another
// form, as a referrer of the converted one, for its layers.
func attachProfile(c *cli.Context, to transport.Location, root ocispec.Descriptor, prof *profile.Profile) error {
	img, err := transport.ReadImage(c.Context, to, root)
	if err != nil {
		return err
	}
	var layers []digest.Digest
	for _, l := range img.Manifest.Layers {
		layers = append(layers, l.Digest)
	}
	q, err := prof.ForLayers(layers)
	if err != nil {
		return err
	}
	desc, err := artifact.Push(c.Context, to, img.Desc, q)
	if errors.Is(err, transport.ErrNoReferrers) {
		return fmt.Errorf("the profile is not attached: %w; or put it in the snapshotter's profile directory", err)
	}
	if err != nil {
		return fmt.Errorf("attach the profile: %w", err)
	}
	fmt.Printf("profile %s refers to %s\n", desc.Digest, img.Desc.Digest)
	return nil
}

// readLines reads a prioritized-files list: one path a line, # comments.
func readLines(path string) ([]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var lines []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if line := strings.TrimSpace(sc.Text()); line != "" && !strings.HasPrefix(line, "#") {
			lines = append(lines, line)
		}
	}
	return lines, sc.Err()
}

type progressAdapter struct{ *progress.Display }

func (p progressAdapter) Start(action string, desc ocispec.Descriptor) convert.Tracker {
	return p.Display.Start(action, desc)
}

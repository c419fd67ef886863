package main

import (
	"encoding/json"
	"fmt"
	"os"
	"text/tabwriter"

	"github.com/containerd/platforms"
	"github.com/urfave/cli/v2"

	"github.com/lazypull/lazypull/inspect"
	"github.com/lazypull/lazypull/internal/progress"
	"github.com/lazypull/lazypull/transport"
)

var inspectCommand = &cli.Command{
	Name:      "inspect",
	Usage:     "show an image's layers: format, sizes, TOC, prefetch area; verify them",
	ArgsUsage: "REF",
	Description: `Lists the layers of every manifest REF names (docker://HOST/REPO:TAG or
oci:DIR[:TAG]). For lazily pullable layers it reads only the footer and the
TOC. --verify downloads each layer and checks its digest, its TOC digest and
every chunk's digest; it exits non-zero naming the first bad layer and file.

Examples:
  lazypull inspect docker://registry.example/app:1.0-esgz
  lazypull inspect --verify oci:./app-zstd:1.0
  lazypull inspect --json --plain-http docker://127.0.0.1:5000/app:lazy`,
	Flags: append([]cli.Flag{
		&cli.BoolFlag{Name: "verify", Usage: "fetch every layer and check every digest"},
		&cli.BoolFlag{Name: "json", Usage: "print JSON instead of a table"},
	}, registryFlags...),
	Action: func(c *cli.Context) error {
		if c.NArg() != 1 {
			return cli.Exit("inspect takes one REF (see lazypull inspect --help)", 2)
		}
		ref, err := transport.ParseRef(c.Args().First())
		if err != nil {
			return err
		}
		loc, err := transport.Open(c.Context, ref, registryOptions(c))
		if err != nil {
			return err
		}
		reports, inspectErr := inspect.Image(c.Context, loc, inspect.Options{Verify: c.Bool("verify")})
		if reports == nil && inspectErr != nil {
			return inspectErr
		}
		if c.Bool("json") {
			enc := json.NewEncoder(os.Stdout)
			enc.SetIndent("", "  ")
			if err := enc.Encode(reports); err != nil {
				return err
			}
		} else {
			printReports(ref, reports, c.Bool("verify"))
		}
		if inspectErr != nil {
			return fmt.Errorf("inspect %s: %w", ref, inspectErr)
		}
		return nil
	},
}

func printReports(ref transport.Ref, reports []inspect.Manifest, verified bool) {
	for _, m := range reports {
		platform := ""
		if m.Platform != nil {
			platform = " " + platforms.Format(*m.Platform)
		}
		fmt.Printf("%s manifest %s%s\n", ref, m.Digest, platform)
		tw := tabwriter.NewWriter(os.Stdout, 2, 8, 2, ' ', 0)
		header := "  LAYER\tMEDIA TYPE\tSIZE\tFORMAT\tTOC DIGEST\tFILES\tCHUNKS\tUNPACKED\tPREFETCH"
		if verified {
			header += "\tVERIFIED"
		}
		fmt.Fprintln(tw, header)
		for _, l := range m.Layers {
			format, toc := string(l.Format), shortDigest(l.TOCDigest.String())
			if format == "" {
				format, toc = "-", "-"
			}
			line := fmt.Sprintf("  %s\t%s\t%s\t%s\t%s\t%d\t%d\t%s\t%s", shortDigest(l.Digest.String()), l.MediaType,
				progress.Bytes(l.Size), format, toc, l.Files, l.Chunks, progress.Bytes(l.FileBytes), progress.Bytes(l.PrefetchSize))
			if verified {
				line += "\t" + map[bool]string{true: "ok", false: "FAILED"}[l.Verified]
			}
			fmt.Fprintln(tw, line)
		}
		tw.Flush()
		for _, l := range m.Layers {
			if l.Problem != "" {
				fmt.Printf("  %s: %s\n", shortDigest(l.Digest.String()), l.Problem)
			}
		}
	}
}

func shortDigest(d string) string {
	if len(d) > 19 {
		return d[:19]
	}
	return d
}

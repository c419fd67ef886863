package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"text/tabwriter"

	"github.com/urfave/cli/v2"

	"github.com/lazypull/lazypull/fusemanager"
	"github.com/lazypull/lazypull/internal/progress"
	"github.com/lazypull/lazypull/service"
)

var statusCommand = &cli.Command{
	Name:  "status",
	Usage: "show every lazily mounted layer and how much of it has been fetched",
	Description: `Asks the FUSE manager of the snapshotter rooted at --root for its layers.
Each mounted layer also has a state file, <mountpoint>/.lazypull/<digest>.json.

Examples:
  lazypull status
  lazypull status --root /var/lib/lazypull --json`,
	Flags: []cli.Flag{
		&cli.StringFlag{Name: "root", Value: service.DefaultRoot, Usage: "the snapshotter's state `DIR`"},
		&cli.BoolFlag{Name: "json", Usage: "print JSON instead of a table"},
	},
	Action: func(c *cli.Context) error {
		root := c.String("root")
		if _, err := os.Stat(fusemanager.SocketPath(root)); err != nil {
			return fmt.Errorf("no FUSE manager serves %s (is lazypull-snapshotter running with this --root?)", root)
		}
		client, err := fusemanager.Connect(context.Background(), root, nil)
		if err != nil {
			return err
		}
		defer client.Close()
		st, err := client.Status(context.Background())
		if err != nil {
			return fmt.Errorf("status from the FUSE manager of %s: %w", root, err)
		}
		if c.Bool("json") {
			enc := json.NewEncoder(os.Stdout)
			enc.SetIndent("", "  ")
			return enc.Encode(st)
		}
		fmt.Printf("FUSE manager pid %d, %d layers mounted\n", st.PID, len(st.Layers))
		tw := tabwriter.NewWriter(os.Stdout, 2, 8, 2, ' ', 0)
		fmt.Fprintln(tw, "LAYER\tSIZE\tFETCHED\tCACHED\tREQUESTS\tERRORS\tVERIFIED\tMOUNTPOINT")
		for _, l := range st.Layers {
			cached := 100.0
			if l.DataSize > 0 {
				cached = float64(l.CachedBytes) * 100 / float64(l.DataSize)
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%.0f%%\t%d\t%d\t%s\t%s\n", shortDigest(l.Digest), progress.Bytes(l.Size), progress.Bytes(l.FetchedBytes), cached, l.Requests, l.Errors, l.Verification, l.Mountpoint)
		}
		tw.Flush()
		for _, l := range st.Layers {
			if l.LastError != "" {
				fmt.Printf("%s: last error: %s\n", shortDigest(l.Digest), l.LastError)
			}
		}
		return nil
	},
}

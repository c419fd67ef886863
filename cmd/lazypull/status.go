package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"text/tabwriter"

	"github.com/urfave/cli/v2"

	"github.com/lazypull/lazypull/fusemanager"
	"github.com/lazypull/lazypull/internal/progress"
	"github.com/lazypull/lazypull/service/status"
)

var statusCommand = &cli.Command{
	Name:  "status",
	Usage: "show every lazily mounted layer and how much of it has been fetched, and which snapshots are in the composefs form",
	Description: `Asks the FUSE manager of the snapshotter rooted at --root for its layers.
Each mounted layer also has a state file, <mountpoint>/.lazypull/<digest>.json.
Asks the snapshotter serving --address for its snapshots, and says of each
whether it is in the composefs form (with fs-verity or not), and of the
composefs object store under --root how much it holds.

Examples:
  lazypull status
  lazypull status --root /var/lib/lazypull --address /run/lazypull/lazypull.sock --json`,
	Flags: []cli.Flag{
		&cli.StringFlag{Name: "root", Value: status.DefaultRoot, Usage: "the snapshotter's state `DIR`"},
		&cli.StringFlag{Name: "address", Value: status.DefaultAddress, Usage: "the snapshotter's `SOCKET`"},
		&cli.BoolFlag{Name: "json", Usage: "print JSON instead of a table"},
	},
	Action: func(c *cli.Context) error {
		ctx := context.Background()
		root, address := c.String("root"), c.String("address")
		_, noManager := os.Stat(fusemanager.SocketPath(root))
		_, noDaemon := os.Stat(address)
		if noManager != nil && noDaemon != nil {
			return fmt.Errorf("neither a FUSE manager serves %s nor a snapshotter listens on %s (is lazypull-snapshotter running with this --root and --address?)", root, address)
		}
		var (
			out  statusOutput
			errs []error
		)
		if noManager == nil {
			st, err := managerStatus(ctx, root)
			if err != nil {
				errs = append(errs, err)
			}
			out.StatusReply = st
		}
		if noDaemon == nil {
			st, err := status.Composefs(ctx, root, address)
			if err != nil {
				errs = append(errs, err)
			} else {
				out.Composefs = &st
			}
		}
		if c.Bool("json") {
			enc := json.NewEncoder(os.Stdout)
			enc.SetIndent("", "  ")
			if err := enc.Encode(out); err != nil {
				return err
			}
			return errors.Join(errs...)
		}
		if noManager == nil {
			printLayers(out.StatusReply)
		}
		if out.Composefs != nil {
			printComposefs(*out.Composefs)
		}
		return errors.Join(errs...)
	},
}

// statusOutput is `lazypull status --json`: the FUSE manager's reply as it
// was (its fields at the top), and the composefs mode's.
type statusOutput struct {
	fusemanager.StatusReply
	Composefs *status.ComposefsStatus `json:",omitempty"`
}

func managerStatus(ctx context.Context, root string) (fusemanager.StatusReply, error) {
	client, err := fusemanager.Connect(ctx, root, nil)
	if err != nil {
		return fusemanager.StatusReply{}, err
	}
	defer client.Close()
	st, err := client.Status(ctx)
	if err != nil {
		return st, fmt.Errorf("status from the FUSE manager of %s: %w", root, err)
	}
	return st, nil
}

func printLayers(st fusemanager.StatusReply) {
	fmt.Printf("FUSE manager pid %d, %d layers mounted\n", st.PID, len(st.Layers))
	if st.PassthroughNote != "" {
		fmt.Printf("FUSE passthrough: %s\n", st.PassthroughNote)
	}
	tw := tabwriter.NewWriter(os.Stdout, 2, 8, 2, ' ', 0)
	fmt.Fprintln(tw, "LAYER\tSIZE\tFETCHED\tCACHED\tPROFILED\tREQUESTS\tERRORS\tVERIFIED\tMOUNTPOINT")
	for _, l := range st.Layers {
		cached := 100.0
		if l.DataSize > 0 {
			cached = float64(l.CachedBytes) * 100 / float64(l.DataSize)
		}
		profiled := "-"
		if l.ProfiledBytes > 0 {
			profiled = progress.Bytes(l.ProfiledBytes)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%.0f%%\t%s\t%d\t%d\t%s\t%s\n", shortDigest(l.Digest), progress.Bytes(l.Size), progress.Bytes(l.FetchedBytes), cached, profiled, l.Requests, l.Errors, l.Verification, l.Mountpoint)
	}
	tw.Flush()
	for _, l := range st.Layers {
		if l.LastError != "" {
			fmt.Printf("%s: last error: %s\n", shortDigest(l.Digest), l.LastError)
		}
	}
}

func printComposefs(st status.ComposefsStatus) {
	tw := tabwriter.NewWriter(os.Stdout, 2, 8, 2, ' ', 0)
	fmt.Fprintln(tw, "SNAPSHOT\tKIND\tCOMPOSEFS")
	for _, s := range st.Snapshots {
		form := s.Composefs
		if form == "" {
			form = "-"
		}
		if s.Lazy {
			form += ", lazy"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\n", s.Name, s.Kind, form)
	}
	tw.Flush()
	fmt.Println(st.Summary(progress.Bytes))
}

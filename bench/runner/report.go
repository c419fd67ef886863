package runner

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
)

// Write puts results.json, results.md and totals.png into dir.
func (rep *Report) Write(dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	b, err := json.MarshalIndent(rep, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "results.json"), append(b, '\n'), 0o644); err != nil {
		return err
	}
	var md strings.Builder
	rep.Markdown(&md, "totals.png")
	if err := os.WriteFile(filepath.Join(dir, "results.md"), []byte(md.String()), 0o644); err != nil {
		return err
	}
	return rep.Chart(filepath.Join(dir, "totals.png"))
}

// Rerender rewrites the markdown and chart in dir from its results.json,
// for when the report's form changes after a long run.
func Rerender(dir string) error {
	b, err := os.ReadFile(filepath.Join(dir, "results.json"))
	if err != nil {
		return err
	}
	var rep Report
	if err := json.Unmarshal(b, &rep); err != nil {
		return fmt.Errorf("%s: %w", dir, err)
	}
	return rep.Write(dir)
}

// Markdown writes a header with the conditions, then one table per image:
// medians with min–max, and each scenario's total as a ratio to overlayfs.
// chart, if not empty, is linked below the tables.
func (rep *Report) Markdown(w io.Writer, chart string) {
	fmt.Fprintf(w, "# lazypull benchmark, %s\n\n", rep.Started.Format("2006-01-02 15:04 MST"))
	fmt.Fprintf(w, "Machine: %s. ", rep.Machine)
	if rep.Containerd != "" {
		fmt.Fprintf(w, "containerd %s. ", rep.Containerd)
	}
	fmt.Fprintf(w, "Link: %s round trip, %s through the proxy. %d cold runs per scenario; medians, min–max in brackets.\n\n",
		rep.RTT, bandwidthString(rep.Bandwidth), rep.Runs)
	fmt.Fprint(w, "Times in seconds. *pull*: the pull command; *first output*: from `ctr run` to the workload's ready line; "+
		"*total*: both, the number a user waits, also as a ratio to overlayfs's full pull and to its floor "+
		"(the warm start, plus the bytes fetched before the ready line at the link's rate, plus three round trips). *MB*, *requests*: what crossed the link until the ready line. "+
		"*memory*: peak RSS of the snapshotter's processes, from the pull until the background fetch ended. "+
		"*settled*: all bytes fetched once the background fetch ended (the link quiet for 3 s with the image's bytes all fetched, or for 15 s), "+
		"as a multiple of the image's blobs. *background*: the rate of what was fetched after the ready line, as a share of the link. "+
		"*warm*: from `ctr run` to the ready line again, the image present, page cache dropped, and its ratio to overlayfs's. "+
		"*FUSE ops*: lookups, opens and reads lazypull's FUSE manager served from `ctr run` to the ready line, cold and warm.\n")
	sizes := map[string]int64{}
	for _, img := range rep.Images {
		sizes[img.Name] = img.Size
	}
	image := ""
	for _, s := range rep.Summaries() {
		if s.Image != image {
			image = s.Image
			fmt.Fprintf(w, "\n## %s", image)
			if sizes[image] > 0 {
				fmt.Fprintf(w, " (%.1f MB compressed)", mb(sizes[image]))
			}
			fmt.Fprint(w, "\n\n| scenario | pull | first output | total | total vs overlayfs | total vs floor | MB | requests | memory MiB | settled | background | warm | warm vs overlayfs | FUSE ops | warm FUSE ops |\n")
			fmt.Fprint(w, "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n")
		}
		fmt.Fprintf(w, "| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", s.Scenario,
			cell(s.Pull, "%.2f"), cell(s.FirstOutput, "%.2f"), cell(s.Total, "%.2f"), ratioCell(s.Ratio), ratioCell(s.FloorRatio),
			cell(s.MB, "%.1f"), cell(s.Requests, "%.0f"), orDash(s.MemoryMiB, "%.0f"),
			orDash(s.Settled, "%.3f×"), percent(s.BackgroundLink), orDash(s.Warm, "%.2f"), ratioCell(s.WarmRatio),
			countCell(s.FUSEOps), countCell(s.WarmFUSEOps))
	}
	rep.footprintMarkdown(w)
	if chart != "" {
		fmt.Fprintf(w, "\n![median total time to first output](%s)\n", chart)
	}
}

// countCell is a count's median, or a dash where it was not measured.
func countCell(s Spread) string {
	if s.Median < 0 {
		return "—"
	}
	return fmt.Sprintf("%.0f", s.Median)
}

func ratioCell(r float64) string {
	if r <= 0 {
		return "—"
	}
	return fmt.Sprintf("%.2f", r)
}

// orDash is cell, or a dash for a measure nothing was recorded for.
func orDash(s Spread, format string) string {
	if s.Max <= 0 {
		return "—"
	}
	return cell(s, format)
}

func percent(s Spread) string {
	if s.Max <= 0 {
		return "—"
	}
	med, lo, hi := fmt.Sprintf("%.0f", s.Median*100), fmt.Sprintf("%.0f", s.Min*100), fmt.Sprintf("%.0f", s.Max*100)
	if lo == hi {
		return med + "%"
	}
	return fmt.Sprintf("%s%% (%s–%s%%)", med, lo, hi)
}

// cell is "median (min–max)", or just the median when all runs agree.
func cell(s Spread, format string) string {
	med := fmt.Sprintf(format, s.Median)
	lo, hi := fmt.Sprintf(format, s.Min), fmt.Sprintf(format, s.Max)
	if lo == hi {
		return med
	}
	return fmt.Sprintf("%s (%s–%s)", med, lo, hi)
}

func bandwidthString(bps int64) string {
	switch {
	case bps == 0:
		return "no bandwidth cap"
	case bps%1e9 == 0:
		return fmt.Sprintf("%d Gbit/s", bps/1e9)
	case bps%1e6 == 0:
		return fmt.Sprintf("%d Mbit/s", bps/1e6)
	default:
		return fmt.Sprintf("%d bit/s", bps)
	}
}

// footprintMarkdown writes the footprint table, if the run measured one,
// with each scenario's disk and page cache as a ratio to the first's.
func (rep *Report) footprintMarkdown(w io.Writer) {
	if len(rep.Footprints) == 0 {
		return
	}
	fmt.Fprintf(w, "\n## Footprint: %s on one node\n\n", strings.Join(rep.Footprints[0].Images, " and "))
	fmt.Fprint(w, "All the images pulled into one snapshotter (a lazy pull's background fetch ended). *disk*: blocks allocated under its roots (each inode once, mounts left out); "+
		"*objects*: of which the composefs object store; *page cache*: resident pages of the files under the roots (mincore) after each image's workload ran once from a dropped page cache "+
		"(file data only: directories, inodes and EROFS's own metadata cache are not counted). Ratios to the first row.\n\n")
	fmt.Fprint(w, "| scenario | roots | files | disk MB | disk vs first | objects MB | page cache MB | page cache vs first |\n")
	fmt.Fprint(w, "|---|---|---|---|---|---|---|---|\n")
	first := rep.Footprints[0]
	for _, fp := range rep.Footprints {
		objects := "—"
		if fp.ObjectBytes > 0 {
			objects = fmt.Sprintf("%.1f", mb(fp.ObjectBytes))
		}
		fmt.Fprintf(w, "| %s | %s | %d | %.1f | %s | %s | %.1f | %s |\n", fp.Scenario, strings.Join(fp.Roots, ", "), fp.Files,
			mb(fp.DiskBytes), ratioCell(ratio(fp.DiskBytes, first.DiskBytes)), objects,
			mb(fp.PageCacheBytes), ratioCell(ratio(fp.PageCacheBytes, first.PageCacheBytes)))
	}
}

func ratio(a, b int64) float64 {
	if a <= 0 || b <= 0 {
		return 0
	}
	return float64(a) / float64(b)
}

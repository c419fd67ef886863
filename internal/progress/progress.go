// Package progress shows long work to a person: a bar per blob on a
// terminal, one plain line per finished blob otherwise (logs, CI). It knows
// nothing of what the work is.
package progress

import (
	"fmt"
	"io"
	"os"
	"sync"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/vbauerster/mpb/v8"
	"github.com/vbauerster/mpb/v8/decor"
	"golang.org/x/term"
)

// Display shows the progress of blob work on w.
type Display struct {
	w     io.Writer
	bars  *mpb.Progress // nil when w is not a terminal
	mu    sync.Mutex
	quiet bool
}

// New shows progress on stderr: bars if it is a terminal, lines if not,
// nothing if quiet.
func New(quiet bool) *Display {
	d := &Display{w: os.Stderr, quiet: quiet}
	if !quiet && term.IsTerminal(int(os.Stderr.Fd())) {
		d.bars = mpb.New(mpb.WithOutput(os.Stderr), mpb.WithWidth(40))
	}
	return d
}

// Wait lets the bars finish drawing.
func (d *Display) Wait() {
	if d.bars != nil {
		d.bars.Wait()
	}
}

// Start begins tracking one blob.
func (d *Display) Start(action string, desc ocispec.Descriptor) *Tracker {
	t := &Tracker{d: d, action: action, desc: desc}
	if d.bars != nil {
		t.bar = d.bars.AddBar(desc.Size,
			mpb.PrependDecorators(decor.Name(fmt.Sprintf("%-8s %s", action, short(desc))), decor.CountersKibiByte(" % .1f / % .1f", decor.WCSyncSpace)),
			mpb.AppendDecorators(decor.OnComplete(decor.Percentage(decor.WCSyncSpace), "done")),
		)
	}
	return t
}

// Tracker follows one blob.
type Tracker struct {
	d      *Display
	action string
	desc   ocispec.Descriptor
	bar    *mpb.Bar
	n      int64
}

// Add counts n more bytes done.
func (t *Tracker) Add(n int) {
	t.n += int64(n)
	if t.bar != nil {
		t.bar.IncrBy(n)
	}
}

// Done ends the blob's work, well or with err.
func (t *Tracker) Done(err error) {
	if t.bar != nil {
		if err != nil {
			t.bar.Abort(false)
		} else {
			t.bar.SetTotal(-1, true)
		}
		return
	}
	if t.d.quiet {
		return
	}
	status := "done"
	if err != nil {
		status = "failed: " + err.Error()
	}
	t.d.mu.Lock()
	defer t.d.mu.Unlock()
	fmt.Fprintf(t.d.w, "%-8s %s %s %s\n", t.action, short(t.desc), Bytes(t.desc.Size), status)
}

func short(desc ocispec.Descriptor) string {
	if len(desc.Digest.Encoded()) < 12 {
		return desc.Digest.String()
	}
	return desc.Digest.Algorithm().String() + ":" + desc.Digest.Encoded()[:12]
}

// Bytes writes a byte count for people: 12.3 MiB.
func Bytes(n int64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.1f GiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d B", n)
}

package runner

import (
	"math"
	"strings"
	"testing"
)

func TestSpreadOf(t *testing.T) {
	for _, tc := range []struct {
		in   []float64
		want Spread
	}{
		{nil, Spread{}},
		{[]float64{3}, Spread{3, 3, 3}},
		{[]float64{5, 1, 3}, Spread{3, 1, 5}},
		{[]float64{4, 1, 3, 2}, Spread{2.5, 1, 4}},
	} {
		in := append([]float64(nil), tc.in...)
		if got := spreadOf(tc.in); got != tc.want {
			t.Errorf("spreadOf(%v) = %+v, want %+v", tc.in, got, tc.want)
		}
		for i := range in {
			if in[i] != tc.in[i] {
				t.Errorf("spreadOf reordered its input: %v", tc.in)
			}
		}
	}
}

func testReport() *Report {
	rep := &Report{
		Machine: "test", Containerd: "2.2.9", RTT: "20ms", Bandwidth: 100e6, Runs: 3,
		Scenarios: []string{"overlayfs", "lazypull-estargz"},
		Images:    []ImageInfo{{Name: "python", Size: 62.4e6}, {Name: "gcc"}},
	}
	for i, tot := range []float64{8, 10, 9} {
		rep.Results = append(rep.Results, Result{Image: "python", Scenario: "overlayfs", Run: i + 1, Pull: tot - 0.1, FirstOutput: 0.1, Total: tot, Bytes: 62.4e6, Requests: 5,
			SettledBytes: 62.4e6, ImageBytes: 62.4e6, Warm: 0.2})
	}
	for i, tot := range []float64{2, 1.8, 2.7} {
		rep.Results = append(rep.Results, Result{Image: "python", Scenario: "lazypull-estargz", Run: i + 1, Pull: 0.5, FirstOutput: tot - 0.5, Total: tot, Bytes: 5e6, Requests: 40 + int64(i), DaemonPeak: 30 << 20, ManagerPeak: 20 << 20,
			// 60 MB in the background at 96, 90 and 80 Mbit/s; 66 MB in all of a 65 MB image.
			SettledBytes: 66e6, ImageBytes: 65e6, BackgroundBytes: 60e6, BackgroundSeconds: []float64{5, 5.333333333, 6}[i], Warm: []float64{0.21, 0.22, 0.3}[i]})
	}
	// gcc has only a lazy result: no ratio.
	rep.Results = append(rep.Results, Result{Image: "gcc", Scenario: "lazypull-estargz", Run: 1, Total: 3})
	return rep
}

func TestSummaries(t *testing.T) {
	s := testReport().Summaries()
	if len(s) != 3 {
		t.Fatalf("got %d summaries, want 3: %+v", len(s), s)
	}
	base, lazy, gcc := s[0], s[1], s[2]
	if base.Scenario != "overlayfs" || base.Total != (Spread{9, 8, 10}) || base.Ratio != 1 {
		t.Errorf("overlayfs summary: %+v", base)
	}
	if lazy.Total != (Spread{2, 1.8, 2.7}) || math.Abs(lazy.Ratio-2.0/9) > 1e-9 {
		t.Errorf("lazy summary: %+v", lazy)
	}
	if lazy.MemoryMiB != (Spread{50, 50, 50}) || lazy.Requests != (Spread{41, 40, 42}) || lazy.MB.Median != 5 {
		t.Errorf("lazy counters: %+v", lazy)
	}
	if math.Abs(lazy.Settled.Median-66.0/65) > 1e-9 || math.Abs(lazy.BackgroundLink.Median-0.9) > 1e-6 || math.Abs(lazy.BackgroundLink.Max-0.96) > 1e-6 {
		t.Errorf("lazy settled bytes and background rate: %+v, %+v", lazy.Settled, lazy.BackgroundLink)
	}
	// The floor: warm 0.22 s + 5 MB at 100 Mbit/s (0.4 s) + 3 × 20 ms.
	if want := 2 / (0.22 + 0.4 + 0.06); math.Abs(lazy.FloorRatio-want) > 1e-9 || gcc.FloorRatio != 0 {
		t.Errorf("floor ratios: %v (want %v), gcc %v (want 0: no warm start)", lazy.FloorRatio, want, gcc.FloorRatio)
	}
	if math.Abs(lazy.WarmRatio-0.22/0.2) > 1e-9 || base.WarmRatio != 1 {
		t.Errorf("warm ratios: %v, %v", lazy.WarmRatio, base.WarmRatio)
	}
	if gcc.Ratio != 0 || gcc.Runs != 1 {
		t.Errorf("gcc without a baseline: %+v", gcc)
	}
}

func TestMarkdown(t *testing.T) {
	var b strings.Builder
	testReport().Markdown(&b, "totals.png")
	md := b.String()
	for _, want := range []string{
		"Machine: test. containerd 2.2.9. Link: 20ms round trip, 100 Mbit/s",
		"## python (62.4 MB compressed)",
		"| scenario | pull | first output | total | total vs overlayfs | total vs floor | MB | requests | memory MiB | settled | background | warm | warm vs overlayfs |",
		"| overlayfs | 8.90 (7.90–9.90) | 0.10 | 9.00 (8.00–10.00) | 1.00 | 1.71 | 62.4 | 5 | — | 1.000× | — | 0.20 | 1.00 |",
		"| lazypull-estargz | 0.50 | 1.50 (1.30–2.20) | 2.00 (1.80–2.70) | 0.22 | 2.94 | 5.0 | 41 (40–42) | 50 | 1.015× | 90% (80–96%) | 0.22 (0.21–0.30) | 1.10 |",
		"## gcc\n",
		"| lazypull-estargz | 0.00 | 0.00 | 3.00 | — | — | 0.0 | 0 | — | — | — | — | — |",
		"![median total time to first output](totals.png)",
	} {
		if !strings.Contains(md, want) {
			t.Errorf("markdown lacks %q:\n%s", want, md)
		}
	}
}

func TestWriteChart(t *testing.T) {
	dir := t.TempDir()
	if err := testReport().Write(dir); err != nil {
		t.Fatal(err)
	}
}

func TestParseBandwidth(t *testing.T) {
	for in, want := range map[string]int64{"100M": 100e6, "1g": 1e9, "500k": 500e3, "0": 0, "2.5M": 2.5e6, "100Mbit/s": 100e6} {
		if got, err := ParseBandwidth(in); err != nil || got != want {
			t.Errorf("ParseBandwidth(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "fast", "-1M"} {
		if _, err := ParseBandwidth(bad); err == nil {
			t.Errorf("ParseBandwidth(%q): no error", bad)
		}
	}
}

package runner

import (
	"fmt"
	"image/color"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
)

// Chart draws the median total time to first output as grouped bars: one
// group per image, one bar per scenario.
func (rep *Report) Chart(path string) error {
	medians := map[[2]string]float64{}
	for _, s := range rep.Summaries() {
		medians[[2]string{s.Image, s.Scenario}] = s.Total.Median
	}
	p := plot.New()
	p.Title.Text = fmt.Sprintf("Time to first output, cold (median of %d; %s RTT, %s)", rep.Runs, rep.RTT, bandwidthString(rep.Bandwidth))
	p.Y.Label.Text = "seconds (pull + run until ready)"
	p.Legend.Top, p.Legend.Left = true, true
	var names []string
	for _, img := range rep.Images {
		names = append(names, img.Name)
	}
	p.NominalX(names...)

	palette := []color.Color{
		color.RGBA{R: 0x80, G: 0x80, B: 0x80, A: 0xff},
		color.RGBA{R: 0x1f, G: 0x77, B: 0xb4, A: 0xff},
		color.RGBA{R: 0xff, G: 0x7f, B: 0x0e, A: 0xff},
		color.RGBA{R: 0x2c, G: 0xa0, B: 0x2c, A: 0xff},
	}
	width := vg.Points(18)
	n := len(rep.Scenarios)
	for i, sc := range rep.Scenarios {
		values := make(plotter.Values, len(names))
		for j, img := range names {
			values[j] = medians[[2]string{img, sc}]
		}
		bars, err := plotter.NewBarChart(values, width)
		if err != nil {
			return fmt.Errorf("chart %s: %w", sc, err)
		}
		bars.LineStyle.Width = 0
		bars.Color = palette[i%len(palette)]
		// Centre the group on the image's tick.
		bars.Offset = vg.Length(float64(i)-float64(n-1)/2) * width
		p.Add(bars)
		p.Legend.Add(sc, bars)
	}
	// Headroom above the tallest bar, so that the legend covers no bar.
	p.Y.Min, p.Y.Max = 0, p.Y.Max*1.3
	w := vg.Length(len(names)*n)*width*1.6 + 3*vg.Inch
	return p.Save(w, 4*vg.Inch, path)
}

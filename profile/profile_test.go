package profile

import (
	"archive/tar"
	"bytes"
	"slices"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/lazypull/lazypull/format"
	"github.com/lazypull/lazypull/format/estargz"
	"github.com/lazypull/lazypull/format/toc"
)

// testTOC is the TOC of an eStargz layer with 64 KiB chunks: bin/big
// (300000 bytes), lib/small (100 bytes), a hard link to bin/big, a
// directory.
func testTOC(t testing.TB) (*toc.TOC, digest.Digest) {
	t.Helper()
	var tarBuf bytes.Buffer
	tw := tar.NewWriter(&tarBuf)
	tw.WriteHeader(&tar.Header{Name: "bin/", Typeflag: tar.TypeDir, Mode: 0o755})
	tw.WriteHeader(&tar.Header{Name: "bin/big", Typeflag: tar.TypeReg, Mode: 0o755, Size: 300000})
	tw.Write(bytes.Repeat([]byte("0123456789abcdef"), 300000/16))
	tw.WriteHeader(&tar.Header{Name: "bin/also", Typeflag: tar.TypeLink, Linkname: "bin/big"})
	tw.WriteHeader(&tar.Header{Name: "lib/small", Typeflag: tar.TypeReg, Mode: 0o644, Size: 100})
	tw.Write(bytes.Repeat([]byte("x"), 100))
	tw.Close()
	var out bytes.Buffer
	w := estargz.NewWriter(&out, estargz.WithChunkSize(64<<10))
	if err := w.AppendTar(&tarBuf); err != nil {
		t.Fatal(err)
	}
	res, err := w.Close()
	if err != nil {
		t.Fatal(err)
	}
	desc := ocispec.Descriptor{MediaType: ocispec.MediaTypeImageLayerGzip, Digest: digest.FromBytes(out.Bytes()), Size: int64(out.Len()), Annotations: res.Annotations}
	b, _, err := format.Open(bytes.NewReader(out.Bytes()), desc, format.Options{})
	if err != nil {
		t.Fatal(err)
	}
	return b.TOC(), desc.Digest
}

// TestRecordMerges: contiguous and overlapping reads of a file become one
// range that keeps its first touch's rank; ranges apart stay apart; the
// profile lists them in first-touch order with the chunks they fall in.
func TestRecordMerges(t *testing.T) {
	tc, d := testTOC(t)
	other := digest.FromString("a layer not in the image")
	r := NewRecorder()
	r.Record(d, "lib/small", 0, 100)      // rank 0
	r.Record(d, "bin/big", 200000, 4096)  // rank 1
	r.Record(d, "bin/big", 0, 4096)       // rank 2
	r.Record(d, "bin/big", 4096, 4096)    // joins rank 2
	r.Record(d, "bin/big", 150000, 50000) // rank 3, touches rank 1's start: merges, keeps 1
	r.Record(other, "whatever", 0, 10)    // left out
	r.Record(d, "lib/small", 50, 0)       // nothing read
	p := r.Profile(Workload{Args: []string{"true"}}, []digest.Digest{d}, []*toc.TOC{tc})
	big, _ := tc.Lookup("bin/big")
	want := []Read{
		{Layer: 0, Path: "lib/small", Offset: 0, Length: 100},
		{Layer: 0, Path: "bin/big", Offset: 150000, Length: 54096, Chunks: []digest.Digest{big.Chunks()[2].Digest(), big.Chunks()[3].Digest()}},
		{Layer: 0, Path: "bin/big", Offset: 0, Length: 8192, Chunks: []digest.Digest{big.Chunks()[0].Digest()}},
	}
	small, _ := tc.Lookup("lib/small")
	want[0].Chunks = []digest.Digest{small.Chunks()[0].Digest()}
	if len(p.Reads) != len(want) {
		t.Fatalf("reads %+v; want %+v", p.Reads, want)
	}
	for i := range want {
		g, w := p.Reads[i], want[i]
		if g.Layer != w.Layer || g.Path != w.Path || g.Offset != w.Offset || g.Length != w.Length || !slices.Equal(g.Chunks, w.Chunks) {
			t.Errorf("read %d = %+v; want %+v", i, g, w)
		}
	}
	// Round trip: what is written parses, and plans to the same ranges.
	data, err := p.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	q, err := Parse(data)
	if err != nil {
		t.Fatal(err)
	}
	plan, err := q.Plan(d, tc)
	if err != nil {
		t.Fatal(err)
	}
	if len(plan) != 3 || plan[0].Entry != small || plan[1].Entry != big || plan[1].Offset != 150000 || plan[2].Length != 8192 {
		t.Errorf("plan %+v", plan)
	}
	if plan, err := q.Plan(other, tc); plan != nil || err != nil {
		t.Errorf("plan for a layer the profile does not name = %v, %v; want nothing", plan, err)
	}
}

// TestPlanRefusesWhatDoesNotFit: a profile naming a file the layer lacks,
// a directory, a range past a file's end, or chunks the TOC does not have
// is refused whole, with the read named; a hard link plans to its target.
func TestPlanRefusesWhatDoesNotFit(t *testing.T) {
	tc, d := testTOC(t)
	big, _ := tc.Lookup("bin/big")
	base := func(r Read) *Profile {
		return &Profile{SchemaVersion: 1, MediaType: MediaType, Layers: []Layer{{Digest: d}},
			Reads: []Read{{Layer: 0, Path: "lib/small", Offset: 0, Length: 10}, r}}
	}
	for _, c := range []struct {
		read Read
		want string
	}{
		{Read{Path: "bin/missing", Length: 1}, `read 1: "bin/missing" is not in layer`},
		{Read{Path: "bin", Length: 1}, "a dir in layer"},
		{Read{Path: "bin/big", Offset: 299999, Length: 2}, "which has 300000"},
		{Read{Path: "bin/big", Length: 10, Chunks: []digest.Digest{digest.FromString("other")}}, "recorded on another version"},
	} {
		_, err := base(c.read).Plan(d, tc)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("plan of %+v: %v; want an error with %q", c.read, err, c.want)
		}
	}
	plan, err := base(Read{Path: "bin/also", Offset: 10, Length: 10, Chunks: []digest.Digest{big.Chunks()[0].Digest()}}).Plan(d, tc)
	if err != nil || len(plan) != 2 || plan[1].Entry != big {
		t.Errorf("plan through a hard link: %+v, %v; want its target", plan, err)
	}
}

// TestParseRefuses: malformed or oversized profiles are errors, never
// panics.
func TestParseRefuses(t *testing.T) {
	d := digest.FromString("layer")
	for _, c := range []struct{ doc, want string }{
		{`{`, "unexpected EOF"},
		{`{"schemaVersion":2,"mediaType":"` + MediaType + `"}`, "schema version 2"},
		{`{"schemaVersion":1,"mediaType":"text/plain"}`, "media type"},
		{`{"schemaVersion":1,"mediaType":"` + MediaType + `","layers":[{"digest":"sha256:zz"}]}`, "layer 0"},
		{`{"schemaVersion":1,"mediaType":"` + MediaType + `","layers":[{"digest":"` + string(d) + `"}],"reads":[{"layer":1,"path":"a","length":1}]}`, "layer 1 of 1"},
		{`{"schemaVersion":1,"mediaType":"` + MediaType + `","layers":[{"digest":"` + string(d) + `"}],"reads":[{"layer":0,"path":"a","offset":-1,"length":1}]}`, "range"},
		{`{"schemaVersion":1,"mediaType":"` + MediaType + `","layers":[{"digest":"` + string(d) + `"}],"reads":[{"layer":0,"path":"a","offset":4611686018427387904,"length":1}]}`, "range"},
		{`{"schemaVersion":1,"mediaType":"` + MediaType + `","extra":1}`, "unknown field"},
		{`{"schemaVersion":1,"mediaType":"` + MediaType + `","layers":[{"digest":"` + string(d) + `","spans":[{"offset":-5,"length":10}]}]}`, "span -5+10"},
		{`{"schemaVersion":1,"mediaType":"` + MediaType + `","layers":[{"digest":"` + string(d) + `","spans":[{"offset":5,"length":0}]}]}`, "span 5+0"},
		{`{"schemaVersion":1,"mediaType":"` + MediaType + `","layers":[{"digest":"` + string(d) + `","spans":[{"offset":4611686018427387904,"length":1}]}]}`, "span"},
		{`{"schemaVersion":1,"mediaType":"` + MediaType + `","layers":[{"digest":"` + string(d) + `","spans":[{"offset":0,"length":1,"read":1}]}],"reads":[{"layer":0,"path":"a","offset":0,"length":1}]}`, "names read 1 of 1"},
		{`{"schemaVersion":1,"mediaType":"` + MediaType + `","layers":[{"digest":"` + string(d) + `","spans":[{"offset":0,"length":1,"read":-1}]}]}`, "names read -1 of 0"},
	} {
		if _, err := Parse([]byte(c.doc)); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("Parse(%s) = %v; want an error with %q", c.doc, err, c.want)
		}
	}
	if _, err := Parse(make([]byte, MaxBytes+1)); err == nil {
		t.Error("Parse of a profile over MaxBytes succeeded")
	}
}

// FuzzParse: whatever a registry or a file holds, Parse returns a valid
// profile or an error, and Plan of what it returns never panics.
func FuzzParse(f *testing.F) {
	tc, d := testTOC(f)
	f.Add([]byte(`{"schemaVersion":1,"mediaType":"` + MediaType + `","layers":[{"digest":"` + string(d) + `"}],"reads":[{"layer":0,"path":"bin/big","offset":0,"length":10}]}`))
	f.Add([]byte(`{"schemaVersion":1,"mediaType":"` + MediaType + `","layers":[{"digest":"` + string(d) + `"}],"reads":[{"layer":0,"path":"bin/also","offset":65536,"length":100000,"chunks":["sha256:0000000000000000000000000000000000000000000000000000000000000000"]}]}`))
	f.Add([]byte(`{"schemaVersion":1,"mediaType":"` + MediaType + `","layers":[{"digest":"` + string(d) + `","spans":[{"offset":0,"length":4096},{"offset":9000,"length":1}]}],"reads":[{"layer":0,"path":"bin/big","offset":0,"length":10}]}`))
	f.Add([]byte(`{"schemaVersion":1,"mediaType":"` + MediaType + `","layers":[{"digest":"` + string(d) + `","spans":[{"offset":0,"length":4096,"read":0},{"offset":9000,"length":1,"read":1}]}],"reads":[{"layer":0,"path":"bin/big","offset":0,"length":10},{"layer":0,"path":"bin/big","offset":9000,"length":1}]}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		p, err := Parse(data)
		if err != nil {
			return
		}
		if err := p.Validate(); err != nil {
			t.Fatalf("Parse returned a profile that does not validate: %v", err)
		}
		plan, err := p.Plan(d, tc)
		for _, r := range plan {
			if err != nil || r.Entry.Type != toc.TypeReg || r.Offset+r.Length > r.Entry.Size {
				t.Fatalf("plan range %+v out of its file", r)
			}
		}
	})
}

// TestForLayers: a profile moved to the same image in another form names
// the new layers, keeps files and ranges, drops the chunks (the new form
// may cut them otherwise), and refuses an image of another layer count.
func TestForLayers(t *testing.T) {
	a, b := digest.FromString("a"), digest.FromString("b")
	p := &Profile{SchemaVersion: 1, MediaType: MediaType, Layers: []Layer{{Digest: a, Spans: []Span{{Offset: 10, Length: 20}}}},
		Reads: []Read{{Path: "x", Length: 1, Chunks: []digest.Digest{a}}, {Path: "y", Length: 1}, {Path: "x", Offset: 9, Length: 1}}}
	q, err := p.ForLayers([]digest.Digest{b})
	if err != nil {
		t.Fatal(err)
	}
	if q.Layers[0].Digest != b || q.Reads[0].Chunks != nil || q.Reads[2].Offset != 9 || p.Reads[0].Chunks == nil || p.Layers[0].Digest != a {
		t.Errorf("ForLayers = %+v (from %+v)", q, p)
	}
	// The spans are where the chunks lie in a's blob, not in b's.
	if q.Spans(b) != nil || len(p.Spans(a)) != 1 || p.Spans(b) != nil {
		t.Errorf("spans: of b %v after ForLayers, of a %v before", q.Spans(b), p.Spans(a))
	}
	if got := p.Paths(); !slices.Equal(got, []string{"x", "y"}) {
		t.Errorf("Paths = %v; want [x y]", got)
	}
	if _, err := p.ForLayers([]digest.Digest{a, b}); err == nil {
		t.Error("ForLayers onto an image of two layers succeeded")
	}
}

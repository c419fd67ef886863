package estargz

import (
	"archive/tar"
	"bytes"
	"io"
	"path"
	"testing"

	reference "github.com/containerd/stargz-snapshotter/estargz"

	"github.com/lazypull/lazypull/format/toc"
)

// The reference implementation (stargz-snapshotter's estargz package) is a
// test-only dependency: blobs each side writes, the other reads and verifies.

func TestReferenceReadsOurBlobs(t *testing.T) {
	files := sampleLayer()
	for name, opts := range map[string][]WriterOption{
		"default":     nil,
		"chunked":     {WithChunkSize(1 << 16)},
		"prioritized": {WithChunkSize(1 << 16), WithPrioritizedFiles([]string{"etc/hostname", "bin/many-chunks"})},
	} {
		t.Run(name, func(t *testing.T) {
			blob, res := build(t, makeTar(t, files), opts...)
			r, err := reference.Open(io.NewSectionReader(bytes.NewReader(blob), 0, int64(len(blob))))
			if err != nil {
				t.Fatalf("reference cannot open our blob: %v", err)
			}
			if _, err := r.VerifyTOC(res.TOCDigest); err != nil {
				t.Fatalf("reference does not verify our TOC: %v", err)
			}
			for _, f := range files {
				if f.hdr.Typeflag != '0' {
					continue
				}
				sr, err := r.OpenFile(toc.CleanTarName(f.hdr.Name))
				if err != nil {
					t.Errorf("reference cannot open %s: %v", f.hdr.Name, err)
					continue
				}
				got, err := io.ReadAll(sr)
				if err != nil || !bytes.Equal(got, f.data) {
					t.Errorf("reference reads %s differently (%d bytes, %v)", f.hdr.Name, len(got), err)
				}
			}
		})
	}
}

func TestWeReadReferenceBlobs(t *testing.T) {
	files := sampleLayer()
	layer := makeTar(t, files)
	for name, opts := range map[string][]reference.Option{
		"default":     nil,
		"chunked":     {reference.WithChunkSize(1 << 16)},
		"min chunk":   {reference.WithChunkSize(1 << 16), reference.WithMinChunkSize(1 << 14)},
		"prioritized": {reference.WithPrioritizedFiles([]string{"etc/hostname", "bin/many-chunks"})},
	} {
		t.Run(name, func(t *testing.T) {
			layer := layer
			if name == "prioritized" {
				// The reference cannot reorder layers that omit parent
				// directories ("file: \"bin\": not found"); we can.
				layer = makeTar(t, withParents(files))
			}
			built, err := reference.Build(io.NewSectionReader(bytes.NewReader(layer), 0, int64(len(layer))), opts...)
			if err != nil {
				t.Fatalf("reference Build: %v", err)
			}
			defer built.Close()
			blob, err := io.ReadAll(built)
			if err != nil {
				t.Fatal(err)
			}
			r := open(t, blob, WithTOCDigest(built.TOCDigest()))
			checkLayer(t, r, files)
			if name == "prioritized" {
				if _, ok := r.PrefetchEnd(); !ok {
					t.Errorf("the reference's prefetch landmark is not seen")
				}
			}
		})
	}

	// The reference's streaming writer too.
	var buf bytes.Buffer
	w := reference.NewWriterLevel(&buf, 6)
	w.ChunkSize = 1 << 16
	if err := w.AppendTar(bytes.NewReader(layer)); err != nil {
		t.Fatal(err)
	}
	tocDigest, err := w.Close()
	if err != nil {
		t.Fatal(err)
	}
	checkLayer(t, open(t, buf.Bytes(), WithTOCDigest(tocDigest)), files)
}

// withParents adds a directory entry before each file whose parent the
// layer does not list.
func withParents(files []testFile) []testFile {
	seen := map[string]bool{"": true}
	var out []testFile
	for _, f := range files {
		name := toc.CleanTarName(f.hdr.Name)
		var missing []string
		for dir := path.Dir(name); dir != "." && !seen[dir]; dir = path.Dir(dir) {
			missing = append([]string{dir}, missing...)
			seen[dir] = true
		}
		for _, dir := range missing {
			out = append(out, testFile{hdr: tar.Header{Name: dir + "/", Typeflag: tar.TypeDir, Mode: 0o755, ModTime: f.hdr.ModTime}})
		}
		if f.hdr.Typeflag == tar.TypeDir {
			seen[name] = true
		}
		out = append(out, f)
	}
	return out
}

package interop

import (
	"bytes"
	"errors"
	"maps"
	"slices"
	"strings"
	"testing"

	stargz "github.com/containerd/stargz-snapshotter/estargz"
	"go.podman.io/storage/pkg/chunked"

	"github.com/lazypull/lazypull/format"
	"github.com/lazypull/lazypull/format/toc"
	"github.com/lazypull/lazypull/format/zstdchunked"
)

// Outcomes of a reader on a layer.
const (
	lazy    = "lazy"    // mounted lazily (pulled partially: containers/storage), verified
	whole   = "whole"   // pulled whole instead
	refused = "refused" // not at all: the pull fails
)

// TestMatrix is the interop matrix: every writer of lazily pullable layers
// against every reader, each layer with the annotations its writer gives
// it. lazypull's zstd:chunked writer makes one blob that both others read;
// the descriptor carries one of two annotation sets, as containers/storage
// refuses a layer with both. Run with -v to print the matrix.
func TestMatrix(t *testing.T) {
	tarball := layerTar(t)
	files := regularFiles(t, tarball)
	writers := []struct {
		name  string
		layer layer
	}{
		{"lazypull zstd:chunked, containers/storage annotations", oursForContainersStorage(t, tarball)},
		{"lazypull zstd:chunked, stargz-snapshotter annotations", oursForStargz(t, tarball)},
		{"lazypull eStargz", ourEStargz(t, tarball)},
		{"stargz-snapshotter zstd:chunked", stargzLayer(t, tarball, true)},
		{"stargz-snapshotter eStargz", stargzLayer(t, tarball, false)},
		{"containers/storage zstd:chunked", containersStorageLayer(t, tarball)},
	}
	if !bytes.Equal(writers[0].layer.blob, writers[1].layer.blob) {
		t.Fatal("lazypull's zstd:chunked blob depends on the annotations chosen for it")
	}
	readers := []struct {
		name string
		read func(*testing.T, layer) (string, error)
	}{
		{"lazypull", func(t *testing.T, l layer) (string, error) {
			if _, err := lazypullReads(l, files, format.Options{}); err != nil {
				return whole, err
			}
			return lazy, nil
		}},
		{"stargz-snapshotter", func(t *testing.T, l layer) (string, error) {
			if err := stargzReads(l, files); err != nil {
				return whole, err
			}
			return lazy, nil
		}},
		{"containers/storage", func(t *testing.T, l layer) (string, error) {
			out, _, err := containersStoragePull(t, newContainersStorage(t), l, "")
			var fallback chunked.ErrFallbackToOrdinaryLayerDownload
			switch {
			case errors.As(err, &fallback):
				return whole, err
			case err != nil:
				return refused, err
			}
			return lazy, checkStaged(out, tarball, files)
		}},
	}
	want := map[string][]string{ // by writer: lazypull, stargz-snapshotter, containers/storage
		"lazypull zstd:chunked, containers/storage annotations": {lazy, whole, lazy},
		"lazypull zstd:chunked, stargz-snapshotter annotations": {lazy, lazy, whole},
		"lazypull eStargz":                {lazy, lazy, whole},
		"stargz-snapshotter zstd:chunked": {lazy, lazy, whole},
		"stargz-snapshotter eStargz":      {lazy, lazy, whole},
		"containers/storage zstd:chunked": {lazy, whole, lazy},
	}
	table := []string{"| writer ↓ reader → | lazypull | stargz-snapshotter | containers/storage |", "|---|---|---|---|"}
	for _, w := range writers {
		row := "| " + w.name + " |"
		for i, r := range readers {
			got, err := r.read(t, w.layer)
			if got == lazy && err != nil {
				t.Errorf("%s reading %s: %v", r.name, w.name, err)
				got = "wrong"
			}
			if got != want[w.name][i] {
				t.Errorf("%s reading %s: %s (%v), want %s", r.name, w.name, got, err, want[w.name][i])
			}
			cell := got
			if err != nil {
				cell += ": " + shorten(err.Error())
			}
			row += " " + cell + " |"
		}
		table = append(table, row)
	}
	t.Log("interop matrix\n" + strings.Join(table, "\n"))
}

func shorten(s string) string {
	if i := strings.LastIndex(s, ": "); i >= 0 && len(s) > 80 {
		s = s[i+2:]
	}
	return strings.NewReplacer("|", "/", "\n", "; ").Replace(s)
}

// lazypull reads every flavour of both formats, with and without each of
// the annotations their writers give them: a layer whose annotations still
// hold a digest to verify it by opens verified; one without opens only
// when unverified layers are allowed; a wrong digest never opens.
func TestLazypullReadsEveryFlavour(t *testing.T) {
	tarball := layerTar(t)
	files := regularFiles(t, tarball)
	digestKeys := []string{stargz.TOCJSONDigestAnnotation, zstdchunked.ManifestChecksumAnnotation, "io.containers.zstd-chunked.manifest-checksum"}
	for name, l := range map[string]layer{
		"lazypull zstd:chunked, containers/storage annotations": oursForContainersStorage(t, tarball),
		"lazypull zstd:chunked, stargz-snapshotter annotations": oursForStargz(t, tarball),
		"lazypull eStargz":                ourEStargz(t, tarball),
		"stargz-snapshotter zstd:chunked": stargzLayer(t, tarball, true),
		"stargz-snapshotter eStargz":      stargzLayer(t, tarball, false),
		"containers/storage zstd:chunked": containersStorageLayer(t, tarball),
	} {
		wantKind := format.ZstdChunked
		if l.desc.MediaType == gzipType {
			wantKind = format.EStargz
		}
		t.Run(name, func(t *testing.T) {
			subsets := map[string]map[string]string{"all": l.desc.Annotations, "none": nil}
			for k := range l.desc.Annotations {
				subsets["without "+k] = without(l.desc.Annotations, k)
			}
			for subset, a := range subsets {
				verifiable := slices.ContainsFunc(digestKeys, func(k string) bool { _, ok := a[k]; return ok })
				kind, err := lazypullReads(l.withAnnotations(a), files, format.Options{})
				switch {
				case verifiable && (err != nil || kind != wantKind):
					t.Errorf("%s: %s, %v; want %s", subset, kind, err, wantKind)
				case !verifiable && !errors.Is(err, format.ErrNotLazy):
					t.Errorf("%s: %v; want ErrNotLazy", subset, err)
				}
				if kind, err := lazypullReads(l.withAnnotations(a), files, format.Options{Unverified: true}); err != nil || kind != wantKind {
					t.Errorf("%s, unverified allowed: %s, %v; want %s", subset, kind, err, wantKind)
				}
			}
			// Each digest the annotations hold is checked.
			for _, k := range digestKeys {
				if _, ok := l.desc.Annotations[k]; !ok {
					continue
				}
				a := maps.Clone(l.desc.Annotations)
				a[k] = "sha256:" + strings.Repeat("0", 64)
				if _, err := lazypullReads(l.withAnnotations(a), files, format.Options{}); err == nil {
					t.Errorf("a wrong %s: the layer opens", k)
				}
			}
			if name == "containers/storage zstd:chunked" {
				checkHoles(t, l)
			}
			// The media type decides: the same annotations on a descriptor
			// of the other compression are no lazy layer.
			other := l
			other.desc.MediaType = map[string]string{gzipType: zstdType, zstdType: gzipType}[l.desc.MediaType]
			if kind, err := lazypullReads(other, files, format.Options{}); err == nil {
				t.Errorf("as %s: opens as %s", other.desc.MediaType, kind)
			}
		})
	}
}

// checkHoles checks that containers/storage stored the runs of zeros in
// etc/holes as holes (chunks with no data), so that reading them is
// tested.
func checkHoles(t *testing.T, l layer) {
	t.Helper()
	blob, _, err := format.Open(bytes.NewReader(l.blob), l.desc, format.Options{})
	if err != nil {
		t.Fatal(err)
	}
	e, _ := blob.TOC().Lookup("etc/holes")
	if !slices.ContainsFunc(e.Chunks(), func(c toc.Chunk) bool { return c.Zero }) {
		t.Error("etc/holes has no hole: the test does not test them")
	}
}

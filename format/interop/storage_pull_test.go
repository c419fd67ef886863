package interop

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/opencontainers/go-digest"
	storage "go.podman.io/storage"
	graphdriver "go.podman.io/storage/drivers"
	"go.podman.io/storage/pkg/chunked"
	"go.podman.io/storage/types"

	"github.com/lazypull/lazypull/format/zstdchunked"
	"github.com/lazypull/lazypull/internal/testenv"
)

// blobSource serves a blob to containers/storage's partial pull, range by
// range, as a registry through containers/image does, and keeps the
// ranges asked for.
type blobSource struct {
	blob   []byte
	mu     sync.Mutex
	ranges []chunked.ImageSourceChunk
}

func (s *blobSource) GetBlobAt(chunks []chunked.ImageSourceChunk) (chan io.ReadCloser, chan error, error) {
	var end uint64
	for _, c := range chunks {
		if c.Offset > uint64(len(s.blob)) || c.Length > uint64(len(s.blob))-c.Offset {
			return nil, nil, fmt.Errorf("range %d+%d outside the %d-byte blob", c.Offset, c.Length, len(s.blob))
		}
		// containers/image's registry client takes ranges only in order
		// (a server may answer a multi-range request with the whole
		// blob, which it then reads through once): so must a blob's
		// layout let them be asked for.
		if c.Offset < end {
			return nil, nil, fmt.Errorf("range %d+%d overlaps or precedes the one before it, ending at %d", c.Offset, c.Length, end)
		}
		end = c.Offset + c.Length
	}
	s.mu.Lock()
	s.ranges = append(s.ranges, chunks...)
	s.mu.Unlock()
	streams, errs := make(chan io.ReadCloser), make(chan error)
	go func() {
		defer close(errs)
		defer close(streams)
		for _, c := range chunks {
			streams <- io.NopCloser(bytes.NewReader(s.blob[c.Offset : c.Offset+c.Length]))
		}
	}()
	return streams, errs, nil
}

// fetched is how many bytes of the blob containers/storage asked for.
func (s *blobSource) fetched() int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	var n int64
	for _, c := range s.ranges {
		n += int64(c.Length)
	}
	return n
}

// newContainersStorage is a fresh containers/storage store (overlay
// driver, partial pulls enabled), as podman and CRI-O use.
func newContainersStorage(t *testing.T) storage.Store {
	t.Helper()
	testenv.NeedRoot(t)
	// Not t.TempDir: the test's name goes into it, and overlay mount
	// options cannot hold its commas.
	dir, err := os.MkdirTemp("", "containers-storage-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	store, err := storage.GetStore(types.StoreOptions{
		RunRoot:         filepath.Join(dir, "run"),
		GraphRoot:       filepath.Join(dir, "root"),
		GraphDriverName: "overlay",
		PullOptions:     map[string]string{"enable_partial_images": "true"},
	})
	testenv.Need(t, "a containers/storage overlay store", err)
	t.Cleanup(func() { store.Shutdown(true) })
	return store
}

// containersStoragePull pulls a layer partially, as podman and CRI-O do:
// NewDiffer reads the manifest and tar-split data by the annotations and
// decides whether a partial pull is possible (or the layer is to be pulled
// whole: ErrFallbackToOrdinaryLayerDownload), then the staged layer is
// written from the chunks it fetches, or from files the store has in
// other layers. It returns the staged layer, or the error that stopped
// it. With an id, the layer is then committed to the store under it.
func containersStoragePull(t *testing.T, store storage.Store, l layer, id string) (*graphdriver.DriverWithDifferOutput, *blobSource, error) {
	t.Helper()
	src := &blobSource{blob: l.blob}
	differ, err := chunked.NewDiffer(context.Background(), store, l.desc.Digest, l.desc.Size, l.desc.Annotations, src)
	if err != nil {
		return nil, src, err
	}
	t.Cleanup(func() { differ.Close() })
	out, err := store.PrepareStagedLayer(nil, differ)
	if err != nil {
		return nil, src, err
	}
	if id != "" {
		_, err := store.ApplyStagedLayer(storage.ApplyStagedLayerOptions{ID: id, DiffOutput: out, DiffOptions: &graphdriver.ApplyDiffWithDifferOpts{}})
		return out, src, err
	}
	t.Cleanup(func() {
		if err := store.CleanupStagedLayer(out); err != nil {
			t.Errorf("cleaning up the staged layer: %v", err)
		}
	})
	return out, src, nil
}

// checkStaged tells whether a staged layer holds the tar's regular files,
// and whether containers/storage's digest of the tar it rebuilt from them
// and the tar-split data is the tar's own.
func checkStaged(out *graphdriver.DriverWithDifferOutput, tarball []byte, files map[string][]byte) error {
	if want := digest.FromBytes(tarball); out.UncompressedDigest != want {
		return fmt.Errorf("containers/storage rebuilds a tar of digest %s, want %s", out.UncompressedDigest, want)
	}
	for name, want := range files {
		if strings.HasPrefix(path.Base(name), ".wh.") {
			continue // a whiteout: containers/storage makes it an overlay whiteout
		}
		got, err := os.ReadFile(filepath.Join(out.Target, name))
		if err != nil || !bytes.Equal(got, want) {
			return fmt.Errorf("%q: containers/storage staged %d bytes (%v), want the %d of the tar", name, len(got), err, len(want))
		}
	}
	return nil
}

func TestContainersStoragePullsOursPartially(t *testing.T) {
	tarball := layerTar(t)
	l := oursForContainersStorage(t, tarball)
	store := newContainersStorage(t)
	out, src, err := containersStoragePull(t, store, l, "")
	if err != nil {
		t.Fatalf("containers/storage does not pull our layer partially: %v", err)
	}
	if err := checkStaged(out, tarball, regularFiles(t, tarball)); err != nil {
		t.Fatal(err)
	}
	if want := l.desc.Annotations[zstdchunked.ManifestChecksumAnnotation]; out.TOCDigest.String() != want {
		t.Errorf("containers/storage took TOC digest %s, want %s", out.TOCDigest, want)
	}
	t.Logf("containers/storage fetched %d of the blob's %d bytes in %d ranges", src.fetched(), len(l.blob), len(src.ranges))
}

// What a partial pull is for: a layer whose files the store has already
// (here a 1 MiB file, in a layer committed before) costs only the rest.
func TestContainersStorageFetchesOnlyWhatItLacks(t *testing.T) {
	store := newContainersStorage(t)
	first := layerTar(t)
	if _, _, err := containersStoragePull(t, store, oursForContainersStorage(t, first), "first"); err != nil {
		t.Fatalf("first layer: %v", err)
	}
	known := regularFiles(t, first)["etc/random"]
	second := tarOf(t, map[string][]byte{"moved/random": known, "new": data(9, 100_000, false)})
	l := oursForContainersStorage(t, second)
	out, src, err := containersStoragePull(t, store, l, "")
	if err != nil {
		t.Fatalf("second layer: %v", err)
	}
	if err := checkStaged(out, second, regularFiles(t, second)); err != nil {
		t.Fatal(err)
	}
	if limit := int64(len(l.blob) - len(known)/2); src.fetched() > limit {
		t.Errorf("containers/storage fetched %d of the blob's %d bytes: more than %d, so it fetched the file it has", src.fetched(), len(l.blob), limit)
	}
	t.Logf("containers/storage fetched %d of the blob's %d bytes", src.fetched(), len(l.blob))
}

// tarOf is a tar of regular files, in name order.
func tarOf(t *testing.T, files map[string][]byte) []byte {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, name := range slices.Sorted(maps.Keys(files)) {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: 0o644, Size: int64(len(files[name])), ModTime: testTime}); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write(files[name]); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// What containers/storage does with the layers it cannot pull partially,
// and why.
func TestContainersStorageRefuses(t *testing.T) {
	tarball := layerTar(t)
	ours := oursForContainersStorage(t, tarball)
	stargzAnnotations := oursForStargz(t, tarball).desc.Annotations
	both := maps.Clone(ours.desc.Annotations)
	maps.Copy(both, stargzAnnotations)
	// A link to a link, which our writer rewrites: no tar-split.
	chained := append(bytes.Clone(tarball[:len(tarball)-1024]), linkToLink(t)...)
	chainedBlob, chainedRes := ourZstdChunked(t, chained)
	if chainedRes.TarSplitSkipped == "" {
		t.Fatal("the test's premise: a tar with a link to a link gets no tar-split")
	}
	for name, tc := range map[string]struct {
		layer    layer
		fallback bool   // pulled whole rather than failed
		why      string // in the error
	}{
		"ours without tar-split":      {newLayer(chainedBlob, zstdType, chainedRes.Annotations), true, "without tar-split"},
		"ours, stargz annotations":    {ours.withAnnotations(stargzAnnotations), true, "estargz"},
		"ours, both annotation sets":  {ours.withAnnotations(both), false, "both zstd:chunked and eStargz"},
		"ours, no annotations":        {ours.withAnnotations(nil), true, "no TOC"},
		"ours, wrong manifest digest": {ours.withAnnotations(withAnnotation(ours.desc.Annotations, zstdchunked.ManifestChecksumAnnotation, digest.FromString("x").String())), false, "checksum"},
	} {
		t.Run(name, func(t *testing.T) {
			_, _, err := containersStoragePull(t, newContainersStorage(t), tc.layer, "")
			var fallback chunked.ErrFallbackToOrdinaryLayerDownload
			switch {
			case err == nil:
				t.Fatal("containers/storage pulls it partially")
			case errors.As(err, &fallback) != tc.fallback:
				t.Errorf("fallback to a whole pull %v, want %v: %v", !tc.fallback, tc.fallback, err)
			case !strings.Contains(err.Error(), tc.why):
				t.Errorf("error %q does not say %q", err, tc.why)
			}
		})
	}
}

// linkToLink is a tar's end: a hard link to a hard link to etc/one.
func linkToLink(t *testing.T) []byte {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, h := range []tar.Header{
		{Typeflag: tar.TypeLink, Name: "etc/link1", Linkname: "etc/one", ModTime: testTime},
		{Typeflag: tar.TypeLink, Name: "etc/link2", Linkname: "etc/link1", ModTime: testTime},
	} {
		if err := tw.WriteHeader(&h); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func withAnnotation(a map[string]string, k, v string) map[string]string {
	out := maps.Clone(a)
	out[k] = v
	return out
}

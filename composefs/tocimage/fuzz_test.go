package tocimage

import (
	"context"
	"encoding/json"
	"io"
	"testing"

	"github.com/lazypull/lazypull/composefs/erofs"
	"github.com/lazypull/lazypull/format/toc"
)

// FuzzWrite: whatever TOC the parser accepts, writing its image returns
// an image or an error; it never panics.
func FuzzWrite(f *testing.F) {
	const d1 = "sha256:1111111111111111111111111111111111111111111111111111111111111111"
	for _, entries := range [][]toc.WireEntry{
		{
			{Name: "a/", Type: toc.TypeDir, Mode: 0o755},
			{Name: "a/f", Type: toc.TypeReg, Size: 10, Offset: 10, ChunkSize: 10, ChunkDigest: d1, Digest: d1},
			{Name: "a/h", Type: toc.TypeHardlink, LinkName: "a/f"},
			{Name: "a/s", Type: toc.TypeSymlink, LinkName: "f"},
			{Name: "a/hs", Type: toc.TypeHardlink, LinkName: "a/s"},
			{Name: "a/.wh.gone", Type: toc.TypeReg},
			{Name: "a/.wh.f", Type: toc.TypeReg},
			{Name: "b/.wh..wh..opq", Type: toc.TypeReg},
			{Name: "dev/null", Type: toc.TypeChar, DevMajor: 1, DevMinor: 3, Mode: 0o666},
			{Name: "p", Type: toc.TypeFifo, Xattrs: map[string][]byte{"user.a": []byte("b"), "system.x": nil}},
		},
		{
			{Name: "nodigest", Type: toc.TypeReg, Size: 3, Offset: 10, ChunkDigest: d1},
			{Name: ".wh...", Type: toc.TypeReg},
		},
	} {
		seed, _ := json.Marshal(toc.JSON{Version: 1, Entries: entries})
		f.Add(seed)
	}
	limits := toc.Limits{MaxTOCBytes: 1 << 20, MaxEntries: 1000, MaxChunkBytes: 1 << 16, MaxMemberBytes: 1 << 17}
	f.Fuzz(func(t *testing.T, data []byte) {
		parsed, err := toc.Parse(data, 1<<20, limits)
		if err != nil {
			return
		}
		// As Write, without the disk and its syncs.
		w := erofs.NewWriter()
		st, err := add(context.Background(), w, parsed, Options{})
		if err != nil {
			return
		}
		if st.Entries < 1 {
			t.Fatalf("an image without its root: %+v", st)
		}
		w.WriteTo(io.Discard)
	})
}

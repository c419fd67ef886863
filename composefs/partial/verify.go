package partial

import (
	"context"
	"fmt"
	"io"
	"path"
	"strings"

	"github.com/opencontainers/go-digest"

	"github.com/lazypull/lazypull/composefs/objects"
	"github.com/lazypull/lazypull/format/toc"
	"github.com/lazypull/lazypull/format/zstdchunked"
)

// VerifyTar checks that a layer filled from its chunks is exactly the tar
// diffID names (the image config's DiffID), though only some of its files
// were fetched: it rebuilds the tar from the layer's tar-split data (the
// compressed bytes a zstd:chunked blob holds at its tar-split position)
// and the store's objects, hashing as it goes. The TOC and its chunks are
// checked against the image's manifest; this checks the rest, so that a
// layer cannot claim another layer's DiffID.
//
// Each of the TOC's files is taken at most once, as a tar holds it, so
// hostile tar-split data cannot make it hash more than the layer's bytes.
func VerifyTar(ctx context.Context, store *objects.Store, t *toc.TOC, tarSplit io.Reader, diffID digest.Digest) error {
	if err := diffID.Validate(); err != nil {
		return fmt.Errorf("layer DiffID %q: %w", diffID, err)
	}
	h := diffID.Algorithm().Hash()
	used := make(map[*toc.Entry]bool)
	err := zstdchunked.ReadTarSplit(tarSplit, func(segment []byte, name string, size int64) error {
		if err := ctx.Err(); err != nil {
			return err
		}
		if segment != nil || size == 0 {
			h.Write(segment)
			return nil
		}
		e, ok := t.Lookup(tarName(name))
		if !ok || e.Type != toc.TypeReg || e.Size != size {
			return fmt.Errorf("tar-split names a file %q of %d bytes, which the TOC does not have", name, size)
		}
		if used[e] {
			return fmt.Errorf("tar-split names the file %q twice", name)
		}
		used[e] = true
		f, err := store.Open(e.Digest())
		if err != nil {
			return fmt.Errorf("layer file %q: %w", name, err)
		}
		defer f.Close()
		if n, err := io.Copy(h, io.LimitReader(f, size+1)); err != nil || n != size {
			return fmt.Errorf("layer file %q: %d bytes of %d in its object: %v", name, n, size, err)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("rebuild the layer's tar: %w", err)
	}
	if got := digest.NewDigest(diffID.Algorithm(), h); got != diffID {
		return fmt.Errorf("the layer's tar, rebuilt from its tar-split data and files, is %s, not the %s its image names: the layer is not what the image says", got, diffID)
	}
	return nil
}

// tarName is a tar member's name as the TOC keeps it.
func tarName(name string) string {
	clean := path.Clean("/" + name)
	return strings.TrimPrefix(clean, "/")
}

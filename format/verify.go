package format

import (
	"archive/tar"
	"bytes"
	"errors"
	"fmt"
	"hash"
	"io"
	"path"
	"strings"

	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
	"github.com/opencontainers/go-digest"

	"github.com/lazypull/lazypull/format/toc"
)

// VerifyError says how a blob differs from what its image or its TOC says.
type VerifyError struct {
	Entry string // the file, if one is to blame
	What  string
}

func (e *VerifyError) Error() string {
	if e.Entry == "" {
		return e.What
	}
	return fmt.Sprintf("%q: %s", e.Entry, e.What)
}

func mismatch(entry, format string, args ...any) error {
	return &VerifyError{Entry: entry, What: fmt.Sprintf(format, args...)}
}

// tocFileName is eStargz's own TOC, the one tar entry its TOC leaves out.
const tocFileName = "stargz.index.json"

// Verify reads a whole blob of kind k and checks that it is what a full
// pull would unpack, and what the TOC t says: the uncompressed stream has
// digest diffID (the image config's), and every tar entry is the TOC's
// entry of that name (type, size, mode, owner, link, device, its xattrs,
// each chunk's bytes), and the TOC lists nothing the tar lacks. A lazily
// served layer and a fully unpacked one then show the same files.
// It streams: memory does not grow with the blob.
func Verify(blob io.Reader, k Kind, t *toc.TOC, diffID digest.Digest) error {
	if err := diffID.Validate(); err != nil {
		return fmt.Errorf("diff_id %q: %w", diffID, err)
	}
	var stream io.Reader
	switch k {
	case EStargz:
		zr, err := gzip.NewReader(blob)
		if err != nil {
			return mismatch("", "not gzip: %v", err)
		}
		defer zr.Close()
		stream = zr
	case ZstdChunked:
		// A hostile frame header cannot make the decoder allocate more
		// than this window (real zstd:chunked frames use a few MiB).
		zr, err := zstd.NewReader(blob, zstd.WithDecoderConcurrency(1), zstd.WithDecoderLowmem(true), zstd.WithDecoderMaxWindow(64<<20))
		if err != nil {
			return err
		}
		defer zr.Close()
		stream = zr
	default:
		return fmt.Errorf("verify a %q blob: unknown format", k)
	}
	uncompressed := diffID.Algorithm().Digester()
	if err := checkTar(io.TeeReader(stream, uncompressed.Hash()), t); err != nil {
		return err
	}
	// The tar's end may be followed by padding that is part of the stream.
	if _, err := io.Copy(uncompressed.Hash(), stream); err != nil {
		return mismatch("", "decompress: %v", err)
	}
	if got := uncompressed.Digest(); got != diffID {
		return mismatch("", "uncompressed content has digest %s, the image's config says diff_id %s", got, diffID)
	}
	return nil
}

// checkTar compares a tar stream with the TOC, entry by entry.
func checkTar(r io.Reader, t *toc.TOC) error {
	tr := tar.NewReader(r)
	seen := make(map[*toc.Entry]bool, t.Len())
	buf := make([]byte, 64<<10)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return mismatch("", "not a valid tar stream: %v", err)
		}
		name := cleanTarName(h.Name)
		e, ok := t.Lookup(name)
		if !ok {
			if name == tocFileName {
				if _, err := io.Copy(io.Discard, tr); err != nil {
					return mismatch(name, "read: %v", err)
				}
				continue
			}
			return mismatch(h.Name, "in the tar but not in the TOC")
		}
		if seen[e] {
			return mismatch(h.Name, "in the tar twice")
		}
		seen[e] = true
		if err := sameHeader(h, e); err != nil {
			return err
		}
		if e.Type == toc.TypeReg {
			if err := sameContent(tr, e, buf); err != nil {
				return err
			}
		}
	}
	for _, e := range t.Entries() {
		if !seen[e] && !e.Implicit() {
			return mismatch(e.Path(), "in the TOC but not in the tar")
		}
	}
	return nil
}

// cleanTarName is a tar name as the TOC names it: "./a//b/" is "a/b".
func cleanTarName(name string) string {
	clean := path.Clean("/" + name)
	return strings.TrimPrefix(clean, "/")
}

var tarTypes = map[byte]toc.Type{
	tar.TypeReg: toc.TypeReg, tar.TypeRegA: toc.TypeReg, tar.TypeGNUSparse: toc.TypeReg,
	tar.TypeDir: toc.TypeDir, tar.TypeSymlink: toc.TypeSymlink, tar.TypeLink: toc.TypeHardlink,
	tar.TypeChar: toc.TypeChar, tar.TypeBlock: toc.TypeBlock, tar.TypeFifo: toc.TypeFifo,
}

func sameHeader(h *tar.Header, e *toc.Entry) error {
	typ, ok := tarTypes[h.Typeflag]
	if !ok || typ != e.Type {
		return mismatch(e.Path(), "a %s in the TOC, tar type %q in the tar", e.Type, h.Typeflag)
	}
	switch {
	case h.Mode&0o7777 != int64(e.Mode):
		return mismatch(e.Path(), "mode %o in the TOC, %o in the tar", e.Mode, h.Mode&0o7777)
	case h.Uid != int(e.UID) || h.Gid != int(e.GID):
		return mismatch(e.Path(), "owner %d:%d in the TOC, %d:%d in the tar", e.UID, e.GID, h.Uid, h.Gid)
	case e.Type == toc.TypeReg && h.Size != e.Size:
		return mismatch(e.Path(), "%d bytes in the TOC, %d in the tar", e.Size, h.Size)
	case e.Type == toc.TypeSymlink && h.Linkname != e.LinkName():
		return mismatch(e.Path(), "links to %q in the TOC, %q in the tar", e.LinkName(), h.Linkname)
	case e.Type == toc.TypeHardlink && cleanTarName(h.Linkname) != e.LinkName():
		return mismatch(e.Path(), "a hard link to %q in the TOC, to %q in the tar", e.LinkName(), h.Linkname)
	case (e.Type == toc.TypeChar || e.Type == toc.TypeBlock) && !sameDev(e, h):
		major, minor := e.Dev()
		return mismatch(e.Path(), "device %d:%d in the TOC, %d:%d in the tar", major, minor, h.Devmajor, h.Devminor)
	}
	for k, v := range e.Xattrs() {
		if tv, ok := h.PAXRecords["SCHILY.xattr."+k]; !ok || tv != string(v) {
			return mismatch(e.Path(), "xattr %s in the TOC is not the tar's", k)
		}
	}
	return nil
}

// sameContent reads a regular file's content from the tar and checks each
// chunk against the TOC's digest (holes must be zeros), and the whole file
// against its digest when the TOC gives one.
func sameContent(r io.Reader, e *toc.Entry, buf []byte) error {
	var whole hash.Hash
	if e.Digest() != "" {
		whole = e.Digest().Algorithm().Hash()
	}
	for i, c := range e.Chunks() {
		var h hash.Hash
		if !c.Zero {
			h = c.Digest().Algorithm().Hash()
		}
		for left := c.Size; left > 0; {
			n, err := io.ReadFull(r, buf[:min(left, int64(len(buf)))])
			if err != nil {
				return mismatch(e.Path(), "content ends %d bytes early in the tar: %v", left, err)
			}
			p := buf[:n]
			if whole != nil {
				whole.Write(p)
			}
			if c.Zero {
				if !isZero(p) {
					return mismatch(e.Path(), "chunk %d is a hole in the TOC but holds data in the tar", i)
				}
			} else {
				h.Write(p)
			}
			left -= int64(n)
		}
		if h != nil && digest.NewDigest(c.Digest().Algorithm(), h) != c.Digest() {
			return mismatch(e.Path(), "chunk %d at offset %d differs from the TOC's digest in the tar", i, c.FileOffset)
		}
	}
	if whole != nil && digest.NewDigest(e.Digest().Algorithm(), whole) != e.Digest() {
		return mismatch(e.Path(), "content differs from the TOC's digest in the tar")
	}
	return nil
}

func isZero(p []byte) bool {
	for len(p) > 0 {
		n := min(len(p), len(zeroBlock))
		if !bytes.Equal(p[:n], zeroBlock[:n]) {
			return false
		}
		p = p[n:]
	}
	return true
}

var zeroBlock = make([]byte, 4096)

// IsVerifyError tells whether err says the blob is not what it should be
// (rather than that it could not be read).
func IsVerifyError(err error) bool {
	var v *VerifyError
	return errors.As(err, &v)
}

// sameDev tells whether a device entry has the tar header's numbers.
func sameDev(e *toc.Entry, h *tar.Header) bool {
	major, minor := e.Dev()
	return h.Devmajor == int64(major) && h.Devminor == int64(minor)
}

// Package toc is the table of contents shared by the lazily pullable layer
// formats (eStargz, zstd:chunked): the JSON both put in their blobs, the
// model the rest of lazypull reads, and the validation that stands between
// the two. A TOC comes from a registry, so nothing in it is trusted until
// Parse has checked it: sizes are bounded, names confined, chunks placed,
// and no overlayfs xattr (trusted.*, user.overlay.*) kept.
//
// This package knows neither compression nor I/O: the formats read and write
// the bytes, and hand the JSON to it.
package toc

import (
	"time"

	"github.com/opencontainers/go-digest"
)

// Entry types, as the TOC JSON spells them.
const (
	TypeDir      = "dir"
	TypeReg      = "reg"
	TypeSymlink  = "symlink"
	TypeHardlink = "hardlink"
	TypeChar     = "char"
	TypeBlock    = "block"
	TypeFifo     = "fifo"
	TypeChunk    = "chunk" // a later chunk of the reg entry before it (wire only)
)

// Whiteout names, as in the OCI image layer spec.
const (
	WhiteoutPrefix = ".wh."
	OpaqueWhiteout = ".wh..wh..opq"
)

// Entry is one file of the layer, with all of its chunks.
type Entry struct {
	Name      string // cleaned, relative, no "." or ".." components; "" is the root
	Type      string // one of the Type constants other than TypeChunk
	Size      int64  // regular files: uncompressed size
	ModTime   time.Time
	LinkName  string // symlink target as written; hardlink: cleaned name of the target
	Mode      uint32 // permission, setuid, setgid and sticky bits (07777)
	UID, GID  int
	UserName  string
	GroupName string
	DevMajor  int
	DevMinor  int
	// Xattrs never holds trusted.* nor user.overlay.* names: Parse
	// drops them (see OverlayXattr).
	Xattrs map[string][]byte
	Digest digest.Digest // regular files: digest of the whole content, if the TOC has it
	Chunks []Chunk       // regular files with content: in file order, covering Size exactly

	// NumLink counts the names of this inode (hard links included).
	NumLink int
	// Implicit marks a directory the TOC did not list but a child needs.
	Implicit bool

	children []*Entry // directories: sorted by name
}

// Chunk is one independently compressed piece of a regular file.
type Chunk struct {
	// Offset and EndOffset bound the compressed member (gzip) or frame
	// (zstd) in the blob that holds this chunk.
	Offset, EndOffset int64
	// InnerOffset is where the chunk starts in the member's uncompressed
	// data: several small files can share a member.
	InnerOffset int64
	// FileOffset and Size place the chunk in the file.
	FileOffset, Size int64
	// Digest is the digest of the chunk's uncompressed bytes.
	Digest digest.Digest
	// Zero marks a hole: Size zero bytes with nothing stored in the blob.
	Zero bool
}

// IsWhiteout tells whether the entry deletes a lower layer's file.
func (e *Entry) IsWhiteout() bool {
	base := e.Name[lastSlash(e.Name)+1:]
	return len(base) > len(WhiteoutPrefix) && base[:len(WhiteoutPrefix)] == WhiteoutPrefix && base != OpaqueWhiteout
}

// IsOpaqueMarker tells whether the entry makes its directory opaque.
func (e *Entry) IsOpaqueMarker() bool {
	return e.Name[lastSlash(e.Name)+1:] == OpaqueWhiteout
}

func lastSlash(s string) int {
	for i := len(s) - 1; i >= 0; i-- {
		if s[i] == '/' {
			return i
		}
	}
	return -1
}

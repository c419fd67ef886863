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
	"encoding/hex"
	"fmt"
	"time"
	"unsafe"

	"github.com/opencontainers/go-digest"
)

// Type is an entry's type. It reads and writes as the TOC JSON spells it
// ("dir", "reg", ...), and takes one byte in memory.
type Type uint8

// Entry types.
const (
	TypeDir Type = iota + 1
	TypeReg
	TypeSymlink
	TypeHardlink
	TypeChar
	TypeBlock
	TypeFifo
	TypeChunk // a later chunk of the reg entry before it (wire only)

	// typeUnknown is a type the TOC spells in a way we do not know:
	// Parse refuses it, naming the entry.
	typeUnknown Type = 255
)

var typeNames = [...]string{
	TypeDir: "dir", TypeReg: "reg", TypeSymlink: "symlink", TypeHardlink: "hardlink",
	TypeChar: "char", TypeBlock: "block", TypeFifo: "fifo", TypeChunk: "chunk",
}

// String is the type as the TOC JSON spells it.
func (t Type) String() string {
	if int(t) < len(typeNames) && typeNames[t] != "" {
		return typeNames[t]
	}
	return "unknown type"
}

// MarshalText writes the type as the TOC JSON spells it.
func (t Type) MarshalText() ([]byte, error) {
	if int(t) < len(typeNames) && typeNames[t] != "" {
		return []byte(typeNames[t]), nil
	}
	return nil, fmt.Errorf("toc: no entry type %d", t)
}

// UnmarshalText reads a type as the TOC JSON spells it. A spelling it
// does not know is not an error here: Parse refuses the entry by name.
func (t *Type) UnmarshalText(b []byte) error {
	for i, name := range typeNames {
		if name != "" && name == string(b) {
			*t = Type(i)
			return nil
		}
	}
	*t = typeUnknown
	return nil
}

// Whiteout names, as in the OCI image layer spec.
const (
	WhiteoutPrefix = ".wh."
	OpaqueWhiteout = ".wh..wh..opq"
)

// Landmarks: empty files an eStargz writer puts at the layer's root to
// say where the files to prefetch end (or that there are none). They are
// not files of the image: a mounted layer does not show them.
const (
	PrefetchLandmark   = ".prefetch.landmark"
	NoPrefetchLandmark = ".no.prefetch.landmark"
)

// IsLandmark tells whether the entry is one of the landmarks.
func (e *Entry) IsLandmark() bool {
	return e.parent != nil && e.parent.parent == nil && IsLandmark(e.name)
}

// IsLandmark tells whether name, at a layer's root, is a landmark.
func IsLandmark(name string) bool { return name == PrefetchLandmark || name == NoPrefetchLandmark }

// Entry is one file of the layer, with all of its chunks.
//
// A mounted layer holds one Entry per file for its whole life, so Entry
// is packed: what the TOC gives and no mounted layer reads (user and
// group names, access and change times) is not kept, digests are kept as
// their bytes, and names as their last component under a parent pointer
// (a full name costs some 60 bytes an entry in a real image; base names
// are short and repeat, so Parse keeps each spelling once).
type Entry struct {
	// name is the last name component ("" for the root) once Parse is
	// done; while it runs, the whole cleaned name. See Path.
	name   string
	parent *Entry // nil for the root
	// chunks and nchunks are Chunks: a pointer into the TOC's one array
	// of chunks and a count take 12 bytes where a slice takes 24.
	chunks *Chunk
	// more holds what few entries have: see LinkName, Xattrs, Dev and
	// NumLink.
	more *extra
	// dir holds a directory's entries: behind a pointer, as most
	// entries are not directories.
	dir   *dirInfo
	Size  int64 // regular files: uncompressed size
	mtime int64 // Unix seconds
	// mtimeNsec is the nanoseconds of the modification time plus one: 0
	// if the TOC has no time.
	mtimeNsec int32
	UID, GID  uint32
	ino       uint32 // see Ino
	nchunks   uint32
	Mode      uint16 // permission, setuid, setgid and sticky bits (07777)
	Type      Type   // one of the Type constants other than TypeChunk
	flags     entryFlags
	// 88 bytes in all: mind the alignment when adding a field.
}

// entryFlags are an entry's bits: whether it is implicit, and where its
// digest is, so that an entry spends no pointer on a digest it shares.
type entryFlags uint8

const (
	implicit      entryFlags = 1 << iota
	digestEmpty              // the sha256 of nothing
	digestOfChunk            // its one chunk's
	digestInMore             // more.digest: one unlike its chunk's, or a file of several
)

// Implicit tells whether the entry is a directory the TOC did not list but
// a child needs (or the root, when the TOC does not list it).
func (e *Entry) Implicit() bool { return e.flags&implicit != 0 }

type extra struct {
	linkName           string
	xattrs             map[string][]byte
	devMajor, devMinor uint32
	links              uint32 // hard links to this entry
	digest             sum    // see digestInMore
}

type dirInfo struct {
	children []*Entry // sorted by name
	subdirs  uint32
}

// Chunks are a regular file's pieces, in file order, covering Size
// exactly; none for other entries and empty files.
func (e *Entry) Chunks() []Chunk {
	if e.chunks == nil {
		return nil
	}
	return unsafe.Slice(e.chunks, e.nchunks)
}

// NumLink counts the names of the entry's inode: a directory's own, its
// ".." and its subdirectories' ".." entries; a file's and its hard
// links'.
func (e *Entry) NumLink() uint32 {
	if e.Type == TypeDir {
		if e.dir == nil {
			return 2
		}
		return 2 + e.dir.subdirs
	}
	if e.more == nil {
		return 1
	}
	return 1 + e.more.links
}

// Path is the entry's cleaned name: relative, no "." or ".." components;
// "" is the root. It is built from the names of the entry's directories,
// so it allocates: cache it where it is used in a loop.
func (e *Entry) Path() string {
	if e.parent == nil || e.parent.parent == nil {
		return e.name
	}
	n := len(e.name)
	for d := e.parent; d.parent != nil; d = d.parent {
		n += len(d.name) + 1
	}
	b := make([]byte, n)
	for d := e; d.parent != nil; d = d.parent {
		n -= len(d.name)
		copy(b[n:], d.name)
		if n > 0 {
			n--
			b[n] = '/'
		}
	}
	return string(b)
}

// Parent is the directory that holds the entry; nil for the root.
func (e *Entry) Parent() *Entry { return e.parent }

// Within tells whether the entry lies below directory dir, at any depth.
func (e *Entry) Within(dir *Entry) bool {
	for p := e.parent; p != nil; p = p.parent {
		if p == dir {
			return true
		}
	}
	return false
}

// Dev is a character or block device's major and minor numbers.
func (e *Entry) Dev() (major, minor uint32) {
	if e.more == nil {
		return 0, 0
	}
	return e.more.devMajor, e.more.devMinor
}

// LinkName is a symlink's target as written, a hard link's the cleaned
// name of its target.
func (e *Entry) LinkName() string {
	if e.more == nil {
		return ""
	}
	return e.more.linkName
}

// Xattrs are the entry's extended attributes, never trusted.* nor
// user.overlay.* ones: Parse drops them (see OverlayXattr).
func (e *Entry) Xattrs() map[string][]byte {
	if e.more == nil {
		return nil
	}
	return e.more.xattrs
}

// setMore keeps a link target, xattrs and device numbers, if there are
// any.
func (e *Entry) setMore(linkName string, xattrs map[string][]byte, major, minor uint32) {
	m := extra{linkName: linkName, xattrs: xattrs, devMajor: major, devMinor: minor}
	if e.more != nil {
		m.links, m.digest = e.more.links, e.more.digest
	}
	e.more = nil
	if !m.empty() {
		e.more = &m
	}
}

func (m *extra) empty() bool {
	return m.linkName == "" && len(m.xattrs) == 0 && m.devMajor == 0 && m.devMinor == 0 &&
		m.links == 0 && m.digest == sum{}
}

// addLink counts one more hard link to e.
func (e *Entry) addLink() {
	if e.more == nil {
		e.more = &extra{}
	}
	e.more.links++
}

// Chunk is one independently compressed piece of a regular file.
type Chunk struct {
	// Offset and EndOffset bound the compressed member (gzip) or frame
	// (zstd) in the blob that holds this chunk.
	Offset, EndOffset int64
	// FileOffset and Size place the chunk in the file.
	FileOffset, Size int64
	sum              sum // see Digest
	// InnerOffset is where the chunk starts in the member's uncompressed
	// data: several small files can share a member. Limits.MaxChunkBytes
	// bounds it, so 32 bits hold it.
	InnerOffset uint32
	// Zero marks a hole: Size zero bytes with nothing stored in the blob.
	Zero bool
	// 80 bytes in all: a mounted layer holds one per chunk.
}

// Digest is the digest of the chunk's uncompressed bytes ("" for a hole).
func (c *Chunk) Digest() digest.Digest { return c.sum.digest() }

// SetDigest sets the chunk's digest: sha256 or sha512.
func (c *Chunk) SetDigest(d digest.Digest) error {
	s, err := makeSum(string(d))
	if err != nil {
		return err
	}
	c.sum = s
	return nil
}

// Digest is the digest of the whole content of a regular file, if the TOC
// has it.
func (e *Entry) Digest() digest.Digest {
	switch {
	case e.flags&digestEmpty != 0:
		return emptySum.digest()
	case e.flags&digestOfChunk != 0:
		return e.chunks.sum.digest()
	case e.flags&digestInMore != 0:
		return e.more.digest.digest()
	}
	return ""
}

// setDigest keeps a regular file's digest where it costs least: s is
// none, the empty file's, or one to compare with the file's chunks once
// they are placed (see placeChunks).
func (e *Entry) setDigest(s sum) {
	e.flags &^= digestEmpty | digestOfChunk | digestInMore
	switch {
	case s == sum{}:
	case s == emptySum && e.Size == 0: // empty files are many
		e.flags |= digestEmpty
	default:
		if e.more == nil {
			e.more = &extra{}
		}
		e.more.digest = s
		e.flags |= digestInMore
	}
}

// ModTime is the entry's modification time; the zero time if the TOC has
// none.
func (e *Entry) ModTime() time.Time {
	if e.mtimeNsec == 0 {
		return time.Time{}
	}
	return time.Unix(e.mtime, int64(e.mtimeNsec-1)).UTC()
}

// Ino is the entry's inode number, stable for the TOC: the root is 1,
// Entry(i) is i+2.
func (e *Entry) Ino() uint64 { return uint64(e.ino) }

// sum is a digest in 40 bytes: sha256, nearly every digest, as its 32
// bytes, any other algorithm as its string. The zero value is none; no
// sha256 is all zeros (Parse refuses one).
type sum struct {
	sha256 [32]byte
	other  *digest.Digest
}

const sha256Prefix = "sha256:"

// makeSum parses a digest: sha256 or sha512, in canonical form.
func makeSum(s string) (sum, error) {
	d, err := parseDigest(s)
	if err != nil {
		return sum{}, err
	}
	if d.Algorithm() != digest.SHA256 {
		return sum{other: &d}, nil
	}
	var out sum
	if _, err := hex.Decode(out.sha256[:], []byte(s[len(sha256Prefix):])); err != nil {
		return sum{}, err
	}
	if out.sha256 == ([32]byte{}) {
		return sum{}, fmt.Errorf("digest %s is all zeros", s)
	}
	return out, nil
}

func (s *sum) isZero() bool { return s.other == nil && s.sha256 == [32]byte{} }

func (s *sum) digest() digest.Digest {
	if s.other != nil {
		return *s.other
	}
	if s.sha256 == ([32]byte{}) {
		return ""
	}
	b := make([]byte, 0, len(sha256Prefix)+64)
	b = append(b, sha256Prefix...)
	return digest.Digest(hex.AppendEncode(b, s.sha256[:]))
}

// IsWhiteout tells whether the entry deletes a lower layer's file.
func (e *Entry) IsWhiteout() bool {
	base := e.Base()
	return len(base) > len(WhiteoutPrefix) && base[:len(WhiteoutPrefix)] == WhiteoutPrefix && base != OpaqueWhiteout
}

// IsOpaqueMarker tells whether the entry makes its directory opaque.
func (e *Entry) IsOpaqueMarker() bool {
	return e.Base() == OpaqueWhiteout
}

func lastSlash(s string) int {
	for i := len(s) - 1; i >= 0; i-- {
		if s[i] == '/' {
			return i
		}
	}
	return -1
}

// Chunk sizes the formats' writers cut files into. Small chunks let a
// start fetch only the parts of a large file it touches: a program maps
// its binary and libraries and faults in scattered pages, and a workload
// profile names the chunks those pages are in. gcc compiling hello.c
// touches 12 MB of pages in 51 MB of files: 64 KiB chunks hold them in
// 27 MB, 4 MiB ones in all 51 (docs/benchmarks/2026-12-03/small-chunks/
// variants.md). Each chunk costs a TOC entry, though (some 200 bytes of
// JSON, 80 of a mounted layer's memory, and one of Limits.MaxEntries), so
// a layer's files go into small chunks only until it has SmallChunkBudget
// of them, and into LargeChunkSize ones after: a layer of any size stays
// well within the limits, and only layers of more than 2 GiB of files get
// large chunks.
const (
	SmallChunkSize   = 64 << 10
	LargeChunkSize   = 4 << 20
	SmallChunkBudget = 32 << 10
)

// FileChunkSize is the chunk size a writer whose chunk size is chunk cuts
// the next file, of size bytes, into, when the layer's files so far took
// chunks chunks: chunk while the layer stays within SmallChunkBudget
// chunks (or when chunk is already LargeChunkSize or more), else
// LargeChunkSize.
func FileChunkSize(size int64, chunks int, chunk int64) int64 {
	if chunk >= LargeChunkSize || int64(chunks)+(size+chunk-1)/chunk <= SmallChunkBudget {
		return chunk
	}
	return LargeChunkSize
}

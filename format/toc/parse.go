package toc

import (
	"cmp"
	"fmt"
	"path"
	"slices"
	"strings"
	"time"

	"github.com/go-json-experiment/json"
	"github.com/go-json-experiment/json/jsontext"
	"github.com/opencontainers/go-digest"
)

// Limits bound what a TOC may ask of the reader. The zero value of a field
// means its default.
type Limits struct {
	MaxTOCBytes int64 // the uncompressed TOC JSON
	// MaxEntries bounds the TOC's entries ("chunk" entries included) plus
	// the implicit directories their names call for: each costs memory
	// whether the TOC lists it or not.
	MaxEntries    int
	MaxFileSize   int64 // a regular file's size, and so a hole's
	MaxChunkBytes int64 // a chunk's InnerOffset + Size: what one read decompresses
	// MaxMemberBytes bounds a compressed member's (gzip) or frame's
	// (zstd) span in the blob, its end given or implied by the next
	// member: what one fetch of a chunk reads.
	MaxMemberBytes int64
}

// DefaultLimits fit every image we know of, with room: files up to 1 TiB,
// chunks up to 64 MiB.
//
// MaxTOCBytes is 64 MiB, not more: the formats' writers spend 250 to 350
// bytes of JSON on a regular file (name, times, two digests, offsets), so
// 64 MiB is some 200,000 files in one layer, and containers/storage
// refuses TOCs over 50 MiB, so that podman could not use a larger one
// anyway. A TOC is held whole in memory, decoded, so every MiB allowed
// here is several MiB of a node's memory per layer.
//
// MaxEntries is half a million: each entry costs some 120 bytes (a
// directory) to 210 (a one-chunk file with its name) once indexed, and 64 MiB of
// JSON holds no more than that many real entries, at 100 bytes for the smallest (a directory or a
// symlink with its times and owner), while the smallest possible ones
// (`{"name":"d","type":"dir"}`) would be 2.5 million.
//
// MaxMemberBytes is MaxChunkBytes and an eighth: a member holds at most
// one chunk's worth of file data (MaxChunkBytes, shared members included),
// which neither gzip nor zstd grows by more than a fraction of a percent
// when it does not compress, plus tar headers: eStargz puts the headers of
// the entries that follow a file (directories, links, PAX records with
// xattrs) in that file's last member, thousands of headers at a few dozen
// compressed bytes each, far less than the 8 MiB of room.
var DefaultLimits = Limits{
	MaxTOCBytes:    64 << 20,
	MaxEntries:     1 << 19,
	MaxFileSize:    1 << 40,
	MaxChunkBytes:  64 << 20,
	MaxMemberBytes: 64<<20 + 8<<20,
}

// WithDefaults fills the zero fields with DefaultLimits; a zero
// MaxMemberBytes follows MaxChunkBytes (an eighth more).
func (l Limits) WithDefaults() Limits {
	if l.MaxTOCBytes <= 0 {
		l.MaxTOCBytes = DefaultLimits.MaxTOCBytes
	}
	if l.MaxEntries <= 0 {
		l.MaxEntries = DefaultLimits.MaxEntries
	}
	if l.MaxFileSize <= 0 {
		l.MaxFileSize = DefaultLimits.MaxFileSize
	}
	if l.MaxChunkBytes <= 0 {
		l.MaxChunkBytes = DefaultLimits.MaxChunkBytes
	}
	if l.MaxMemberBytes <= 0 {
		l.MaxMemberBytes = l.MaxChunkBytes + l.MaxChunkBytes/8
	}
	// Readers hold a chunk and fetch a member whole, and a mounted layer
	// keeps a member's size in 32 bits: neither may reach 4 GiB, whatever
	// a configuration asks for.
	l.MaxChunkBytes = min(l.MaxChunkBytes, maxChunkBytes)
	l.MaxMemberBytes = min(l.MaxMemberBytes, maxChunkBytes+maxChunkBytes/8)
	return l
}

// Other bounds, from Linux's own limits.
const (
	maxNameBytes   = 4096
	maxXattrs      = 1024
	maxXattrName   = 255
	maxXattrValue  = 64 << 10
	maxID          = 1<<32 - 1
	maxDeviceMajor = 1<<12 - 1
	maxDeviceMinor = 1<<20 - 1
	maxChunkBytes  = 1 << 30
)

// Error is a TOC that breaks a rule; it names the entry and the rule.
type Error struct {
	Entry string // the entry's name as the TOC gives it; "" for the whole TOC
	Rule  string
}

func (e *Error) Error() string {
	if e.Entry == "" {
		return "toc: " + e.Rule
	}
	return fmt.Sprintf("toc: entry %q: %s", shorten(e.Entry), e.Rule)
}

// shorten keeps a name's ends: a name may be 4096 bytes long, too long
// to read in a log line.
func shorten(name string) string {
	const keep = 120
	if len(name) <= 2*keep+3 {
		return name
	}
	return name[:keep] + "..." + name[len(name)-keep:]
}

func errorf(entry, format string, args ...any) error {
	return &Error{Entry: entry, Rule: fmt.Sprintf(format, args...)}
}

// Parse decodes and checks the TOC JSON of a blob whose compressed file
// data ends at dataEnd (where the TOC begins), and indexes it.
//
// Entries are checked and indexed as they are decoded, one at a time, so
// that what Parse allocates follows what the TOC really holds and stops at
// the limits: nothing is sized from what the TOC claims or counts.
func Parse(data []byte, dataEnd int64, limits Limits) (*TOC, error) {
	limits = limits.WithDefaults()
	if int64(len(data)) > limits.MaxTOCBytes {
		return nil, errorf("", "%d bytes, more than the limit of %d", len(data), limits.MaxTOCBytes)
	}
	b := newBuilder(dataEnd, limits)
	doc := wireDoc{Entries: entryStream{b}}
	if err := json.Unmarshal(data, &doc); err != nil {
		if b.err != nil {
			return nil, b.err
		}
		return nil, errorf("", "not valid TOC JSON: %v", err)
	}
	if doc.Version != 1 {
		return nil, errorf("", "version %d, want 1", doc.Version)
	}
	return b.finish()
}

// wireDoc is JSON with its entries handed to a builder as they come.
type wireDoc struct {
	Version int         `json:"version"`
	Entries entryStream `json:"entries"`
}

type entryStream struct{ b *builder }

// UnmarshalJSONFrom decodes the entries array one entry at a time.
func (s *entryStream) UnmarshalJSONFrom(dec *jsontext.Decoder) error {
	switch dec.PeekKind() {
	case 'n':
		_, err := dec.ReadToken()
		return err
	case '[':
	default:
		return fmt.Errorf("entries is not an array")
	}
	if _, err := dec.ReadToken(); err != nil {
		return err
	}
	for dec.PeekKind() != ']' {
		var w WireEntry
		if err := json.UnmarshalDecode(dec, &w); err != nil {
			return err
		}
		if err := s.b.add(&w); err != nil {
			s.b.err = err
			return err
		}
	}
	_, err := dec.ReadToken()
	return err
}

// rawChunk is a chunk as the wire gives it, before its size is known.
type rawChunk struct {
	offset, endOffset, innerOffset, fileOffset int64
	size                                       int64 // 0: up to the next chunk or the end of the file
	digest                                     string
	zero                                       bool
}

func chunkFromWire(w *WireEntry) rawChunk {
	return rawChunk{
		offset: w.Offset, endOffset: w.EndOffset, innerOffset: w.InnerOffset, fileOffset: w.ChunkOffset,
		size: w.ChunkSize, digest: w.ChunkDigest, zero: w.ChunkType == ChunkTypeZeros,
	}
}

// builder indexes entries as they are decoded.
type builder struct {
	t       *TOC
	dataEnd int64
	limits  Limits
	chunks  map[*Entry][]rawChunk
	// byName indexes the entries while they come; the TOC looks names
	// up through its tree once built.
	byName map[string]*Entry
	last   *Entry // the last regular file: "chunk" entries continue it
	// blocks are where entries go (see newEntry).
	blocks [][]Entry
	// nodes counts wire entries and implicit directories (MaxEntries);
	// nameBytes the names of all entries, implicit directories included.
	nodes     int
	nameBytes int64
	err       error // the first error add returned
}

func newBuilder(dataEnd int64, limits Limits) *builder {
	t := &TOC{root: &Entry{name: "", Type: TypeDir, Mode: 0o755, flags: implicit, ino: 1}}
	return &builder{t: t, dataEnd: dataEnd, limits: limits, chunks: make(map[*Entry][]rawChunk),
		byName: map[string]*Entry{"": t.root}}
}

// count charges one node of the given name against the limits. The name
// budget is the TOC's own size: a TOC's names cost at least their length
// in its JSON, and only implicit directories, each a prefix of a listed
// name, can add more. It bounds the cost of deep paths (a name of 4096
// bytes implies up to 2048 directories whose names add up to 4 MiB), in
// memory and in the hashing of their lookups.
func (b *builder) count(name string) error {
	b.nodes++
	if b.nodes > b.limits.MaxEntries {
		return errorf(name, "more than the limit of %d entries, implicit directories and chunks included", b.limits.MaxEntries)
	}
	b.nameBytes += int64(len(name))
	if b.nameBytes > b.limits.MaxTOCBytes {
		return errorf(name, "the names of the entries, implicit directories included, add up to more than %d bytes", b.limits.MaxTOCBytes)
	}
	return nil
}

// add checks one wire entry and indexes it.
func (b *builder) add(w *WireEntry) error {
	if err := b.count(w.Name); err != nil {
		return err
	}
	if w.Type == TypeChunk {
		name, err := cleanName(w.Name)
		if err != nil {
			return err
		}
		if b.last == nil || b.last.name != name {
			return errorf(w.Name, "chunk does not follow its regular file")
		}
		b.chunks[b.last] = append(b.chunks[b.last], chunkFromWire(w))
		return nil
	}
	// Decoded aside, so that the implicit directories it needs take
	// their places before it in TOC order.
	var listed Entry
	e, err := entryFromWire(w, b.limits, &listed)
	if err != nil {
		return err
	}
	b.last = nil
	if e.name == "" && e.Type != TypeDir {
		return errorf(w.Name, "the root is a %s, not a directory", e.Type)
	}
	if prev, ok := b.byName[e.name]; ok {
		if e.name == "" || (prev.Type == TypeDir && e.Type == TypeDir) {
			// A directory listed twice (or the root listed at all):
			// the listing wins over an implicit one, else the first.
			if prev.Implicit() {
				prev.setAttrs(e)
			} else if !prev.sameAttrs(e) {
				return errorf(w.Name, "directory listed twice with different attributes")
			}
			return nil
		}
		return errorf(w.Name, "listed twice (as %s and as %s)", prev.Type, e.Type)
	}
	parent, err := b.parentOf(e.name)
	if err != nil {
		return err
	}
	e = b.newEntry()
	*e = listed
	parent.addChild(e)
	e.parent = parent
	switch e.Type {
	case TypeReg:
		b.last = e
		if e.Size > 0 {
			b.chunks[e] = append(b.chunks[e], chunkFromWire(w))
		}
	case TypeHardlink:
		target, ok := b.byName[e.LinkName()]
		if !ok {
			return errorf(w.Name, "hard link to %q, which no earlier entry is", e.LinkName())
		}
		if target.Type == TypeHardlink {
			// A link to a link (tar allows it): the earlier link was
			// resolved already, so one step reaches the file.
			target = b.byName[target.LinkName()]
			e.more.linkName = target.name // a hard link's more is never nil
		}
		if target.Type == TypeDir {
			return errorf(w.Name, "hard link to %q, a %s", e.LinkName(), target.Type)
		}
		target.addLink()
	}
	b.byName[e.name] = e
	return nil
}

// newEntry returns room for one entry, the next in TOC order. Entries
// are allocated in blocks: one at a time, they would lie among the
// decoder's garbage of their size, and a mounted layer would keep its
// half-empty spans (1.8 MiB of a 50,000-file layer's 14). A block never
// grows, so pointers into it stay valid. The blocks are the TOC's list of
// entries too (TOC.Entries), in the order newEntry is called.
func (b *builder) newEntry() *Entry {
	n := len(b.blocks)
	if n == 0 || len(b.blocks[n-1]) == cap(b.blocks[n-1]) {
		size := entryBlock
		if n < smallBlocks {
			size = firstBlock << n
		}
		b.blocks = append(b.blocks, make([]Entry, 0, size))
		n++
	}
	blk := &b.blocks[n-1]
	*blk = (*blk)[:len(*blk)+1]
	return &(*blk)[len(*blk)-1]
}

// Blocks start at 16 entries and double up to 256 (22 KiB), so that a
// small layer stays small; TOC.Entry counts on these sizes.
const (
	firstBlock  = 16
	smallBlocks = 4 // 16, 32, 64, 128
	entryBlock  = firstBlock << smallBlocks
)

// finish places the chunks once every entry is in.
func (b *builder) finish() (*TOC, error) {
	if err := placeChunks(b.chunks, b.dataEnd, b.limits); err != nil {
		return nil, err
	}
	// Kept for the layer's life: sorted, with no spare capacity.
	for _, e := range b.byName {
		if e.dir != nil {
			cs := slices.Clone(e.dir.children)
			slices.SortFunc(cs, func(a, b *Entry) int { return strings.Compare(a.name, b.name) })
			e.dir.children = cs
		}
	}
	b.byName = nil
	// The entries' order is final: number them (the root is 1).
	b.t.blocks = b.blocks
	for i, e := range b.t.Entries() {
		e.ino = uint32(i) + 2 // MaxEntries is far below 2^32
		b.t.n = i + 1
	}
	// From here on an entry's name is its last component, kept once per
	// spelling (__init__.py, LICENSE, bin...), all of them in one string
	// for the reason entries are kept in blocks; the decoded JSON's
	// strings, whole names, are dropped. Offsets follow the order in
	// which spellings first appear.
	at := make(map[string]int)
	var size int
	for _, e := range b.t.Entries() {
		if _, ok := at[e.Base()]; !ok {
			at[e.Base()] = size
			size += len(e.Base())
		}
	}
	var names strings.Builder
	names.Grow(size)
	for _, e := range b.t.Entries() {
		if at[e.Base()] == names.Len() {
			names.WriteString(e.Base())
		}
	}
	all := names.String()
	for _, e := range b.t.Entries() {
		base := e.Base()
		e.name = all[at[base] : at[base]+len(base)]
	}
	return b.t, nil
}

// parentOf returns the directory that holds name, creating implicit
// directories for those the TOC has not listed (umoci's diff layers omit
// them): outermost first, so that each comes before what it holds in TOC
// order. Each counts against the limits.
func (b *builder) parentOf(name string) (*Entry, error) {
	var missing []string // innermost first
	dir := name
	for {
		if dir = path.Dir(dir); dir == "." {
			dir = ""
		}
		if _, ok := b.byName[dir]; ok {
			break
		}
		missing = append(missing, dir)
	}
	parent := b.byName[dir]
	if parent.Type != TypeDir {
		return nil, errorf(name, "parent %q is a %s, not a directory", dir, parent.Type)
	}
	for _, dir := range slices.Backward(missing) {
		if err := b.count(dir); err != nil {
			return nil, errorf(name, "implicit directory %q: %s", shorten(dir), err.(*Error).Rule)
		}
		d := b.newEntry()
		*d = Entry{name: dir, Type: TypeDir, Mode: 0o755, flags: implicit, parent: parent}
		b.byName[dir] = d
		parent.addChild(d)
		parent = d
	}
	return parent, nil
}

// entryFromWire checks a wire entry and fills e from it.
func entryFromWire(w *WireEntry, limits Limits, e *Entry) (*Entry, error) {
	name, err := cleanName(w.Name)
	if err != nil {
		return nil, err
	}
	*e = Entry{name: name, Type: w.Type}
	var link string
	var major, minor uint32
	switch w.Type {
	case TypeDir:
	case TypeReg:
		if w.Size < 0 || w.Size > limits.MaxFileSize {
			return nil, errorf(w.Name, "size %d outside 0..%d", w.Size, limits.MaxFileSize)
		}
		e.Size = w.Size
		if w.Digest != "" {
			s, err := makeSum(w.Digest)
			if err != nil {
				return nil, errorf(w.Name, "digest: %v", err)
			}
			e.setDigest(s)
		}
	case TypeSymlink:
		if w.LinkName == "" || len(w.LinkName) > maxNameBytes || strings.IndexByte(w.LinkName, 0) >= 0 {
			return nil, errorf(w.Name, "symlink target is empty, too long or holds a NUL byte")
		}
		link = w.LinkName
	case TypeHardlink:
		target, err := cleanName(w.LinkName)
		if err != nil || target == "" {
			return nil, errorf(w.Name, "hard link target %q is not a name inside the layer", w.LinkName)
		}
		link = target
	case TypeChar, TypeBlock:
		if w.DevMajor < 0 || w.DevMajor > maxDeviceMajor || w.DevMinor < 0 || w.DevMinor > maxDeviceMinor {
			return nil, errorf(w.Name, "device number %d:%d out of range", w.DevMajor, w.DevMinor)
		}
		major, minor = uint32(w.DevMajor), uint32(w.DevMinor)
	case TypeFifo:
	default:
		return nil, errorf(w.Name, "unknown type")
	}
	if w.Mode < 0 {
		return nil, errorf(w.Name, "negative mode %d", w.Mode)
	}
	// Some writers keep the file-type bits (0100644) in the mode: drop them.
	e.Mode = uint16(w.Mode & 0o7777)
	if w.UID < 0 || w.UID > maxID || w.GID < 0 || w.GID > maxID {
		return nil, errorf(w.Name, "owner %d:%d out of range", w.UID, w.GID)
	}
	e.UID, e.GID = uint32(w.UID), uint32(w.GID)
	if w.ModTime != "" {
		mt, err := time.Parse(time.RFC3339, w.ModTime)
		if err != nil {
			return nil, errorf(w.Name, "modtime %q is not RFC 3339", w.ModTime)
		}
		e.mtime, e.mtimeNsec = mt.Unix(), int32(mt.Nanosecond())+1
	}
	if len(w.Xattrs) > maxXattrs {
		return nil, errorf(w.Name, "%d xattrs, more than %d", len(w.Xattrs), maxXattrs)
	}
	for k, v := range w.Xattrs {
		if k == "" || len(k) > maxXattrName || strings.IndexByte(k, 0) >= 0 || len(v) > maxXattrValue {
			return nil, errorf(w.Name, "xattr %q: bad name or value over %d bytes", k, maxXattrValue)
		}
		if OverlayXattr(k) {
			delete(w.Xattrs, k)
		}
	}
	e.setMore(link, w.Xattrs, major, minor)
	return e, nil
}

// OverlayXattr tells whether an xattr name is one that Parse drops:
// trusted.* (overlayfs keeps its whiteouts, opaque directories,
// redirects, metacopy and origin there; nothing else in trusted.* belongs
// to an image) and user.overlay.* (the same, for overlayfs mounted with
// userxattr). A layer that carried them would steer the overlay mount it
// sits in: hide a lower layer's files, or point at files of another
// layer. containerd refuses trusted.* when it unpacks a layer too. The
// opaque marker lazypull serves is its own, made from .wh..wh..opq.
func OverlayXattr(name string) bool {
	return strings.HasPrefix(name, "trusted.") || strings.HasPrefix(name, "user.overlay.")
}

// cleanName confines a TOC name to the layer: relative, no ".." escape,
// no NUL, bounded. "./a//b/" becomes "a/b"; "" and "." the root.
func cleanName(name string) (string, error) {
	if len(name) > maxNameBytes || strings.IndexByte(name, 0) >= 0 {
		return "", errorf(name, "name is too long or holds a NUL byte")
	}
	if strings.HasPrefix(name, "/") {
		return "", errorf(name, "absolute name")
	}
	for _, part := range strings.Split(name, "/") {
		if part == ".." {
			return "", errorf(name, "name has a \"..\" component")
		}
	}
	clean := path.Clean(name)
	if clean == "." {
		clean = ""
	}
	return clean, nil
}

// emptySum is the sha256 of nothing, which every empty file shares.
var emptySum, _ = makeSum(string(digest.SHA256.FromBytes(nil)))

func parseDigest(s string) (digest.Digest, error) {
	// Nearly every digest is sha256: check it without go-digest's regexp,
	// which costs more than the rest of parsing an entry.
	if hex, ok := strings.CutPrefix(s, "sha256:"); ok && len(hex) == 64 && isLowerHex(hex) {
		return digest.Digest(s), nil
	}
	d, err := digest.Parse(s)
	if err != nil {
		return "", err
	}
	if d.Algorithm() != digest.SHA256 && d.Algorithm() != digest.SHA512 {
		return "", fmt.Errorf("algorithm %s not supported", d.Algorithm())
	}
	return d, nil
}

// placeChunks checks and fixes the geometry of every file's chunks: sizes
// that cover the file exactly, compressed members inside the data area and
// within MaxMemberBytes, members that do not overlap, chunks that do not
// overlap within a member.
//
// Every number comes from the TOC and may be anything: the checks compare
// by subtraction of values already known to be in range, never by a sum
// that could wrap.
func placeChunks(files map[*Entry][]rawChunk, dataEnd int64, limits Limits) error {
	type placed struct {
		e *Entry
		i int // index in e.Chunks()
	}
	var all []placed
	// One array holds every file's chunks: a layer has tens of thousands
	// of one-chunk files, each a small allocation otherwise.
	var n int
	for _, raws := range files {
		n += len(raws)
	}
	slab := make([]Chunk, 0, n)
	for e, raws := range files {
		// covered stays within 0..e.Size: each chunk adds at most
		// e.Size-covered.
		var covered int64
		start := len(slab)
		for i, r := range raws {
			if r.fileOffset != covered {
				return errorf(e.name, "chunk %d starts at file offset %d, want %d (chunks must be in order and cover the file)", i, r.fileOffset, covered)
			}
			size := r.size
			if size == 0 {
				next := e.Size
				if i+1 < len(raws) {
					next = raws[i+1].fileOffset
				}
				if next <= covered || next > e.Size {
					return errorf(e.name, "chunk %d at offset %d ends at the next chunk's offset %d, outside the %d-byte file", i, covered, next, e.Size)
				}
				size = next - covered
			}
			if size <= 0 || size > e.Size-covered {
				return errorf(e.name, "chunk %d has size %d at offset %d of a %d-byte file", i, size, covered, e.Size)
			}
			c := Chunk{FileOffset: covered, Size: size}
			if r.zero {
				// A hole is bounded by its file alone (MaxFileSize):
				// readers serve it without storage, and it has no
				// place in the blob.
				c.Zero = true
			} else {
				c.Offset, c.EndOffset = r.offset, r.endOffset
				if r.digest == "" {
					return errorf(e.name, "chunk %d has no chunkDigest, so it cannot be verified", i)
				}
				if c.Offset < 0 || c.Offset >= dataEnd || c.EndOffset < 0 || c.EndOffset > dataEnd {
					return errorf(e.name, "chunk %d lies at %d..%d, outside the blob's data (0..%d)", i, c.Offset, c.EndOffset, dataEnd)
				}
				if c.Size > limits.MaxChunkBytes || r.innerOffset < 0 || r.innerOffset > limits.MaxChunkBytes-c.Size {
					return errorf(e.name, "chunk %d needs %d+%d uncompressed bytes, over the limit of %d", i, r.innerOffset, c.Size, limits.MaxChunkBytes)
				}
				c.InnerOffset = uint32(r.innerOffset) // MaxChunkBytes is below 4 GiB
				if c.Offset < lastData(slab[start:]) {
					return errorf(e.name, "chunk %d lies before chunk %d in the blob", i, i-1)
				}
				all = append(all, placed{e, len(slab) - start})
			}
			if r.digest != "" {
				s, err := makeSum(r.digest)
				if err != nil {
					return errorf(e.name, "chunk %d digest: %v", i, err)
				}
				c.sum = s
			}
			slab = append(slab, c)
			covered += size
		}
		// slab never grows (its capacity is every chunk), so a pointer
		// into it stays valid.
		if len(slab) > start {
			e.chunks, e.nchunks = &slab[start], uint32(len(slab)-start)
		}
		if covered != e.Size {
			return errorf(e.name, "chunks cover %d of %d bytes", covered, e.Size)
		}
		if cs := e.Chunks(); len(cs) == 1 && !cs[0].Zero && e.flags&digestInMore != 0 {
			c := &cs[0]
			switch ed, cd := e.Digest(), c.Digest(); {
			case e.more.digest == c.sum: // keep it once
				e.more.digest = sum{}
				if e.more.empty() {
					e.more = nil
				}
				e.flags = e.flags&^digestInMore | digestOfChunk
			case ed.Algorithm() == cd.Algorithm():
				// One chunk is the whole file: readers serve it
				// verified against the chunk's digest, so the file's
				// must agree.
				return errorf(e.name, "its one chunk's digest %s is not the file's digest %s", cd, ed)
			}
		}
	}

	// In blob order, a member ends where the next begins (eStargz does not
	// store its end) or where the format says (zstd:chunked); members must
	// not overlap, nor chunks inside one member.
	chunk := func(p placed) *Chunk { return &p.e.Chunks()[p.i] }
	slices.SortFunc(all, func(a, b placed) int {
		ca, cb := chunk(a), chunk(b)
		if c := cmp.Compare(ca.Offset, cb.Offset); c != 0 {
			return c
		}
		return cmp.Compare(ca.InnerOffset, cb.InnerOffset)
	})
	for i := 0; i < len(all); {
		// all[i:j] share one member.
		first := chunk(all[i])
		j := i + 1
		for j < len(all) && chunk(all[j]).Offset == first.Offset {
			j++
		}
		nextStart := dataEnd
		if j < len(all) {
			nextStart = chunk(all[j]).Offset
		}
		end := first.EndOffset
		if end == 0 {
			end = nextStart
		}
		if end <= first.Offset || end > nextStart {
			return errorf(all[i].e.name, "its member at %d ends at %d, overlapping the next member at %d", first.Offset, end, nextStart)
		}
		if end-first.Offset > limits.MaxMemberBytes {
			return errorf(all[i].e.name, "its member at %d spans %d bytes (to %d), over the limit of %d", first.Offset, end-first.Offset, end, limits.MaxMemberBytes)
		}
		var innerEnd int64
		for k := i; k < j; k++ {
			c := chunk(all[k])
			if c.EndOffset != 0 && c.EndOffset != end {
				return errorf(all[k].e.name, "its member at %d ends at %d here and at %d elsewhere", c.Offset, c.EndOffset, end)
			}
			if int64(c.InnerOffset) < innerEnd {
				return errorf(all[k].e.name, "its chunk overlaps another inside the member at %d (bytes %d.. start before %d)", c.Offset, c.InnerOffset, innerEnd)
			}
			c.EndOffset = end
			// Both are within MaxChunkBytes: the sum cannot wrap.
			innerEnd = int64(c.InnerOffset) + c.Size
		}
		i = j
	}
	return nil
}

// lastData is the blob offset of the last chunk that has data.
func lastData(chunks []Chunk) int64 {
	for i := len(chunks) - 1; i >= 0; i-- {
		if !chunks[i].Zero {
			return chunks[i].Offset
		}
	}
	return 0
}

var hexDigit = func() (t [256]bool) {
	for _, c := range "0123456789abcdef" {
		t[c] = true
	}
	return t
}()

func isLowerHex(s string) bool {
	for i := 0; i < len(s); i++ {
		if !hexDigit[s[i]] {
			return false
		}
	}
	return true
}

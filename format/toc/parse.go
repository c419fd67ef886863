package toc

import (
	"bytes"
	"cmp"
	"fmt"
	"path"
	"slices"
	"strings"
	"time"

	"github.com/go-json-experiment/json"
	"github.com/opencontainers/go-digest"
)

// Limits bound what a TOC may ask of the reader. The zero value of a field
// means its default.
type Limits struct {
	MaxTOCBytes   int64 // the uncompressed TOC JSON
	MaxEntries    int
	MaxFileSize   int64
	MaxChunkBytes int64 // a chunk's InnerOffset + Size: what one read decompresses
}

// DefaultLimits fit every image we know of, with room: a TOC of a million
// entries, files up to 1 TiB, chunks up to 64 MiB.
var DefaultLimits = Limits{
	MaxTOCBytes:   256 << 20,
	MaxEntries:    1 << 20,
	MaxFileSize:   1 << 40,
	MaxChunkBytes: 64 << 20,
}

// WithDefaults fills the zero fields with DefaultLimits.
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
	return fmt.Sprintf("toc: entry %q: %s", e.Entry, e.Rule)
}

func errorf(entry, format string, args ...any) error {
	return &Error{Entry: entry, Rule: fmt.Sprintf(format, args...)}
}

// Parse decodes and checks the TOC JSON of a blob whose compressed file
// data ends at dataEnd (where the TOC begins), and indexes it.
func Parse(data []byte, dataEnd int64, limits Limits) (*TOC, error) {
	limits = limits.WithDefaults()
	if int64(len(data)) > limits.MaxTOCBytes {
		return nil, errorf("", "%d bytes, more than the limit of %d", len(data), limits.MaxTOCBytes)
	}
	// Sizing the slice up front saves growing it entry by entry: the
	// count of "name" keys is close to the entry count.
	doc := JSON{Entries: make([]WireEntry, 0, min(bytes.Count(data, []byte(`"name"`)), limits.MaxEntries))}
	if err := json.Unmarshal(data, &doc); err != nil {
		return nil, errorf("", "not valid TOC JSON: %v", err)
	}
	if doc.Version != 1 {
		return nil, errorf("", "version %d, want 1", doc.Version)
	}
	if len(doc.Entries) > limits.MaxEntries {
		return nil, errorf("", "%d entries, more than the limit of %d", len(doc.Entries), limits.MaxEntries)
	}
	return build(doc.Entries, dataEnd, limits)
}

// rawChunk is a chunk as the wire gives it, before its size is known.
type rawChunk struct {
	w    *WireEntry
	size int64 // 0: up to the next chunk or the end of the file
}

func build(wire []WireEntry, dataEnd int64, limits Limits) (*TOC, error) {
	t := &TOC{byName: make(map[string]*Entry, len(wire)+1)}
	t.root = &Entry{Name: "", Type: TypeDir, Mode: 0o755, NumLink: 1, Implicit: true}
	t.byName[""] = t.root

	chunks := make(map[*Entry][]rawChunk)
	var last *Entry // the last regular file: "chunk" entries continue it
	for i := range wire {
		w := &wire[i]
		if w.Type == TypeChunk {
			name, err := cleanName(w.Name)
			if err != nil {
				return nil, err
			}
			if last == nil || last.Name != name {
				return nil, errorf(w.Name, "chunk does not follow its regular file")
			}
			chunks[last] = append(chunks[last], rawChunk{w: w, size: w.ChunkSize})
			continue
		}
		e, err := entryFromWire(w, limits)
		if err != nil {
			return nil, err
		}
		last = nil
		if e.Name == "" && e.Type != TypeDir {
			return nil, errorf(w.Name, "the root is a %s, not a directory", e.Type)
		}
		if prev, ok := t.byName[e.Name]; ok {
			if e.Name == "" || (prev.Type == TypeDir && e.Type == TypeDir) {
				// A directory listed twice (or the root listed at all):
				// the listing wins over an implicit one, else the first.
				if prev.Implicit {
					prev.setAttrs(e)
				} else if !prev.sameAttrs(e) {
					return nil, errorf(w.Name, "directory listed twice with different attributes")
				}
				continue
			}
			return nil, errorf(w.Name, "listed twice (as %s and as %s)", prev.Type, e.Type)
		}
		if err := t.addParents(e); err != nil {
			return nil, err
		}
		switch e.Type {
		case TypeReg:
			last = e
			if e.Size > 0 {
				chunks[e] = append(chunks[e], rawChunk{w: w, size: w.ChunkSize})
			}
		case TypeHardlink:
			target, ok := t.byName[e.LinkName]
			if !ok {
				return nil, errorf(w.Name, "hard link to %q, which no earlier entry is", e.LinkName)
			}
			if target.Type == TypeHardlink {
				// A link to a link (tar allows it): the earlier link was
				// resolved already, so one step reaches the file.
				target = t.byName[target.LinkName]
				e.LinkName = target.Name
			}
			if target.Type == TypeDir {
				return nil, errorf(w.Name, "hard link to %q, a %s", e.LinkName, target.Type)
			}
			target.NumLink++
		}
		t.byName[e.Name] = e
		t.Entries = append(t.Entries, e)
	}
	if err := placeChunks(chunks, dataEnd, limits); err != nil {
		return nil, err
	}
	for _, e := range t.byName {
		slices.SortFunc(e.children, func(a, b *Entry) int { return strings.Compare(a.Name, b.Name) })
	}
	return t, nil
}

// addParents links e into its parent directory, creating implicit
// directories for parents the TOC does not list (umoci's diff layers omit
// them).
func (t *TOC) addParents(e *Entry) error {
	child := e
	for {
		dir := path.Dir(child.Name)
		if dir == "." {
			dir = ""
		}
		parent, ok := t.byName[dir]
		if ok {
			if parent.Type != TypeDir {
				return errorf(e.Name, "parent %q is a %s, not a directory", dir, parent.Type)
			}
			parent.children = append(parent.children, child)
			if child.Type == TypeDir {
				parent.NumLink++
			}
			return nil
		}
		parent = &Entry{Name: dir, Type: TypeDir, Mode: 0o755, NumLink: 2, Implicit: true}
		t.byName[dir] = parent
		t.Entries = append(t.Entries, parent)
		parent.children = append(parent.children, child)
		if child.Type == TypeDir {
			parent.NumLink++
		}
		child = parent
	}
}

func entryFromWire(w *WireEntry, limits Limits) (*Entry, error) {
	name, err := cleanName(w.Name)
	if err != nil {
		return nil, err
	}
	e := &Entry{
		Name: name, Type: w.Type, LinkName: w.LinkName,
		UID: w.UID, GID: w.GID, UserName: w.UserName, GroupName: w.GroupName,
		NumLink: 1,
	}
	switch w.Type {
	case TypeDir:
		e.NumLink = 2
	case TypeReg:
		if w.Size < 0 || w.Size > limits.MaxFileSize {
			return nil, errorf(w.Name, "size %d outside 0..%d", w.Size, limits.MaxFileSize)
		}
		e.Size = w.Size
		if w.Digest != "" {
			if e.Digest, err = parseDigest(w.Digest); err != nil {
				return nil, errorf(w.Name, "digest: %v", err)
			}
		}
	case TypeSymlink:
		if w.LinkName == "" || len(w.LinkName) > maxNameBytes || strings.IndexByte(w.LinkName, 0) >= 0 {
			return nil, errorf(w.Name, "symlink target is empty, too long or holds a NUL byte")
		}
	case TypeHardlink:
		target, err := cleanName(w.LinkName)
		if err != nil || target == "" {
			return nil, errorf(w.Name, "hard link target %q is not a name inside the layer", w.LinkName)
		}
		e.LinkName = target
	case TypeChar, TypeBlock:
		if w.DevMajor < 0 || w.DevMajor > maxDeviceMajor || w.DevMinor < 0 || w.DevMinor > maxDeviceMinor {
			return nil, errorf(w.Name, "device number %d:%d out of range", w.DevMajor, w.DevMinor)
		}
		e.DevMajor, e.DevMinor = w.DevMajor, w.DevMinor
	case TypeFifo:
	default:
		return nil, errorf(w.Name, "unknown type %q", w.Type)
	}
	if w.Mode < 0 {
		return nil, errorf(w.Name, "negative mode %d", w.Mode)
	}
	// Some writers keep the file-type bits (0100644) in the mode: drop them.
	e.Mode = uint32(w.Mode & 0o7777)
	if w.UID < 0 || w.UID > maxID || w.GID < 0 || w.GID > maxID {
		return nil, errorf(w.Name, "owner %d:%d out of range", w.UID, w.GID)
	}
	if w.ModTime != "" {
		if e.ModTime, err = time.Parse(time.RFC3339, w.ModTime); err != nil {
			return nil, errorf(w.Name, "modtime %q is not RFC 3339", w.ModTime)
		}
	}
	if len(w.Xattrs) > maxXattrs {
		return nil, errorf(w.Name, "%d xattrs, more than %d", len(w.Xattrs), maxXattrs)
	}
	for k, v := range w.Xattrs {
		if k == "" || len(k) > maxXattrName || strings.IndexByte(k, 0) >= 0 || len(v) > maxXattrValue {
			return nil, errorf(w.Name, "xattr %q: bad name or value over %d bytes", k, maxXattrValue)
		}
	}
	e.Xattrs = w.Xattrs
	return e, nil
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
// that cover the file exactly, compressed members inside the data area,
// members that do not overlap, chunks that do not overlap within a member.
func placeChunks(files map[*Entry][]rawChunk, dataEnd int64, limits Limits) error {
	type placed struct {
		e *Entry
		i int // index in e.Chunks
	}
	var all []placed
	for e, raws := range files {
		var covered int64
		e.Chunks = make([]Chunk, 0, len(raws))
		for i, r := range raws {
			w := r.w
			if w.ChunkOffset != covered {
				return errorf(e.Name, "chunk %d starts at file offset %d, want %d (chunks must be in order and cover the file)", i, w.ChunkOffset, covered)
			}
			size := r.size
			if size == 0 {
				next := e.Size
				if i+1 < len(raws) {
					next = raws[i+1].w.ChunkOffset
				}
				size = next - w.ChunkOffset
			}
			if size <= 0 || w.ChunkOffset+size > e.Size {
				return errorf(e.Name, "chunk %d has size %d at offset %d of a %d-byte file", i, size, w.ChunkOffset, e.Size)
			}
			c := Chunk{Offset: w.Offset, EndOffset: w.EndOffset, InnerOffset: w.InnerOffset, FileOffset: w.ChunkOffset, Size: size}
			if w.ChunkType == ChunkTypeZeros {
				c = Chunk{FileOffset: w.ChunkOffset, Size: size, Zero: true}
			} else {
				if w.ChunkDigest == "" {
					return errorf(e.Name, "chunk %d has no chunkDigest, so it cannot be verified", i)
				}
				if c.Offset < 0 || c.Offset >= dataEnd || c.EndOffset < 0 || c.EndOffset > dataEnd {
					return errorf(e.Name, "chunk %d lies at %d..%d, outside the blob's data (0..%d)", i, c.Offset, c.EndOffset, dataEnd)
				}
				if c.InnerOffset < 0 || c.InnerOffset > limits.MaxChunkBytes-c.Size {
					return errorf(e.Name, "chunk %d needs %d+%d uncompressed bytes, over the limit of %d", i, c.InnerOffset, c.Size, limits.MaxChunkBytes)
				}
				if i > 0 && c.Offset < lastData(e.Chunks) {
					return errorf(e.Name, "chunk %d lies before chunk %d in the blob", i, i-1)
				}
				all = append(all, placed{e, len(e.Chunks)})
			}
			if w.ChunkDigest != "" {
				d, err := parseDigest(w.ChunkDigest)
				if err != nil {
					return errorf(e.Name, "chunk %d digest: %v", i, err)
				}
				c.Digest = d
			}
			e.Chunks = append(e.Chunks, c)
			covered += size
		}
		if covered != e.Size {
			return errorf(e.Name, "chunks cover %d of %d bytes", covered, e.Size)
		}
	}

	// In blob order, a member ends where the next begins (eStargz does not
	// store its end) or where the format says (zstd:chunked); members must
	// not overlap, nor chunks inside one member.
	chunk := func(p placed) *Chunk { return &p.e.Chunks[p.i] }
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
			return errorf(all[i].e.Name, "its member at %d ends at %d, overlapping the next member at %d", first.Offset, end, nextStart)
		}
		var innerEnd int64
		for k := i; k < j; k++ {
			c := chunk(all[k])
			if c.EndOffset != 0 && c.EndOffset != end {
				return errorf(all[k].e.Name, "its member at %d ends at %d here and at %d elsewhere", c.Offset, c.EndOffset, end)
			}
			if c.InnerOffset < innerEnd {
				return errorf(all[k].e.Name, "its chunk overlaps another inside the member at %d (bytes %d.. start before %d)", c.Offset, c.InnerOffset, innerEnd)
			}
			c.EndOffset = end
			innerEnd = c.InnerOffset + c.Size
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

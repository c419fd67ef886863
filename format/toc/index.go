package toc

import (
	"iter"
	"maps"
	"math/bits"
	"path"
	"sort"
	"strings"
)

// TOC is a checked, indexed table of contents.
type TOC struct {
	// blocks hold the entries in TOC order, as Parse allocated them (see
	// builder.newEntry): their own array, not a list of pointers, which
	// would cost a mounted layer 8 bytes an entry.
	blocks [][]Entry
	n      int
	root   *Entry
}

// Len is the number of entries, the root not counted.
func (t *TOC) Len() int { return t.n }

// Entries lists every entry once with its index (see Entry), in TOC order;
// implicit directories come just before the first entry below them, outer
// ones first. The root is not among them.
func (t *TOC) Entries() iter.Seq2[int, *Entry] {
	return func(yield func(int, *Entry) bool) {
		i := 0
		for _, blk := range t.blocks {
			for j := range blk {
				if !yield(i, &blk[j]) {
					return
				}
				i++
			}
		}
	}
}

// Entry is the entry of index i, 0 <= i < Len: blocks are 16, 32, 64
// and 128 entries long, then entryBlock.
func (t *TOC) Entry(i int) *Entry {
	const small = firstBlock * (1<<smallBlocks - 1)
	var k, off int
	if i < small {
		k = bits.Len(uint(i/firstBlock+1)) - 1
		off = i - firstBlock*(1<<k-1)
	} else {
		k, off = smallBlocks+(i-small)/entryBlock, (i-small)%entryBlock
	}
	return &t.blocks[k][off]
}

// Root is the layer's root directory.
func (t *TOC) Root() *Entry { return t.root }

// Lookup finds an entry by its cleaned name ("" is the root): one binary
// search per name component, through the sorted children (a map of every
// name would cost a mounted layer some 40 bytes an entry).
func (t *TOC) Lookup(name string) (*Entry, bool) {
	e := t.root
	for name != "" {
		var base string
		base, name, _ = strings.Cut(name, "/")
		var ok bool
		if e, ok = child(e, base); !ok {
			return nil, false
		}
	}
	return e, true
}

// Child finds the entry called base in directory dir.
func (t *TOC) Child(dir *Entry, base string) (*Entry, bool) {
	if base == "" || base == "." || base == ".." || strings.IndexByte(base, '/') >= 0 {
		name := path.Join(dir.Path(), base)
		if name == "." {
			name = ""
		}
		return t.Lookup(name)
	}
	return child(dir, base)
}

// child finds base among dir's sorted children. Siblings share their
// parent's name and a slash, so sorted by name they are sorted by base.
func child(dir *Entry, base string) (*Entry, bool) {
	cs := dir.Children()
	i := sort.Search(len(cs), func(i int) bool { return cs[i].Base() >= base })
	if i < len(cs) && cs[i].Base() == base {
		return cs[i], true
	}
	return nil, false
}

// Children lists a directory's entries, sorted by name.
func (e *Entry) Children() []*Entry {
	if e.dir == nil {
		return nil
	}
	return e.dir.children
}

// addChild lists c among dir's children (sorted once the TOC is built).
func (dir *Entry) addChild(c *Entry) {
	if dir.dir == nil {
		dir.dir = new(dirInfo)
	}
	dir.dir.children = append(dir.dir.children, c)
	if c.Type == TypeDir {
		dir.dir.subdirs++
	}
}

// Base is the entry's last name component.
func (e *Entry) Base() string { return e.name[lastSlash(e.name)+1:] } // Parse may not be done

// HardlinkTarget returns the entry a hard link names, or e itself.
func (t *TOC) HardlinkTarget(e *Entry) *Entry {
	if e.Type != TypeHardlink {
		return e
	}
	if target, ok := t.Lookup(e.LinkName()); ok {
		return target
	}
	return e
}

// Range is Length bytes at Offset of a regular file's content.
type Range struct {
	Entry          *Entry
	Offset, Length int64
}

// ChunkAt returns the index of the chunk that holds file offset off.
func (e *Entry) ChunkAt(off int64) (int, bool) {
	cs := e.Chunks()
	i := sort.Search(len(cs), func(i int) bool { return cs[i].FileOffset+cs[i].Size > off })
	return i, i < len(cs) && off >= 0
}

// setAttrs gives an implicit directory the attributes a listing brings.
func (e *Entry) setAttrs(from *Entry) {
	e.Mode, e.UID, e.GID = from.Mode, from.UID, from.GID
	e.mtime, e.mtimeNsec = from.mtime, from.mtimeNsec
	e.setMore("", from.Xattrs(), 0, 0)
	e.flags &^= implicit
}

func (e *Entry) sameAttrs(o *Entry) bool {
	return e.Mode == o.Mode && e.UID == o.UID && e.GID == o.GID &&
		e.mtime == o.mtime && e.mtimeNsec == o.mtimeNsec &&
		maps.EqualFunc(e.Xattrs(), o.Xattrs(), func(a, b []byte) bool { return string(a) == string(b) })
}

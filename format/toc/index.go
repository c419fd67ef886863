package toc

import (
	"maps"
	"path"
	"sort"
)

// TOC is a checked, indexed table of contents.
type TOC struct {
	// Entries lists every entry once, in TOC order; implicit directories
	// come just before their first child. The root is not among them.
	Entries []*Entry
	root    *Entry
	byName  map[string]*Entry
}

// Root is the layer's root directory.
func (t *TOC) Root() *Entry { return t.root }

// Lookup finds an entry by its cleaned name ("" is the root).
func (t *TOC) Lookup(name string) (*Entry, bool) {
	e, ok := t.byName[name]
	return e, ok
}

// Child finds the entry called base in directory dir.
func (t *TOC) Child(dir *Entry, base string) (*Entry, bool) {
	return t.Lookup(path.Join(dir.Name, base))
}

// Children lists a directory's entries, sorted by name.
func (e *Entry) Children() []*Entry { return e.children }

// Base is the entry's last name component.
func (e *Entry) Base() string { return e.Name[lastSlash(e.Name)+1:] }

// HardlinkTarget returns the entry a hard link names, or e itself.
func (t *TOC) HardlinkTarget(e *Entry) *Entry {
	if e.Type != TypeHardlink {
		return e
	}
	if target, ok := t.byName[e.LinkName]; ok {
		return target
	}
	return e
}

// ChunkAt returns the index of the chunk that holds file offset off.
func (e *Entry) ChunkAt(off int64) (int, bool) {
	i := sort.Search(len(e.Chunks), func(i int) bool { return e.Chunks[i].FileOffset+e.Chunks[i].Size > off })
	return i, i < len(e.Chunks) && off >= 0
}

// setAttrs gives an implicit directory the attributes a listing brings.
func (e *Entry) setAttrs(from *Entry) {
	e.Mode, e.UID, e.GID = from.Mode, from.UID, from.GID
	e.UserName, e.GroupName = from.UserName, from.GroupName
	e.ModTime, e.Xattrs = from.ModTime, from.Xattrs
	e.Implicit = false
}

func (e *Entry) sameAttrs(o *Entry) bool {
	return e.Mode == o.Mode && e.UID == o.UID && e.GID == o.GID &&
		e.ModTime.Equal(o.ModTime) && maps.EqualFunc(e.Xattrs, o.Xattrs, func(a, b []byte) bool { return string(a) == string(b) })
}

package erofs

import (
	"fmt"
	"math"
	"slices"
	"strings"
)

// Paths are kept with NUL, not '/', between components: NUL sorts before
// every byte a name may hold, so plain string order is depth-first order
// with each directory's children in byte order (what EROFS dirents need),
// and a subtree is contiguous.
func internalPath(p string) string { return strings.ReplaceAll(p, "/", "\x00") }

// displayPath turns an internal path back into the caller's form for errors.
func displayPath(p string) string { return strings.ReplaceAll(p, "\x00", "/") }

func parentOf(p string) string {
	if i := strings.LastIndexByte(p, 0); i >= 0 {
		return p[:i]
	}
	return ""
}

func baseName(p string) string { return p[strings.LastIndexByte(p, 0)+1:] }

// image is the computed layout of the whole image.
type image struct {
	buildTime  int64
	buildNsec  uint32
	rootNid    uint64
	inos       uint64
	sharedPos  uint64 // byte offset of the shared xattr area
	shared     []uint32
	sharedSize uint64
	dataBlk    uint64 // first data block
	blocks     uint64 // image size in blocks
	chunked    bool
	order      []int32 // nodes in the order of their inodes and data
}

// build checks the tree and computes the whole layout.
func (w *Writer) build() (*image, error) {
	nodes := w.nodes
	// The root first, then everything in depth-first byte order.
	slices.SortFunc(nodes, func(a, b node) int { return strings.Compare(a.path, b.path) })
	for i := 1; i < len(nodes); i++ {
		if nodes[i].path == nodes[i-1].path {
			return nil, fmt.Errorf("erofs: %q: added twice", displayPath(nodes[i].path))
		}
	}
	// Parents nobody added: 0755 root:root directories, mtime the build time.
	var implicit []node
	if len(nodes) == 0 || nodes[0].path != "" {
		implicit = append(implicit, node{path: "", mode: sIFDIR | 0o755, flags: flagImplicit})
	}
	var stack []string
	stack = append(stack, "")
	for i := range nodes {
		p := nodes[i].path
		if p == "" {
			continue
		}
		par := parentOf(p)
		for len(stack) > 1 && !isAncestorOrSelf(stack[len(stack)-1], par) {
			stack = stack[:len(stack)-1]
		}
		top := stack[len(stack)-1]
		for len(top) < len(par) {
			next := len(par)
			start := len(top) + 1
			if top == "" {
				start = 0
			}
			if j := strings.IndexByte(par[start:], 0); j >= 0 {
				next = start + j
			}
			top = par[:next]
			implicit = append(implicit, node{path: top, mode: sIFDIR | 0o755, flags: flagImplicit})
			stack = append(stack, top)
		}
		stack = append(stack, p)
	}
	if len(implicit) > 0 {
		for i := range implicit {
			implicit[i].nlink, implicit[i].target, implicit[i].parent = 1, -1, -1
		}
		nodes = append(nodes, implicit...)
		slices.SortFunc(nodes, func(a, b node) int { return strings.Compare(a.path, b.path) })
		w.nodes = nodes
	}
	if len(nodes) > math.MaxInt32-1 {
		return nil, fmt.Errorf("erofs: %d entries", len(nodes))
	}
	if err := w.linkTree(); err != nil {
		return nil, err
	}
	if err := w.resolveLinks(); err != nil {
		return nil, err
	}
	img := &image{order: w.bfsOrder()}
	w.setTimes(img)
	w.sizeDirs()
	if err := w.place(img); err != nil {
		return nil, err
	}
	return img, nil
}

func isAncestorOrSelf(a, p string) bool {
	if a == "" || a == p {
		return true
	}
	return len(p) > len(a) && p[len(a)] == 0 && p[:len(a)] == a
}

// linkTree sets every node's parent and subtree end, and checks that
// parents are directories.
func (w *Writer) linkTree() error {
	nodes := w.nodes
	stack := []int32{0}
	for i := 1; i < len(nodes); i++ {
		par := parentOf(nodes[i].path)
		for nodes[stack[len(stack)-1]].path != par {
			nodes[stack[len(stack)-1]].end = int32(i)
			stack = stack[:len(stack)-1]
		}
		p := stack[len(stack)-1]
		if nodes[p].flags&flagLink != 0 || nodes[p].mode&sIFMT != sIFDIR {
			return fmt.Errorf("erofs: %q: parent %q is not a directory", displayPath(nodes[i].path), displayPath(nodes[p].path))
		}
		nodes[i].parent = p
		stack = append(stack, int32(i))
	}
	for _, s := range stack {
		nodes[s].end = int32(len(nodes))
	}
	return nil
}

// visiting marks a hard link whose chain is being followed.
const visiting = -2

// resolveLinks points every hard link at the regular file holding its
// inode (following links to links) and counts the file's links.
func (w *Writer) resolveLinks() error {
	nodes := w.nodes
	var chain []int32
	for i := range nodes {
		if nodes[i].flags&flagLink == 0 || nodes[i].target >= 0 {
			continue
		}
		chain = append(chain[:0], int32(i))
		nodes[i].target = visiting
		cur := int32(i)
		for {
			link := internalPath(nodes[cur].ext.link)
			j, ok := slices.BinarySearchFunc(nodes, link, func(n node, p string) int { return strings.Compare(n.path, p) })
			if !ok {
				return fmt.Errorf("erofs: %q: hard-link target %q does not exist", displayPath(nodes[i].path), nodes[cur].ext.link)
			}
			t := &nodes[j]
			if t.flags&flagLink != 0 {
				if t.target >= 0 {
					cur = t.target
					break
				}
				if t.target == visiting {
					return fmt.Errorf("erofs: %q: hard links in a cycle", displayPath(nodes[i].path))
				}
				t.target = visiting
				chain = append(chain, int32(j))
				cur = int32(j)
				continue
			}
			if t.mode&sIFMT != sIFREG {
				return fmt.Errorf("erofs: %q: hard-link target %q is not a regular file", displayPath(nodes[i].path), displayPath(t.path))
			}
			cur = int32(j)
			break
		}
		for _, c := range chain {
			nodes[c].target = cur
			nodes[cur].nlink++
		}
	}
	return nil
}

// setTimes takes the build time from the tree (the least mtime, as
// composefs does, so most inodes can be compact) and gives it to the
// directories nobody added.
func (w *Writer) setTimes(img *image) {
	first := true
	for i := range w.nodes {
		n := &w.nodes[i]
		if n.flags&(flagLink|flagImplicit) != 0 {
			continue
		}
		if first || n.mtime < img.buildTime || n.mtime == img.buildTime && n.nsec < img.buildNsec {
			img.buildTime, img.buildNsec, first = n.mtime, n.nsec, false
		}
	}
	if img.buildTime < 0 { // the superblock's time is unsigned to older kernels
		img.buildTime, img.buildNsec = 0, 0
	}
	for i := range w.nodes {
		if n := &w.nodes[i]; n.flags&flagImplicit != 0 {
			n.mtime, n.nsec = img.buildTime, img.buildNsec
		}
	}
}

// bfsOrder is the order inodes are laid out in: breadth-first, as
// composefs does, so that a directory's entries have neighbouring inodes
// (a directory listed with stat reads few blocks) and the root comes
// first.
func (w *Writer) bfsOrder() []int32 {
	order := make([]int32, 1, len(w.nodes))
	for k := 0; k < len(order); k++ {
		d := order[k]
		dn := &w.nodes[d]
		if dn.flags&flagLink != 0 || dn.mode&sIFMT != sIFDIR {
			continue
		}
		for c := d + 1; c < dn.end; c = w.nodes[c].end {
			order = append(order, c)
		}
	}
	return order
}

// sizeDirs computes each directory's link count and size in bytes.
func (w *Writer) sizeDirs() {
	for i := range w.nodes {
		d := &w.nodes[i]
		if d.flags&flagLink != 0 || d.mode&sIFMT != sIFDIR {
			continue
		}
		nlink := uint32(2)
		for c := int32(i) + 1; c < d.end; c = w.nodes[c].end {
			if cn := &w.nodes[c]; cn.flags&flagLink == 0 && cn.mode&sIFMT == sIFDIR {
				nlink++
			}
		}
		d.nlink = nlink
		var size uint64
		w.walkDir(int32(i), func(_ []dent, used int, last bool) error {
			if last {
				size += uint64(used)
			} else {
				size += blkSize
			}
			return nil
		})
		d.size = size
	}
}

// dent is one directory entry.
type dent struct {
	name string
	nid  uint32
	ft   uint8
}

// walkDir packs a directory's entries, "." and ".." included, in byte
// order into blocks and calls fn for each block with its entries and the
// bytes they take (12 per entry plus the names).
func (w *Writer) walkDir(d int32, fn func(ents []dent, used int, last bool) error) error {
	if w.dents == nil {
		w.dents = make([]dent, 0, blkSize/(direntSize+1))
	}
	ents := w.dents[:0]
	used := 0
	add := func(e dent) error {
		if used+direntSize+len(e.name) > blkSize {
			if err := fn(ents, used, false); err != nil {
				return err
			}
			ents, used = ents[:0], 0
		}
		ents = append(ents, e)
		used += direntSize + len(e.name)
		return nil
	}
	dn := &w.nodes[d]
	parent := dn.parent
	if parent < 0 {
		parent = d
	}
	dots := []dent{{".", dn.nid, ftDir}, {"..", w.nodes[parent].nid, ftDir}}
	for c := d + 1; c < dn.end; c = w.nodes[c].end {
		cn := &w.nodes[c]
		name := baseName(cn.path)
		for len(dots) > 0 && dots[0].name < name {
			if err := add(dots[0]); err != nil {
				return err
			}
			dots = dots[1:]
		}
		in := cn
		if cn.flags&flagLink != 0 {
			in = &w.nodes[cn.target]
		}
		if err := add(dent{name, in.nid, fileType(in.mode)}); err != nil {
			return err
		}
	}
	for _, e := range dots {
		if err := add(e); err != nil {
			return err
		}
	}
	return fn(ents, used, true)
}

// chunkBits is the chunk size (as a shift) of a hole file: large enough
// for one entry to cover the file, up to the format's largest.
func chunkBits(size uint64) uint {
	cb := uint(blkBits)
	for cb < maxChunkBits && uint64(1)<<cb < size {
		cb++
	}
	return cb
}

func chunkCount(size uint64) uint64 {
	cb := chunkBits(size)
	return (size + 1<<cb - 1) >> cb
}

// place decides every inode's form and position, the shared xattr area
// and the data blocks.
func (w *Writer) place(img *image) error {
	nodes := w.nodes
	pairs := w.pairs
	pos := uint64(metaStart)
	for _, i := range img.order {
		n := &nodes[i]
		if n.flags&flagLink != 0 {
			continue
		}
		img.inos++
		isize := uint64(inodeExtendedSize)
		if n.mtime == img.buildTime && n.nsec == img.buildNsec && n.nlink <= math.MaxUint16 &&
			n.uid <= math.MaxUint16 && n.gid <= math.MaxUint16 && n.size <= math.MaxUint32 {
			n.flags |= flagCompact
			isize = inodeCompactSize
		}
		n.xsize = 0
		if n.nx > 0 {
			size := uint64(xattrHeaderSize)
			nshared := 0
			for _, id := range w.xrefs[n.xoff : n.xoff+uint32(n.nx)] {
				if pairs[id].shared() && nshared < maxSharedPerInode {
					nshared++
					size += 4
				} else {
					size += uint64(pairs[id].entrySize())
				}
			}
			if size > maxXattrIbody {
				return fmt.Errorf("erofs: %q: xattrs take %d bytes, over the inode's %d", displayPath(n.path), size, maxXattrIbody)
			}
			n.xsize = uint32(size)
		}
		head := isize + uint64(n.xsize)
		n.tail = 0
		typ := n.mode & sIFMT
		switch {
		case typ == sIFREG && n.flags&flagHasData == 0:
			n.layout = layoutFlatPlain
			if n.size > 0 {
				n.layout = layoutChunkBased
				n.tail = uint16(4 * chunkCount(n.size))
				img.chunked = true
			}
		case typ == sIFREG || typ == sIFDIR || typ == sIFLNK:
			n.layout = layoutFlatPlain
			rem := n.size % blkSize
			if rem == 0 || head+rem > blkSize {
				break
			}
			if pos%blkSize+head+rem > blkSize {
				// Inline data must not cross a block (and a symlink's
				// inode, xattrs and target must share one block for
				// kernels before 6.12): start a new block, unless the
				// tail is large enough to deserve a block of its own.
				if typ != sIFLNK && rem > blkSize/2 {
					break
				}
				pos = roundUp(pos, blkSize)
			}
			n.layout = layoutFlatInline
			n.tail = uint16(rem)
		default:
			n.layout = layoutFlatPlain
		}
		if pos/slotSize > math.MaxUint32 {
			return fmt.Errorf("erofs: %d inodes take over %d bytes", img.inos, uint64(math.MaxUint32)*slotSize)
		}
		n.nid = uint32(pos / slotSize)
		pos += roundUp(head+uint64(n.tail), slotSize)
	}
	img.rootNid = uint64(nodes[0].nid)
	if img.rootNid > math.MaxUint16 {
		return fmt.Errorf("erofs: root nid %d does not fit 16 bits", img.rootNid)
	}

	// The shared xattr area: pairs more than one inode has, in key order.
	img.sharedPos = pos
	for id := range pairs {
		if pairs[id].shared() {
			img.shared = append(img.shared, uint32(id))
		}
	}
	slices.SortFunc(img.shared, func(a, b uint32) int { return strings.Compare(pairs[a].key, pairs[b].key) })
	off := pos % blkSize
	for _, id := range img.shared {
		idx := off / 4
		if idx > math.MaxUint32 {
			return fmt.Errorf("erofs: shared xattr area too large")
		}
		pairs[id].off = uint32(idx)
		off += uint64(pairs[id].entrySize())
	}
	img.sharedSize = off - pos%blkSize
	pos += img.sharedSize

	// Data blocks, in inode order.
	blk := roundUp(pos, blkSize) / blkSize
	img.dataBlk = blk
	for _, i := range img.order {
		n := &nodes[i]
		if nb := dataBlocks(n); nb > 0 {
			if blk > math.MaxUint32-1 {
				return fmt.Errorf("erofs: image over %d blocks", uint64(math.MaxUint32))
			}
			n.blk = uint32(blk)
			blk += nb
		}
	}
	if blk > math.MaxUint32 {
		return fmt.Errorf("erofs: image over %d blocks", uint64(math.MaxUint32))
	}
	img.blocks = blk
	return nil
}

// dataBlocks is the number of data blocks a node's contents take.
func dataBlocks(n *node) uint64 {
	if n.flags&flagLink != 0 {
		return 0
	}
	switch n.layout {
	case layoutFlatPlain:
		if n.mode&sIFMT == sIFREG && n.flags&flagHasData == 0 {
			return 0
		}
		if t := n.mode & sIFMT; t != sIFREG && t != sIFDIR && t != sIFLNK {
			return 0
		}
		return (n.size + blkSize - 1) / blkSize
	case layoutFlatInline:
		return n.size / blkSize
	}
	return 0
}

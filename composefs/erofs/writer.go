// Package erofs writes EROFS images that hold a filesystem tree's metadata:
// the image format of lazypull's composefs mode, where each layer is an
// EROFS image whose regular files are sparse files carrying overlayfs
// metacopy/redirect xattrs into a content-addressed object store.
//
// It knows a tree of entries (paths, modes, owners, times, sizes, symlink
// targets, device numbers, hard links, xattrs, optional small contents) and
// the EROFS on-disk format, nothing else: not TOCs, registries, object
// stores or overlay policy. The caller sets the overlay xattrs; the writer
// writes every xattr as given.
//
// Why our own writer rather than github.com/erofs/go-erofs (v0.3.1): a
// metadata-only file there gets a 4 KiB-chunk index (2 MiB of null entries
// per GiB of file) where one null block-map entry with large chunkbits
// does; it has no hard links, no shared xattrs, 8-byte chunk indexes only,
// and takes the build time from the clock. Its reader serves as this
// package's independent test oracle, beside fsck.erofs and the kernel.
//
// The input is untrusted (entries come from image TOCs): the writer checks
// every entry and the tree (names, duplicates, parents, hard-link targets,
// xattr names and sizes, POSIX ACLs the kernel could not parse) and
// returns errors naming the path; it never panics. Parents nobody added
// are made as 0755 root:root directories with the build time as mtime.
// Its memory is linear in the entries: about 200 bytes an entry beside
// the paths and distinct xattrs themselves.
//
// Layout (all deterministic: the same entries in any order give the same
// bytes): 4 KiB blocks; the superblock at byte 1024 with build_time the
// least mtime in the tree (so most inodes are 32-byte compact ones) and no
// uuid; inodes from byte 1152 in breadth-first order of the byte-sorted
// tree (as composefs: a directory's entries are neighbours), so the root
// is nid 36; then the shared xattr area (pairs more than one inode has,
// such as the empty trusted.overlay.metacopy); then data blocks
// (directory blocks that are not inlined, long symlinks, file contents). Regular files without contents are CHUNK_BASED with chunkbits
// large enough that one null block-map entry covers the file: a hole of
// the file's size. Inline tails never cross a block, and a symlink's
// inode, xattrs and target share one (kernels before 6.12 require it).
// Xattr names use the short prefixes only (Debian 12's fsck.erofs rejects
// long ones), and every inode's xattr header carries the kernel's name
// filter (COMPAT_XATTR_FILTER), which answers overlayfs's many lookups of
// absent trusted.overlay.* names without reading the xattrs.
package erofs

import (
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"strings"
)

// Limits the writer enforces on its (untrusted) input.
const (
	// MaxNameLen is the longest name of a path component.
	MaxNameLen = 255
	// MaxSymlinkLen is the longest symlink target (PATH_MAX - 1).
	MaxSymlinkLen = 4095
	// MaxXattrNameLen is the longest xattr name, prefix included
	// (XATTR_NAME_MAX).
	MaxXattrNameLen = 255
	// MaxXattrValueLen is the largest xattr value (e_value_size is 16 bits).
	MaxXattrValueLen = 65535
	// MaxFileSize is the largest regular file: 512 chunk entries at the
	// largest chunk size, so no entry can make the image large.
	MaxFileSize = 1 << 52
	// maxXattrIbody is the largest inline xattr area: i_xattr_icount is 16 bits.
	maxXattrIbody = xattrHeaderSize + 4*(0xFFFF-1)
	// maxSharedPerInode: h_shared_count is 8 bits; more go inline.
	maxSharedPerInode = 255
)

// Entry is one path of the tree.
type Entry struct {
	// Path is slash-separated and relative to the root; "" is the root
	// itself (which must then be a directory).
	Path string
	// Mode is the full st_mode: type bits and permissions (with
	// setuid/setgid/sticky).
	Mode uint32
	UID  uint32
	GID  uint32
	// Mtime and MtimeNsec are the modification time (nsec < 1e9).
	Mtime     int64
	MtimeNsec uint32
	// Size is a regular file's size; ignored for other types.
	Size uint64
	// Target is a symlink's target (1..4095 bytes).
	Target string
	// DevMajor and DevMinor are a character or block device's numbers
	// (an overlay whiteout is a 0/0 character device).
	DevMajor, DevMinor uint32
	// Link, when set, makes this entry a hard link to the regular file
	// at that path: it shares the target's inode and all other fields of
	// this entry are ignored.
	Link string
	// Xattrs are written as given, sorted by name. Names need a prefix
	// EROFS can index: user., trusted., security., or exactly
	// system.posix_acl_access / system.posix_acl_default.
	Xattrs map[string][]byte
	// Data, if not nil, is a regular file's contents, stored in the image
	// (len(Data) must equal Size); the Writer keeps the slice, not a copy,
	// until WriteTo. Without it the file is a hole of Size bytes.
	Data []byte
}

// node is an entry as the writer keeps it: small and flat, because a
// layer may have a million of them.
type node struct {
	path   string // components joined by NUL (see internalPath)
	mtime  int64
	size   uint64 // regular: file size; dir: directory bytes; symlink: target length
	ext    *nodeExt
	mode   uint32
	uid    uint32
	gid    uint32
	nsec   uint32
	nlink  uint32
	xoff   uint32 // first of this inode's xattrs in Writer.xrefs
	parent int32  // index of the parent directory
	end    int32  // index just past this node's subtree in sorted order
	target int32  // hard link: index of the node holding the inode
	xsize  uint32 // bytes of the inode's xattr area
	nid    uint32 // inode number: byte offset / 32
	blk    uint32 // first data block (FLAT_PLAIN, FLAT_INLINE); a device's number
	nx     uint16 // number of xattrs
	tail   uint16 // bytes inlined after the inode and xattrs (tail data or chunk entries)
	flags  uint8
	layout uint8
}

// nodeExt holds what few entries have.
type nodeExt struct {
	target string // symlink target
	link   string // hard-link target path
	data   []byte
}

const (
	flagLink     uint8 = 1 << iota // hard link: no inode of its own
	flagImplicit                   // a parent directory nobody added
	flagCompact                    // 32-byte inode
	flagHasData                    // regular file with contents in the image
)

// xpair is one distinct (name, value) xattr; key is the prefix index, the
// suffix length, the suffix and the value.
type xpair struct {
	key  string
	refs uint32
	off  uint32 // shared: index in the shared area (units of 4 bytes)
}

func (p *xpair) index() uint8   { return p.key[0] }
func (p *xpair) suffix() string { return p.key[2 : 2+int(p.key[1])] }
func (p *xpair) value() string  { return p.key[2+int(p.key[1]):] }
func (p *xpair) entrySize() uint32 {
	return uint32(roundUp(uint64(xattrEntrySize+len(p.key)-2), 4))
}

// shared tells whether the pair goes to the shared area: when more than
// one inode has it, and its entry is no larger than a block, which readers
// that read a shared entry within one block's reach (go-erofs) need.
func (p *xpair) shared() bool { return p.refs > 1 && p.entrySize() <= blkSize }

// Writer collects entries, in any order, and writes the image. It is not
// safe for concurrent use.
type Writer struct {
	nodes  []node
	xrefs  []uint32 // per-inode xattr lists (indexes into pairs), each sorted by name
	pairs  []xpair
	xindex map[string]uint32
	built  bool
	dents  []dent // walkDir's scratch: one block's entries
}

// NewWriter returns an empty Writer.
func NewWriter() *Writer {
	return &Writer{xindex: map[string]uint32{}}
}

// Grow makes room for n more entries, and for as many distinct xattrs (a
// composefs image's files each have their own redirect): a caller that
// knows how many it will add (a TOC's) saves the copies of growing tables.
func (w *Writer) Grow(n int) {
	w.nodes = slices.Grow(w.nodes, n)
	if len(w.xindex) == 0 {
		w.xindex = make(map[string]uint32, n)
	}
}

// Add adds one entry. It checks the entry on its own (names, type, sizes,
// xattrs); what depends on other entries (duplicates, parents, hard-link
// targets) is checked when the image is written.
func (w *Writer) Add(e Entry) error {
	if w.built {
		return errors.New("erofs: Add after WriteTo")
	}
	if err := checkPath(e.Path); err != nil {
		return err
	}
	n := node{path: internalPath(e.Path), target: -1, parent: -1}
	if e.Link != "" {
		if e.Path == "" {
			return errors.New("erofs: the root cannot be a hard link")
		}
		if err := checkPath(e.Link); err != nil {
			return fmt.Errorf("erofs: %q: hard-link target: %w", e.Path, err)
		}
		n.flags = flagLink
		n.ext = &nodeExt{link: e.Link}
		w.nodes = append(w.nodes, n)
		return nil
	}
	if e.Mode&^0xFFFF != 0 || fileType(e.Mode) == 0 {
		return fmt.Errorf("erofs: %q: unsupported mode %#o", e.Path, e.Mode)
	}
	if e.MtimeNsec >= 1e9 {
		return fmt.Errorf("erofs: %q: mtime nanoseconds %d out of range", e.Path, e.MtimeNsec)
	}
	typ := e.Mode & sIFMT
	if e.Path == "" && typ != sIFDIR {
		return fmt.Errorf("erofs: the root must be a directory, not mode %#o", e.Mode)
	}
	if e.Data != nil && typ != sIFREG {
		return fmt.Errorf("erofs: %q: contents given for a non-regular file", e.Path)
	}
	n.mode, n.uid, n.gid, n.mtime, n.nsec, n.nlink = e.Mode, e.UID, e.GID, e.Mtime, e.MtimeNsec, 1
	switch typ {
	case sIFREG:
		if e.Size > MaxFileSize {
			return fmt.Errorf("erofs: %q: size %d over the limit %d", e.Path, e.Size, uint64(MaxFileSize))
		}
		n.size = e.Size
		if e.Data != nil {
			if uint64(len(e.Data)) != e.Size {
				return fmt.Errorf("erofs: %q: %d bytes of contents for size %d", e.Path, len(e.Data), e.Size)
			}
			if e.Size > 0 {
				n.flags |= flagHasData
				n.ext = &nodeExt{data: e.Data}
			}
		}
	case sIFLNK:
		if e.Target == "" || len(e.Target) > MaxSymlinkLen || strings.IndexByte(e.Target, 0) >= 0 {
			return fmt.Errorf("erofs: %q: symlink target of %d bytes: must be 1..%d bytes without NUL", e.Path, len(e.Target), MaxSymlinkLen)
		}
		n.size = uint64(len(e.Target))
		n.ext = &nodeExt{target: e.Target}
	case sIFCHR, sIFBLK:
		if e.DevMajor > 0xFFF || e.DevMinor > 0xFFFFF {
			return fmt.Errorf("erofs: %q: device %d:%d out of range", e.Path, e.DevMajor, e.DevMinor)
		}
		n.blk = encodeDev(e.DevMajor, e.DevMinor)
	}
	if len(e.Xattrs) > 0 {
		if err := w.addXattrs(&n, e.Xattrs); err != nil {
			return err
		}
	}
	w.nodes = append(w.nodes, n)
	return nil
}

// addXattrs checks and interns an entry's xattrs, so that a (name, value)
// pair many inodes share is stored once in memory and once in the image.
func (w *Writer) addXattrs(n *node, xattrs map[string][]byte) error {
	if len(xattrs) > 0xFFFF {
		return fmt.Errorf("erofs: %q: %d xattrs", displayPath(n.path), len(xattrs))
	}
	var nb [8]string // most entries have a few xattrs: no allocation for them
	names := nb[:0]
	for name := range xattrs {
		names = append(names, name)
	}
	slices.Sort(names)
	var size uint64 = xattrHeaderSize
	for _, name := range names {
		value := xattrs[name]
		index, suffix, ok := splitXattrName(name)
		if !ok {
			return fmt.Errorf("erofs: %q: xattr %q: no EROFS name prefix (user., trusted., security., system.posix_acl_*)", displayPath(n.path), name)
		}
		// The whole name, not just the stored suffix: the kernel lists a
		// longer one but getxattr cannot ask for it (ERANGE).
		if len(name) > MaxXattrNameLen || strings.IndexByte(suffix, 0) >= 0 {
			return fmt.Errorf("erofs: %q: xattr %.300q: name over %d bytes or with NUL", displayPath(n.path), name, MaxXattrNameLen)
		}
		if len(value) > MaxXattrValueLen {
			return fmt.Errorf("erofs: %q: xattr %q: value of %d bytes over %d", displayPath(n.path), name, len(value), MaxXattrValueLen)
		}
		if index == xattrACLAccess || index == xattrACLDefault {
			if err := checkACL(value); err != nil {
				return fmt.Errorf("erofs: %q: xattr %q: %w", displayPath(n.path), name, err)
			}
		}
		// Worst case all inline; sharing can only make it smaller.
		size += roundUp(uint64(xattrEntrySize+len(suffix)+len(value)), 4)
	}
	if size > maxXattrIbody {
		return fmt.Errorf("erofs: %q: xattrs take %d bytes, over the inode's %d", displayPath(n.path), size, maxXattrIbody)
	}
	n.xoff = uint32(len(w.xrefs))
	n.nx = uint16(len(names))
	var kb []byte
	for _, name := range names {
		index, suffix, _ := splitXattrName(name)
		kb = append(kb[:0], index, byte(len(suffix)))
		kb = append(kb, suffix...)
		kb = append(kb, xattrs[name]...)
		id, ok := w.xindex[string(kb)]
		if !ok {
			id = uint32(len(w.pairs))
			key := string(kb)
			w.pairs = append(w.pairs, xpair{key: key})
			w.xindex[key] = id
		}
		w.pairs[id].refs++
		w.xrefs = append(w.xrefs, id)
	}
	return nil
}

// checkPath checks that every component of a path is a valid EROFS name.
func checkPath(p string) error {
	if p == "" {
		return nil
	}
	for name := range strings.SplitSeq(p, "/") {
		switch {
		case name == "", name == ".", name == "..":
			return fmt.Errorf("erofs: %q: invalid name %q", p, name)
		case len(name) > MaxNameLen:
			return fmt.Errorf("erofs: %q: name of %d bytes over %d", p, len(name), MaxNameLen)
		case strings.IndexByte(name, 0) >= 0:
			return fmt.Errorf("erofs: %q: name with NUL", p)
		}
	}
	return nil
}

// checkACL checks a POSIX ACL xattr value the way the kernel parses it
// (posix_acl_from_xattr): version 2, whole 8-byte entries of known tags.
// The kernel consults a directory's ACL on every lookup through it, so an
// unparsable one would make the directory and all below it unreachable.
func checkACL(v []byte) error {
	if len(v) < 4 || (len(v)-4)%8 != 0 || binary.LittleEndian.Uint32(v) != 2 {
		return fmt.Errorf("not a POSIX ACL (version 2, 8-byte entries): %d bytes", len(v))
	}
	for e := v[4:]; len(e) > 0; e = e[8:] {
		switch tag := binary.LittleEndian.Uint16(e); tag {
		case 0x01, 0x02, 0x04, 0x08, 0x10, 0x20: // USER_OBJ, USER, GROUP_OBJ, GROUP, MASK, OTHER
		default:
			return fmt.Errorf("POSIX ACL entry with tag %#x", tag)
		}
	}
	return nil
}

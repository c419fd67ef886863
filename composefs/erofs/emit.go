package erofs

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// WriteTo checks the tree, lays the image out and writes it to out in one
// sequential pass. The Writer is spent afterwards.
func (w *Writer) WriteTo(out io.Writer) (int64, error) {
	if w.built {
		return 0, errors.New("erofs: WriteTo called twice")
	}
	w.built = true
	w.xindex = nil // interning is over; let the map go
	img, err := w.build()
	if err != nil {
		return 0, err
	}
	e := &emitter{w: bufio.NewWriterSize(out, 256<<10)}
	w.emit(e, img)
	if e.err == nil {
		e.err = e.w.Flush()
	}
	if e.err != nil {
		return int64(e.pos), fmt.Errorf("erofs: writing the image: %w", e.err)
	}
	return int64(e.pos), nil
}

// emitter writes sequentially and remembers the first error.
type emitter struct {
	w       *bufio.Writer
	pos     uint64
	err     error
	buf     [blkSize]byte // a directory block
	scratch [inodeExtendedSize]byte
}

// zeros pads.
var zeros [blkSize]byte

func (e *emitter) write(b []byte) {
	if e.err != nil {
		return
	}
	n, err := e.w.Write(b)
	e.pos += uint64(n)
	e.err = err
}

func (e *emitter) writeString(s string) {
	if e.err != nil {
		return
	}
	n, err := e.w.WriteString(s)
	e.pos += uint64(n)
	e.err = err
}

// padTo writes zeros up to byte offset to.
func (e *emitter) padTo(to uint64) {
	for e.err == nil && e.pos < to {
		n := min(to-e.pos, uint64(len(zeros)))
		e.write(zeros[:n])
	}
	if e.err == nil && e.pos != to {
		e.err = fmt.Errorf("layout error: at byte %d, want %d", e.pos, to)
	}
}

var le = binary.LittleEndian

func (w *Writer) emit(e *emitter, img *image) {
	e.padTo(sbOffset)
	var sb [sbSize]byte
	le.PutUint32(sb[0:], magic)
	le.PutUint32(sb[8:], featureCompatMtime|featureCompatXattrFilter)
	sb[12] = blkBits
	le.PutUint16(sb[14:], uint16(img.rootNid))
	le.PutUint64(sb[16:], img.inos)
	le.PutUint64(sb[24:], uint64(img.buildTime))
	le.PutUint32(sb[32:], img.buildNsec)
	le.PutUint32(sb[36:], uint32(img.blocks))
	le.PutUint32(sb[40:], 0) // meta_blkaddr
	if len(img.shared) > 0 {
		le.PutUint32(sb[44:], uint32(img.sharedPos/blkSize))
	}
	// uuid and volume name stay zero: nothing from the clock or chance.
	if img.chunked {
		le.PutUint32(sb[80:], featureIncompatChunked)
	}
	e.write(sb[:])

	var ino uint32
	for _, i := range img.order {
		n := &w.nodes[i]
		if n.flags&flagLink != 0 {
			continue
		}
		ino++
		e.padTo(uint64(n.nid) * slotSize)
		w.emitInode(e, int(i), ino)
	}

	e.padTo(img.sharedPos)
	for _, id := range img.shared {
		w.emitXattr(e, &w.pairs[id])
	}

	e.padTo(img.dataBlk * blkSize)
	for _, i := range img.order {
		n := &w.nodes[i]
		nb := dataBlocks(n)
		if nb == 0 {
			continue
		}
		e.padTo(uint64(n.blk) * blkSize)
		switch n.mode & sIFMT {
		case sIFDIR:
			w.walkDir(int32(i), func(ents []dent, used int, last bool) error {
				if last && n.layout == layoutFlatInline {
					return nil
				}
				e.write(encodeDirBlock(e.buf[:], ents, used, true))
				return e.err
			})
		case sIFLNK:
			e.writeString(n.ext.target)
		case sIFREG:
			e.write(n.ext.data[:min(uint64(len(n.ext.data)), nb*blkSize)])
		}
		e.padTo((uint64(n.blk) + nb) * blkSize)
	}
	e.padTo(img.blocks * blkSize)
}

// emitInode writes an inode, its xattrs and what it inlines.
func (w *Writer) emitInode(e *emitter, i int, ino uint32) {
	n := &w.nodes[i]
	b := &e.scratch
	clear(b[:])
	icount := uint16(0)
	if n.xsize > 0 {
		icount = uint16((n.xsize-xattrHeaderSize)/4 + 1)
	}
	var iu uint32
	switch n.layout {
	case layoutChunkBased:
		iu = uint32(chunkBits(n.size) - blkBits) // 4-byte block map: no INDEXES flag
	default:
		iu = n.blk // or a device's number
	}
	if n.flags&flagCompact != 0 {
		le.PutUint16(b[0:], uint16(n.layout)<<1)
		le.PutUint16(b[2:], icount)
		le.PutUint16(b[4:], uint16(n.mode))
		le.PutUint16(b[6:], uint16(n.nlink))
		le.PutUint32(b[8:], uint32(n.size))
		le.PutUint32(b[16:], iu)
		le.PutUint32(b[20:], ino)
		le.PutUint16(b[24:], uint16(n.uid))
		le.PutUint16(b[26:], uint16(n.gid))
		e.write(b[:inodeCompactSize])
	} else {
		le.PutUint16(b[0:], uint16(n.layout)<<1|1)
		le.PutUint16(b[2:], icount)
		le.PutUint16(b[4:], uint16(n.mode))
		le.PutUint64(b[8:], n.size)
		le.PutUint32(b[16:], iu)
		le.PutUint32(b[20:], ino)
		le.PutUint32(b[24:], n.uid)
		le.PutUint32(b[28:], n.gid)
		le.PutUint64(b[32:], uint64(n.mtime))
		le.PutUint32(b[40:], n.nsec)
		le.PutUint32(b[44:], n.nlink)
		e.write(b[:inodeExtendedSize])
	}

	if n.xsize > 0 {
		refs := w.xrefs[n.xoff : n.xoff+uint32(n.nx)]
		// The name filter (COMPAT_XATTR_FILTER): a set bit says no
		// xattr of this inode hashes there, so lookups of absent names
		// (overlayfs asks for several on every file) stop early.
		filter := ^uint32(0)
		nshared := 0
		for _, id := range refs {
			p := &w.pairs[id]
			filter &^= 1 << xattrFilterBit(p.index(), p.suffix())
			if p.shared() && nshared < maxSharedPerInode {
				nshared++
			}
		}
		h := e.scratch[:xattrHeaderSize]
		clear(h)
		le.PutUint32(h[0:], filter)
		h[4] = uint8(nshared)
		e.write(h)
		k := 0
		for _, id := range refs {
			if p := &w.pairs[id]; p.shared() && k < nshared {
				k++
				le.PutUint32(e.scratch[:4], p.off)
				e.write(e.scratch[:4])
			}
		}
		k = 0
		for _, id := range refs {
			p := &w.pairs[id]
			if p.shared() && k < nshared {
				k++
				continue
			}
			w.emitXattr(e, p)
		}
	}

	switch {
	case n.layout == layoutChunkBased:
		le.PutUint32(e.scratch[:4], nullAddr)
		for range n.tail / 4 {
			e.write(e.scratch[:4])
		}
	case n.layout == layoutFlatInline:
		full := n.size - uint64(n.tail)
		switch n.mode & sIFMT {
		case sIFDIR:
			w.walkDir(int32(i), func(ents []dent, used int, last bool) error {
				if last {
					e.write(encodeDirBlock(e.buf[:], ents, used, false))
				}
				return e.err
			})
		case sIFLNK:
			e.writeString(n.ext.target)
		case sIFREG:
			e.write(n.ext.data[full:])
		}
	}
}

// emitXattr writes one xattr entry, padded to 4 bytes.
func (w *Writer) emitXattr(e *emitter, p *xpair) {
	h := e.scratch[:xattrEntrySize]
	suffix, value := p.suffix(), p.value()
	h[0] = uint8(len(suffix))
	h[1] = p.index()
	le.PutUint16(h[2:], uint16(len(value)))
	e.write(h)
	e.writeString(suffix)
	e.writeString(value)
	if pad := (4 - (xattrEntrySize+len(suffix)+len(value))%4) % 4; pad > 0 {
		e.write(zeros[:pad])
	}
}

// encodeDirBlock lays out one directory block: the dirents, then the
// names; a full block is zero-padded so the last name ends at a NUL.
func encodeDirBlock(buf []byte, ents []dent, used int, full bool) []byte {
	size := used
	if full {
		size = blkSize
	}
	b := buf[:size]
	clear(b)
	nameoff := direntSize * len(ents)
	for i, d := range ents {
		o := i * direntSize
		le.PutUint64(b[o:], uint64(d.nid))
		le.PutUint16(b[o+8:], uint16(nameoff))
		b[o+10] = d.ft
		nameoff += copy(b[nameoff:], d.name)
	}
	return b
}

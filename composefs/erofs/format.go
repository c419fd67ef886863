package erofs

import (
	"encoding/binary"
	"math/bits"
)

// On-disk constants, from the kernel's fs/erofs/erofs_fs.h (the authority).
const (
	blkBits   = 12
	blkSize   = 1 << blkBits
	sbOffset  = 1024
	sbSize    = 128
	metaStart = sbOffset + sbSize // inodes start right after the superblock (meta_blkaddr 0)
	slotSize  = 32                // nid = byte offset / 32

	magic = 0xE0F5E1E2

	featureCompatMtime       = 0x2
	featureCompatXattrFilter = 0x4
	featureIncompatChunked   = 0x4

	inodeCompactSize  = 32
	inodeExtendedSize = 64

	layoutFlatPlain  = 0
	layoutFlatInline = 2
	layoutChunkBased = 4

	xattrHeaderSize = 12
	xattrEntrySize  = 4
	xattrFilterSeed = 0x25BBE08F

	direntSize = 12
	nullAddr   = 0xFFFFFFFF

	maxChunkBits = blkBits + 31 // 5-bit field in the chunk format
)

// EROFS file types in dirents (the generic FT_* values).
const (
	ftReg     = 1
	ftDir     = 2
	ftChr     = 3
	ftBlk     = 4
	ftFifo    = 5
	ftSock    = 6
	ftSymlink = 7
)

// Short xattr name prefixes, by on-disk index. Long prefixes are never
// written: Debian 12's fsck.erofs (1.5) and older kernels reject them.
const (
	xattrUser       = 1
	xattrACLAccess  = 2
	xattrACLDefault = 3
	xattrTrusted    = 4
	xattrSecurity   = 6
)

// splitXattrName maps a full xattr name to its short prefix index and the
// suffix stored on disk; ok is false for names without a known prefix.
func splitXattrName(name string) (index uint8, suffix string, ok bool) {
	switch {
	case name == "system.posix_acl_access":
		return xattrACLAccess, "", true
	case name == "system.posix_acl_default":
		return xattrACLDefault, "", true
	}
	for _, p := range [...]struct {
		prefix string
		index  uint8
	}{{"user.", xattrUser}, {"trusted.", xattrTrusted}, {"security.", xattrSecurity}} {
		if len(name) > len(p.prefix) && name[:len(p.prefix)] == p.prefix {
			return p.index, name[len(p.prefix):], true
		}
	}
	return 0, "", false
}

// xattrFilterBit is the bit an xattr sets in its inode's name filter
// (COMPAT_XATTR_FILTER): xxh32 of the suffix seeded with the prefix index.
func xattrFilterBit(index uint8, suffix string) uint32 {
	return xxh32([]byte(suffix), xattrFilterSeed+uint32(index)) & 31
}

const (
	prime32_1 = 2654435761
	prime32_2 = 2246822519
	prime32_3 = 3266489917
	prime32_4 = 668265263
	prime32_5 = 374761393
)

// xxh32 is XXH32, the hash the kernel uses for xattr name filters; written
// out here as no well-kept Go module provides the 32-bit variant.
func xxh32(b []byte, seed uint32) uint32 {
	n := len(b)
	var h uint32
	if n >= 16 {
		v1 := seed + prime32_1 + prime32_2
		v2 := seed + prime32_2
		v3 := seed
		v4 := seed - prime32_1
		for len(b) >= 16 {
			v1 = round32(v1, binary.LittleEndian.Uint32(b[0:]))
			v2 = round32(v2, binary.LittleEndian.Uint32(b[4:]))
			v3 = round32(v3, binary.LittleEndian.Uint32(b[8:]))
			v4 = round32(v4, binary.LittleEndian.Uint32(b[12:]))
			b = b[16:]
		}
		h = bits.RotateLeft32(v1, 1) + bits.RotateLeft32(v2, 7) + bits.RotateLeft32(v3, 12) + bits.RotateLeft32(v4, 18)
	} else {
		h = seed + prime32_5
	}
	h += uint32(n)
	for len(b) >= 4 {
		h += binary.LittleEndian.Uint32(b) * prime32_3
		h = bits.RotateLeft32(h, 17) * prime32_4
		b = b[4:]
	}
	for _, c := range b {
		h += uint32(c) * prime32_5
		h = bits.RotateLeft32(h, 11) * prime32_1
	}
	h ^= h >> 15
	h *= prime32_2
	h ^= h >> 13
	h *= prime32_3
	h ^= h >> 16
	return h
}

func round32(acc, in uint32) uint32 {
	acc += in * prime32_2
	return bits.RotateLeft32(acc, 13) * prime32_1
}

// encodeDev is the kernel's new_encode_dev, the form i_u.rdev holds.
func encodeDev(major, minor uint32) uint32 {
	return minor&0xff | major<<8 | (minor&^0xff)<<12
}

// fileType maps st_mode's type bits to a dirent file type.
func fileType(mode uint32) uint8 {
	switch mode & sIFMT {
	case sIFREG:
		return ftReg
	case sIFDIR:
		return ftDir
	case sIFCHR:
		return ftChr
	case sIFBLK:
		return ftBlk
	case sIFIFO:
		return ftFifo
	case sIFSOCK:
		return ftSock
	case sIFLNK:
		return ftSymlink
	}
	return 0
}

// st_mode type bits (as in Linux; spelled out so the package builds anywhere).
const (
	sIFMT   = 0o170000
	sIFSOCK = 0o140000
	sIFLNK  = 0o120000
	sIFREG  = 0o100000
	sIFBLK  = 0o060000
	sIFDIR  = 0o040000
	sIFCHR  = 0o020000
	sIFIFO  = 0o010000
)

func roundUp(v, to uint64) uint64 { return (v + to - 1) / to * to }

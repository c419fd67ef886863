package erofs

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"
)

const t0 = 1700000000

// validACL is a POSIX ACL xattr value (user::rw- user:1000:rwx group::r--
// mask::rwx other::r--), so that the kernel accepts it too.
func validACL() []byte {
	b := binary.LittleEndian.AppendUint32(nil, 2)
	for _, e := range []struct {
		tag, perm uint16
		id        uint32
	}{{1, 6, 0xFFFFFFFF}, {2, 7, 1000}, {4, 4, 0xFFFFFFFF}, {0x10, 7, 0xFFFFFFFF}, {0x20, 4, 0xFFFFFFFF}} {
		b = binary.LittleEndian.AppendUint16(b, e.tag)
		b = binary.LittleEndian.AppendUint16(b, e.perm)
		b = binary.LittleEndian.AppendUint32(b, e.id)
	}
	return b
}

func metacopy(object string) map[string][]byte {
	return map[string][]byte{
		"trusted.overlay.metacopy": {},
		"trusted.overlay.redirect": []byte("/" + object[:2] + "/" + object[2:]),
	}
}

// sampleTree has every kind of entry and the layouts' edge cases.
func sampleTree() []Entry {
	obj := strings.Repeat("ab", 32)
	data := bytes.Repeat([]byte("0123456789abcdef"), 700) // 11200 bytes: 2 blocks and a tail
	es := []Entry{
		{Path: "", Mode: sIFDIR | 0o755, Mtime: t0},
		{Path: "bin", Mode: sIFDIR | 0o755, Mtime: t0},
		{Path: "bin/sh", Mode: sIFREG | 0o755, Mtime: t0, Size: 123456, Xattrs: metacopy(obj)},
		{Path: "bin/bash", Link: "bin/sh"},
		{Path: "bin/rbash", Link: "bin/bash"}, // a link to a link
		{Path: "usr/lib/x86_64/libc.so.6", Mode: sIFREG | 0o644, Mtime: t0 + 5, MtimeNsec: 123456789, Size: 2 << 20, Xattrs: metacopy("cd" + obj[2:])},
		{Path: "etc/passwd", Mode: sIFREG | 0o644, Mtime: t0, Size: 11, Data: []byte("root:x:0:0\n")},
		{Path: "etc/data", Mode: sIFREG | 0o600, Mtime: t0, Size: uint64(len(data)), Data: data},
		{Path: "etc/block", Mode: sIFREG | 0o600, Mtime: t0, Size: blkSize, Data: bytes.Repeat([]byte{7}, blkSize)},
		{Path: "etc/empty", Mode: sIFREG | 0o644, Mtime: t0, Size: 0, Data: []byte{}},
		{Path: "empty", Mode: sIFREG | 0o644, Mtime: t0},
		{Path: "lnk", Mode: sIFLNK | 0o777, Mtime: t0, Target: "bin/sh"},
		{Path: "longlink", Mode: sIFLNK | 0o777, Mtime: t0, Target: strings.Repeat("x/", 2000)},
		{Path: "maxlink", Mode: sIFLNK | 0o777, Mtime: t0, Target: strings.Repeat("y", MaxSymlinkLen), Xattrs: map[string][]byte{"trusted.a": []byte("1")}},
		{Path: "dev/null", Mode: sIFCHR | 0o666, Mtime: t0, DevMajor: 1, DevMinor: 3},
		{Path: "dev/sda", Mode: sIFBLK | 0o660, GID: 6, Mtime: t0, DevMajor: 8, DevMinor: 0},
		{Path: "dev/big", Mode: sIFCHR | 0o600, Mtime: t0, DevMajor: 4095, DevMinor: 1<<20 - 1},
		{Path: "dev/.wh.gone", Mode: sIFCHR, Mtime: t0},
		{Path: "dev/fifo", Mode: sIFIFO | 0o644, Mtime: t0},
		{Path: "dev/sock", Mode: sIFSOCK | 0o755, Mtime: t0},
		{Path: "huge", Mode: sIFREG | 0o644, Mtime: t0, Size: 1 << 40},
		{Path: "huger", Mode: sIFREG | 0o644, Mtime: t0, Size: 1<<50 + 1},
		{Path: "odd", Mode: sIFREG | 0o644, Mtime: t0, Size: 1<<30 + 17},
		{Path: "cap1", Mode: sIFREG | 0o755, Mtime: t0, Size: 5000, Xattrs: map[string][]byte{"security.capability": []byte("\x01\x00\x00\x02\x00\x20\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00")}},
		{Path: "cap2", Mode: sIFREG | 0o755, Mtime: t0, Size: 6000, Xattrs: map[string][]byte{"security.capability": []byte("\x01\x00\x00\x02\x00\x20\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00")}},
		{Path: "acl", Mode: sIFDIR | 0o775, Mtime: t0, Xattrs: map[string][]byte{"system.posix_acl_access": validACL(), "system.posix_acl_default": validACL(), "user.comment": []byte("hi")}},
		{Path: "owner", Mode: sIFREG | 0o4755, UID: 70000, GID: 70001, Mtime: t0, Size: 1},
		{Path: "sticky", Mode: sIFDIR | 0o1777, Mtime: t0 - 10, MtimeNsec: 5},
		{Path: "-dash", Mode: sIFREG | 0o644, Mtime: t0},
		{Path: ".hidden", Mode: sIFREG | 0o644, Mtime: t0},
		{Path: "...", Mode: sIFREG | 0o644, Mtime: t0},
		{Path: strings.Repeat("n", MaxNameLen), Mode: sIFREG | 0o644, Mtime: t0},
		{Path: "opaque", Mode: sIFDIR | 0o755, Mtime: t0, Xattrs: map[string][]byte{"trusted.overlay.opaque": []byte("y")}},
	}
	// A directory of several blocks, and a long xattr value.
	for i := range 300 {
		es = append(es, Entry{Path: fmt.Sprintf("many/file-with-a-longish-name-%04d", i), Mode: sIFREG | 0o644, Mtime: t0, Size: uint64(i)})
	}
	es = append(es, Entry{Path: "many/bigxattr", Mode: sIFREG | 0o644, Mtime: t0, Xattrs: map[string][]byte{
		"user.big": bytes.Repeat([]byte("v"), MaxXattrValueLen),
		"user." + strings.Repeat("n", MaxXattrNameLen-5): []byte("longest name"),
	}})
	return es
}

func TestSampleTreeReadsBack(t *testing.T) {
	es := sampleTree()
	img := writeImage(t, es)
	checkWithGoErofs(t, img, es)
	checkWithErofsUtils(t, saveImage(t, img))
}

func TestSuperblock(t *testing.T) {
	img := writeImage(t, sampleTree())
	sb := img[sbOffset:]
	le := binary.LittleEndian
	if got := le.Uint32(sb); got != magic {
		t.Fatalf("magic %#x", got)
	}
	if sb[12] != blkBits {
		t.Errorf("blkszbits %d", sb[12])
	}
	if root := le.Uint16(sb[14:]); root != metaStart/slotSize {
		t.Errorf("root nid %d, want %d (the first inode)", root, metaStart/slotSize)
	}
	if bt, ns := le.Uint64(sb[24:]), le.Uint32(sb[32:]); bt != t0-10 || ns != 5 {
		t.Errorf("build time %d.%09d, want the least mtime %d.%09d", bt, ns, t0-10, 5)
	}
	if blocks := le.Uint32(sb[36:]); int(blocks)*blkSize != len(img) {
		t.Errorf("blocks %d for %d bytes", blocks, len(img))
	}
	if incompat := le.Uint32(sb[80:]); incompat != featureIncompatChunked {
		t.Errorf("feature_incompat %#x, want CHUNKED_FILE only", incompat)
	}
	if !bytes.Equal(sb[48:80], make([]byte, 32)) {
		t.Errorf("uuid or volume name set: %x", sb[48:80])
	}
	// No hole files: no CHUNKED_FILE.
	img = writeImage(t, []Entry{{Path: "f", Mode: sIFREG | 0o644, Size: 3, Data: []byte("abc")}})
	if incompat := le.Uint32(img[sbOffset+80:]); incompat != 0 {
		t.Errorf("feature_incompat %#x without chunked files", incompat)
	}
}

func TestDeterministicInAnyOrder(t *testing.T) {
	es := sampleTree()
	want := writeImage(t, es)
	r := rand.New(rand.NewPCG(1, 2))
	for range 5 {
		r.Shuffle(len(es), func(i, j int) { es[i], es[j] = es[j], es[i] })
		if got := writeImage(t, es); !bytes.Equal(got, want) {
			t.Fatal("a different order of the same entries gave different bytes")
		}
	}
}

// TestHoleFilesTakeOneChunkEntry checks the point of writing our own: a
// metadata-only file of any size costs its inode and one 4-byte entry.
func TestHoleFilesTakeOneChunkEntry(t *testing.T) {
	for _, size := range []uint64{1, 4096, 4097, 1 << 30, 1<<43 - 1, 1 << 43, 1<<43 + 1, 1 << 50} {
		img := writeImage(t, []Entry{{Path: "f", Mode: sIFREG | 0o644, Size: size}})
		w := NewWriter()
		w.Add(Entry{Path: "f", Mode: sIFREG | 0o644, Size: size})
		var buf bytes.Buffer
		if _, err := w.WriteTo(&buf); err != nil {
			t.Fatal(err)
		}
		f := &w.nodes[1]
		wantEntries := uint32(1)
		if size > 1<<43 {
			wantEntries = uint32((size + 1<<43 - 1) >> 43)
		}
		if f.layout != layoutChunkBased || uint32(f.tail) != 4*wantEntries {
			t.Errorf("size %d: layout %d with %d bytes of chunk entries, want CHUNK_BASED with %d", size, f.layout, f.tail, wantEntries)
		}
		isize := uint64(inodeExtendedSize)
		if f.flags&flagCompact != 0 {
			isize = inodeCompactSize
		}
		if (size <= 1<<32-1) != (f.flags&flagCompact != 0) {
			t.Errorf("size %d: compact %v", size, f.flags&flagCompact != 0)
		}
		off := uint64(f.nid)*slotSize + isize
		for i := range wantEntries {
			if got := binary.LittleEndian.Uint32(img[off+uint64(4*i):]); got != nullAddr {
				t.Errorf("size %d: chunk entry %d is %#x", size, i, got)
			}
		}
		if format := binary.LittleEndian.Uint16(img[uint64(f.nid)*slotSize+16:]); format&0x20 != 0 || blkBits+uint(format&0x1F) != chunkBits(size) {
			t.Errorf("size %d: chunk format %#x", size, format)
		}
		checkWithGoErofs(t, img, []Entry{{Path: "f", Mode: sIFREG | 0o644, Size: size}})
	}
}

func TestSharedXattrs(t *testing.T) {
	es := sampleTree()
	w := NewWriter()
	for _, e := range es {
		if err := w.Add(e); err != nil {
			t.Fatal(err)
		}
	}
	var buf bytes.Buffer
	if _, err := w.WriteTo(&buf); err != nil {
		t.Fatal(err)
	}
	var shared []string
	for _, p := range w.pairs {
		if p.shared() {
			shared = append(shared, fmt.Sprintf("%d.%s", p.index(), p.suffix()))
		}
	}
	// The empty metacopy (bin/sh, libc) and the capability (cap1, cap2).
	if want := []string{"4.overlay.metacopy", "6.capability"}; fmt.Sprint(shared) != fmt.Sprint(want) {
		t.Errorf("shared xattrs %q, want %q", shared, want)
	}
}

func TestXattrFilterBits(t *testing.T) {
	// From the kernel commit that introduced the filter (erofs: update
	// on-disk format for xattr name filter).
	for name, bit := range map[string]uint32{
		"security.ima": 0, "trusted.overlay.nlink": 2, "user.overlay.nlink": 4,
		"trusted.overlay.upper": 5, "security.selinux": 11, "trusted.overlay.redirect": 17,
		"trusted.overlay.opaque": 20, "system.posix_acl_default": 21, "security.capability": 29,
		"system.posix_acl_access": 30, "trusted.overlay.metacopy": 31, "user.overlay.metacopy": 31,
	} {
		index, suffix, ok := splitXattrName(name)
		if got := xattrFilterBit(index, suffix); !ok || got != bit {
			t.Errorf("%s: bit %d, want %d", name, got, bit)
		}
	}
	if got := xxh32(nil, 0); got != 0x02CC5D05 {
		t.Errorf("xxh32 of nothing: %#x", got)
	}
}

func TestRejects(t *testing.T) {
	reg := func(p string) Entry { return Entry{Path: p, Mode: sIFREG | 0o644} }
	for _, tc := range []struct {
		name    string
		entries []Entry
		want    string // in the error
	}{
		{"dot", []Entry{reg("a/./b")}, `"a/./b"`},
		{"dotdot", []Entry{reg("..")}, `".."`},
		{"empty component", []Entry{reg("a//b")}, `"a//b"`},
		{"leading slash", []Entry{reg("/a")}, `"/a"`},
		{"trailing slash", []Entry{reg("a/")}, `"a/"`},
		{"nul", []Entry{reg("a\x00b")}, "NUL"},
		{"long name", []Entry{reg(strings.Repeat("n", 256))}, "256 bytes"},
		{"duplicate", []Entry{reg("a/b"), reg("a/b")}, `"a/b": added twice`},
		{"file as parent", []Entry{reg("a"), reg("a/b")}, `"a/b": parent "a" is not a directory`},
		{"link as parent", []Entry{reg("f"), {Path: "a", Link: "f"}, reg("a/b")}, `parent "a"`},
		{"link to nothing", []Entry{{Path: "a", Link: "b"}}, `"a": hard-link target "b" does not exist`},
		{"link to dir", []Entry{{Path: "d", Mode: sIFDIR | 0o755}, {Path: "a", Link: "d"}}, `"a": hard-link target "d" is not a regular file`},
		{"link to implicit dir", []Entry{reg("d/f"), {Path: "a", Link: "d"}}, `is not a regular file`},
		{"link to symlink", []Entry{{Path: "s", Mode: sIFLNK | 0o777, Target: "x"}, {Path: "a", Link: "s"}}, `is not a regular file`},
		{"link cycle", []Entry{{Path: "a", Link: "b"}, {Path: "b", Link: "a"}}, "cycle"},
		{"root link", []Entry{{Path: "", Link: "b"}}, "root"},
		{"root not dir", []Entry{reg("")}, "root"},
		{"bad type", []Entry{{Path: "a", Mode: 0o644}}, `"a": unsupported mode`},
		{"mode bits", []Entry{{Path: "a", Mode: 1<<16 | sIFREG}}, `"a": unsupported mode`},
		{"nsec", []Entry{{Path: "a", Mode: sIFREG, MtimeNsec: 1e9}}, `"a": mtime`},
		{"no prefix", []Entry{{Path: "a", Mode: sIFREG, Xattrs: map[string][]byte{"foo.bar": nil}}}, `"a": xattr "foo.bar"`},
		{"bare prefix", []Entry{{Path: "a", Mode: sIFREG, Xattrs: map[string][]byte{"user.": nil}}}, `"a": xattr "user."`},
		{"acl suffix", []Entry{{Path: "a", Mode: sIFREG, Xattrs: map[string][]byte{"system.posix_acl_access.x": nil}}}, `"a": xattr`},
		{"long xattr name", []Entry{{Path: "a", Mode: sIFREG, Xattrs: map[string][]byte{"user." + strings.Repeat("x", 251): nil}}}, `"a": xattr`},
		{"bad acl", []Entry{{Path: "a", Mode: sIFDIR, Xattrs: map[string][]byte{"system.posix_acl_access": []byte("vvvv")}}}, `"a": xattr "system.posix_acl_access": not a POSIX ACL`},
		{"acl tag", []Entry{{Path: "a", Mode: sIFDIR, Xattrs: map[string][]byte{"system.posix_acl_default": append(validACL(), 9, 0, 0, 0, 0, 0, 0, 0)}}}, `"a": xattr "system.posix_acl_default": POSIX ACL entry with tag`},
		{"long xattr value", []Entry{{Path: "a", Mode: sIFREG, Xattrs: map[string][]byte{"user.x": make([]byte, 65536)}}}, `"a": xattr "user.x": value of 65536 bytes`},
		{"xattr area", []Entry{{Path: "a", Mode: sIFREG, Xattrs: map[string][]byte{"user.x": make([]byte, 65535), "user.y": make([]byte, 65535), "user.z": make([]byte, 65535), "user.w": make([]byte, 65535)}}}, `"a": xattrs take`},
		{"size", []Entry{{Path: "a", Mode: sIFREG, Size: MaxFileSize + 1}}, `"a": size`},
		{"data size", []Entry{{Path: "a", Mode: sIFREG, Size: 2, Data: []byte("x")}}, `"a": 1 bytes of contents for size 2`},
		{"data on dir", []Entry{{Path: "a", Mode: sIFDIR, Data: []byte("x")}}, `"a": contents`},
		{"empty target", []Entry{{Path: "a", Mode: sIFLNK}}, `"a": symlink`},
		{"long target", []Entry{{Path: "a", Mode: sIFLNK, Target: strings.Repeat("x", 4096)}}, `"a": symlink`},
		{"device", []Entry{{Path: "a", Mode: sIFCHR, DevMajor: 4096}}, `"a": device`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := NewWriter()
			var err error
			for _, e := range tc.entries {
				if err = w.Add(e); err != nil {
					break
				}
			}
			if err == nil {
				_, err = w.WriteTo(&bytes.Buffer{})
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %v, want one with %q", err, tc.want)
			}
		})
	}
}

// TestGolden pins the bytes of a small tree: a change in the format must
// be deliberate (update the digest and say why in the commit).
func TestGolden(t *testing.T) {
	es := []Entry{
		{Path: "", Mode: sIFDIR | 0o755, Mtime: t0},
		{Path: "bin/sh", Mode: sIFREG | 0o755, Mtime: t0, Size: 123456, Xattrs: metacopy(strings.Repeat("ab", 32))},
		{Path: "bin/bash", Link: "bin/sh"},
		{Path: "etc/hostname", Mode: sIFREG | 0o644, Mtime: t0 + 1, Size: 5, Data: []byte("host\n")},
		{Path: "lib", Mode: sIFLNK | 0o777, Mtime: t0, Target: "usr/lib"},
		{Path: "dev/.wh.x", Mode: sIFCHR, Mtime: t0},
		{Path: "cap", Mode: sIFREG | 0o755, UID: 1000, Mtime: t0, Size: 10, Xattrs: map[string][]byte{"security.capability": []byte("c"), "trusted.overlay.metacopy": {}}},
	}
	img := writeImage(t, es)
	sum := sha256.Sum256(img)
	const want = "616caaebc9431c64555c62de23bad7e79c8ae6aeab7f2d4a059badb55d9fc199"
	if got := hex.EncodeToString(sum[:]); got != want {
		t.Errorf("golden image sha256 %s, want %s", got, want)
	}
	checkWithGoErofs(t, img, es)
	checkWithErofsUtils(t, saveImage(t, img))
}

func TestEmptyTree(t *testing.T) {
	img := writeImage(t, nil)
	if len(img) != blkSize {
		t.Errorf("an empty tree takes %d bytes, want one block", len(img))
	}
	checkWithGoErofs(t, img, nil)
	imgPath := saveImage(t, img)
	checkWithErofsUtils(t, imgPath)
	checkKernel(t, imgPath, nil)
}

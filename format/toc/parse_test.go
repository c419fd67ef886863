package toc

import (
	"bytes"
	_ "crypto/sha512" // the digests of TestParseKeepsDigests
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"math"
	"runtime"
	"slices"
	"strings"
	"testing"
	"unsafe"

	"github.com/opencontainers/go-digest"
)

var (
	d1 = digest.FromString("one").String()
	d2 = digest.FromString("two").String()
)

func parseEntries(t testing.TB, dataEnd int64, entries ...WireEntry) (*TOC, error) {
	t.Helper()
	data, err := json.Marshal(JSON{Version: 1, Entries: entries})
	if err != nil {
		t.Fatal(err)
	}
	return Parse(data, dataEnd, Limits{})
}

func withDigest(t testing.TB, c Chunk, d string) Chunk {
	t.Helper()
	if err := c.SetDigest(digest.Digest(d)); err != nil {
		t.Fatal(err)
	}
	return c
}

func TestParseIndexes(t *testing.T) {
	toc, err := parseEntries(t, 1000,
		WireEntry{Name: "./", Type: TypeDir, Mode: 0o700},
		WireEntry{Name: "usr/bin/tool", Type: TypeReg, Size: 10, Offset: 100, ChunkSize: 6, ChunkDigest: d1, Mode: 0o100755},
		WireEntry{Name: "usr/bin/tool", Type: TypeChunk, Offset: 200, ChunkOffset: 6, ChunkDigest: d2},
		WireEntry{Name: "usr/bin/alias", Type: TypeHardlink, LinkName: "./usr/bin/tool"},
		WireEntry{Name: "usr/bin/alias2", Type: TypeHardlink, LinkName: "usr/bin/alias"},
		WireEntry{Name: "usr/", Type: TypeDir, Mode: 0o711, UID: 7},
		WireEntry{Name: "usr/lib/", Type: TypeDir, Mode: 0o755},
		WireEntry{Name: "usr/lib/", Type: TypeDir, Mode: 0o755},
		WireEntry{Name: "link", Type: TypeSymlink, LinkName: "/usr/bin/tool"},
		WireEntry{Name: "dev/null", Type: TypeChar, DevMajor: 1, DevMinor: 3},
		WireEntry{Name: "empty", Type: TypeReg},
	)
	if err != nil {
		t.Fatal(err)
	}
	if toc.Root().Mode != 0o700 || toc.Root().Implicit() {
		t.Errorf("root = %+v, want the listed ./ with mode 0700", toc.Root())
	}
	usr, _ := toc.Lookup("usr")
	if usr.Implicit() || usr.Mode != 0o711 || usr.UID != 7 {
		t.Errorf("usr = %+v: a later listing should replace the implicit directory", usr)
	}
	if bin, ok := toc.Lookup("usr/bin"); !ok || !bin.Implicit() || bin.Type != TypeDir {
		t.Errorf("usr/bin = %+v, %v; want an implicit directory", bin, ok)
	}
	tool, _ := toc.Lookup("usr/bin/tool")
	if tool.Mode != 0o755 || tool.NumLink() != 3 {
		t.Errorf("tool mode %o nlink %d, want 0755 and 3", tool.Mode, tool.NumLink())
	}
	if alias2, _ := toc.Lookup("usr/bin/alias2"); toc.HardlinkTarget(alias2) != tool {
		t.Errorf("a hard link to a hard link does not resolve to the file")
	}
	want := []Chunk{
		withDigest(t, Chunk{Offset: 100, EndOffset: 200, FileOffset: 0, Size: 6}, d1),
		withDigest(t, Chunk{Offset: 200, EndOffset: 1000, FileOffset: 6, Size: 4}, d2),
	}
	if len(tool.Chunks()) != 2 || tool.Chunks()[0] != want[0] || tool.Chunks()[1] != want[1] {
		t.Errorf("chunks = %+v, want %+v", tool.Chunks(), want)
	}
	if i, ok := tool.ChunkAt(7); !ok || i != 1 {
		t.Errorf("ChunkAt(7) = %d, %v", i, ok)
	}
	if _, ok := tool.ChunkAt(10); ok {
		t.Errorf("ChunkAt(10) found a chunk past the end")
	}
	alias, _ := toc.Lookup("usr/bin/alias")
	if toc.HardlinkTarget(alias) != tool {
		t.Errorf("hard link does not resolve to its target")
	}
	var names []string
	for _, c := range usr.Children() {
		names = append(names, c.Base())
	}
	if strings.Join(names, ",") != "bin,lib" {
		t.Errorf("usr children = %v", names)
	}
	if usr.NumLink() != 4 {
		t.Errorf("usr nlink = %d, want 4 (2 + two subdirectories)", usr.NumLink())
	}
	if n := toc.Root().NumLink(); n != 4 {
		t.Errorf("root nlink = %d, want 4 (2 + usr and dev)", n)
	}
	if link, _ := toc.Lookup("link"); link.NumLink() != 1 {
		t.Errorf("a symlink's nlink = %d, want 1", link.NumLink())
	}
	if e, _ := toc.Lookup("empty"); len(e.Chunks()) != 0 {
		t.Errorf("an empty file has chunks: %+v", e.Chunks())
	}
	if null, _ := toc.Lookup("dev/null"); null.Type != TypeChar {
		t.Errorf("dev/null is a %s", null.Type)
	} else if major, minor := null.Dev(); major != 1 || minor != 3 {
		t.Errorf("dev/null is device %d:%d, want 1:3", major, minor)
	}
}

// Entries keep their last name component under a parent pointer: Path
// must give back every cleaned name, and one spelling is kept once.
func TestParsePaths(t *testing.T) {
	names := []string{"./usr/lib/py/__init__.py", "usr/lib/py/sub/__init__.py", "etc//passwd", "usr/lib/py/sub/"}
	var wire []WireEntry
	for _, n := range names {
		typ := TypeReg
		if strings.HasSuffix(n, "/") {
			typ = TypeDir
		}
		wire = append(wire, WireEntry{Name: n, Type: typ})
	}
	toc, err := parseEntries(t, 1000, wire...)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, e := range toc.Entries() {
		got = append(got, e.Path())
		if found, ok := toc.Lookup(e.Path()); !ok || found != e {
			t.Errorf("Lookup(%q) does not find the entry", e.Path())
		}
	}
	want := "usr,usr/lib,usr/lib/py,usr/lib/py/__init__.py,usr/lib/py/sub,usr/lib/py/sub/__init__.py,etc,etc/passwd"
	if strings.Join(got, ",") != want {
		t.Errorf("paths in TOC order:\n%s\nwant\n%s", strings.Join(got, ","), want)
	}
	a, _ := toc.Lookup("usr/lib/py/__init__.py")
	b, _ := toc.Lookup("usr/lib/py/sub/__init__.py")
	if unsafe.StringData(a.Base()) != unsafe.StringData(b.Base()) {
		t.Error("two entries called __init__.py keep the name twice")
	}
	usr, _ := toc.Lookup("usr")
	if !b.Within(usr) || b.Within(b) || usr.Within(b) || !usr.Within(toc.Root()) {
		t.Error("Within does not follow the tree")
	}
	if toc.Root().Path() != "" || toc.Root().Parent() != nil {
		t.Errorf("the root is %q under %v", toc.Root().Path(), toc.Root().Parent())
	}
}

func TestParseSharedMember(t *testing.T) {
	toc, err := parseEntries(t, 500,
		WireEntry{Name: "a", Type: TypeReg, Size: 3, Offset: 10, ChunkDigest: d1},
		WireEntry{Name: "b", Type: TypeReg, Size: 4, Offset: 10, InnerOffset: 512 + 3, ChunkDigest: d2},
	)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := toc.Lookup("b")
	if c := b.Chunks()[0]; c.Offset != 10 || c.EndOffset != 500 || c.InnerOffset != 515 {
		t.Errorf("b's chunk = %+v", c)
	}
}

func TestParseRejects(t *testing.T) {
	reg := func(name string, size, off int64) WireEntry {
		return WireEntry{Name: name, Type: TypeReg, Size: size, Offset: off, ChunkDigest: d1}
	}
	for _, tc := range []struct {
		name    string
		entries []WireEntry
		entry   string // the entry the error must name
		rule    string
	}{
		{"escape", []WireEntry{reg("../etc/passwd", 1, 0)}, "../etc/passwd", `".." component`},
		{"escape inside", []WireEntry{reg("a/../../x", 1, 0)}, "a/../../x", `".." component`},
		{"absolute", []WireEntry{reg("/etc/passwd", 1, 0)}, "/etc/passwd", "absolute"},
		{"nul", []WireEntry{reg("a\x00b", 1, 0)}, "a\x00b", "NUL"},
		{"duplicate", []WireEntry{reg("x", 1, 0), reg("x", 1, 10)}, "x", "listed twice"},
		{"dir then file", []WireEntry{{Name: "x", Type: TypeDir}, reg("x", 1, 0)}, "x", "listed twice"},
		{"conflicting dirs", []WireEntry{{Name: "d", Type: TypeDir, Mode: 0o755}, {Name: "d", Type: TypeDir, Mode: 0o700}}, "d", "different attributes"},
		{"root not dir", []WireEntry{{Name: "./", Type: TypeSymlink, LinkName: "x"}}, "./", "root"},
		{"parent is file", []WireEntry{reg("f", 1, 0), reg("f/x", 1, 10)}, "f/x", "not a directory"},
		{"dangling hardlink", []WireEntry{{Name: "l", Type: TypeHardlink, LinkName: "nowhere"}}, "l", "no earlier entry"},
		{"hardlink to dir", []WireEntry{{Name: "d", Type: TypeDir}, {Name: "l", Type: TypeHardlink, LinkName: "d"}}, "l", "a dir"},
		{"hardlink escape", []WireEntry{{Name: "l", Type: TypeHardlink, LinkName: "../x"}}, "l", "not a name inside"},
		{"orphan chunk", []WireEntry{{Name: "c", Type: TypeChunk, ChunkDigest: d1}}, "c", "does not follow"},
		{"negative size", []WireEntry{reg("x", -1, 0)}, "x", "size"},
		{"huge size", []WireEntry{reg("x", 1<<50, 0)}, "x", "size"},
		{"outside blob", []WireEntry{reg("x", 1, 2000)}, "x", "outside the blob"},
		{"negative offset", []WireEntry{reg("x", 1, -5)}, "x", "outside the blob"},
		{"no chunk digest", []WireEntry{{Name: "x", Type: TypeReg, Size: 1}}, "x", "no chunkDigest"},
		{"bad chunk digest", []WireEntry{{Name: "x", Type: TypeReg, Size: 1, ChunkDigest: "sha256:zz"}}, "x", "digest"},
		{"md5 digest", []WireEntry{{Name: "x", Type: TypeReg, Size: 1, ChunkDigest: "md5:d41d8cd98f00b204e9800998ecf8427e"}}, "x", "digest"},
		{"gap", []WireEntry{
			{Name: "x", Type: TypeReg, Size: 10, ChunkSize: 4, ChunkDigest: d1},
			{Name: "x", Type: TypeChunk, Offset: 10, ChunkOffset: 5, ChunkDigest: d1},
		}, "x", "want 4"},
		{"short cover", []WireEntry{
			{Name: "x", Type: TypeReg, Size: 10, ChunkSize: 4, ChunkDigest: d1},
			{Name: "x", Type: TypeChunk, Offset: 10, ChunkOffset: 4, ChunkSize: 3, ChunkDigest: d1},
		}, "x", "cover 7 of 10"},
		{"chunk past end", []WireEntry{{Name: "x", Type: TypeReg, Size: 4, ChunkSize: 8, ChunkDigest: d1}}, "x", "size 8"},
		{"backwards", []WireEntry{
			{Name: "x", Type: TypeReg, Size: 8, Offset: 50, ChunkSize: 4, ChunkDigest: d1},
			{Name: "x", Type: TypeChunk, Offset: 10, ChunkOffset: 4, ChunkDigest: d1},
		}, "x", "before chunk"},
		{"wrapping chunk sizes", []WireEntry{
			{Name: "x", Type: TypeReg, Size: 10, ChunkSize: 5, ChunkDigest: d1},
			{Name: "x", Type: TypeChunk, ChunkOffset: 5, ChunkSize: math.MaxInt64, ChunkType: ChunkTypeZeros},
			// 5 + MaxInt64 wraps to MinInt64 + 4, and that + MaxInt64 to 3.
			{Name: "x", Type: TypeChunk, ChunkOffset: math.MinInt64 + 4, ChunkSize: math.MaxInt64, ChunkType: ChunkTypeZeros},
			{Name: "x", Type: TypeChunk, Offset: 10, ChunkOffset: 3, ChunkSize: 7, ChunkDigest: d1},
		}, "x", "chunk 1 has size"},
		{"file digest disagrees", []WireEntry{{Name: "x", Type: TypeReg, Size: 1, Digest: d2, ChunkDigest: d1}}, "x", "not the file's digest"},
		{"bomb", []WireEntry{{Name: "x", Type: TypeReg, Size: 1 << 30, ChunkDigest: d1}}, "x", "over the limit"},
		{"inner bomb", []WireEntry{{Name: "x", Type: TypeReg, Size: 1, InnerOffset: 1 << 40, ChunkDigest: d1}}, "x", "over the limit"},
		{"member overlap", []WireEntry{
			{Name: "a", Type: TypeReg, Size: 1, Offset: 0, EndOffset: 50, ChunkDigest: d1},
			{Name: "b", Type: TypeReg, Size: 1, Offset: 40, EndOffset: 60, ChunkDigest: d1},
		}, "a", "overlap"},
		{"inner overlap", []WireEntry{
			{Name: "a", Type: TypeReg, Size: 10, Offset: 0, ChunkDigest: d1},
			{Name: "b", Type: TypeReg, Size: 10, Offset: 0, InnerOffset: 5, ChunkDigest: d1},
		}, "b", "overlap"},
		{"bad device", []WireEntry{{Name: "d", Type: TypeBlock, DevMajor: -1}}, "d", "device"},
		{"bad owner", []WireEntry{{Name: "d", Type: TypeDir, UID: -2}}, "d", "owner"},
		{"bad time", []WireEntry{{Name: "d", Type: TypeDir, ModTime: "yesterday"}}, "d", "modtime"},
		{"bad xattr", []WireEntry{{Name: "d", Type: TypeDir, Xattrs: map[string][]byte{"": nil}}}, "d", "xattr"},
		{"empty symlink", []WireEntry{{Name: "s", Type: TypeSymlink}}, "s", "symlink target"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := parseEntries(t, 1000, tc.entries...)
			var te *Error
			if !errors.As(err, &te) {
				t.Fatalf("err = %v, want a *toc.Error", err)
			}
			if te.Entry != tc.entry || !strings.Contains(te.Rule, tc.rule) {
				t.Errorf("err = %v; want entry %q and a rule mentioning %q", err, tc.entry, tc.rule)
			}
		})
	}
}

func TestParseRejectsUnknownType(t *testing.T) {
	_, err := Parse([]byte(`{"version":1,"entries":[{"name":"x","type":"socket"}]}`), 0, Limits{})
	var te *Error
	if !errors.As(err, &te) || te.Entry != "x" || !strings.Contains(te.Rule, "unknown type") {
		t.Errorf("err = %v, want entry \"x\": unknown type", err)
	}
}

// TestParseKeepsDigests: digests are kept as bytes (sha256) or as they
// are (sha512), and read back the same; a one-chunk file shares its
// chunk's.
func TestParseKeepsDigests(t *testing.T) {
	d512 := digest.SHA512.FromString("big").String()
	whole := digest.FromString("whole").String()
	empty := digest.FromBytes(nil).String()
	toc, err := parseEntries(t, 1000,
		WireEntry{Name: "one", Type: TypeReg, Size: 3, Offset: 0, ChunkDigest: d1, Digest: d1},
		WireEntry{Name: "two", Type: TypeReg, Size: 10, Offset: 100, ChunkSize: 6, ChunkDigest: d512, Digest: whole},
		WireEntry{Name: "two", Type: TypeChunk, Offset: 200, ChunkOffset: 6, ChunkDigest: d2},
		WireEntry{Name: "empty", Type: TypeReg, Digest: empty},
		WireEntry{Name: "none", Type: TypeReg},
		WireEntry{Name: "mixed", Type: TypeReg, Size: 3, Offset: 300, ChunkDigest: d1, Digest: d512},
		WireEntry{Name: "empty512", Type: TypeReg, Digest: digest.SHA512.FromBytes(nil).String()},
	)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name   string
		file   string
		chunks []string
	}{
		{"one", d1, []string{d1}},
		{"two", whole, []string{d512, d2}},
		{"empty", empty, nil},
		{"none", "", nil},
		{"mixed", d512, []string{d1}},
		{"empty512", digest.SHA512.FromBytes(nil).String(), nil},
	} {
		e, _ := toc.Lookup(tc.name)
		if got := e.Digest(); string(got) != tc.file {
			t.Errorf("%s: digest %q, want %q", tc.name, got, tc.file)
		}
		var got []string
		for _, c := range e.Chunks() {
			got = append(got, string(c.Digest()))
		}
		if !slices.Equal(got, tc.chunks) {
			t.Errorf("%s: chunk digests %q, want %q", tc.name, got, tc.chunks)
		}
	}
	if e, _ := toc.Lookup("one"); e.more != nil {
		t.Errorf("one: a digest equal to its chunk's is kept twice")
	}
	if _, err := parseEntries(t, 1000, WireEntry{Name: "z", Type: TypeReg, Size: 1, ChunkDigest: "sha256:" + strings.Repeat("0", 64)}); err == nil {
		t.Errorf("an all-zero sha256 chunk digest was accepted")
	}
	// The whole file is its one chunk, so their digests must agree: the
	// empty file's is no exception.
	for _, file := range []string{d2, empty} {
		_, err := parseEntries(t, 1000, WireEntry{Name: "f", Type: TypeReg, Size: 3, ChunkDigest: d1, Digest: file})
		if err == nil || !strings.Contains(err.Error(), "is not the file's digest") {
			t.Errorf("a one-chunk file of digest %s over a chunk of %s: %v, want a mismatch", file, d1, err)
		}
	}
}

func TestParseRejectsDocument(t *testing.T) {
	for name, data := range map[string]string{
		"not json":    "{",
		"version 2":   `{"version":2,"entries":[]}`,
		"wrong shape": `{"version":1,"entries":{}}`,
	} {
		if _, err := Parse([]byte(data), 0, Limits{}); err == nil {
			t.Errorf("%s: parsed", name)
		}
	}
	big := `{"version":1,"entries":[` + strings.Repeat(`{"name":"d","type":"dir"},`, 10) + `{"name":"d","type":"dir"}]}`
	if _, err := Parse([]byte(big), 0, Limits{MaxEntries: 5}); err == nil || !strings.Contains(err.Error(), "limit") {
		t.Errorf("too many entries: err = %v", err)
	}
	if _, err := Parse([]byte(big), 0, Limits{MaxTOCBytes: 10}); err == nil || !strings.Contains(err.Error(), "limit") {
		t.Errorf("too many bytes: err = %v", err)
	}
}

func TestCleanTarName(t *testing.T) {
	for in, want := range map[string]string{
		"./":        "",
		".":         "",
		"/":         "",
		"./a/b/":    "a/b",
		"/etc/x":    "etc/x",
		".//./a":    "a",
		"a":         "a",
		"../escape": "../escape", // confined by Parse, not here
	} {
		if got := CleanTarName(in); got != want {
			t.Errorf("CleanTarName(%q) = %q, want %q", in, got, want)
		}
	}
}

// FuzzParse feeds arbitrary TOC JSON to Parse: it must never panic, and what
// it accepts must hold its promises. The checks are written so that they
// cannot wrap themselves: a sum of TOC numbers proves nothing.
func FuzzParse(f *testing.F) {
	for _, entries := range [][]WireEntry{
		{
			{Name: "a/", Type: TypeDir},
			{Name: "a/f", Type: TypeReg, Size: 10, Offset: 10, ChunkSize: 5, ChunkDigest: d1},
			{Name: "a/f", Type: TypeChunk, Offset: 20, ChunkOffset: 5, ChunkDigest: d2},
			{Name: "a/h", Type: TypeHardlink, LinkName: "a/f"},
			{Name: "s", Type: TypeReg, Size: 3, Offset: 20, InnerOffset: 1024, ChunkDigest: d1},
			{Name: "z", Type: TypeReg, Size: 3, Offset: 30, EndOffset: 35, ChunkDigest: d1},
		},
		{
			{Name: "x", Type: TypeReg, Size: 10, ChunkSize: 5, ChunkDigest: d1},
			{Name: "x", Type: TypeChunk, ChunkOffset: 5, ChunkSize: math.MaxInt64, ChunkType: ChunkTypeZeros},
			{Name: "x", Type: TypeChunk, ChunkOffset: math.MinInt64 + 4, ChunkSize: math.MaxInt64, ChunkType: ChunkTypeZeros},
			{Name: "x", Type: TypeChunk, Offset: 10, ChunkOffset: 3, ChunkSize: 7, ChunkDigest: d1},
		},
		{
			{Name: "hole", Type: TypeReg, Size: 1 << 24, ChunkSize: 1 << 20, ChunkType: ChunkTypeZeros},
			{Name: "hole", Type: TypeChunk, Offset: 40, ChunkOffset: 1 << 20, ChunkSize: 100, ChunkDigest: d1},
			{Name: "hole", Type: TypeChunk, ChunkOffset: 1<<20 + 100, ChunkType: ChunkTypeZeros},
		},
		{
			{Name: "./", Type: TypeDir, Xattrs: map[string][]byte{"trusted.overlay.opaque": []byte("y"), "user.overlay.opaque": []byte("y")}},
			{Name: "d/e/f/g", Type: TypeDir, Xattrs: map[string][]byte{"trusted.overlay.redirect": []byte("/x"), "security.capability": {1}}},
			{Name: "d/e/f/g/h", Type: TypeSymlink, LinkName: "../../..", Xattrs: map[string][]byte{"trusted.overlay.metacopy": nil}},
		},
	} {
		seed, _ := json.Marshal(JSON{Version: 1, Entries: entries})
		f.Add(seed, int64(100))
	}
	f.Add([]byte(`{"version":1,"entries":[{"name":"x","type":"chunk"}]}`), int64(0))
	limits := Limits{MaxTOCBytes: 1 << 20, MaxEntries: 1000, MaxChunkBytes: 1 << 16, MaxMemberBytes: 1 << 17}
	f.Fuzz(func(t *testing.T, data []byte, dataEnd int64) {
		toc, err := Parse(data, dataEnd, limits)
		if err != nil {
			var te *Error
			if !errors.As(err, &te) {
				t.Fatalf("error %v is not a *toc.Error", err)
			}
			return
		}
		if toc.Len() > limits.MaxEntries {
			t.Fatalf("%d entries (implicit directories included), over the limit of %d", toc.Len(), limits.MaxEntries)
		}
		for k := range toc.Root().Xattrs() {
			if strings.HasPrefix(k, "trusted.") || strings.HasPrefix(k, "user.overlay.") {
				t.Fatalf("the root keeps xattr %s", k)
			}
		}
		for _, e := range toc.Entries() {
			if strings.HasPrefix(e.Path(), "/") || strings.Contains("/"+e.Path()+"/", "/../") || e.Path() == "" {
				t.Fatalf("accepted name %q", e.Path())
			}
			for k := range e.Xattrs() {
				if strings.HasPrefix(k, "trusted.") || strings.HasPrefix(k, "user.overlay.") {
					t.Fatalf("%s keeps xattr %s", e.Path(), k)
				}
			}
			if e.Size < 0 || e.Size > DefaultLimits.MaxFileSize {
				t.Fatalf("%s: size %d", e.Path(), e.Size)
			}
			// covered stays in 0..e.Size as long as every chunk checks.
			var covered int64
			lastOffset := int64(0)
			for i, c := range e.Chunks() {
				if c.FileOffset != covered || c.Size <= 0 || c.Size > e.Size-covered {
					t.Fatalf("%s: chunk %d %+v is not the next piece of the %d-byte file after %d", e.Path(), i, c, e.Size, covered)
				}
				covered += c.Size
				if c.Zero {
					continue
				}
				if c.Offset < 0 || c.Offset >= c.EndOffset || c.EndOffset > dataEnd {
					t.Fatalf("%s: chunk %d %+v outside 0..%d", e.Path(), i, c, dataEnd)
				}
				if c.EndOffset-c.Offset > limits.MaxMemberBytes {
					t.Fatalf("%s: chunk %d's member spans %d bytes, over %d", e.Path(), i, c.EndOffset-c.Offset, limits.MaxMemberBytes)
				}
				if c.Size > limits.MaxChunkBytes || int64(c.InnerOffset) > limits.MaxChunkBytes-c.Size {
					t.Fatalf("%s: chunk %d needs %d+%d bytes of its member", e.Path(), i, c.InnerOffset, c.Size)
				}
				if c.Offset < lastOffset {
					t.Fatalf("%s: chunk %d lies before the previous one in the blob", e.Path(), i)
				}
				if err := c.Digest().Validate(); err != nil {
					t.Fatalf("%s: chunk %d digest: %v", e.Path(), i, err)
				}
				lastOffset = c.Offset
			}
			if len(e.Chunks()) > 0 && covered != e.Size {
				t.Fatalf("%s: chunks cover %d of %d", e.Path(), covered, e.Size)
			}
			if e.Type == TypeReg && e.Size > 0 && len(e.Chunks()) == 0 {
				t.Fatalf("%s: %d bytes and no chunks", e.Path(), e.Size)
			}
			if parent, ok := toc.Lookup(parentName(e.Path())); !ok || parent.Type != TypeDir {
				t.Fatalf("%s: no parent directory", e.Path())
			}
		}
	})
}

func parentName(name string) string {
	if i := strings.LastIndexByte(name, '/'); i >= 0 {
		return name[:i]
	}
	return ""
}

func TestParseHoles(t *testing.T) {
	// A hole is bounded by its file alone: a file of the largest size may
	// be one hole, whatever offsets the TOC writes for it.
	max := DefaultLimits.MaxFileSize
	toc, err := parseEntries(t, 100,
		WireEntry{Name: "sparse", Type: TypeReg, Size: max, Offset: 1 << 62, InnerOffset: -1, ChunkType: ChunkTypeZeros},
		WireEntry{Name: "mixed", Type: TypeReg, Size: 10, ChunkSize: 4, ChunkType: ChunkTypeZeros},
		WireEntry{Name: "mixed", Type: TypeChunk, Offset: 50, ChunkOffset: 4, ChunkSize: 6, ChunkDigest: d1},
	)
	if err != nil {
		t.Fatal(err)
	}
	sparse, _ := toc.Lookup("sparse")
	if want := (Chunk{Size: max, Zero: true}); len(sparse.Chunks()) != 1 || sparse.Chunks()[0] != want {
		t.Errorf("sparse chunks = %+v, want one hole %+v", sparse.Chunks(), want)
	}
	mixed, _ := toc.Lookup("mixed")
	want := []Chunk{{Size: 4, Zero: true}, withDigest(t, Chunk{Offset: 50, EndOffset: 100, FileOffset: 4, Size: 6}, d1)}
	if len(mixed.Chunks()) != 2 || mixed.Chunks()[0] != want[0] || mixed.Chunks()[1] != want[1] {
		t.Errorf("mixed chunks = %+v, want %+v", mixed.Chunks(), want)
	}

	for _, tc := range []struct {
		name    string
		entries []WireEntry
		rule    string
	}{
		{"hole past the end", []WireEntry{{Name: "x", Type: TypeReg, Size: 10, ChunkSize: 11, ChunkType: ChunkTypeZeros}}, "size 11"},
		{"huge hole", []WireEntry{
			{Name: "x", Type: TypeReg, Size: 10, ChunkSize: 5, ChunkDigest: d1},
			{Name: "x", Type: TypeChunk, ChunkOffset: 5, ChunkSize: math.MaxInt64, ChunkType: ChunkTypeZeros},
		}, "size 9223372036854775807"},
		{"negative hole", []WireEntry{{Name: "x", Type: TypeReg, Size: 10, ChunkSize: -5, ChunkType: ChunkTypeZeros}}, "size -5"},
		{"hole out of place", []WireEntry{
			{Name: "x", Type: TypeReg, Size: 10, ChunkSize: 5, ChunkDigest: d1},
			{Name: "x", Type: TypeChunk, ChunkOffset: 7, ChunkSize: 3, ChunkType: ChunkTypeZeros},
		}, "want 5"},
		{"implicit size from a wrapped offset", []WireEntry{
			{Name: "x", Type: TypeReg, Size: 10, ChunkType: ChunkTypeZeros},
			{Name: "x", Type: TypeChunk, ChunkOffset: math.MinInt64, ChunkType: ChunkTypeZeros},
		}, "outside the 10-byte file"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := parseEntries(t, 1000, tc.entries...)
			var te *Error
			if !errors.As(err, &te) || te.Entry != "x" || !strings.Contains(te.Rule, tc.rule) {
				t.Errorf("err = %v; want one naming x, with %q", err, tc.rule)
			}
		})
	}
}

func TestParseBoundsMembers(t *testing.T) {
	limits := Limits{MaxChunkBytes: 1 << 10, MaxMemberBytes: 4 << 10}
	parse := func(dataEnd int64, entries ...WireEntry) error {
		data, err := json.Marshal(JSON{Version: 1, Entries: entries})
		if err != nil {
			t.Fatal(err)
		}
		_, err = Parse(data, dataEnd, limits)
		return err
	}
	if err := parse(100<<10,
		WireEntry{Name: "a", Type: TypeReg, Size: 10, Offset: 0, EndOffset: 4 << 10, ChunkDigest: d1},
		WireEntry{Name: "b", Type: TypeReg, Size: 10, Offset: 96 << 10, ChunkDigest: d1},
	); err != nil {
		t.Errorf("members of exactly the limit: %v", err)
	}
	for name, tc := range map[string]struct {
		dataEnd int64
		entries []WireEntry
		entry   string
	}{
		"end given": {1 << 30, []WireEntry{{Name: "a", Type: TypeReg, Size: 10, Offset: 0, EndOffset: 4<<10 + 1, ChunkDigest: d1}}, "a"},
		"up to the data's end": {1 << 40, []WireEntry{
			{Name: "a", Type: TypeReg, Size: 10, Offset: 0, EndOffset: 100, ChunkDigest: d1},
			{Name: "b", Type: TypeReg, Size: 10, Offset: 100, ChunkDigest: d1},
		}, "b"},
		"up to the next member": {1 << 40, []WireEntry{
			{Name: "a", Type: TypeReg, Size: 10, Offset: 0, ChunkDigest: d1},
			{Name: "b", Type: TypeReg, Size: 10, Offset: 64 << 30, EndOffset: 64<<30 + 100, ChunkDigest: d1},
		}, "a"},
	} {
		err := parse(tc.dataEnd, tc.entries...)
		var te *Error
		if !errors.As(err, &te) || te.Entry != tc.entry || !strings.Contains(te.Rule, "over the limit of 4096") {
			t.Errorf("%s: err = %v, want one naming %s and the member limit", name, err, tc.entry)
		}
	}
	if got := (Limits{MaxChunkBytes: 8 << 20}).WithDefaults().MaxMemberBytes; got != 9<<20 {
		t.Errorf("the default member limit for 8 MiB chunks is %d, want 9 MiB", got)
	}
	if got := (Limits{}).WithDefaults(); got != DefaultLimits {
		t.Errorf("Limits{}.WithDefaults() = %+v, want DefaultLimits %+v", got, DefaultLimits)
	}
}

func TestParseDropsOverlayXattrs(t *testing.T) {
	forged := map[string][]byte{
		"trusted.overlay.opaque":   []byte("y"),
		"trusted.overlay.redirect": []byte("/etc"),
		"trusted.overlay.metacopy": nil,
		"trusted.overlay.origin":   []byte("x"),
		"trusted.other":            []byte("x"),
		"user.overlay.opaque":      []byte("y"),
	}
	kept := map[string][]byte{
		"security.capability": {1, 0, 0, 2},
		"user.comment":        []byte("hello"),
		"user.overlayish":     []byte("not overlay's"),
	}
	all := maps.Clone(forged)
	maps.Copy(all, kept)
	toc, err := parseEntries(t, 100,
		WireEntry{Name: "./", Type: TypeDir, Xattrs: forged},
		WireEntry{Name: "dir", Type: TypeDir, Xattrs: forged},
		WireEntry{Name: "dir", Type: TypeDir, Xattrs: forged}, // listed twice: compared once dropped
		WireEntry{Name: "file", Type: TypeReg, Size: 1, ChunkDigest: d1, Xattrs: all},
	)
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"", "dir", "file"} {
		e, _ := toc.Lookup(name)
		for k := range e.Xattrs() {
			if OverlayXattr(k) {
				t.Errorf("%q keeps xattr %s", name, k)
			}
		}
	}
	if dir, _ := toc.Lookup("dir"); dir.Xattrs() != nil {
		t.Errorf("dir xattrs = %q, want none", dir.Xattrs())
	}
	if file, _ := toc.Lookup("file"); !maps.EqualFunc(file.Xattrs(), kept, bytes.Equal) {
		t.Errorf("file xattrs = %q, want %q", file.Xattrs(), kept)
	}
}

// allocated is how many bytes f allocates.
func allocated(f func()) uint64 {
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	f()
	runtime.ReadMemStats(&after)
	return after.TotalAlloc - before.TotalAlloc
}

func TestParseCountsImplicitDirectories(t *testing.T) {
	deep := func(paths, depth int) []byte {
		var b strings.Builder
		b.WriteString(`{"version":1,"entries":[`)
		for i := range paths {
			if i > 0 {
				b.WriteByte(',')
			}
			fmt.Fprintf(&b, `{"name":"p%d%s","type":"dir"}`, i, strings.Repeat("/a", depth))
		}
		b.WriteString(`]}`)
		return []byte(b.String())
	}
	// 10 paths of 10 directories are 110 entries, 100 of them implicit.
	if _, err := Parse(deep(10, 10), 0, Limits{MaxEntries: 110}); err != nil {
		t.Errorf("110 entries in a limit of 110: %v", err)
	}
	_, err := Parse(deep(10, 10), 0, Limits{MaxEntries: 109})
	var te *Error
	if !errors.As(err, &te) || !strings.Contains(te.Rule, "implicit directory") || !strings.Contains(te.Rule, "limit of 109") {
		t.Errorf("111 entries in a limit of 109: err = %v", err)
	}

	// 500 paths 2000 deep: 1,000,500 entries whose names add up to 2 GB,
	// from 2 MB of JSON (4 KB gzipped). The names' budget stops it before
	// the count of entries does, and early.
	data := deep(500, 2000)
	n := allocated(func() { _, err = Parse(data, 0, Limits{}) })
	if !errors.As(err, &te) || !strings.Contains(te.Rule, "names of the entries") {
		t.Errorf("deep paths: err = %v, want the names' budget", err)
	}
	if n > 64<<20 {
		t.Errorf("deep paths: Parse allocated %d MiB, want it to stop before 64", n>>20)
	}
}

func TestParseAllocatesWhatItDecodes(t *testing.T) {
	// Counting "name" keys is no measure of entries: one entry naming
	// itself 100,000 times once made 100,000 entries' room.
	data := []byte(`{"version":1,"entries":[{` + strings.Repeat(`"name":"a",`, 100000) + `"type":"dir"}]}`)
	var err error
	n := allocated(func() { _, err = Parse(data, 0, Limits{}) })
	if err == nil {
		t.Fatal("a TOC with duplicate keys parsed")
	}
	if limit := 4*len(data) + 1<<20; n > uint64(limit) {
		t.Errorf("Parse of %d bytes allocated %d, want at most %d", len(data), n, limit)
	}

	// A flood of the smallest entries stops at MaxEntries, not at the end
	// of the array.
	data = []byte(`{"version":1,"entries":[` + strings.Repeat(`{"name":"d","type":"dir"},`, 100000) + `{"name":"d","type":"dir"}]}`)
	n = allocated(func() { _, err = Parse(data, 0, Limits{MaxEntries: 100}) })
	if err == nil || !strings.Contains(err.Error(), "limit of 100") {
		t.Errorf("100,001 entries in a limit of 100: err = %v", err)
	}
	if n > 1<<20 {
		t.Errorf("Parse allocated %d bytes for 100 entries, want it to stop at the limit", n)
	}
}

// TestParseEntryIndex: Entry(i) is the i-th entry Entries lists, of inode
// i+2, across the blocks entries are kept in; a directory listed twice
// takes one place.
func TestParseEntryIndex(t *testing.T) {
	for _, n := range []int{0, 1, 15, 16, 17, 239, 240, 241, 495, 496, 1000, 3000} {
		var wire []WireEntry
		for i := range n {
			wire = append(wire, WireEntry{Name: fmt.Sprintf("d%d/", i), Type: TypeDir})
			if i%100 == 7 {
				wire = append(wire, WireEntry{Name: fmt.Sprintf("d%d/", i), Type: TypeDir})
			}
		}
		toc, err := parseEntries(t, 1000, wire...)
		if err != nil {
			t.Fatal(err)
		}
		if toc.Len() != n {
			t.Errorf("%d directories: Len %d", n, toc.Len())
		}
		count := 0
		for i, e := range toc.Entries() {
			if toc.Entry(i) != e || e.Ino() != uint64(i)+2 || e.Path() != fmt.Sprintf("d%d", i) {
				t.Fatalf("%d directories: entry %d is %q of inode %d; Entry(%d) is %q", n, i, e.Path(), e.Ino(), i, toc.Entry(i).Path())
			}
			count++
		}
		if count != n {
			t.Errorf("%d directories: Entries lists %d", n, count)
		}
	}
}

// TestEntrySize: a mounted layer holds an Entry per file and a Chunk per
// chunk, in arrays: a field more must find its room in their padding.
func TestEntrySize(t *testing.T) {
	if got := unsafe.Sizeof(Entry{}); got != 88 {
		t.Errorf("an Entry takes %d bytes, want 88", got)
	}
	if got := unsafe.Sizeof(Chunk{}); got != 80 {
		t.Errorf("a Chunk takes %d bytes, want 80", got)
	}
}

func TestFileChunkSize(t *testing.T) {
	for _, tc := range []struct {
		size   int64
		chunks int
		chunk  int64
		want   int64
	}{
		{size: 1 << 20, chunks: 0, chunk: SmallChunkSize, want: SmallChunkSize},
		{size: SmallChunkBudget * SmallChunkSize, chunks: 0, chunk: SmallChunkSize, want: SmallChunkSize},   // exactly the budget
		{size: SmallChunkBudget*SmallChunkSize + 1, chunks: 0, chunk: SmallChunkSize, want: LargeChunkSize}, // one chunk over
		{size: 1, chunks: SmallChunkBudget - 1, chunk: SmallChunkSize, want: SmallChunkSize},
		{size: 1, chunks: SmallChunkBudget, chunk: SmallChunkSize, want: LargeChunkSize},
		{size: 1 << 40, chunks: SmallChunkBudget, chunk: 8 << 20, want: 8 << 20}, // large already
		{size: 1 << 30, chunks: 0, chunk: 4 << 10, want: LargeChunkSize},
	} {
		if got := FileChunkSize(tc.size, tc.chunks, tc.chunk); got != tc.want {
			t.Errorf("FileChunkSize(%d, %d, %d) = %d, want %d", tc.size, tc.chunks, tc.chunk, got, tc.want)
		}
	}
}

package toc

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"

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
	if toc.Root().Mode != 0o700 || toc.Root().Implicit {
		t.Errorf("root = %+v, want the listed ./ with mode 0700", toc.Root())
	}
	usr, _ := toc.Lookup("usr")
	if usr.Implicit || usr.Mode != 0o711 || usr.UID != 7 {
		t.Errorf("usr = %+v: a later listing should replace the implicit directory", usr)
	}
	if bin, ok := toc.Lookup("usr/bin"); !ok || !bin.Implicit || bin.Type != TypeDir {
		t.Errorf("usr/bin = %+v, %v; want an implicit directory", bin, ok)
	}
	tool, _ := toc.Lookup("usr/bin/tool")
	if tool.Mode != 0o755 || tool.NumLink != 3 {
		t.Errorf("tool mode %o nlink %d, want 0755 and 3", tool.Mode, tool.NumLink)
	}
	if alias2, _ := toc.Lookup("usr/bin/alias2"); toc.HardlinkTarget(alias2) != tool {
		t.Errorf("a hard link to a hard link does not resolve to the file")
	}
	want := []Chunk{
		{Offset: 100, EndOffset: 200, FileOffset: 0, Size: 6, Digest: digest.Digest(d1)},
		{Offset: 200, EndOffset: 1000, FileOffset: 6, Size: 4, Digest: digest.Digest(d2)},
	}
	if len(tool.Chunks) != 2 || tool.Chunks[0] != want[0] || tool.Chunks[1] != want[1] {
		t.Errorf("chunks = %+v, want %+v", tool.Chunks, want)
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
	if usr.NumLink != 4 {
		t.Errorf("usr nlink = %d, want 4 (2 + two subdirectories)", usr.NumLink)
	}
	if e, _ := toc.Lookup("empty"); len(e.Chunks) != 0 {
		t.Errorf("an empty file has chunks: %+v", e.Chunks)
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
	if c := b.Chunks[0]; c.Offset != 10 || c.EndOffset != 500 || c.InnerOffset != 515 {
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
		{"unknown type", []WireEntry{{Name: "x", Type: "socket"}}, "x", "unknown type"},
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
// it accepts must hold its promises.
func FuzzParse(f *testing.F) {
	seed, _ := json.Marshal(JSON{Version: 1, Entries: []WireEntry{
		{Name: "a/", Type: TypeDir},
		{Name: "a/f", Type: TypeReg, Size: 10, Offset: 10, ChunkSize: 5, ChunkDigest: d1},
		{Name: "a/f", Type: TypeChunk, Offset: 20, ChunkOffset: 5, ChunkDigest: d2},
		{Name: "a/h", Type: TypeHardlink, LinkName: "a/f"},
		{Name: "s", Type: TypeReg, Size: 3, Offset: 20, InnerOffset: 1024, ChunkDigest: d1},
		{Name: "z", Type: TypeReg, Size: 3, Offset: 30, EndOffset: 35, ChunkDigest: d1},
	}})
	f.Add(seed, int64(100))
	f.Add([]byte(`{"version":1,"entries":[{"name":"x","type":"chunk"}]}`), int64(0))
	f.Fuzz(func(t *testing.T, data []byte, dataEnd int64) {
		toc, err := Parse(data, dataEnd, Limits{MaxTOCBytes: 1 << 20, MaxEntries: 1000})
		if err != nil {
			return
		}
		for _, e := range toc.Entries {
			if strings.HasPrefix(e.Name, "/") || strings.Contains("/"+e.Name+"/", "/../") || e.Name == "" {
				t.Fatalf("accepted name %q", e.Name)
			}
			var covered int64
			for _, c := range e.Chunks {
				if c.FileOffset != covered || c.Size <= 0 {
					t.Fatalf("%s: chunk %+v breaks the cover", e.Name, c)
				}
				if !c.Zero && (c.Offset < 0 || c.EndOffset > dataEnd || c.Offset >= c.EndOffset) {
					t.Fatalf("%s: chunk %+v outside 0..%d", e.Name, c, dataEnd)
				}
				covered += c.Size
			}
			if len(e.Chunks) > 0 && covered != e.Size {
				t.Fatalf("%s: chunks cover %d of %d", e.Name, covered, e.Size)
			}
			if parent, ok := toc.Lookup(parentName(e.Name)); !ok || parent.Type != TypeDir {
				t.Fatalf("%s: no parent directory", e.Name)
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

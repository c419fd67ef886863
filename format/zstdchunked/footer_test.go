package zstdchunked

import (
	"bytes"
	"encoding/binary"
	"strings"
	"testing"

	"github.com/lazypull/lazypull/format/toc"
)

// Every footer that writers have written opens: 64 bytes (containers/storage
// now), 40 bytes (stargz-snapshotter, early containers/storage, and us),
// with either magic.
func TestFooterVersions(t *testing.T) {
	tarball := richLayer(t, 4096)
	blob, _ := writeBlob(t, tarball, WithChunkSize(4096))
	data, manifest := blobParts(t, blob)
	for _, v := range []struct {
		size  int
		magic []byte
	}{{64, footerMagic}, {64, legacyFooterMagic}, {40, footerMagic}, {40, legacyFooterMagic}} {
		b, annotations := withManifest(t, data, manifest, v.size, v.magic)
		f, err := ParseFooter(b[len(b)-TailSize:])
		if err != nil || f.Size != v.size {
			t.Fatalf("%d-byte %q footer: %+v, %v", v.size, v.magic, f, err)
		}
		checkLayer(t, openBlob(t, b), tarball)
		checkLayer(t, openBlob(t, b, WithAnnotations(annotations)), tarball)
		// A blob no larger than its footer frame and manifest.
		if _, err := ParseFooter(b[len(b)-v.size-skippableHeaderSize:]); err != nil {
			t.Errorf("%d-byte footer in a short tail: %v", v.size, err)
		}
	}
	// What we write is the footer stargz-snapshotter reads.
	if f, _ := ParseFooter(blob[len(blob)-TailSize:]); f.Size != 40 || !bytes.Equal(blob[len(blob)-8:], legacyFooterMagic) {
		t.Errorf("we write a %d-byte footer ending %q", f.Size, blob[len(blob)-8:])
	}
}

func TestParseFooterRefuses(t *testing.T) {
	good := encodeFooter(Position{Offset: 100, Length: 10, UncompressedLength: 20})
	for name, edit := range map[string]func([]byte){
		"bad magic":         func(b []byte) { b[len(b)-1] = 'X' },
		"not skippable":     func(b []byte) { b[0] = 0 },
		"wrong frame size":  func(b []byte) { b[4] = 63 },
		"manifest type 2":   func(b []byte) { b[8+24] = 2 },
		"negative offset":   func(b []byte) { binary.LittleEndian.PutUint64(b[8:], 1<<63) },
		"negative length":   func(b []byte) { binary.LittleEndian.PutUint64(b[16:], 1<<63+5) },
		"too short to tell": func(b []byte) {},
	} {
		b := append([]byte(nil), good...)
		edit(b)
		if name == "too short to tell" {
			b = b[len(b)-40:]
		}
		if _, err := ParseFooter(b); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
}

func TestManifestPositionAnnotation(t *testing.T) {
	for _, s := range []string{"", "1:2:3", "1:2:3:4:5", "a:2:3:1", "1:-2:3:1", "1:2:3:2", "1:2:3:1 ", "99999999999999999999:1:1:1"} {
		if _, err := parseManifestPosition(s); err == nil {
			t.Errorf("%q: no error", s)
		}
	}
	p, err := parseManifestPosition("10:20:30:1")
	if err != nil || p != (Position{10, 20, 30}) {
		t.Errorf("10:20:30:1: %+v, %v", p, err)
	}
}

// containers/storage writes some things otherwise than format/toc
// expects; Open rewrites them (see normalizeManifest).
func TestContainersStorageManifestQuirks(t *testing.T) {
	tarball := buildTar(t, []member{reg("one", content(1, 3000, true)), reg("three", content(2, 3*4096, false)), reg("after", []byte("x"))})
	blob, _ := writeBlob(t, tarball, WithChunkSize(4096))
	data, manifest := blobParts(t, blob)
	quirky := editManifest(t, manifest, func(doc *toc.JSON) {
		doc.Version = 2 // containers/storage's layers without tar-split
		es := doc.Entries
		for i := range es {
			switch {
			case es[i].Name == "one" || es[i].Name == "after":
				es[i].ChunkDigest = "" // a single chunk has only the file digest
			case es[i].Name == "three" && es[i].Type == toc.TypeReg:
				es[i].EndOffset = es[i+2].EndOffset // the first entry ends where the file does
			case es[i].Name == "three":
				es[i].EndOffset = 0 // chunk entries have no ends
			}
		}
	})
	normalized, changed, err := normalizeManifest(quirky)
	if err != nil || !changed {
		t.Fatalf("rewriting: %v, changed %v", err, changed)
	}
	if _, err := toc.Parse(normalized, int64(len(data)), toc.DefaultLimits); err != nil {
		t.Fatalf("rewritten manifest: %v", err)
	}
	b, annotations := withManifest(t, data, quirky, 64, footerMagic)
	r := openBlob(t, b, WithAnnotations(annotations))
	checkLayer(t, r, tarball)
	e, _ := r.TOC().Lookup("three")
	for i, c := range e.Chunks() {
		if c.EndOffset-c.Offset > 4096+100 {
			t.Errorf("chunk %d of three spans %d..%d: more than its frame", i, c.Offset, c.EndOffset)
		}
	}

	// Our own manifests need no rewriting.
	if _, changed, _ := normalizeManifest(manifest); changed {
		t.Error("our manifest was rewritten")
	}
	if _, _, err := normalizeManifest([]byte(`{"version":1,"entries":[{"name":"a","name":"b"}]}`)); err == nil || !strings.Contains(err.Error(), "JSON") {
		t.Errorf("duplicate keys: %v, want an error as toc.Parse gives", err)
	}
}

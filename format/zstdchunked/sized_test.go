package zstdchunked

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"io"
	"runtime"
	"strings"
	"testing"

	"github.com/klauspost/compress/zstd"
	"github.com/opencontainers/go-digest"

	"github.com/lazypull/lazypull/format/toc"
)

// rawFrame is a zstd frame of one raw block holding payload, whose header
// declares the window descriptor wd and the content size fcs, whatever
// the payload is.
func rawFrame(wd byte, fcs uint64, payload string) []byte {
	f := binary.LittleEndian.AppendUint32(nil, 0xFD2FB528)
	f = append(f, 3<<6, wd) // an 8-byte content size; not a single segment
	f = binary.LittleEndian.AppendUint64(f, fcs)
	bh := 1 | len(payload)<<3 // the last block, raw
	f = append(f, byte(bh), byte(bh>>8), byte(bh>>16))
	return append(f, payload...)
}

const window1MiB = 10 << 3 // window descriptor: 2^(10+10) bytes

// TestDeclaredSize: a frame that declares its content size is decoded
// whole when that size is the chunk's, and only the frame: the span may go
// on with other frames.
func TestDeclaredSize(t *testing.T) {
	hello := rawFrame(window1MiB, 5, "hello")
	for _, tc := range []struct {
		name       string
		compressed []byte
		inner      uint32
		size       int64
		want       string
	}{
		{"whole", hello, 0, 5, "hello"},
		{"inside", hello, 1, 3, "ell"},
		{"prefix", hello, 0, 4, "hell"},
		{"more frames after", append(append([]byte(nil), hello...), rawFrame(window1MiB, 5, "world")...), 0, 5, "hello"},
		{"a skippable frame after", appendSkippableFrame(append([]byte(nil), hello...), []byte("xyz")), 0, 5, "hello"},
	} {
		c := withDigest(toc.Chunk{EndOffset: int64(len(tc.compressed)), InnerOffset: tc.inner, Size: tc.size}, digest.FromString(tc.want))
		if got, err := ReadChunk(nil, tc.compressed, c); err != nil || string(got) != tc.want {
			t.Errorf("%s: %q, %v; want %q", tc.name, got, err, tc.want)
		}
	}

	// Frames of our encoder (compressed blocks, a checksum), one after
	// the other in the span.
	enc, _ := zstd.NewWriter(nil)
	first, second := content(1, 300<<10, true), content(2, 100<<10, true)
	span := enc.EncodeAll(second, enc.EncodeAll(first, nil))
	c := withDigest(toc.Chunk{EndOffset: int64(len(span)), Size: int64(len(first))}, digest.FromBytes(first))
	if got, err := ReadChunk(nil, span, c); err != nil || !bytes.Equal(got, first) {
		t.Errorf("the first of two frames: %d bytes, %v", len(got), err)
	}
	var h zstd.Header
	if err := h.Decode(span); err != nil || !h.HasCheckSum {
		t.Fatalf("the encoder's frame: %+v, %v", h, err)
	}
	if n := frameLength(span, &h); n != len(span)-len(enc.EncodeAll(second, nil)) {
		t.Errorf("frame length %d of a %d-byte span", n, len(span))
	}
}

// TestDeclaredSizeIsChecked: the declared size is a claim. One that is
// not the chunk's, is not what the frame holds, or is more than any chunk
// or the frame's bytes could hold is an error that names the chunk, and
// nothing of its size is allocated. So is a hostile window.
func TestDeclaredSizeIsChecked(t *testing.T) {
	for _, tc := range []struct {
		name  string
		frame []byte
		size  int64
		want  string
	}{
		{"less than the chunk", rawFrame(window1MiB, 4, "hello"), 5, "declares 4 bytes"},
		{"more than it holds", rawFrame(window1MiB, 6, "hello"), 5, "zstd"},
		{"fewer than it holds", rawFrame(window1MiB, 4, "hello"), 4, "zstd"},
		{"a TiB", rawFrame(window1MiB, 1<<40, "hello"), 5, "more than a chunk may hold"},
		{"a GiB in 22 bytes", rawFrame(window1MiB, 1<<30, "hello"), 1 << 30, "more than its 22 bytes can hold"},
		{"a 2 TiB window", rawFrame(31<<3, 5, "hello"), 5, "window"},
	} {
		c := withDigest(toc.Chunk{Offset: 4096, EndOffset: 4096 + int64(len(tc.frame)), Size: tc.size}, digest.FromString("hello"))
		before := allocated()
		_, err := ReadChunk(nil, tc.frame, c)
		if a := allocated() - before; a > 1<<20 {
			t.Errorf("%s: allocated %d bytes", tc.name, a)
		}
		if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "offset 4096") {
			t.Errorf("%s: %v; want an error about %q naming the chunk", tc.name, err, tc.want)
		}
	}
	// As a manifest, the size must be exactly the footer's.
	if _, err := decompressManifest(rawFrame(window1MiB, 5, "hello"), 4); err == nil {
		t.Error("a manifest longer than the footer says: no error")
	}
	if got, err := decompressManifest(rawFrame(window1MiB, 5, "hello"), 5); err != nil || string(got) != "hello" {
		t.Errorf("manifest: %q, %v", got, err)
	}
}

// TestDeclaredSizeNeedsNoWindow: a 4 MiB chunk whose frame declares its
// size decodes into the caller's buffer, allocating no window.
func TestDeclaredSizeNeedsNoWindow(t *testing.T) {
	enc, _ := zstd.NewWriter(nil)
	data := content(3, 4<<20, false)
	frame := enc.EncodeAll(data, nil)
	c := withDigest(toc.Chunk{EndOffset: int64(len(frame)), Size: int64(len(data))}, digest.FromBytes(data))
	buf := make([]byte, len(data))
	if _, err := ReadChunk(buf, frame, c); err != nil { // the shared decoder made
		t.Fatal(err)
	}
	before := allocated()
	got, err := ReadChunk(buf, frame, c)
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("%d bytes, %v", len(got), err)
	}
	if a := allocated() - before; a > 512<<10 {
		t.Errorf("decoding 4 MiB into a buffer allocated %d bytes", a)
	}
}

// TestWriterFramesDeclareSmallWindows: every frame of a file's chunk
// declares at most a 1 MiB window, chunks larger than that too, and its
// content size, which is the chunk's; only frames of under 256 bytes may
// leave it out (zstd writes no size for those that are not a single
// segment).
func TestWriterFramesDeclareSmallWindows(t *testing.T) {
	layer := buildTar(t, []member{
		reg("tiny", []byte("tiny")),
		reg("small", content(1, 600, true)),
		reg("half", content(2, 512<<10, true)),
		reg("mib", content(3, 1<<20, false)),
		reg("large", content(4, 3<<20+5, true)),
		reg("chunks", content(5, 2*toc.LargeChunkSize+7, false)),
	})
	blob, _ := writeBlob(t, layer, WithChunkSize(toc.LargeChunkSize)) // chunks larger than the window
	r := openBlob(t, blob)
	large := 0
	for _, e := range r.TOC().Entries() {
		for _, c := range e.Chunks() {
			var h zstd.Header
			if err := h.Decode(blob[c.Offset:c.EndOffset]); err != nil {
				t.Fatalf("%s at %d: %v", e.Path(), c.FileOffset, err)
			}
			window := h.WindowSize
			if h.SingleSegment {
				window = h.FrameContentSize
			}
			if window > maxFrameWindow {
				t.Errorf("%s at %d (%d bytes): a window of %d", e.Path(), c.FileOffset, c.Size, window)
			}
			if c.Size >= 256 && (!h.HasFCS || h.FrameContentSize != uint64(c.Size)) {
				t.Errorf("%s at %d (%d bytes): declares %d bytes (%v)", e.Path(), c.FileOffset, c.Size, h.FrameContentSize, h.HasFCS)
			}
			if c.Size > maxFrameWindow {
				large++
			}
		}
	}
	if large < 3 {
		t.Errorf("only %d chunks larger than the window: the test layer should have several", large)
	}
}

// TestOpenChunkSmallWindow: OpenChunk streams a chunk of a frame that
// declares at most a 1 MiB window, as the writer's do, with a decoder
// that holds about that much, whatever the chunk's size; frames with
// larger windows still stream, with decoders of their own.
func TestOpenChunkSmallWindow(t *testing.T) {
	data := content(6, 3<<20+5, false)
	blob, _ := writeBlob(t, buildTar(t, []member{reg("large", data)}), WithChunkSize(toc.LargeChunkSize))
	r := openBlob(t, blob)
	e, _ := r.TOC().Lookup("large")
	c := e.Chunks()[0]
	ours := blob[c.Offset:c.EndOffset]
	enc, _ := zstd.NewWriter(nil)
	theirs := enc.EncodeAll(data, nil) // a single segment: a 3 MiB window
	for _, tc := range []struct {
		name  string
		frame []byte
		pool  *decoderPool
		most  uint64
	}{
		{"our frame", ours, smallWindowDecoders, 2 << 20},
		{"a 3 MiB window", theirs, anyWindowDecoders, 5 << 20},
	} {
		if p := decodersFor(tc.frame); p != tc.pool {
			t.Errorf("%s: the wrong decoders", tc.name)
		}
		c := withDigest(toc.Chunk{EndOffset: int64(len(tc.frame)), Size: int64(len(data))}, digest.FromBytes(data))
		runtime.GC()
		runtime.GC() // empty the pools
		before := allocated()
		rc, err := OpenChunk(tc.frame, c)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		h := sha256.New()
		if _, err := io.Copy(h, rc); err != nil || digest.NewDigest(digest.SHA256, h) != c.Digest() {
			t.Errorf("%s: streamed other bytes (%v)", tc.name, err)
		}
		rc.Close()
		a := allocated() - before
		if a > tc.most {
			t.Errorf("%s: streaming %d bytes allocated %d", tc.name, len(data), a)
		}
		t.Logf("%s: streaming %d bytes allocated %d", tc.name, len(data), a)
	}
	if decodersFor(rawFrame(31<<3, 5, "hello")) != anyWindowDecoders {
		t.Error("a 2 TiB window: the small-window decoders")
	}
}

// TestManifestOfSeveralFrames: a manifest may be several frames; only
// all of them together must be the footer's length.
func TestManifestOfSeveralFrames(t *testing.T) {
	two := append(rawFrame(window1MiB, 5, "hello"), rawFrame(window1MiB, 6, " world")...)
	if got, err := decompressManifest(two, 11); err != nil || string(got) != "hello world" {
		t.Errorf("two frames: %q, %v", got, err)
	}
	if _, err := decompressManifest(two, 10); err == nil {
		t.Error("two frames, one byte more than the footer says: no error")
	}
}

// TestLargeChunksPastTheBudget: once a layer's files took
// toc.SmallChunkBudget chunks, the next file that would pass it goes into
// toc.LargeChunkSize chunks, so that no layer's TOC outgrows the limits.
func TestLargeChunksPastTheBudget(t *testing.T) {
	tarball := buildTar(t, []member{
		reg("small", content(1, (toc.SmallChunkBudget-8)*16, true)),
		reg("past", content(2, 9*16, true)),
	})
	blob, res := writeBlob(t, tarball, WithChunkSize(16))
	r := openBlob(t, blob, WithTOCDigest(res.TOCDigest))
	checkLayer(t, r, tarball)
	for name, want := range map[string]int{"small": toc.SmallChunkBudget - 8, "past": 1} {
		e, ok := r.TOC().Lookup(name)
		if !ok {
			t.Fatalf("%s: not in the TOC", name)
		}
		if n := len(e.Chunks()); n != want {
			t.Errorf("%s: %d chunks, want %d", name, n, want)
		}
	}
}

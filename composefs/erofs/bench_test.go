package erofs

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"io/fs"
	"runtime"
	"testing"

	goerofs "github.com/erofs/go-erofs"
)

// benchEntry is entry i of a generated layer shaped like a distribution's
// /usr: groups of a directory and 20 entries in it (mostly files carrying
// composefs's metacopy and redirect, a few symlinks and hard links, some
// with a capability), directories 100 to a parent the writer makes.
func benchEntry(i int) Entry {
	g, j := i/21, i%21
	dir := fmt.Sprintf("usr/share/pkg%04d/module-%06d", g/100, g)
	if j == 0 {
		return Entry{Path: dir, Mode: sIFDIR | 0o755, Mtime: t0 + int64(g%7)}
	}
	p := fmt.Sprintf("%s/file-%02d-%06d.py", dir, j, i)
	switch {
	case j == 20:
		return Entry{Path: p, Mode: sIFLNK | 0o777, Mtime: t0, Target: "../../lib/python3/dist-packages/something.py"}
	case j == 19 && g%4 == 0:
		return Entry{Path: p, Link: fmt.Sprintf("%s/file-%02d-%06d.py", dir, 1, i-18)}
	}
	sum := sha256.Sum256([]byte(p))
	obj := hex.EncodeToString(sum[:])
	x := map[string][]byte{
		"trusted.overlay.metacopy": {},
		"trusted.overlay.redirect": []byte("/" + obj[:2] + "/" + obj[2:]),
	}
	if j == 7 && g%10 == 0 {
		x["security.capability"] = []byte("\x01\x00\x00\x02\x00\x20\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00")
	}
	return Entry{Path: p, Mode: sIFREG | 0o644, Mtime: t0 + int64(i%3), Size: uint64(i%50000) * 37, Xattrs: x}
}

// countWriter counts the image's bytes.
type countWriter struct{ n int64 }

func (c *countWriter) Write(p []byte) (int, error) { c.n += int64(len(p)); return len(p), nil }

var _ io.Writer = (*countWriter)(nil)

func BenchmarkWrite(b *testing.B) {
	for _, n := range []int{50_000, 1_000_000} {
		b.Run(fmt.Sprintf("%dk", n/1000), func(b *testing.B) {
			var heapPerEntry, ownPerEntry, imgPerEntry, writeAllocPerEntry float64
			for b.Loop() {
				b.StopTimer()
				runtime.GC()
				var before runtime.MemStats
				runtime.ReadMemStats(&before)
				b.StartTimer()
				w := NewWriter()
				var nameBytes int
				// Entries are made in batches with the timer stopped:
				// the time is the writer's, not the generator's.
				batch := make([]Entry, 0, 8192)
				for i := 0; i < n; {
					b.StopTimer()
					batch = batch[:0]
					for ; i < n && len(batch) < cap(batch); i++ {
						batch = append(batch, benchEntry(i))
					}
					b.StartTimer()
					for _, e := range batch {
						nameBytes += len(e.Path)
						if err := w.Add(e); err != nil {
							b.Fatal(err)
						}
					}
				}
				b.StopTimer()
				batch = nil
				runtime.GC()
				var added runtime.MemStats
				runtime.ReadMemStats(&added)
				// What the Writer holds: its nodes, paths, interned
				// xattrs and index; beyond the names and xattrs
				// themselves (the bytes of paths and of distinct
				// xattr pairs).
				held := float64(added.HeapAlloc) - float64(before.HeapAlloc)
				var xattrBytes int
				for _, p := range w.pairs {
					xattrBytes += len(p.key)
				}
				heapPerEntry = held / float64(n)
				ownPerEntry = (held - float64(nameBytes) - float64(xattrBytes)) / float64(n)
				b.StartTimer()
				var cw countWriter
				if _, err := w.WriteTo(&cw); err != nil {
					b.Fatal(err)
				}
				b.StopTimer()
				var written runtime.MemStats
				runtime.ReadMemStats(&written)
				writeAllocPerEntry = float64(written.TotalAlloc-added.TotalAlloc) / float64(n)
				imgPerEntry = float64(cw.n) / float64(n)
				runtime.KeepAlive(w)
				b.StartTimer()
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/float64(n), "ns/entry")
			b.ReportMetric(imgPerEntry, "image-B/entry")
			b.ReportMetric(heapPerEntry, "heap-B/entry")
			b.ReportMetric(ownPerEntry, "heap-B/entry-beyond-names+xattrs")
			b.ReportMetric(writeAllocPerEntry, "WriteTo-alloc-B/entry")
			if n <= 50_000 {
				// The baseline: go-erofs's own metadata-only writer on
				// the same tree (read back from our image), whose hole
				// files take 8 bytes per 4 KiB.
				base := goErofsImageSize(b, n)
				b.ReportMetric(float64(base)/float64(n), "go-erofs-image-B/entry")
				b.ReportMetric(float64(base)/float64(n)/imgPerEntry, "go-erofs/ours-image-size")
			}
		})
	}
}

// goErofsImageSize is the size of the image go-erofs writes, metadata
// only, for the first n entries of the benchmark's tree.
func goErofsImageSize(b *testing.B, n int) int {
	w := NewWriter()
	for i := range n {
		if err := w.Add(benchEntry(i)); err != nil {
			b.Fatal(err)
		}
	}
	var img bytes.Buffer
	if _, err := w.WriteTo(&img); err != nil {
		b.Fatal(err)
	}
	src, err := goerofs.Open(bytes.NewReader(img.Bytes()))
	if err != nil {
		b.Fatal(err)
	}
	var out seekBuffer
	gw := goerofs.Create(&out)
	// Hidden behind a plain fs.FS, or go-erofs would copy our chunk
	// layout rather than make its own.
	if err := gw.CopyFrom(struct{ fs.FS }{src}, goerofs.MetadataOnly()); err != nil {
		b.Fatal(err)
	}
	if err := gw.Close(); err != nil {
		b.Fatal(err)
	}
	return len(out.b)
}

// seekBuffer is an in-memory io.WriteSeeker, what go-erofs writes to.
type seekBuffer struct {
	b   []byte
	off int64
}

func (s *seekBuffer) Write(p []byte) (int, error) {
	if end := s.off + int64(len(p)); end > int64(len(s.b)) {
		s.b = append(s.b, make([]byte, end-int64(len(s.b)))...)
	}
	copy(s.b[s.off:], p)
	s.off += int64(len(p))
	return len(p), nil
}

func (s *seekBuffer) Seek(off int64, whence int) (int64, error) {
	switch whence {
	case io.SeekStart:
		s.off = off
	case io.SeekCurrent:
		s.off += off
	case io.SeekEnd:
		s.off = int64(len(s.b)) + off
	}
	return s.off, nil
}

// TestBenchTreeReadsBack checks the benchmark's tree is a valid one (a
// smaller cut of it, through go-erofs, fsck.erofs and, as root, the
// kernel).
func TestBenchTreeReadsBack(t *testing.T) {
	var es []Entry
	for i := range 5000 {
		es = append(es, benchEntry(i))
	}
	img := writeImage(t, es)
	checkWithGoErofs(t, img, es)
	imgPath := saveImage(t, img)
	checkWithErofsUtils(t, imgPath)
	checkKernel(t, imgPath, es)
}

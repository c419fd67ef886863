package zstdchunked

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"fmt"
	"io"

	"github.com/opencontainers/go-digest"
)

// recorder sits between tar.Reader and the input, so that the writer sees
// the archive's own bytes: archive/tar hides headers, padding and holes.
// While on, it keeps what passes for frames, and while also splitting, a
// second copy for tar-split segments; it always counts it.
type recorder struct {
	r         io.Reader
	on        bool
	buf       []byte
	splitting bool
	split     []byte
	n         int64
}

func (rc *recorder) Read(p []byte) (int, error) {
	n, err := rc.r.Read(p)
	rc.n += int64(n)
	if rc.on {
		rc.buf = append(rc.buf, p[:n]...)
		if rc.splitting {
			rc.split = append(rc.split, p[:n]...)
		}
	}
	return n, err
}

// takeSplit hands over the bytes recorded for tar-split.
func (rc *recorder) takeSplit() []byte {
	b := rc.split
	rc.split = nil
	return b
}

// take hands over the recorded bytes.
func (rc *recorder) take() []byte {
	b := rc.buf
	rc.buf = nil
	return b
}

// appendSparse stores a sparse file. The archive holds only its data
// fragments; archive/tar reads them back with the holes filled with zeros
// and does not say where the holes are. Lining up what it returns with
// what it read from the archive finds them again: the data goes into
// frames (so that the blob still decompresses to the input tar), the
// holes become zero chunks.
func (w *Writer) appendSparse(tr *tar.Reader, rec *recorder, e *entry) error {
	if w.scratch == nil {
		w.scratch = make([]byte, w.chunkSize)
	}
	s := sparseChunker{w: w, e: e}
	fileHash := sha256.New()
	size := e.wire.Size
	for off := int64(0); off < size; {
		n := min(w.chunkSize, size-off)
		logical := w.scratch[:n]
		if _, err := io.ReadFull(tr, logical); err != nil {
			return fmt.Errorf("reading %d bytes at %d: %w", n, off, err)
		}
		physical := rec.take()
		fileHash.Write(logical)
		if err := s.align(logical, physical, off); err != nil {
			return err
		}
		rec.buf = physical[:0]
		off += n
	}
	s.flushData()
	s.flushHole()
	e.fileDigest = digest.NewDigest(digest.SHA256, fileHash)
	return nil
}

// sparseChunker turns the data and holes of a sparse file, in file order,
// into chunks.
type sparseChunker struct {
	w *Writer
	e *entry

	data    []byte // data not yet in a frame, from file offset dataOff
	dataOff int64
	holeOff int64 // a hole not yet a chunk, of holeLen bytes
	holeLen int64
}

// align splits a window of the file (logical, at file offset off) into
// data, which physical holds in order, and holes, which read as zeros.
// Non-zero bytes are data. A run of z zeros that physical matches with
// zp zeros holds z-zp bytes of hole: put before the data zeros when data
// follows the run (a fragment that starts with zeros stays whole), after
// them when the run ends the window (one that ends with zeros does).
func (s *sparseChunker) align(logical, physical []byte, off int64) error {
	j := 0
	for i := 0; i < len(logical); {
		at := off + int64(i)
		if logical[i] != 0 {
			if j >= len(physical) || physical[j] != logical[i] {
				return fmt.Errorf("sparse data at %d does not match the archive", at)
			}
			k := nonZeroCommonPrefix(logical[i:], physical[j:])
			s.addData(at, physical[j:j+k])
			i += k
			j += k
			continue
		}
		z := zeroPrefix(logical[i:])
		zp := zeroPrefix(physical[j:])
		if zp > z {
			return fmt.Errorf("sparse data at %d: the archive has %d zeros where the file has %d", at, zp, z)
		}
		hole, data := int64(z-zp), physical[j:j+zp]
		if i+z < len(logical) {
			s.addHole(at, hole)
			s.addData(at+hole, data)
		} else {
			s.addData(at, data)
			s.addHole(at+int64(zp), hole)
		}
		i += z
		j += zp
	}
	if j != len(physical) {
		return fmt.Errorf("sparse data at %d: %d bytes of the archive left over", off, len(physical)-j)
	}
	return nil
}

func (s *sparseChunker) addData(off int64, b []byte) {
	if len(b) == 0 {
		return
	}
	s.flushHole()
	size := s.w.chunkSize
	for len(b) > 0 {
		if s.data != nil && (s.dataOff+int64(len(s.data)) != off || int64(len(s.data)) == size) {
			s.flushData()
		}
		if s.data == nil {
			s.data = s.w.fr.getRaw()
			s.dataOff = off
		}
		n := min(int64(len(b)), size-int64(len(s.data)))
		s.data = append(s.data, b[:n]...)
		b = b[n:]
		off += n
	}
}

func (s *sparseChunker) addHole(off, n int64) {
	if n == 0 {
		return
	}
	s.flushData()
	if s.holeLen > 0 && s.holeOff+s.holeLen != off {
		s.flushHole()
	}
	if s.holeLen == 0 {
		s.holeOff = off
	}
	s.holeLen += n
}

func (s *sparseChunker) flushData() {
	if len(s.data) == 0 {
		return
	}
	s.e.chunks = append(s.e.chunks, chunkRef{fileOffset: s.dataOff, size: int64(len(s.data)), frame: s.w.frames})
	s.w.submit(s.data, true, nil)
	s.data = nil
}

func (s *sparseChunker) flushHole() {
	if s.holeLen == 0 {
		return
	}
	s.e.chunks = append(s.e.chunks, chunkRef{fileOffset: s.holeOff, size: s.holeLen, frame: s.w.frames, zero: true})
	s.holeLen = 0
}

var zeroBlock [4096]byte

// zeroPrefix counts the zero bytes b starts with.
func zeroPrefix(b []byte) int {
	n := 0
	for len(b)-n >= len(zeroBlock) && bytes.Equal(b[n:n+len(zeroBlock)], zeroBlock[:]) {
		n += len(zeroBlock)
	}
	for n < len(b) && b[n] == 0 {
		n++
	}
	return n
}

// nonZeroCommonPrefix counts the bytes a and b start with alike, up to
// the first zero.
func nonZeroCommonPrefix(a, b []byte) int {
	m := min(len(a), len(b))
	n := 0
	for n < m && a[n] == b[n] && a[n] != 0 {
		n++
	}
	return n
}

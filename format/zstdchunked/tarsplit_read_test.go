package zstdchunked

import (
	"bytes"
	"testing"

	"github.com/klauspost/compress/zstd"
)

// FuzzReadTarSplit: whatever tar-split data says, ReadTarSplit hands over
// parts or fails; it never panics, and no segment is longer than a line.
func FuzzReadTarSplit(f *testing.F) {
	f.Add([]byte(`{"type":2,"payload":"AAAA","position":0}` + "\n" + `{"type":1,"name":"a","size":3,"payload":"AAAAAAAAAAA=","position":1}` + "\n"))
	f.Add([]byte(`{"type":1,"name":"a","size":-1}` + "\n"))
	f.Add([]byte(`{"type":2}` + "\n\n" + `[]`))
	f.Fuzz(func(t *testing.T, lines []byte) {
		var buf bytes.Buffer
		w, _ := zstd.NewWriter(&buf)
		w.Write(lines)
		w.Close()
		err := ReadTarSplit(&buf, func(segment []byte, name string, size int64) error {
			if len(segment) > maxTarSplitLine || size < 0 {
				t.Fatalf("segment of %d bytes, size %d", len(segment), size)
			}
			return nil
		})
		_ = err
	})
}

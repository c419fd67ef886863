package zstdchunked_test

import (
	"bytes"
	"os/exec"
	"testing"

	"github.com/lazypull/lazypull/format/zstdchunked"
	"github.com/lazypull/lazypull/internal/testenv"
)

// TestZstdCommandDecompresses: the zstd command, an independent decoder,
// reads a blob we write as the tar it was made from.
func TestZstdCommandDecompresses(t *testing.T) {
	zstdCmd := testenv.NeedBinary(t, "zstd")
	// Small chunks, and chunks larger than the 1 MiB window the
	// writer's frames declare.
	for _, chunkSize := range []int{4096, 2 << 20} {
		tarball := zstdchunked.RichLayer(t, chunkSize)
		blob, _ := zstdchunked.WriteBlob(t, tarball, zstdchunked.WithChunkSize(chunkSize))
		cmd := exec.Command(zstdCmd, "-d", "-c")
		cmd.Stdin = bytes.NewReader(blob)
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("chunks of %d: zstd -d: %v", chunkSize, err)
		}
		if !bytes.Equal(out, tarball) {
			t.Fatalf("chunks of %d: zstd -d gives %d bytes that are not the %d-byte input tar", chunkSize, len(out), len(tarball))
		}
	}
}

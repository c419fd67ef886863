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
	tarball := zstdchunked.RichLayer(t, 4096)
	blob, _ := zstdchunked.WriteBlob(t, tarball, zstdchunked.WithChunkSize(4096))
	cmd := exec.Command(zstdCmd, "-d", "-c")
	cmd.Stdin = bytes.NewReader(blob)
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("zstd -d: %v", err)
	}
	if !bytes.Equal(out, tarball) {
		t.Fatalf("zstd -d gives %d bytes that are not the %d-byte input tar", len(out), len(tarball))
	}
}

package images

import (
	"archive/tar"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"math/rand/v2"
	"time"
)

// DefaultDataSize is the size of the data image's data layer: large enough
// that reading all of it dominates the workload, as with model weights.
const DefaultDataSize = 1 << 30

// dataFileSize caps each data file; 1 GiB makes 8 files.
const dataFileSize = 128 << 20

// dataDir is where the data image keeps its files.
const dataDir = "data"

// dataMtime is the fixed modification time of the data files, so that the
// data layer is the same bytes on every build.
var dataMtime = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

// dataFiles splits size bytes into files of at most dataFileSize, as equal
// as they can be.
func dataFiles(size int64) []int64 {
	n := max(1, (size+dataFileSize-1)/dataFileSize)
	sizes := make([]int64, n)
	for i := range sizes {
		sizes[i] = size / n
		if int64(i) < size%n {
			sizes[i]++
		}
	}
	return sizes
}

func dataFileName(i int) string { return fmt.Sprintf("blob-%02d", i) }

// writeData writes the data layer: /data/blob-NN, size bytes in all, from a
// ChaCha8 stream seeded by each file's name, so the bytes are incompressible
// and the same on every build. It returns the line the data workload prints
// after reading them: "READY data " and the SHA-256 of what
// `sha256sum /data/*` prints.
func writeData(tw *tar.Writer, size int64) (ready string, err error) {
	if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: dataDir + "/", Mode: 0o755, ModTime: dataMtime}); err != nil {
		return "", err
	}
	sums := sha256.New() // of the sha256sum listing
	buf := make([]byte, 1<<20)
	for i, fsize := range dataFiles(size) {
		name := dataDir + "/" + dataFileName(i)
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: 0o644, Size: fsize, ModTime: dataMtime}); err != nil {
			return "", fmt.Errorf("data file %s: %w", name, err)
		}
		rng := rand.NewChaCha8(sha256.Sum256([]byte("lazypull bench " + name)))
		sum := sha256.New()
		if _, err := io.CopyBuffer(io.MultiWriter(tw, sum), io.LimitReader(rng, fsize), buf); err != nil {
			return "", fmt.Errorf("data file %s: %w", name, err)
		}
		fmt.Fprintf(sums, "%x  /%s\n", sum.Sum(nil), name)
	}
	return "READY data " + hex.EncodeToString(sums.Sum(nil)), nil
}

// dataCmd reads every data file and prints "READY data <sum>": sha256sum
// reads them in full, and the second sha256sum folds the listing into one
// line that writeData computed at build time.
var dataCmd = []string{"/bin/sh", "-c", `set -e; set -- $(sha256sum /data/* | sha256sum); echo "READY data $1"`}

package objects

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

// BenchmarkCommit is an object's write beside a plain io.Copy to a file
// in the same run: the store hashes every byte twice (SHA-256 for the
// name, fs-verity for metacopy) and, without WithBatchSync, fsyncs each
// object. Compare
//
//   - commit with copy-fsync (each file synced, as Commit does), and
//   - commit-batchsync with copy (one syncfs at the end, as a batch does).
//
// Every object is new content (dedup would skip the rename, not the
// hashing). The final sync is timed. cpu-ns/op (user and system time of
// the process) is the steadier figure on a busy machine. LAZYPULL_BENCH_DIR puts the files on
// another filesystem (a tmpfs shows the hashing's cost alone).
func BenchmarkCommit(b *testing.B) {
	for _, size := range []int{4 << 10, 64 << 10, 16 << 20} {
		data := content(size, 1)
		next := func(i int) io.Reader {
			binary.LittleEndian.PutUint64(data, uint64(i))
			return bytes.NewReader(data)
		}
		b.Run(fmt.Sprintf("%dKiB/copy", size>>10), func(b *testing.B) { benchCopy(b, data, next, false) })
		b.Run(fmt.Sprintf("%dKiB/copy-fsync", size>>10), func(b *testing.B) { benchCopy(b, data, next, true) })
		b.Run(fmt.Sprintf("%dKiB/commit", size>>10), func(b *testing.B) { benchCommit(b, data, next) })
		b.Run(fmt.Sprintf("%dKiB/commit-batchsync", size>>10), func(b *testing.B) { benchCommit(b, data, next, WithBatchSync()) })
	}
}

// reportCPU reports the process's CPU time per op from now until the
// returned func runs.
func reportCPU(b *testing.B) func() {
	cpu := func() int64 {
		var ru unix.Rusage
		unix.Getrusage(unix.RUSAGE_SELF, &ru)
		return ru.Utime.Nano() + ru.Stime.Nano()
	}
	start := cpu()
	return func() { b.ReportMetric(float64(cpu()-start)/float64(b.N), "cpu-ns/op") }
}

func benchDir(b *testing.B) string {
	if parent := os.Getenv("LAZYPULL_BENCH_DIR"); parent != "" {
		dir, err := os.MkdirTemp(parent, "bench-")
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { os.RemoveAll(dir) })
		return dir
	}
	return b.TempDir()
}

func benchCopy(b *testing.B, data []byte, next func(int) io.Reader, fsync bool) {
	dir := benchDir(b)
	b.SetBytes(int64(len(data)))
	defer reportCPU(b)()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		f, err := os.Create(filepath.Join(dir, fmt.Sprint(i)))
		if err != nil {
			b.Fatal(err)
		}
		if _, err := io.Copy(f, next(i)); err != nil {
			b.Fatal(err)
		}
		if fsync {
			if err := f.Sync(); err != nil {
				b.Fatal(err)
			}
		}
		f.Close()
	}
	if !fsync {
		d, _ := os.Open(dir)
		unix.Syncfs(int(d.Fd()))
		d.Close()
	}
}

func benchCommit(b *testing.B, data []byte, next func(int) io.Reader, opts ...Option) {
	s, err := Open(context.Background(), benchDir(b), opts...)
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	batch, err := s.Batch(context.Background(), "bench")
	if err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(len(data)))
	defer reportCPU(b)()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		obj, err := batch.Put(next(i), "")
		if err != nil {
			b.Fatal(err)
		}
		if !obj.New {
			b.Fatal("not a new object")
		}
	}
	if err := batch.Commit(); err != nil {
		b.Fatal(err)
	}
}

// BenchmarkStat is what a metadata image pays per file for its object's
// size and fs-verity digest: one open, fstat and getxattr when the digest
// is recorded ("xattr"), a read of the whole object when it is not
// ("recompute", 64 KiB objects).
func BenchmarkStat(b *testing.B) {
	ctx := context.Background()
	s, err := Open(ctx, benchDir(b))
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	batch, err := s.Batch(ctx, "bench")
	if err != nil {
		b.Fatal(err)
	}
	defer batch.Abort()
	obj, err := batch.Put(bytes.NewReader(content(64<<10, 1)), "")
	if err != nil {
		b.Fatal(err)
	}
	p, _ := s.Path(obj.Digest)
	b.Run("xattr", func(b *testing.B) {
		for b.Loop() {
			if _, err := s.Stat(ctx, obj.Digest); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("recompute", func(b *testing.B) {
		for b.Loop() {
			b.StopTimer()
			unix.Removexattr(p, verityXattr)
			b.StartTimer()
			if _, err := s.Stat(ctx, obj.Digest); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// BenchmarkGC is a GC that finds nothing to remove in a store of 20,000
// objects named by 20 owners: the cost of marking (reading every refs
// file) and sweeping (listing every object) that each GC pays.
func BenchmarkGC(b *testing.B) {
	ctx := context.Background()
	s, err := Open(ctx, benchDir(b), WithBatchSync())
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	const owners, perOwner = 20, 1000
	var buf [8]byte
	for o := range owners {
		batch, err := s.Batch(ctx, fmt.Sprintf("layer%d", o))
		if err != nil {
			b.Fatal(err)
		}
		for i := range perOwner {
			binary.LittleEndian.PutUint64(buf[:], uint64(o*perOwner+i))
			if _, err := batch.Put(bytes.NewReader(buf[:]), ""); err != nil {
				b.Fatal(err)
			}
		}
		if err := batch.Commit(); err != nil {
			b.Fatal(err)
		}
	}
	for b.Loop() {
		res, err := s.GC(ctx)
		if err != nil || res.Objects != 0 {
			b.Fatal(res, err)
		}
	}
}

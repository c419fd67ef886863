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
	"time"

	"github.com/opencontainers/go-digest"
	"golang.org/x/sys/unix"
)

// BenchmarkCommit writes objects, then the same number of plain files
// with io.Copy (the baseline: what unpacking into a directory costs), in
// the same run, and reports the baseline's time and the ratios (wall and
// CPU, commit/copy: over 1, the store is slower). The store hashes every
// byte twice (SHA-256 for the name, fs-verity for metacopy), sets an xattr
// and renames. Two pairs:
//
//   - fsync: Commit fsyncs each object; the baseline fsyncs each file;
//   - batchsync: WithBatchSync, one syncfs at the batch's end; the
//     baseline syncs the filesystem once at its end too.
//
// Every object is new content (dedup would skip the rename, not the
// hashing). CPU time (user and system, the whole process) is the steadier
// figure on a busy machine. LAZYPULL_BENCH_DIR puts the files on another
// filesystem (a tmpfs shows the hashing's cost alone). None asserts a
// time.
func BenchmarkCommit(b *testing.B) {
	for _, size := range []int{4 << 10, 64 << 10, 16 << 20} {
		data := content(size, 1)
		seq := 0
		next := func() io.Reader {
			seq++
			binary.LittleEndian.PutUint64(data, uint64(seq))
			return bytes.NewReader(data)
		}
		for _, batchSync := range []bool{false, true} {
			mode, opts := "fsync", []Option(nil)
			if batchSync {
				mode, opts = "batchsync", []Option{WithBatchSync()}
			}
			b.Run(fmt.Sprintf("%dKiB/%s", size>>10, mode), func(b *testing.B) {
				b.SetBytes(int64(size))
				cpu0 := cpuTime()
				benchCommit(b, next, opts...)
				wall, cpu := b.Elapsed(), cpuTime()-cpu0
				t0, c0 := time.Now(), cpuTime()
				benchCopy(b, next, !batchSync)
				baseWall, baseCPU := time.Since(t0), cpuTime()-c0
				n := float64(b.N)
				b.ReportMetric(float64(cpu)/n, "cpu-ns/op")
				b.ReportMetric(float64(baseWall.Nanoseconds())/n, "copy-ns/op")
				b.ReportMetric(float64(baseCPU)/n, "copy-cpu-ns/op")
				b.ReportMetric(wall.Seconds()/baseWall.Seconds(), "commit/copy")
				b.ReportMetric(float64(cpu)/float64(baseCPU), "commit/copy-cpu")
			})
		}
	}
}

// cpuTime is the process's user and system time so far, in ns.
func cpuTime() int64 {
	var ru unix.Rusage
	unix.Getrusage(unix.RUSAGE_SELF, &ru)
	return ru.Utime.Nano() + ru.Stime.Nano()
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

// benchCommit puts b.N objects in one batch and commits it, timed by
// b.Loop (the batch's commit, its sync, included).
func benchCommit(b *testing.B, next func() io.Reader, opts ...Option) {
	s, err := Open(context.Background(), benchDir(b), opts...)
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	batch, err := s.Batch(context.Background(), "bench")
	if err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		obj, err := batch.Put(next(), "")
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
	b.StopTimer()
}

// benchCopy writes b.N plain files with io.Copy, each fsynced or the
// filesystem synced once at the end.
func benchCopy(b *testing.B, next func() io.Reader, fsync bool) {
	dir := benchDir(b)
	for i := 0; i < b.N; i++ {
		f, err := os.Create(filepath.Join(dir, fmt.Sprint(i)))
		if err != nil {
			b.Fatal(err)
		}
		if _, err := io.Copy(f, next()); err != nil {
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
		d, err := os.Open(dir)
		if err != nil {
			b.Fatal(err)
		}
		unix.Syncfs(int(d.Fd()))
		d.Close()
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

// BenchmarkClaim claims 5,000 objects for one owner (a lazy layer's claim
// at mount; python's largest layer names some 5,100), replacing its claim
// each time.
func BenchmarkClaim(b *testing.B) {
	s, err := Open(context.Background(), b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	ds := make([]digest.Digest, 5000)
	for i := range ds {
		ds[i] = sha(fmt.Appendf(nil, "object %d", i))
	}
	for b.Loop() {
		if err := s.Claim(context.Background(), "layer", ds); err != nil {
			b.Fatal(err)
		}
	}
}

package fusefs

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/lazypull/lazypull/cache"
	"github.com/lazypull/lazypull/format/toc"
	"github.com/lazypull/lazypull/internal/testenv"
	"github.com/lazypull/lazypull/layer"
)

// faultEnv, set to "PATH@OFFSET", makes the test binary a helper that maps
// PATH, faults in the page at OFFSET and prints 16 bytes from there. The
// fault must come from another process: the faulting thread holds its
// process's memory map while the kernel waits for the FUSE server, so a
// server in the same process that needs more memory meanwhile deadlocks.
const faultEnv = "LAZYPULL_TEST_FAULT"

func TestMain(m *testing.M) {
	if arg := os.Getenv(faultEnv); arg != "" {
		if err := faultPage(arg); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func faultPage(arg string) error {
	path, offset, _ := strings.Cut(arg, "@")
	at, err := strconv.ParseInt(offset, 10, 64)
	if err != nil {
		return err
	}
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return err
	}
	mapped, err := unix.Mmap(int(f.Fd()), 0, int(st.Size()), unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		return err
	}
	defer unix.Munmap(mapped)
	_, err = os.Stdout.Write(mapped[at : at+16])
	return err
}

// TestPageFaultReadsAroundByReadAhead: a page fault in a mapped file that
// is not cached reads the mount's read-ahead around the page, no more.
// That is what a workload profile records, and so what a profiled start
// fetches.
func TestPageFaultReadsAroundByReadAhead(t *testing.T) {
	testenv.NeedFUSE(t)
	data := random(8 << 20)
	f, desc := writeLayer(t, []entry{dir("lib", 0o755), reg("lib/big", data, 0o755)})
	// By default a fault reads 64 KiB at most: 1 MiB made gcc's profile a
	// third larger.
	for _, kib := range []int{0, 256} {
		want := kib
		if kib == 0 {
			want = 64
		}
		t.Run(fmt.Sprintf("read_ahead_kb=%d", kib), func(t *testing.T) {
			c, err := cache.New(filepath.Join(t.TempDir(), "cache"))
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { c.Close() })
			var mu sync.Mutex
			var read int64
			at := int64(4<<20 + 3*4096)
			covered := false
			l, err := layer.Open(context.Background(), desc, fileFetcher{f}, c, layer.Options{Record: func(e *toc.Entry, off, n int64) {
				mu.Lock()
				defer mu.Unlock()
				read += n
				covered = covered || off <= at && at < off+n
			}})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(l.Close)
			mnt := filepath.Join(t.TempDir(), "mnt")
			os.Mkdir(mnt, 0o755)
			m, err := Mount(mnt, l, Options{ReadAheadKiB: kib})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() {
				if err := m.Unmount(); err != nil {
					t.Error(err)
				}
			})

			path, err := readAheadFile(mnt)
			if err != nil {
				t.Fatal(err)
			}
			sysfs, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			if got, _ := strconv.Atoi(strings.TrimSpace(string(sysfs))); got != want {
				t.Errorf("the mount's read_ahead_kb is %d, want %d", got, want)
			}

			cmd := exec.Command(os.Args[0])
			cmd.Env = append(os.Environ(), fmt.Sprintf("%s=%s@%d", faultEnv, filepath.Join(mnt, "lib/big"), at))
			out, err := cmd.Output()
			if err != nil {
				t.Fatalf("faulting in a page of lib/big: %v", err)
			}
			if !bytes.Equal(out, data[at:at+16]) {
				t.Fatal("the mapped page differs from the file's bytes")
			}
			mu.Lock()
			defer mu.Unlock()
			if !covered {
				t.Errorf("no read reached the daemon for the faulted page at %d", at)
			}
			if read > int64(want)<<10 {
				t.Errorf("one page fault read %d bytes through the daemon, want at most the read-ahead, %d KiB", read, want)
			}
			t.Logf("one page fault read %d bytes through the daemon", read)
			if kib > 64 && read <= 64<<10 {
				t.Errorf("one page fault read %d bytes with a read-ahead of %d KiB: the setting did not take", read, kib)
			}
		})
	}
}

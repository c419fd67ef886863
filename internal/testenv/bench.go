package testenv

import (
	"fmt"
	"os"
	"strconv"
	"testing"

	"golang.org/x/sys/unix"
)

// EnvInt is the positive integer in the environment variable name (a
// benchmark's size, e.g. LAZYPULL_BENCH_FILES), or def when it is unset.
func EnvInt(tb testing.TB, name string, def int) int {
	tb.Helper()
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil || n <= 0 {
		tb.Fatalf("%s=%q: want a positive integer", name, v)
	}
	return n
}

// DropCaches writes dirty pages out and drops the kernel's page cache,
// dentries and inodes, so that the next access reads the disk: a cold
// start, or a cold stat, as after a reboot.
func DropCaches() error {
	unix.Sync()
	if err := os.WriteFile("/proc/sys/vm/drop_caches", []byte("3"), 0o200); err != nil {
		return fmt.Errorf("drop the kernel's caches: %w", err)
	}
	return nil
}

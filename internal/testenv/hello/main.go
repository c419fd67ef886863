// Command hello is the program inside lazypull's test image: it greets, then
// lists the trees named by its arguments (type, and content or link target),
// so that a test can see exactly what the container's root filesystem holds.
//
// With --for DURATION it instead reads every file under its arguments over
// and over for that long, and says whether every read gave the same bytes:
// a test kills the daemon meanwhile.
//
// With --watch STOPFILE PROGRESSFILE PATH=SHA256... it reads the files
// until STOPFILE exists, each read checked against its digest and dropped
// from the page cache (so the next one asks the filesystem again), and
// writes the count of rounds to PROGRESSFILE after each: a test watches it
// keep reading while it attacks the node.
//
// With --read PATH OFFSET:LENGTH... it reads those ranges of one file and
// says of each whether it was all zeros, or its digest.
//
// With --modes PATH... it prints each path's permission bits in octal and
// the path, as `stat -c '%a %n'` does (the image has no stat).
//
// With --out FILE first, whatever it says goes to FILE, written by hello
// itself, instead of standard output: what a container prints reaches the
// test through the runtime's copying, which ctr 1.6 can cut short.
package main

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

func main() {
	if len(os.Args) > 2 && os.Args[1] == "--out" {
		f, err := os.Create(os.Args[2])
		if err != nil {
			fail(err)
		}
		os.Stdout = f // unbuffered: all of it is in the file when hello exits
		os.Args = append(os.Args[:1], os.Args[3:]...)
	}
	if len(os.Args) > 3 && os.Args[1] == "--watch" {
		watchUntil(os.Args[2], os.Args[3], os.Args[4:])
		return
	}
	if len(os.Args) > 2 && os.Args[1] == "--read" {
		readRanges(os.Args[2], os.Args[3:])
		return
	}
	if len(os.Args) > 2 && os.Args[1] == "--modes" {
		printModes(os.Args[2:])
		return
	}
	if len(os.Args) > 2 && os.Args[1] == "--for" {
		d, err := time.ParseDuration(os.Args[2])
		if err != nil {
			fail(err)
		}
		watch(d, os.Args[3:])
		return
	}
	fmt.Println("hello from lazypull")
	for _, root := range os.Args[1:] {
		err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			switch {
			case d.Type()&fs.ModeSymlink != 0:
				target, err := os.Readlink(path)
				if err != nil {
					return err
				}
				fmt.Printf("%s -> %s\n", path, target)
			case d.IsDir():
				fmt.Printf("%s/\n", path)
			default:
				data, err := os.ReadFile(path)
				if err != nil {
					return err
				}
				fmt.Printf("%s: %s\n", path, strings.TrimSpace(string(data)))
			}
			return nil
		})
		if err != nil {
			fail(err)
		}
	}
}

// printModes prints the permission bits (setuid, setgid and sticky
// included) of each path, not following a symlink.
func printModes(paths []string) {
	for _, p := range paths {
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			fail(fmt.Errorf("%s: %w", p, err))
		}
		fmt.Printf("%o %s\n", st.Mode&0o7777, p)
	}
}

// watch reads the files under roots until d has passed.
func watch(d time.Duration, roots []string) {
	first := map[string][32]byte{}
	rounds := 0
	// At least one round, however short d is.
	for end := time.Now().Add(d); rounds == 0 || time.Now().Before(end); rounds++ {
		for _, root := range roots {
			err := filepath.WalkDir(root, func(path string, e fs.DirEntry, err error) error {
				if err != nil || !e.Type().IsRegular() {
					return err
				}
				data, err := os.ReadFile(path)
				if err != nil {
					return err
				}
				sum := sha256.Sum256(data)
				if was, ok := first[path]; ok && was != sum {
					return fmt.Errorf("%s changed between reads", path)
				}
				first[path] = sum
				return nil
			})
			if err != nil {
				fail(err)
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	fmt.Printf("stable over %d rounds of %d files\n", rounds, len(first))
}

// watchUntil reads files (PATH=SHA256 each) until stop exists, writing
// the number of rounds done to progress after each round.
func watchUntil(stop, progress string, specs []string) {
	want := make(map[string]string, len(specs))
	var paths []string
	for _, s := range specs {
		p, sum, ok := strings.Cut(s, "=")
		if !ok {
			fail(fmt.Errorf("%q is not PATH=SHA256", s))
		}
		want[p] = sum
		paths = append(paths, p)
	}
	rounds := 0
	for ; ; rounds++ {
		if _, err := os.Stat(stop); err == nil {
			break
		}
		for _, p := range paths {
			sum, err := readUncached(p)
			if err != nil {
				fail(fmt.Errorf("round %d: %w", rounds, err))
			}
			if sum != want[p] {
				fail(fmt.Errorf("round %d: %s has sha256 %s, want %s", rounds, p, sum, want[p]))
			}
		}
		tmp := progress + ".tmp"
		if err := os.WriteFile(tmp, []byte(strconv.Itoa(rounds+1)), 0o644); err != nil {
			fail(err)
		}
		if err := os.Rename(tmp, progress); err != nil {
			fail(err)
		}
	}
	fmt.Printf("%d rounds of %d files, all right\n", rounds, len(paths))
}

// readUncached returns the sha256 of a file's content, and drops its pages
// from the cache so that the next read asks the filesystem.
func readUncached(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", fmt.Errorf("read %s: %w", path, err)
	}
	if err := unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED); err != nil {
		return "", fmt.Errorf("drop %s from the page cache: %w", path, err)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// readRanges prints, for each OFFSET:LENGTH of path, "zeros" or the
// sha256 of what was read; it fails on the first read that fails.
func readRanges(path string, ranges []string) {
	f, err := os.Open(path)
	if err != nil {
		fail(err)
	}
	defer f.Close()
	for _, r := range ranges {
		o, l, _ := strings.Cut(r, ":")
		off, err1 := strconv.ParseInt(o, 10, 64)
		n, err2 := strconv.Atoi(l)
		if err := errors.Join(err1, err2); err != nil || n < 0 || n > 1<<20 {
			fail(fmt.Errorf("range %q: want OFFSET:LENGTH, at most 1 MiB: %v", r, err))
		}
		buf := make([]byte, n)
		got, err := f.ReadAt(buf, off)
		if err != nil && !(errors.Is(err, io.EOF) && got == n) {
			fail(fmt.Errorf("read %s at %d: %w", path, off, err))
		}
		if bytes.Count(buf, []byte{0}) == n {
			fmt.Printf("%s %s: zeros\n", path, r)
		} else {
			fmt.Printf("%s %s: sha256 %x\n", path, r, sha256.Sum256(buf))
		}
	}
}

func fail(err error) {
	fmt.Println("hello:", err)
	os.Exit(1)
}

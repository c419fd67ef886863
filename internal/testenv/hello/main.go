// Command hello is the program inside lazypull's test image: it greets, then
// lists the trees named by its arguments (type, and content or link target),
// so that a test can see exactly what the container's root filesystem holds.
//
// With --for DURATION it instead reads every file under its arguments over
// and over for that long, and says whether every read gave the same bytes:
// a test kills the daemon meanwhile.
package main

import (
	"crypto/sha256"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"
)

func main() {
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

func fail(err error) {
	fmt.Println("hello:", err)
	os.Exit(1)
}

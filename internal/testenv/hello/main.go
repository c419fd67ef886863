// Command hello is the program inside lazypull's test image: it greets, then
// lists the trees named by its arguments (type, and content or link target),
// so that a test can see exactly what the container's root filesystem holds.
package main

import (
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

func main() {
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
			fmt.Fprintln(os.Stderr, "hello:", err)
			os.Exit(1)
		}
	}
}

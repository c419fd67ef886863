// Package elfdeps tells which files the dynamic loader will open for an
// ELF program or library: its interpreter and the libraries it needs,
// found in an image's file tree. The mounter fetches them as soon as the
// program is first read, instead of one round trip at a time as the
// loader asks for each.
//
// It reads untrusted bytes and must never panic on them; a wrong answer
// only costs bytes fetched early. It knows nothing of layers, FUSE or
// registries: the tree is an interface.
package elfdeps

import (
	"bytes"
	"debug/elf"
	"fmt"
	"io"
	"path"
	"strings"
)

// Deps is what an ELF file asks the dynamic loader for.
type Deps struct {
	Interp  string   // PT_INTERP, an absolute path ("" for a library)
	Needed  []string // DT_NEEDED names
	RunPath []string // DT_RUNPATH or DT_RPATH directories, $ORIGIN expanded
	Machine elf.Machine
}

// maxHeaderBytes bounds what Read takes from the file: program headers,
// the dynamic section and its strings are small.
const maxHeaderBytes = 1 << 20

// IsELF tells whether the file's first bytes are an ELF magic number.
func IsELF(head []byte) bool { return bytes.HasPrefix(head, []byte(elf.ELFMAG)) }

// Read parses the ELF file r (of size bytes) found at name (its path in
// the image, for $ORIGIN).
func Read(r io.ReaderAt, size int64, name string) (deps Deps, err error) {
	defer func() {
		// debug/elf is hardened against bad input, but this runs in the
		// daemon: a bug there must cost a hint, not the process.
		if p := recover(); p != nil {
			deps, err = Deps{}, fmt.Errorf("%s: malformed ELF (%v)", name, p)
		}
	}()
	f, err := elf.NewFile(io.NewSectionReader(r, 0, size))
	if err != nil {
		return Deps{}, fmt.Errorf("%s: %w", name, err)
	}
	defer f.Close()
	deps.Machine = f.Machine
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP && p.Filesz > 0 && p.Filesz < 4096 {
			b := make([]byte, p.Filesz)
			if _, err := p.ReadAt(b, 0); err == nil {
				deps.Interp = strings.TrimRight(string(b), "\x00")
			}
		}
	}
	if dyn := f.Section(".dynamic"); dyn == nil || dyn.Size > maxHeaderBytes {
		return deps, nil
	}
	if deps.Needed, err = f.ImportedLibraries(); err != nil {
		return deps, fmt.Errorf("%s: %w", name, err)
	}
	origin := "/" + path.Dir(strings.TrimPrefix(name, "/"))
	for _, tag := range []elf.DynTag{elf.DT_RUNPATH, elf.DT_RPATH} {
		paths, _ := f.DynString(tag)
		for _, p := range paths {
			for _, dir := range strings.Split(p, ":") {
				dir = strings.ReplaceAll(strings.ReplaceAll(dir, "${ORIGIN}", origin), "$ORIGIN", origin)
				if strings.HasPrefix(dir, "/") {
					deps.RunPath = append(deps.RunPath, path.Clean(dir))
				}
			}
		}
	}
	return deps, nil
}

// Tree is an image's file tree as the loader sees it.
type Tree interface {
	// Lookup returns whether a file exists at the clean absolute path p,
	// and its target if it is a symbolic link.
	Lookup(p string) (link string, ok bool)
}

// Resolve returns the paths in t of the files the loader will open for
// deps (following symbolic links, the final target last): runpath
// directories first, then the system's default directories for the
// program's machine. A name not found is left out.
func Resolve(t Tree, deps Deps) []string {
	var out []string
	if deps.Interp != "" {
		out = append(out, Follow(t, path.Clean(deps.Interp))...)
	}
	dirs := append(append([]string(nil), deps.RunPath...), defaultDirs(deps.Machine)...)
	for _, lib := range deps.Needed {
		if strings.Contains(lib, "/") {
			if strings.HasPrefix(lib, "/") {
				out = append(out, Follow(t, path.Clean(lib))...)
			}
			continue
		}
		for _, dir := range dirs {
			if found := Follow(t, path.Join(dir, lib)); len(found) > 0 {
				out = append(out, found...)
				break
			}
		}
	}
	return out
}

// maxHops bounds the symbolic links followed for one path.
const maxHops = 16

// Follow returns p and the links it leads through (its directories' too
// resolved), up to the file, or nothing if p does not exist.
func Follow(t Tree, p string) []string {
	var out []string
	for hops := 0; hops < maxHops; hops++ {
		p = path.Join(canonicalDir(t, path.Dir(p)), path.Base(p))
		link, ok := t.Lookup(p)
		if !ok {
			return nil
		}
		out = append(out, p)
		if link == "" {
			return out
		}
		if !strings.HasPrefix(link, "/") {
			link = path.Join(path.Dir(p), link)
		}
		p = path.Clean(link)
	}
	return nil
}

// defaultDirs are the loader's trusted directories, as Debian and most
// distributions lay them out, for a program of machine m.
func defaultDirs(m elf.Machine) []string {
	triplet := map[elf.Machine]string{
		elf.EM_X86_64:  "x86_64-linux-gnu",
		elf.EM_AARCH64: "aarch64-linux-gnu",
		elf.EM_386:     "i386-linux-gnu",
		elf.EM_ARM:     "arm-linux-gnueabihf",
		elf.EM_PPC64:   "powerpc64le-linux-gnu",
		elf.EM_S390:    "s390x-linux-gnu",
		elf.EM_RISCV:   "riscv64-linux-gnu",
	}[m]
	var dirs []string
	if triplet != "" {
		dirs = append(dirs, "/lib/"+triplet, "/usr/lib/"+triplet)
	}
	return append(dirs, "/lib64", "/usr/lib64", "/lib", "/usr/lib")
}

// canonicalDir resolves the symbolic links among dir's components (/lib
// is one to /usr/lib on a merged-/usr system).
func canonicalDir(t Tree, dir string) string {
	cur := "/"
	rest := strings.Split(strings.TrimPrefix(path.Clean(dir), "/"), "/")
	for hops := 0; len(rest) > 0 && hops < maxHops; {
		next := path.Join(cur, rest[0])
		rest = rest[1:]
		link, ok := t.Lookup(next)
		if !ok || link == "" {
			cur = next
			continue
		}
		hops++
		if !strings.HasPrefix(link, "/") {
			link = path.Join(cur, link)
		}
		// Start again from the root with the target's components first.
		rest = append(strings.Split(strings.TrimPrefix(path.Clean(link), "/"), "/"), rest...)
		cur = "/"
	}
	return path.Join(append([]string{cur}, rest...)...)
}

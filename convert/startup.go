package convert

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"path"
	"strings"

	"github.com/containerd/containerd/v2/pkg/archive/compression"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/lazypull/lazypull/elfdeps"
	"github.com/lazypull/lazypull/format/toc"
)

// Bounds of the startup files' search: it reads what an image says about
// itself, and a wrong or cut-short answer only costs a prefetch.
const (
	maxStartupFiles  = 256
	maxStartupRounds = 4        // program, its libraries, theirs, …
	maxStartupRead   = 64 << 20 // bytes of one program or library read
	maxTreeEntries   = 1 << 20
	maxWhiteouts     = 4096 // each scans the tree
)

// errTooBig ends a search the bounds cut short: the image converts, with
// no startup files first.
var errTooBig = errors.New("too many files or whiteouts to search")

// errFound stops a layer's walk once it found what it looked for.
var errFound = errors.New("found")

// defaultPath is the PATH a container gets when its config sets none.
const defaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// startupFiles returns the files the image's program needs before it runs
// a line of its own: the program its config's Entrypoint (or Cmd) names,
// found on the config's PATH; a script's interpreter; the ELF interpreter
// and libraries of each, and theirs; the symbolic links on the way. They
// are layer paths, in the order the program needs them. With no program,
// or one not in the image, there are none.
func (c *converter) startupFiles(ctx context.Context, layers []ocispec.Descriptor, cfg ocispec.ImageConfig) ([]string, error) {
	argv := append(append([]string(nil), cfg.Entrypoint...), cfg.Cmd...)
	if len(argv) == 0 {
		return nil, nil
	}
	t, err := c.readTree(ctx, layers)
	if errors.Is(err, errTooBig) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	s := &startup{tree: t, path: defaultPath, seen: make(map[string]bool)}
	for _, e := range cfg.Env {
		if v, ok := strings.CutPrefix(e, "PATH="); ok {
			s.path = v
		}
	}
	next := s.addProgram(argv[0])
	for round := 0; round < maxStartupRounds && len(next) > 0 && len(s.out) < maxStartupFiles; round++ {
		contents, err := c.readFiles(ctx, layers, t, next)
		if err != nil {
			return nil, err
		}
		next = s.pending(next, contents)
	}
	if len(s.out) > maxStartupFiles {
		s.out = s.out[:maxStartupFiles]
	}
	return s.out, nil
}

// startup is the search's state: the files found so far, in order.
type startup struct {
	tree *fileTree
	path string
	out  []string // layer paths
	seen map[string]bool
}

// addProgram adds the program name runs (a path, or a name on PATH) and
// the links to it; it returns the file to read next.
func (s *startup) addProgram(name string) []string {
	if !strings.Contains(name, "/") {
		for _, dir := range strings.Split(s.path, ":") {
			if p := path.Join("/", dir, name); len(elfdeps.Follow(s.tree, p)) > 0 {
				name = p
				break
			}
		}
	}
	if !strings.HasPrefix(name, "/") {
		return nil
	}
	return s.add(elfdeps.Follow(s.tree, path.Clean(name)))
}

// add records paths (a chain of links and the file at its end) and
// returns the file at the end if it is new, to be read.
func (s *startup) add(chain []string) []string {
	var toRead []string
	for i, p := range chain {
		if s.seen[p] {
			continue
		}
		s.seen[p] = true
		s.out = append(s.out, strings.TrimPrefix(p, "/"))
		if i == len(chain)-1 {
			toRead = append(toRead, p)
		}
	}
	return toRead
}

// pending takes the contents of the files read (paths, in the order they
// were found) and returns the files they need that are still to be read.
func (s *startup) pending(paths []string, contents map[string][]byte) []string {
	var next []string
	for _, p := range paths {
		data, ok := contents[p]
		if !ok {
			continue
		}
		switch {
		case bytes.HasPrefix(data, []byte("#!")):
			line, _, _ := bytes.Cut(data[2:], []byte("\n"))
			fields := strings.Fields(string(line))
			if len(fields) == 0 {
				continue
			}
			next = append(next, s.addProgram(fields[0])...)
			if path.Base(fields[0]) == "env" && len(fields) > 1 && !strings.HasPrefix(fields[1], "-") {
				next = append(next, s.addProgram(fields[1])...)
			}
		case elfdeps.IsELF(data):
			deps, err := elfdeps.Read(bytes.NewReader(data), int64(len(data)), p)
			if err != nil {
				continue
			}
			for _, dep := range elfdeps.Resolve(s.tree, deps) {
				next = append(next, s.add(elfdeps.Follow(s.tree, dep))...)
			}
		}
	}
	return next
}

// fileTree is the image's file tree as its layers stack up: each path's
// top layer, and a link's target.
type fileTree struct {
	nodes map[string]treeNode // by absolute path
}

type treeNode struct {
	layer    int
	symlink  string // a symbolic link's target
	hardlink string // a hard link's target, absolute, in the same layer
}

// Lookup makes the tree an elfdeps.Tree.
func (t *fileTree) Lookup(p string) (string, bool) {
	n, ok := t.nodes[p]
	return n.symlink, ok
}

// readTree reads the layers' headers into the tree they stack up to,
// whiteouts applied.
func (c *converter) readTree(ctx context.Context, layers []ocispec.Descriptor) (*fileTree, error) {
	t := &fileTree{nodes: make(map[string]treeNode)}
	whiteouts := 0
	for i, l := range layers {
		err := c.walkLayer(ctx, l, func(h *tar.Header, _ io.Reader) error {
			name := toc.CleanTarName(h.Name)
			if name == "" {
				return nil
			}
			p := "/" + name
			dir, base := path.Split(p)
			if hidden, ok := strings.CutPrefix(base, toc.WhiteoutPrefix); ok {
				if whiteouts++; whiteouts > maxWhiteouts {
					return errTooBig
				}
				if base == toc.OpaqueWhiteout {
					t.remove(path.Clean(dir), true, i)
				} else {
					t.remove(path.Join(dir, hidden), false, i)
				}
				return nil
			}
			if len(t.nodes) >= maxTreeEntries {
				return errTooBig
			}
			n := treeNode{layer: i}
			switch h.Typeflag {
			case tar.TypeSymlink:
				n.symlink = h.Linkname
			case tar.TypeLink:
				n.hardlink = "/" + toc.CleanTarName(h.Linkname)
			}
			t.nodes[p] = n
			return nil
		})
		if err != nil {
			return nil, fmt.Errorf("layer %d (%s): %w", i, l.Digest, err)
		}
	}
	return t, nil
}

// remove takes p and what is under it out of the tree (only what is
// under it, for an opaque directory), as layer top's whiteout says.
func (t *fileTree) remove(p string, under bool, top int) {
	if !under {
		delete(t.nodes, p)
	}
	prefix := strings.TrimSuffix(p, "/") + "/"
	for q, n := range t.nodes {
		if n.layer < top && strings.HasPrefix(q, prefix) {
			delete(t.nodes, q)
		}
	}
}

// readFiles reads the contents of the regular files at paths (up to
// maxStartupRead each), each from the layer the tree takes it from.
func (c *converter) readFiles(ctx context.Context, layers []ocispec.Descriptor, t *fileTree, paths []string) (map[string][]byte, error) {
	want := make(map[int]map[string]string) // layer → tar path → path asked
	for _, p := range paths {
		n, ok := t.nodes[p]
		if !ok || n.symlink != "" {
			continue
		}
		from := p
		if n.hardlink != "" {
			from = n.hardlink
		}
		if want[n.layer] == nil {
			want[n.layer] = make(map[string]string)
		}
		want[n.layer][from] = p
	}
	out := make(map[string][]byte)
	for i, names := range want {
		left := len(names)
		err := c.walkLayer(ctx, layers[i], func(h *tar.Header, r io.Reader) error {
			p, ok := names["/"+toc.CleanTarName(h.Name)]
			if !ok || h.Typeflag != tar.TypeReg || h.Size > maxStartupRead {
				return nil
			}
			data, err := io.ReadAll(io.LimitReader(r, maxStartupRead))
			if err != nil {
				return err
			}
			out[p] = data
			if left--; left == 0 {
				// The rest of the layer need not be read (a later entry of
				// the same name, rare, would win on disk: then the files
				// first is a guess from the earlier one, which costs only
				// a prefetch).
				return errFound
			}
			return nil
		})
		if errors.Is(err, errFound) {
			err = nil
		}
		if err != nil {
			return nil, fmt.Errorf("layer %d (%s): %w", i, layers[i].Digest, err)
		}
	}
	return out, nil
}

// walkLayer reads a source layer's tar entries in order.
func (c *converter) walkLayer(ctx context.Context, l ocispec.Descriptor, fn func(*tar.Header, io.Reader) error) error {
	rc, err := c.src.Fetch(ctx, l)
	if err != nil {
		return err
	}
	defer rc.Close()
	stream, err := compression.DecompressStream(rc)
	if err != nil {
		return fmt.Errorf("decompress: %w", err)
	}
	defer stream.Close()
	tr := tar.NewReader(stream)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		if err := fn(h, tr); err != nil {
			return err
		}
	}
}

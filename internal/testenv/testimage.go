package testenv

import (
	"archive/tar"
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
)

// HelloImage is the small image the integration tests and the demo run:
// a static Go program over two layers whose upper layer deletes a file and
// a directory, makes a directory opaque, adds a hard link and a symlink.
// The base layer also carries 8 MiB the program never reads, so that a lazy
// pull has something to not fetch.
func HelloImage(helloPath string) (Image, error) {
	hello, err := os.ReadFile(helloPath)
	if err != nil {
		return Image{}, fmt.Errorf("read hello program: %w", err)
	}
	base := []Entry{
		{Path: "hello", Type: tar.TypeReg, Mode: 0o755, Data: hello},
		Dir("data"),
		File("data/keep.txt", "kept from the base layer"),
		File("data/gone.txt", "deleted by the upper layer"),
		Dir("data/olddir"),
		File("data/olddir/a.txt", "deleted with its directory"),
		Dir("data/opaque"),
		File("data/opaque/old.txt", "hidden by the opaque directory"),
		Symlink("data/link", "keep.txt"),
		Dir("opt"),
		{Path: "opt/unused.bin", Type: tar.TypeReg, Mode: 0o644, Data: unusedData()},
	}
	upper := []Entry{
		Whiteout("data/gone.txt"),
		Whiteout("data/olddir"),
		Opaque("data/opaque"),
		File("data/opaque/new.txt", "new in the opaque directory"),
		File("data/added.txt", "added by the upper layer"),
		Hardlink("data/hard.txt", "data/added.txt"),
	}
	return Image{Layers: [][]Entry{base, upper}, Cmd: []string{"/hello", "/data"}}, nil
}

// HelloOutput is what HelloImage's command prints.
const HelloOutput = `hello from lazypull
/data/
/data/added.txt: added by the upper layer
/data/hard.txt: added by the upper layer
/data/keep.txt: kept from the base layer
/data/link -> keep.txt
/data/opaque/
/data/opaque/new.txt: new in the opaque directory
`

// HelloLayout builds HelloImage as an OCI layout tagged v1 under dir and
// returns the layout's directory.
func HelloLayout(dir string) (string, error) {
	hello, err := BuildHello(dir)
	if err != nil {
		return "", err
	}
	img, err := HelloImage(hello)
	if err != nil {
		return "", err
	}
	layout := filepath.Join(dir, "oci")
	if _, err := img.WriteOCILayout(layout, "v1"); err != nil {
		return "", fmt.Errorf("write hello image: %w", err)
	}
	return layout, nil
}

// PushHello builds HelloImage and pushes it to the Env's registry as
// <registry>/hello:v1, returning that reference.
func (e *Env) PushHello(ctx context.Context) (string, error) {
	layout, err := HelloLayout(filepath.Join(e.Dir, "hello-image"))
	if err != nil {
		return "", err
	}
	ref := e.Registry.Host + "/hello:v1"
	return ref, Push(ctx, layout, "v1", ref)
}

// unusedData is 8 MiB that does not compress.
func unusedData() []byte {
	r := rand.New(rand.NewPCG(8, 8))
	b := make([]byte, 8<<20)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

package erofs_test

import (
	"bytes"
	"fmt"

	"github.com/lazypull/lazypull/composefs/erofs"
)

// A composefs layer: each regular file is a hole of its size whose
// overlay xattrs send reads to an object in a content-addressed store.
func ExampleWriter() {
	w := erofs.NewWriter()
	for _, e := range []erofs.Entry{
		{Path: "usr/bin/tool", Mode: 0o100755, Mtime: 1700000000, Size: 123456, Xattrs: map[string][]byte{
			"trusted.overlay.metacopy": {},
			"trusted.overlay.redirect": []byte("/ab/cdef0123456789"),
		}},
		{Path: "usr/bin/alias", Link: "usr/bin/tool"},
		{Path: "etc/hostname", Mode: 0o100644, Mtime: 1700000000, Size: 5, Data: []byte("host\n")},
		{Path: "usr/lib/.wh.old", Mode: 0o020000, Mtime: 1700000000}, // a whiteout: char device 0/0
	} {
		if err := w.Add(e); err != nil {
			panic(err)
		}
	}
	var img bytes.Buffer
	n, err := w.WriteTo(&img)
	fmt.Println(n, err)
	// Output: 4096 <nil>
}

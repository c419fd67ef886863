package objects

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/lazypull/lazypull/composefs/verity"
)

// TestAdopt: a file on the store's filesystem becomes the object by a
// link (the same inode, made the store's: owner, mode, xattrs), a second
// file of the same content is left alone, and what is recorded is what a
// Put would have recorded.
func TestAdopt(t *testing.T) {
	ctx := context.Background()
	root := t.TempDir()
	s := open(t, filepath.Join(root, "store"))
	data := content(10000, 7)
	src := filepath.Join(root, "layer-file")
	if err := os.WriteFile(src, data, 0o4755); err != nil {
		t.Fatal(err)
	}
	os.Chmod(src, 0o4755)
	if err := os.Chown(src, 1000, 1000); err != nil {
		t.Fatal(err)
	}
	if err := unix.Setxattr(src, "user.lazypull.verity", []byte("forged"), 0); err != nil {
		t.Fatal(err)
	}
	unix.Setxattr(src, "user.other", []byte("x"), 0)
	b := batch(t, s, "owner")
	obj, err := b.Adopt(src)
	if err != nil {
		t.Fatal(err)
	}
	want := put(t, batch(t, open(t, t.TempDir()), "x"), data)
	if !obj.New || obj.Info != want.Info {
		t.Fatalf("Adopt = %+v; want new %+v", obj, want.Info)
	}
	p, _ := s.Path(obj.Digest)
	var sst, ost unix.Stat_t
	unix.Stat(src, &sst)
	if err := unix.Stat(p, &ost); err != nil {
		t.Fatal(err)
	}
	if sst.Ino != ost.Ino || ost.Nlink != 2 {
		t.Errorf("object inode %d (nlink %d), file's %d: want the file's inode, linked", ost.Ino, ost.Nlink, sst.Ino)
	}
	if ost.Mode&0o7777 != objectMode || int(ost.Uid) != os.Geteuid() {
		t.Errorf("object mode %#o uid %d; want %#o, %d", ost.Mode&0o7777, ost.Uid, objectMode, os.Geteuid())
	}
	if n, err := unix.Getxattr(p, "user.other", nil); err == nil {
		t.Errorf("the file's xattr user.other stayed on the object (%d bytes)", n)
	}
	if info, err := s.Stat(ctx, obj.Digest); err != nil || info != obj.Info {
		t.Errorf("Stat = %+v, %v; want %+v", info, err, obj.Info)
	}
	if ls, _ := os.ReadDir(filepath.Join(s.Root(), tmpName)); len(ls) != 0 {
		t.Errorf("tmp/ holds %d files after Adopt", len(ls))
	}

	// The same content again: present, the second file untouched.
	dup := filepath.Join(root, "dup")
	os.WriteFile(dup, data, 0o600)
	obj2, err := b.Adopt(dup)
	if err != nil || obj2.New || obj2.Digest != obj.Digest {
		t.Errorf("Adopt of a duplicate = %+v, %v; want the object present", obj2, err)
	}
	var dst unix.Stat_t
	unix.Stat(dup, &dst)
	if dst.Nlink != 1 || dst.Mode&0o777 != 0o600 {
		t.Errorf("the duplicate was changed: nlink %d mode %#o", dst.Nlink, dst.Mode&0o777)
	}
	if err := b.Commit(); err != nil {
		t.Fatal(err)
	}
	if refs, err := s.Refs("owner"); err != nil || len(refs) != 1 || refs[0] != obj.Digest {
		t.Errorf("refs %v, %v; want [%s]", refs, err, obj.Digest)
	}
	if ok, err := s.KernelVerity(obj.Digest, obj.Verity); err != nil || ok {
		t.Errorf("KernelVerity on a kernel without fs-verity = %v, %v; want false", ok, err)
	}
}

// TestAdoptCopies: PutFile, and Adopt across filesystems, copy and leave
// the file as it was; symlinks and directories are refused.
func TestAdoptCopies(t *testing.T) {
	root := t.TempDir()
	s := open(t, filepath.Join(root, "store"))
	other := t.TempDir()
	if shm, err := os.MkdirTemp("/dev/shm", "adopt"); err == nil {
		t.Cleanup(func() { os.RemoveAll(shm) })
		other = shm // another filesystem, where there is one
	}
	b := batch(t, s, "owner")
	for i, dir := range []string{root, other} {
		for _, adopt := range []bool{false, true} {
			if dir == root && adopt {
				continue
			}
			data := content(5000+i*10+btoi(adopt), uint64(i))
			src := filepath.Join(dir, "f")
			os.WriteFile(src, data, 0o640)
			var obj Object
			var err error
			if adopt {
				obj, err = b.Adopt(src)
			} else {
				obj, err = b.PutFile(src)
			}
			if err != nil || !obj.New || obj.Digest != sha(data) {
				t.Fatalf("%s adopt=%v: %+v, %v", dir, adopt, obj, err)
			}
			var st, ost unix.Stat_t
			unix.Stat(src, &st)
			p, _ := s.Path(obj.Digest)
			unix.Stat(p, &ost)
			if st.Nlink != 1 || st.Mode&0o777 != 0o640 || st.Ino == ost.Ino && st.Dev == ost.Dev {
				t.Errorf("%s adopt=%v: the file was taken (nlink %d, mode %#o)", dir, adopt, st.Nlink, st.Mode&0o777)
			}
			if got, _ := os.ReadFile(p); !bytes.Equal(got, data) {
				t.Errorf("%s adopt=%v: object holds other bytes", dir, adopt)
			}
		}
	}
	link := filepath.Join(root, "link")
	os.Symlink("f", link)
	if _, err := b.Adopt(link); err == nil {
		t.Error("Adopt followed a symlink")
	}
	if _, err := b.PutFile(root); err == nil {
		t.Error("PutFile took a directory")
	}
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}

// TestKernelVerity: with the kernel stood in for, an adopted object is
// enabled and measures as its content's digest.
func TestKernelVerity(t *testing.T) {
	fake := &fakeVerity{}
	root := t.TempDir()
	s := open(t, filepath.Join(root, "store"), fake.options)
	src := filepath.Join(root, "f")
	os.WriteFile(src, content(8192, 3), 0o644)
	obj, err := batch(t, s, "o").Adopt(src)
	if err != nil {
		t.Fatal(err)
	}
	if ok, err := s.KernelVerity(obj.Digest, obj.Verity); err != nil || !ok {
		t.Errorf("KernelVerity = %v, %v; want true", ok, err)
	}
	if ok, _ := s.KernelVerity(obj.Digest, verity.Sum{1}); ok {
		t.Error("KernelVerity true for another digest")
	}
}

// TestAdoptConcurrent: files of the same content adopted at once, by
// batches of two owners, make one object: one adoption places it, the
// others find it, every batch names it, and tmp/ is left empty.
func TestAdoptConcurrent(t *testing.T) {
	root := t.TempDir()
	s := open(t, filepath.Join(root, "store"))
	data := content(50000, 9)
	batches := []*Batch{batch(t, s, "a"), batch(t, s, "b")}
	const n = 8
	results := make(chan Object, n)
	errs := make(chan error, n)
	for i := range n {
		src := filepath.Join(root, fmt.Sprint(i))
		os.WriteFile(src, data, 0o644)
		go func() {
			obj, err := batches[i%2].Adopt(src)
			results <- obj
			errs <- err
		}()
	}
	news := 0
	for range n {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
		if (<-results).New {
			news++
		}
	}
	if news != 1 {
		t.Errorf("%d adoptions placed the object, want 1", news)
	}
	for i, b := range batches {
		if err := b.Commit(); err != nil {
			t.Fatal(err)
		}
		owner := []string{"a", "b"}[i]
		if refs, err := s.Refs(owner); err != nil || len(refs) != 1 || refs[0] != sha(data) {
			t.Errorf("refs of %s: %v, %v", owner, refs, err)
		}
	}
	if ls, _ := os.ReadDir(filepath.Join(s.Root(), tmpName)); len(ls) != 0 {
		t.Errorf("tmp/ holds %d files", len(ls))
	}
}

package e2e

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/opencontainers/image-spec/identity"
	"golang.org/x/sys/unix"

	"github.com/lazypull/lazypull/internal/testenv"
)

// treeOf describes every entry under root as a line: its type and mode,
// owner, size and content digest (regular files), target (symlinks),
// device numbers, modification time and xattrs (not trusted.*, which are
// overlayfs's own), and, for files with several links, the other names
// of the same inode. Two trees are the same tree when their lines are.
func treeOf(t *testing.T, root string) map[string]string {
	t.Helper()
	tree := make(map[string]string)
	inodes := make(map[[2]uint64][]string)
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			return err
		}
		line := fmt.Sprintf("mode %o uid %d gid %d", st.Mode, st.Uid, st.Gid)
		// A directory's time is left out: one a layer implies (its tar
		// names files in it, not it) is made up by whoever unpacks it,
		// with the time of the unpack (containerd's applier) or none.
		if st.Mode&unix.S_IFMT != unix.S_IFDIR {
			line += fmt.Sprintf(" mtime %d.%09d", st.Mtim.Sec, st.Mtim.Nsec)
		}
		switch st.Mode & unix.S_IFMT {
		case unix.S_IFREG:
			sum, err := fileDigest(p)
			if err != nil {
				return err
			}
			line += fmt.Sprintf(" size %d sha256 %s", st.Size, sum)
			if st.Nlink > 1 {
				k := [2]uint64{st.Dev, st.Ino}
				inodes[k] = append(inodes[k], rel)
			}
		case unix.S_IFLNK:
			target, err := os.Readlink(p)
			if err != nil {
				return err
			}
			line += " -> " + target
		case unix.S_IFCHR, unix.S_IFBLK:
			line += fmt.Sprintf(" dev %d,%d", unix.Major(st.Rdev), unix.Minor(st.Rdev))
		}
		line += xattrsOf(t, p)
		tree[rel] = line
		return nil
	})
	if err != nil {
		t.Fatalf("walk %s: %v", root, err)
	}
	for _, names := range inodes {
		sort.Strings(names)
		for _, n := range names {
			tree[n] += " links " + strings.Join(names, ",")
		}
	}
	return tree
}

func fileDigest(p string) (string, error) {
	f, err := os.Open(p)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", fmt.Errorf("read %s: %w", p, err)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// xattrsOf lists p's xattrs other than trusted.* ones, with their values.
func xattrsOf(t *testing.T, p string) string {
	t.Helper()
	buf := make([]byte, 64<<10)
	n, err := unix.Llistxattr(p, buf)
	if err != nil {
		if err == unix.ENOTSUP {
			return ""
		}
		t.Fatalf("list xattrs of %s: %v", p, err)
	}
	var names []string
	for _, name := range strings.Split(string(buf[:n]), "\x00") {
		if name != "" && !strings.HasPrefix(name, "trusted.") {
			names = append(names, name)
		}
	}
	slices.Sort(names)
	var b strings.Builder
	for _, name := range names {
		v := make([]byte, 64<<10)
		m, err := unix.Lgetxattr(p, name, v)
		if err != nil {
			t.Fatalf("xattr %s of %s: %v", name, p, err)
		}
		fmt.Fprintf(&b, " xattr %s=%q", name, v[:m])
	}
	return b.String()
}

// compareTrees reports every entry that differs between two trees.
func compareTrees(t *testing.T, want, got map[string]string, wantName, gotName string) {
	t.Helper()
	var names []string
	for n := range want {
		names = append(names, n)
	}
	for n := range got {
		if _, ok := want[n]; !ok {
			names = append(names, n)
		}
	}
	slices.Sort(names)
	bad := 0
	for _, n := range names {
		if want[n] != got[n] {
			if bad++; bad <= 20 {
				t.Errorf("%s:\n  %s: %s\n  %s: %s", n, wantName, want[n], gotName, got[n])
			}
		}
	}
	if bad > 20 {
		t.Errorf("and %d more entries differ", bad-20)
	}
}

// mountedImage mounts a read-only view of image ref's top layer from the
// snapshotter (as `ctr images mount` would, without unpacking anything)
// and returns where; the test unmounts it and removes the view.
func mountedImage(t *testing.T, ctx context.Context, env *testenv.Env, snapshotter, ref string) string {
	t.Helper()
	client, err := containerd.New(env.Containerd.Address)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close() })
	ctx = namespaces.WithNamespace(ctx, testenv.Namespace)
	img, err := client.GetImage(ctx, ref)
	if err != nil {
		t.Fatal(err)
	}
	diffIDs, err := img.RootFS(ctx)
	if err != nil {
		t.Fatal(err)
	}
	target := filepath.Join(t.TempDir(), "mnt")
	if err := os.Mkdir(target, 0o755); err != nil {
		t.Fatal(err)
	}
	sn := client.SnapshotService(snapshotter)
	key := "view-" + filepath.Base(filepath.Dir(target))
	// A gc.root: containerd's GC collects a snapshot nothing refers to.
	root := snapshots.WithLabels(map[string]string{"containerd.io/gc.root": time.Now().UTC().Format(time.RFC3339)})
	mounts, err := sn.View(ctx, key, identity.ChainID(diffIDs).String(), root)
	if err != nil {
		t.Fatalf("view of %s from %s: %v", ref, snapshotter, err)
	}
	if err := mount.All(mounts, target); err != nil {
		sn.Remove(ctx, key)
		t.Fatalf("mount the view of %s from %s (%v): %v", ref, snapshotter, mounts, err)
	}
	t.Cleanup(func() {
		if err := mount.UnmountAll(target, 0); err != nil {
			t.Errorf("unmount %s: %v", target, err)
		}
		if err := sn.Remove(namespaces.WithNamespace(context.Background(), testenv.Namespace), key); err != nil {
			t.Errorf("remove the view %s: %v", key, err)
		}
	})
	return target
}

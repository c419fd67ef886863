package mounter

import (
	"context"
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/core/snapshots"
	"golang.org/x/sys/unix"

	"github.com/lazypull/lazypull/cache"
	"github.com/lazypull/lazypull/composefs"
	"github.com/lazypull/lazypull/composefs/objects"
	"github.com/lazypull/lazypull/convert"
	"github.com/lazypull/lazypull/fusefs"
	"github.com/lazypull/lazypull/internal/testenv"
	"github.com/lazypull/lazypull/labels"
)

// TestMountComposefsSettles serves an eStargz image's layers in the lazy
// composefs form: each gets its metadata image and its claim on its
// objects at once; once fetched and verified, every object it names is in
// the store, the layer is marked settled, its chunks leave the cache and
// it is released: the object filesystem goes with the last layer.
func TestMountComposefsSettles(t *testing.T) {
	testenv.NeedRoot(t)
	testenv.NeedFUSE(t)
	ctx := context.Background()
	dir := t.TempDir()
	reg := testenv.NewRegistry(t)
	layout, err := testenv.HelloLayout(dir)
	if err != nil {
		t.Fatal(err)
	}
	ref := reg.Host + "/hello:esgz"
	layers, chains := pushConverted(t, layout, ref, convert.EStargz)

	c, err := cache.New(filepath.Join(dir, "cache"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	store, err := objects.Open(ctx, filepath.Join(dir, "store"))
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	objfs := filepath.Join(dir, "objfs")
	m := New(c, Options{Composefs: ComposefsOptions{Store: store, Mountpoint: objfs}, FUSE: fusefs.Options{Passthrough: true}})
	defer m.Close()

	var mountpoints, images, owners []string
	for i := range layers {
		owner := fmt.Sprint("layer-", i)
		mp, image := filepath.Join(dir, owner), filepath.Join(dir, owner+".erofs")
		lbls := labels.ForLayer(ref, "", layers[i], layers)
		lbls[snapshots.LabelSnapshotRef] = chains[i]
		// What a crash can leave of an image written unsynced: it is
		// written again.
		if err := os.WriteFile(image, []byte("torn"), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := m.MountComposefs(ctx, mp, image, owner, lbls); err != nil {
			t.Fatalf("layer %d: %v", i, err)
		}
		if !isEROFSImage(t, image) {
			t.Errorf("layer %d: %s is no EROFS image after the mount", i, image)
		}
		if refs, err := store.Refs(owner); err != nil || len(refs) == 0 {
			t.Errorf("layer %d: claims %v, %v", i, refs, err)
		}
		mountpoints, images, owners = append(mountpoints, mp), append(images, image), append(owners, owner)
	}

	deadline := time.Now().Add(time.Minute)
	for _, image := range images {
		for {
			if _, err := os.Stat(composefs.SettledMarker(image)); err == nil {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s did not settle in a minute", image)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	for _, owner := range owners {
		refs, _ := store.Refs(owner)
		for _, d := range refs {
			if has, err := store.Has(d); !has || err != nil {
				t.Errorf("%s's object %s is not in the store after it settled (%v)", owner, d, err)
			}
			if c.Has(d) {
				t.Errorf("%s's object %s is still in the cache after it settled", owner, d)
			}
		}
	}

	deadline = time.Now().Add(10 * time.Second)
	for len(m.Layers()) > 0 || isFUSE(objfs) {
		if time.Now().After(deadline) {
			t.Fatalf("settled layers still served (%d), or the object filesystem still mounted (%v)", len(m.Layers()), isFUSE(objfs))
		}
		time.Sleep(20 * time.Millisecond)
	}
	// Mounted again (a restart): nothing to do, nothing opened.
	for i, mp := range mountpoints {
		if err := m.MountComposefs(ctx, mp, images[i], owners[i], nil); err != nil {
			t.Errorf("%s again after it settled: %v", mp, err)
		}
	}
	if len(m.Layers()) > 0 {
		t.Errorf("settled layers mounted again are served: %v", m.Layers())
	}
}

func isFUSE(path string) bool {
	var st unix.Statfs_t
	return unix.Statfs(path, &st) == nil && st.Type == 0x65735546
}

// isEROFSImage tells whether the file at path starts as an EROFS image:
// its superblock's magic at 1024.
func isEROFSImage(t *testing.T, path string) bool {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return len(b) >= 1028 && binary.LittleEndian.Uint32(b[1024:]) == 0xe0f5e1e2
}

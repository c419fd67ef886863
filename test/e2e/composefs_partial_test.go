package e2e

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/lazypull/lazypull/internal/testenv"
)

// TestComposefsPartialPull pulls a zstd:chunked image with the composefs
// mode on: its layers go straight into the object store (checked against
// the image's diff_ids with their tar-split data) as metadata images, the
// container reads what the image holds, before and after a daemon
// restart; an eStargz image, which has no tar-split data, is mounted
// lazily instead; removing the images removes every object.
func TestComposefsPartialPull(t *testing.T) { testenv.ForEachContainerd(t, testComposefsPartialPull) }

func testComposefsPartialPull(t *testing.T, containerd testenv.Option) {
	env := testenv.New(t, containerd, testenv.WithDaemonConfig("[composefs]\nenable = true\n"))
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	zstd, esgz := pushLazyFormats(t, ctx, env)
	ctr := env.Containerd.Ctr
	run := func(ref, name string) { t.Helper(); checkHello(t, ctx, env, ref, name) }

	out, err := pullLazy(t, env, zstd)
	if err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(out, "pulled into the composefs store"); n != 2 {
		t.Errorf("lazypull pull put %d of 2 zstd:chunked layers into the store:\n%s", n, out)
	}
	run(zstd, "zstd-1")
	if images, _ := metadataImages(t, env); images != 2 {
		t.Errorf("%d of the image's 2 layers are metadata images", images)
	}
	objects := countObjects(t, env)
	if objects == 0 {
		t.Error("no objects in the store after a partial pull")
	}
	if err := env.RestartDaemon(); err != nil {
		t.Fatal(err)
	}
	run(zstd, "zstd-2")

	// eStargz: no tar-split data to check a partial pull with, so its
	// layers are mounted lazily, over the store's layers or not.
	if _, err := ctr(ctx, "images", "rm", "--sync", zstd); err != nil {
		t.Fatal(err)
	}
	out, err = pullLazy(t, env, esgz)
	if err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(out, "mounted lazily"); n != 2 {
		t.Errorf("lazypull pull mounted %d of 2 eStargz layers lazily:\n%s", n, out)
	}
	run(esgz, "esgz")
	if _, err := ctr(ctx, "images", "rm", "--sync", esgz); err != nil {
		t.Fatal(err)
	}
	if dirs := snapshotDirs(t, env); len(dirs) != 0 {
		t.Errorf("snapshot directories left after the images were removed: %v", dirs)
	}
	if n := countObjects(t, env); n != 0 {
		t.Errorf("%d objects left after the images were removed", n)
	}
	if m := testenv.MountsUnder(env.Dir); len(m) > 0 {
		t.Errorf("mounts left after the images were removed: %v", m)
	}
}

// pushLazyFormats pushes the hello image converted to zstd:chunked and to
// eStargz, and returns their references.
func pushLazyFormats(t *testing.T, ctx context.Context, env *testenv.Env) (zstd, esgz string) {
	t.Helper()
	ref, err := env.PushHello(ctx)
	if err != nil {
		t.Fatal(err)
	}
	zstd, esgz = env.Registry.Host+"/hello:zstdchunked", env.Registry.Host+"/hello:estargz"
	for format, lazy := range map[string]string{"zstdchunked": zstd, "estargz": esgz} {
		if _, err := lazypull(t, env.BinDir, "convert", "-q", "--format", format, "docker://"+ref, "docker://"+lazy); err != nil {
			t.Fatal(err)
		}
	}
	return zstd, esgz
}

// checkHello runs the hello image ref as container name and checks what it
// says.
func checkHello(t *testing.T, ctx context.Context, env *testenv.Env, ref, name string) {
	t.Helper()
	out, err := runHello(t, ctx, env, ref, name)
	if err != nil {
		t.Fatalf("run %s: %v\noutput:\n%s", ref, err, out)
	}
	if out != testenv.HelloOutput {
		t.Errorf("%s said:\n%s\nwant:\n%s", ref, out, testenv.HelloOutput)
	}
}

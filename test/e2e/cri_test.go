package e2e

import (
	"bytes"
	"context"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/lazypull/lazypull/internal/regproxy"
	"github.com/lazypull/lazypull/internal/testenv"
)

// TestCRI drives containerd as the kubelet does, through the CRI API with
// the CRI plugin configured for lazypull as the README says: PullImage of an eStargz and a zstd:chunked image mounts their
// layers lazily, a pod (its sandbox image built here) runs the image's
// program, which prints what it should, and RemoveImage takes the layers
// away. (ImageFsInfo is not checked: the CRI plugin asks a committed
// snapshot's usage once, when it first sees it, and a lazy layer's grows
// after.)
func TestCRI(t *testing.T) { testenv.ForEachContainerd(t, testCRI) }

func testCRI(t *testing.T, containerd testenv.Option) {
	env := testenv.New(t, containerd, testenv.WithCRI(), testenv.WithDaemonConfig("[fetch]\nbackground = false\n"))
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	plain, err := env.PushHello(ctx)
	if err != nil {
		t.Fatal(err)
	}
	rt, images := env.CRIClient(t)
	for _, format := range []string{"estargz", "zstdchunked"} {
		t.Run(format, func(t *testing.T) {
			ref := env.Registry.Host + "/hello:cri-" + format
			if _, err := lazypull(t, env.BinDir, "convert", "-q", "--format", format, "docker://"+plain, "docker://"+ref); err != nil {
				t.Fatal(err)
			}
			pulled, err := images.PullImage(ctx, &runtimeapi.PullImageRequest{Image: &runtimeapi.ImageSpec{Image: ref}})
			if err != nil {
				t.Fatalf("CRI PullImage %s: %v", ref, err)
			}
			// Each of the image's two layers mounted lazily: its state
			// file is there, and it fetched little.
			fetched, size := layerStates(t, env)
			if size == 0 || fetched*2 > size {
				t.Errorf("after PullImage the mounted layers fetched %d of %d bytes", fetched, size)
			}
			if n := len(stateFiles(env)); n != 2 {
				t.Errorf("PullImage mounted %d layers lazily, want 2", n)
			}

			out := runPod(ctx, t, env, rt, ref, "hello-"+format)
			if out != testenv.HelloOutput {
				t.Errorf("the pod's container printed:\n%s\nwant:\n%s", out, testenv.HelloOutput)
			}

			removeImages(ctx, t, env, images, pulled.ImageRef)
		})
	}
}

// removeImages removes images through the CRI, and waits for containerd's
// GC to remove their snapshots, and with them the lazy mounts.
func removeImages(ctx context.Context, t *testing.T, env *testenv.Env, images runtimeapi.ImageServiceClient, refs ...string) {
	t.Helper()
	for _, ref := range refs {
		if _, err := images.RemoveImage(ctx, &runtimeapi.RemoveImageRequest{Image: &runtimeapi.ImageSpec{Image: ref}}); err != nil {
			t.Fatalf("CRI RemoveImage %s: %v", ref, err)
		}
	}
	for len(stateFiles(env)) > 0 {
		if !sleep(ctx) {
			t.Fatalf("%d layers still mounted after RemoveImage", len(stateFiles(env)))
		}
	}
}

// runPod runs ref's program in a pod of its own, in the host's network
// namespace (no CNI), and returns what it printed; the pod is gone after.
func runPod(ctx context.Context, t *testing.T, env *testenv.Env, rt runtimeapi.RuntimeServiceClient, ref, name string) string {
	t.Helper()
	pod, err := testenv.StartPod(ctx, rt, env.CRI.LogDir(), name, ref)
	if err != nil {
		t.Fatalf("%v\ncontainerd says:\n%s", err, grepLog(t, env.Containerd.Log, "level=error"))
	}
	defer func() {
		if err := pod.Remove(rt); err != nil {
			t.Error(err)
		}
	}()
	for {
		exited, st, err := pod.Exited(ctx, rt)
		if err != nil {
			t.Fatal(err)
		}
		if exited {
			if st.ExitCode != 0 {
				t.Errorf("the container exited %d: %s %s", st.ExitCode, st.Reason, st.Message)
			}
			break
		}
		if !sleep(ctx) {
			t.Fatalf("the container did not exit: %v", ctx.Err())
		}
	}
	return criLog(t, pod.LogPath)
}

// sleep waits a moment between polls; false once ctx is done.
func sleep(ctx context.Context) bool {
	select {
	case <-ctx.Done():
		return false
	case <-time.After(50 * time.Millisecond):
		return true
	}
}

// criLog returns what a container wrote to stdout, from its CRI log file
// ("<time> <stream> <F|P> <text>" lines).
func criLog(t *testing.T, path string) string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	out, err := testenv.CRIStdout(f)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// privateHello puts the hello image, as private/hello:estargz and
// private/hello:zstdchunked (layers of their own: one's unpacked snapshots
// cannot stand in for the other's), behind a registry proxy that gives
// tokens only for user and password.
func privateHello(ctx context.Context, t *testing.T, env *testenv.Env, user, password string) *regproxy.Proxy {
	t.Helper()
	plain, err := env.PushHello(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, format := range []string{"estargz", "zstdchunked"} {
		if _, err := lazypull(t, env.BinDir, "convert", "-q", "--format", format, "docker://"+plain, "docker://"+env.Registry.Host+"/private/hello:"+format); err != nil {
			t.Fatal(err)
		}
	}
	private, err := regproxy.Start(env.Registry.Host)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { private.Close() })
	private.EnableTokenAuth()
	private.RequireCredentials(user, password)
	return private
}

// TestCRIPullSecret: a private registry (tokens only for a user and
// password) and a pull secret given to PullImage, as the kubelet gives
// it. Through containerd's own image service the secret reaches only
// containerd: the snapshotter cannot read the layers and they are
// unpacked. Through our image-service proxy they mount lazily, and the
// container's reads, after every token expired, authenticate again with
// the kept secret. The secret is never written under our root or logged.
func TestCRIPullSecret(t *testing.T) { testenv.ForEachContainerd(t, testCRIPullSecret) }

func testCRIPullSecret(t *testing.T, containerd testenv.Option) {
	env := testenv.New(t, containerd, testenv.WithCRI(), testenv.WithDaemonConfig("[fetch]\nbackground = false\nprefetch = false\n"))
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	const user, password = "tenant", "s3cret-8f2c1e"
	private := privateHello(ctx, t, env, user, password)
	auth := &runtimeapi.AuthConfig{Username: user, Password: password}
	rt, images := env.CRIClient(t)

	// containerd's own image service: the pull works, nothing is lazy.
	unpacked := private.Addr() + "/private/hello:zstdchunked"
	ref := private.Addr() + "/private/hello:estargz"
	defer removeImages(ctx, t, env, images, unpacked, ref)
	if _, err := env.ContainerdImageService(t).PullImage(ctx, &runtimeapi.PullImageRequest{Image: &runtimeapi.ImageSpec{Image: unpacked}, Auth: auth}); err != nil {
		t.Fatalf("CRI PullImage %s from containerd: %v", unpacked, err)
	}
	if n := len(stateFiles(env)); n != 0 {
		t.Errorf("with the secret given to containerd only, %d layers mounted lazily, want 0", n)
	}

	// Through the proxy: lazy, and the reads outlive the tokens.
	if _, err := images.PullImage(ctx, &runtimeapi.PullImageRequest{Image: &runtimeapi.ImageSpec{Image: ref}}); err == nil {
		t.Fatalf("%s pulled with no secret", ref)
	}
	if _, err := images.PullImage(ctx, &runtimeapi.PullImageRequest{Image: &runtimeapi.ImageSpec{Image: ref}, Auth: auth}); err != nil {
		t.Fatalf("CRI PullImage %s through the proxy: %v", ref, err)
	}
	if n := len(stateFiles(env)); n != 2 {
		t.Errorf("with the secret given through the proxy, %d layers mounted lazily, want 2", n)
	}
	private.ExpireTokens()
	tokens := private.Stats().ByKind[regproxy.Token]
	if out := runPod(ctx, t, env, rt, ref, "private"); out != testenv.HelloOutput {
		t.Errorf("the pod's container printed:\n%s\nwant:\n%s", out, testenv.HelloOutput)
	}
	if got := private.Stats().ByKind[regproxy.Token]; got <= tokens {
		t.Errorf("the container's reads took no new token after the tokens expired (%d before, %d after)", tokens, got)
	}

	// Not on disk, not in a log.
	filepath.WalkDir(env.Dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() || strings.HasPrefix(path, filepath.Join(env.Dir, "registry")) {
			return nil
		}
		if data, err := os.ReadFile(path); err == nil && bytes.Contains(data, []byte(password)) {
			t.Errorf("the pull secret is in %s", path)
		}
		return nil
	})
}

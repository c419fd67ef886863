package e2e

import (
	"bufio"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

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

			// Removing the image lets containerd's GC remove its
			// snapshots, and with them the lazy mounts.
			if _, err := images.RemoveImage(ctx, &runtimeapi.RemoveImageRequest{Image: &runtimeapi.ImageSpec{Image: pulled.ImageRef}}); err != nil {
				t.Fatalf("CRI RemoveImage: %v", err)
			}
			for len(stateFiles(env)) > 0 {
				if !sleep(ctx) {
					t.Fatalf("%d layers still mounted after RemoveImage", len(stateFiles(env)))
				}
			}
		})
	}
}

// runPod runs ref's program in a pod of its own, in the host's network
// namespace (no CNI), and returns what it printed; the pod is gone after.
func runPod(ctx context.Context, t *testing.T, env *testenv.Env, rt runtimeapi.RuntimeServiceClient, ref, name string) string {
	t.Helper()
	logDir := filepath.Join(env.CRI.LogDir(), name)
	if err := os.MkdirAll(logDir, 0o755); err != nil {
		t.Fatal(err)
	}
	sandbox := &runtimeapi.PodSandboxConfig{
		Metadata:     &runtimeapi.PodSandboxMetadata{Name: name, Uid: name + "-uid", Namespace: "default"},
		LogDirectory: logDir,
		Linux: &runtimeapi.LinuxPodSandboxConfig{SecurityContext: &runtimeapi.LinuxSandboxSecurityContext{
			NamespaceOptions: &runtimeapi.NamespaceOption{Network: runtimeapi.NamespaceMode_NODE},
		}},
	}
	pod, err := rt.RunPodSandbox(ctx, &runtimeapi.RunPodSandboxRequest{Config: sandbox})
	if err != nil {
		t.Fatalf("CRI RunPodSandbox: %v\ncontainerd says:\n%s", err, grepLog(t, env.Containerd.Log, "level=error"))
	}
	defer func() {
		if _, err := rt.StopPodSandbox(ctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: pod.PodSandboxId}); err != nil {
			t.Errorf("CRI StopPodSandbox: %v", err)
		}
		if _, err := rt.RemovePodSandbox(ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: pod.PodSandboxId}); err != nil {
			t.Errorf("CRI RemovePodSandbox: %v", err)
		}
	}()
	created, err := rt.CreateContainer(ctx, &runtimeapi.CreateContainerRequest{
		PodSandboxId: pod.PodSandboxId,
		Config: &runtimeapi.ContainerConfig{
			Metadata: &runtimeapi.ContainerMetadata{Name: name},
			Image:    &runtimeapi.ImageSpec{Image: ref},
			LogPath:  name + ".log",
		},
		SandboxConfig: sandbox,
	})
	if err != nil {
		t.Fatalf("CRI CreateContainer: %v", err)
	}
	if _, err := rt.StartContainer(ctx, &runtimeapi.StartContainerRequest{ContainerId: created.ContainerId}); err != nil {
		t.Fatalf("CRI StartContainer: %v", err)
	}
	for {
		st, err := rt.ContainerStatus(ctx, &runtimeapi.ContainerStatusRequest{ContainerId: created.ContainerId})
		if err != nil {
			t.Fatalf("CRI ContainerStatus: %v", err)
		}
		if st.Status.State == runtimeapi.ContainerState_CONTAINER_EXITED {
			if st.Status.ExitCode != 0 {
				t.Errorf("the container exited %d: %s %s", st.Status.ExitCode, st.Status.Reason, st.Status.Message)
			}
			break
		}
		if !sleep(ctx) {
			t.Fatalf("the container did not exit: %v", ctx.Err())
		}
	}
	return criLog(t, filepath.Join(logDir, name+".log"))
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
	var out strings.Builder
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.SplitN(sc.Text(), " ", 4)
		if len(fields) < 4 || fields[1] != "stdout" {
			continue
		}
		out.WriteString(fields[3])
		if fields[2] == "F" {
			out.WriteString("\n")
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return out.String()
}

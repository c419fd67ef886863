package runner

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"google.golang.org/grpc"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/lazypull/lazypull/fusemanager"
	"github.com/lazypull/lazypull/internal/testenv"
)

// kubelet drives containerd's CRI plugin as a kubelet configured as the
// README says does (Config.CRI): images through lazypull's image-service
// proxy, pods and containers through containerd. The CRI plugin's
// snapshotter is lazypull, so an image as built (overlayfs's scenario) is
// unpacked by lazypull's overlay path, as containerd's overlayfs would.
type kubelet struct {
	rt     runtimeapi.RuntimeServiceClient
	images runtimeapi.ImageServiceClient
	conns  []*grpc.ClientConn
	logDir string
	// sandboxImage is kept across cold runs, as a node keeps it.
	sandboxImage string
}

func newKubelet(env *testenv.Env) (*kubelet, error) {
	k := &kubelet{logDir: env.CRI.LogDir(), sandboxImage: env.CRI.SandboxImage}
	for _, socket := range []string{env.Containerd.Address, env.CRI.ImageService} {
		conn, err := testenv.DialCRI(socket)
		if err != nil {
			k.close()
			return nil, err
		}
		k.conns = append(k.conns, conn)
	}
	k.rt, k.images = runtimeapi.NewRuntimeServiceClient(k.conns[0]), runtimeapi.NewImageServiceClient(k.conns[1])
	return k, nil
}

func (k *kubelet) close() {
	for _, c := range k.conns {
		c.Close()
	}
}

// pull is the kubelet's PullImage.
func (k *kubelet) pull(ctx context.Context, ref string) error {
	if _, err := k.images.PullImage(ctx, &runtimeapi.PullImageRequest{Image: &runtimeapi.ImageSpec{Image: ref}}); err != nil {
		return fmt.Errorf("CRI PullImage %s: %w", ref, err)
	}
	return nil
}

// runUntilReady starts a pod that runs ref (RunPodSandbox in the host's
// network, CreateContainer, StartContainer: what the kubelet does once
// the image is there) and returns once the container's log holds ready.
// wait lets it exit and removes the pod.
func (k *kubelet) runUntilReady(ctx context.Context, ref, name, ready string) (wait func() error, err error) {
	pod, err := testenv.StartPod(ctx, k.rt, k.logDir, name, ref)
	if err != nil {
		return nil, err
	}
	failed := func(err error) (func() error, error) { return nil, errors.Join(err, pod.Remove(k.rt)) }
	for {
		if out, err := os.ReadFile(pod.LogPath); err == nil {
			text, err := testenv.CRIStdout(bytes.NewReader(out))
			if err != nil {
				return failed(err)
			}
			if strings.Contains(text, ready) {
				break
			}
		}
		exited, st, err := pod.Exited(ctx, k.rt)
		if err != nil {
			return failed(err)
		}
		if exited {
			out, _ := os.ReadFile(pod.LogPath)
			return failed(fmt.Errorf("the container of %s exited (%d, %s) before printing %q; its log:\n%s", ref, st.ExitCode, st.Reason, ready, out))
		}
		select {
		case <-ctx.Done():
			return failed(fmt.Errorf("waiting for %q from %s: %w", ready, ref, ctx.Err()))
		case <-time.After(sampleEvery):
		}
	}
	return func() error {
		// As ctr run --rm: the workload ends by itself.
		for ctx.Err() == nil {
			if exited, _, err := pod.Exited(ctx, k.rt); err != nil || exited {
				break
			}
			time.Sleep(sampleEvery)
		}
		return pod.Remove(k.rt)
	}, nil
}

// removeImages removes every image but the sandbox's and waits until
// containerd's garbage collector has removed their snapshots, and with
// them lazypull's mounts (root is the daemon's).
func (k *kubelet) removeImages(ctx context.Context, root string) error {
	list, err := k.images.ListImages(ctx, &runtimeapi.ListImagesRequest{})
	if err != nil {
		return fmt.Errorf("CRI ListImages: %w", err)
	}
	for _, img := range list.Images {
		if img.Pinned || (len(img.RepoTags) > 0 && img.RepoTags[0] == k.sandboxImage) {
			continue
		}
		if _, err := k.images.RemoveImage(ctx, &runtimeapi.RemoveImageRequest{Image: &runtimeapi.ImageSpec{Image: img.Id}}); err != nil {
			return fmt.Errorf("CRI RemoveImage %s: %w", img.Id, err)
		}
	}
	client, err := fusemanager.Connect(ctx, root, nil)
	if err != nil {
		return nil // no manager: nothing mounted
	}
	defer client.Close()
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(sampleEvery) {
		st, err := client.Status(ctx)
		if err != nil || len(st.Layers) == 0 {
			return err
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%d lazy layers still mounted a minute after every image was removed through the CRI", len(st.Layers))
		}
	}
}

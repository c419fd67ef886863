package testenv

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// CRINamespace is the containerd namespace the CRI plugin keeps
// Kubernetes' images and containers in.
const CRINamespace = "k8s.io"

// CRI is containerd's CRI plugin as a kubelet's node has it, configured as
// the README says: images unpacked with the lazypull snapshotter, which
// gets the CRI plugin's snapshot labels (1.6: disable_snapshot_annotations
// = false; 2.x: the transfer service, which labels layers for a proxy
// snapshotter that exports enable_remote_snapshot_annotations); pods whose sandbox image (a pause program built here)
// is in the Env's registry; registries configured by hosts.toml (plain
// HTTP to the Env's); CNI configured with nothing (pods run in the host's
// network namespace).
type CRI struct {
	SandboxImage string // set up by New
	// ImageService is the socket of our daemon's CRI image-service proxy
	// (cri_image_service_address), where a kubelet configured as the
	// README says sends its image calls.
	ImageService string
	dir          string
}

// WithCRI turns containerd's CRI plugin on (see CRI).
func WithCRI() Option {
	return func(e *Env) error {
		e.CRI = &CRI{}
		return nil
	}
}

// setUp builds the pause image and pushes it to the Env's registry, and
// makes the plugin's directories.
func (c *CRI) setUp(e *Env) error {
	c.dir = filepath.Join(e.Dir, "cri")
	c.ImageService = filepath.Join(c.dir, "image.sock")
	for _, sub := range []string{"cni/bin", "cni/conf", "certs.d", "pause", "logs"} {
		if err := os.MkdirAll(filepath.Join(c.dir, sub), 0o755); err != nil {
			return err
		}
	}
	pause := filepath.Join(c.dir, "pause", "pause")
	if err := goBuild(pause, "./internal/testenv/pause", []string{"CGO_ENABLED=0"}); err != nil {
		return err
	}
	data, err := os.ReadFile(pause)
	if err != nil {
		return err
	}
	img := Image{Layers: [][]Entry{{{Path: "pause", Type: '0', Mode: 0o755, Data: data}}}, Cmd: []string{"/pause"}}
	layout := filepath.Join(c.dir, "pause", "oci")
	if _, err := img.WriteOCILayout(layout, "v1"); err != nil {
		return err
	}
	c.SandboxImage = e.Registry.Host + "/pause:v1"
	return Push(context.Background(), layout, "v1", c.SandboxImage)
}

// LogDir is a directory for pods' logs.
func (c *CRI) LogDir() string { return filepath.Join(c.dir, "logs") }

// config is the plugin's part of containerd's configuration. A pod's
// sandbox gets a negative oom_score_adj, which needs CAP_SYS_RESOURCE;
// machines of this kind run tests without it: restrict_oom_score_adj keeps
// the score where it is, as a rootless kubelet's node does.
func (c *CRI) config(r ContainerdRelease) string {
	hosts, cniBin, cniConf := filepath.Join(c.dir, "certs.d"), filepath.Join(c.dir, "cni/bin"), filepath.Join(c.dir, "cni/conf")
	if r.Major < 2 {
		return fmt.Sprintf(`
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = %q
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "lazypull"
    disable_snapshot_annotations = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = %q
    conf_dir = %q
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = %q
`, c.SandboxImage, cniBin, cniConf, hosts)
	}
	return fmt.Sprintf(`
[plugins."io.containerd.cri.v1.images"]
  snapshotter = "lazypull"
  [plugins."io.containerd.cri.v1.images".pinned_images]
    sandbox = %q
  [plugins."io.containerd.cri.v1.images".registry]
    config_path = %q

[plugins."io.containerd.cri.v1.runtime"]
  restrict_oom_score_adj = true
  [plugins."io.containerd.cri.v1.runtime".cni]
    bin_dirs = [%q]
    conf_dir = %q
`, c.SandboxImage, hosts, cniBin, cniConf)
}

// CRIClient dials the Env's CRI as a kubelet configured as the README says
// does: the runtime service on containerd's socket, the image service on
// our daemon's proxy (--image-service-endpoint).
func (e *Env) CRIClient(t testing.TB) (runtimeapi.RuntimeServiceClient, runtimeapi.ImageServiceClient) {
	t.Helper()
	return runtimeapi.NewRuntimeServiceClient(dialCRI(t, e.Containerd.Address)), runtimeapi.NewImageServiceClient(dialCRI(t, e.CRI.ImageService))
}

// ContainerdImageService dials containerd's own CRI image service, as a
// kubelet with no --image-service-endpoint does.
func (e *Env) ContainerdImageService(t testing.TB) runtimeapi.ImageServiceClient {
	t.Helper()
	return runtimeapi.NewImageServiceClient(dialCRI(t, e.Containerd.Address))
}

func dialCRI(t testing.TB, socket string) *grpc.ClientConn {
	t.Helper()
	conn, err := DialCRI(socket)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// Pod is a pod of one container, started through the CRI as a kubelet
// starts one.
type Pod struct {
	Name, SandboxID, ContainerID string
	LogPath                      string // the container's CRI log
}

// StartPod runs ref's program (its image's entrypoint) in a pod of its
// own, in the host's network namespace (no CNI), logging under logDir:
// RunPodSandbox, CreateContainer, StartContainer. On error nothing of the
// pod is left.
func StartPod(ctx context.Context, rt runtimeapi.RuntimeServiceClient, logDir, name, ref string) (*Pod, error) {
	dir := filepath.Join(logDir, name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	sandbox := &runtimeapi.PodSandboxConfig{
		Metadata:     &runtimeapi.PodSandboxMetadata{Name: name, Uid: name + "-uid", Namespace: "default"},
		LogDirectory: dir,
		Linux: &runtimeapi.LinuxPodSandboxConfig{SecurityContext: &runtimeapi.LinuxSandboxSecurityContext{
			NamespaceOptions: &runtimeapi.NamespaceOption{Network: runtimeapi.NamespaceMode_NODE},
		}},
	}
	sb, err := rt.RunPodSandbox(ctx, &runtimeapi.RunPodSandboxRequest{Config: sandbox})
	if err != nil {
		return nil, fmt.Errorf("CRI RunPodSandbox %s: %w", name, err)
	}
	p := &Pod{Name: name, SandboxID: sb.PodSandboxId, LogPath: filepath.Join(dir, name+".log")}
	created, err := rt.CreateContainer(ctx, &runtimeapi.CreateContainerRequest{
		PodSandboxId: p.SandboxID,
		Config: &runtimeapi.ContainerConfig{
			Metadata: &runtimeapi.ContainerMetadata{Name: name},
			Image:    &runtimeapi.ImageSpec{Image: ref},
			LogPath:  name + ".log",
		},
		SandboxConfig: sandbox,
	})
	if err != nil {
		return nil, errors.Join(fmt.Errorf("CRI CreateContainer %s: %w", ref, err), p.Remove(rt))
	}
	p.ContainerID = created.ContainerId
	if _, err := rt.StartContainer(ctx, &runtimeapi.StartContainerRequest{ContainerId: p.ContainerID}); err != nil {
		return nil, errors.Join(fmt.Errorf("CRI StartContainer %s: %w", ref, err), p.Remove(rt))
	}
	return p, nil
}

// Exited tells whether the pod's container has exited, and how.
func (p *Pod) Exited(ctx context.Context, rt runtimeapi.RuntimeServiceClient) (bool, *runtimeapi.ContainerStatus, error) {
	st, err := rt.ContainerStatus(ctx, &runtimeapi.ContainerStatusRequest{ContainerId: p.ContainerID})
	if err != nil {
		return false, nil, fmt.Errorf("CRI ContainerStatus %s: %w", p.Name, err)
	}
	return st.Status.State == runtimeapi.ContainerState_CONTAINER_EXITED, st.Status, nil
}

// Remove stops and removes the pod and its container.
func (p *Pod) Remove(rt runtimeapi.RuntimeServiceClient) error {
	// Its own context: the caller's may have ended.
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := rt.StopPodSandbox(ctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: p.SandboxID}); err != nil {
		return fmt.Errorf("CRI StopPodSandbox %s: %w", p.Name, err)
	}
	if _, err := rt.RemovePodSandbox(ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: p.SandboxID}); err != nil {
		return fmt.Errorf("CRI RemovePodSandbox %s: %w", p.Name, err)
	}
	return nil
}

// DialCRI connects to a CRI service on a unix socket, as the kubelet does.
func DialCRI(socket string) (*grpc.ClientConn, error) {
	return grpc.NewClient("unix://"+socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
}

// CRIStdout returns what a container wrote to its standard output, from
// its CRI log ("<time> <stream> <F|P> <text>" lines; P is part of a line).
func CRIStdout(r io.Reader) (string, error) {
	var out strings.Builder
	sc := bufio.NewScanner(r)
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
	return out.String(), sc.Err()
}

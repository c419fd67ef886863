//go:build apiserver

// Built and run by `make test-kube`, not `make test`: the API server it
// needs takes 10-20 minutes to build (scripts/build-kube.sh).

package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/lazypull/lazypull/fusemanager"
	"github.com/lazypull/lazypull/internal/regproxy"
	"github.com/lazypull/lazypull/internal/testenv"
)

// TestKubeconfigKeychain: a private registry, a real API server, and the
// pull secret only in the cluster. containerd pulls with the secret given
// to its CRI PullImage (the kubelet's path without lazypull's proxy):
// with the secret in a namespace lazypull does not read, the layers are
// unpacked; in one it reads, they mount lazily, and the pod's reads take
// new tokens with it after every token expired.
func TestKubeconfigKeychain(t *testing.T) { testenv.ForEachContainerd(t, testKubeconfigKeychain) }

func testKubeconfigKeychain(t *testing.T, containerd testenv.Option) {
	api, err := testenv.StartKubeAPIServer(t.TempDir())
	if err != nil {
		testenv.Need(t, "kube-apiserver", err)
	}
	t.Cleanup(func() {
		if err := api.Stop(); err != nil {
			t.Error(err)
		}
	})
	config := fmt.Sprintf("[fetch]\nbackground = false\nprefetch = false\n[kubeconfig_keychain]\nenable = true\nkubeconfig_path = %q\nnamespaces = [\"ci\"]\n", api.Kubeconfig)
	env := testenv.New(t, containerd, testenv.WithCRI(), testenv.WithDaemonConfig(config))
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()

	const user, password = "tenant", "s3cret-kube-41d7"
	private := privateHello(ctx, t, env, user, password)

	cfg, err := clientcmd.BuildConfigFromFlags("", api.Kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	kube, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	dockerConfig, _ := json.Marshal(map[string]any{"auths": map[string]any{
		private.Addr(): map[string]string{"username": user, "password": password},
	}})
	addSecret := func(ns string) {
		t.Helper()
		if _, err := kube.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		secret := &corev1.Secret{
			ObjectMeta: metav1.ObjectMeta{Name: "regcred", Namespace: ns},
			Type:       corev1.SecretTypeDockerConfigJson,
			Data:       map[string][]byte{corev1.DockerConfigJsonKey: dockerConfig},
		}
		if _, err := kube.CoreV1().Secrets(ns).Create(ctx, secret, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	// The daemon's manager starts again with an empty cache, after its
	// keychain listed the secrets as they are now.
	restart := func() {
		t.Helper()
		if err := env.Daemon.Stop(15 * time.Second); err != nil {
			t.Fatal(err)
		}
		if err := fusemanager.Stop(env.DaemonRoot, 15*time.Second); err != nil {
			t.Fatal(err)
		}
		if err := env.StartDaemon(); err != nil {
			t.Fatal(err)
		}
	}
	auth := &runtimeapi.AuthConfig{Username: user, Password: password}
	images := env.ContainerdImageService(t)
	rt, _ := env.CRIClient(t)
	pull := func(ref string) int {
		t.Helper()
		if _, err := images.PullImage(ctx, &runtimeapi.PullImageRequest{Image: &runtimeapi.ImageSpec{Image: ref}, Auth: auth}); err != nil {
			t.Fatalf("CRI PullImage %s: %v", ref, err)
		}
		return len(stateFiles(env))
	}

	addSecret("other")
	restart()
	unpacked := private.Addr() + "/private/hello:zstdchunked"
	defer removeImages(ctx, t, env, images, unpacked)
	if n := pull(unpacked); n != 0 {
		t.Errorf("with the secret in a namespace not read, %d layers mounted lazily, want 0", n)
	}

	addSecret("ci")
	restart()
	ref := private.Addr() + "/private/hello:estargz"
	defer removeImages(ctx, t, env, images, ref)
	if n := pull(ref); n != 2 {
		t.Errorf("with the secret in namespace ci, %d layers mounted lazily, want 2\nthe manager's log:\n%s", n, grepLog(t, filepath.Join(env.DaemonRoot, "fusemanager.log"), "pull secrets")+grepLog(t, env.Daemon.Log, "not mounted remotely"))
	}
	private.ExpireTokens()
	tokens := private.Stats().ByKind[regproxy.Token]
	if out := runPod(ctx, t, env, rt, ref, "kube-secret"); out != testenv.HelloOutput {
		t.Errorf("the pod's container printed:\n%s\nwant:\n%s", out, testenv.HelloOutput)
	}
	if got := private.Stats().ByKind[regproxy.Token]; got <= tokens {
		t.Errorf("the container's reads took no new token after the tokens expired (%d before, %d after)", tokens, got)
	}
}

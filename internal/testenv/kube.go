package testenv

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"time"
)

// KubeVersion is the kube-apiserver scripts/build-kube.sh builds, and
// KubeBinDir where it puts it and its etcd.
const (
	KubeVersion = "v1.37.2"
	KubeBinDir  = "/var/cache/lazypull/kube-" + KubeVersion + "/bin"
)

// KubeAPIServer is a real Kubernetes API server over a one-member etcd,
// for the tests of what reads a cluster (package kubesecrets): token
// authentication (the kubeconfig's user is in system:masters), RBAC.
type KubeAPIServer struct {
	// Kubeconfig is a kubeconfig file for it.
	Kubeconfig string
	etcd, api  *Process
}

// StartKubeAPIServer starts etcd and kube-apiserver under dir and waits
// until the API server is ready.
func StartKubeAPIServer(dir string) (_ *KubeAPIServer, err error) {
	for _, prog := range []string{"etcd", "kube-apiserver"} {
		if _, err := os.Stat(filepath.Join(KubeBinDir, prog)); err != nil {
			return nil, &missingError{program: prog, err: fmt.Errorf("%s: build it with scripts/build-kube.sh (make test-kube does)", err)}
		}
	}
	var addrs [3]string
	for i := range addrs {
		if addrs[i], err = FreeLoopbackAddr(); err != nil {
			return nil, err
		}
	}
	etcdURL := "http://" + addrs[0]
	k := &KubeAPIServer{Kubeconfig: filepath.Join(dir, "kubeconfig")}
	defer func() {
		if err != nil {
			k.Stop()
		}
	}()
	if k.etcd, err = startProcess(dir, filepath.Join(KubeBinDir, "etcd"), "--data-dir", filepath.Join(dir, "etcd"),
		"--listen", etcdURL, "--peer", "http://"+addrs[1]); err != nil {
		return nil, err
	}
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return nil, err
	}
	keyPath := filepath.Join(dir, "service-accounts.key")
	if err := os.WriteFile(keyPath, pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(key)}), 0o600); err != nil {
		return nil, err
	}
	token := rand.Text()
	tokens := filepath.Join(dir, "tokens.csv")
	if err := os.WriteFile(tokens, []byte(token+",lazypull-test,lazypull-test,system:masters\n"), 0o600); err != nil {
		return nil, err
	}
	_, port, _ := net.SplitHostPort(addrs[2])
	if k.api, err = startProcess(dir, filepath.Join(KubeBinDir, "kube-apiserver"),
		"--etcd-servers="+etcdURL, "--bind-address=127.0.0.1", "--secure-port="+port,
		"--cert-dir="+filepath.Join(dir, "certs"), "--token-auth-file="+tokens, "--authorization-mode=RBAC",
		"--service-account-issuer=https://kubernetes.default.svc", "--service-account-key-file="+keyPath,
		"--service-account-signing-key-file="+keyPath, "--service-cluster-ip-range=10.0.0.0/24"); err != nil {
		return nil, err
	}
	server := "https://" + addrs[2]
	if err := k.waitReady(server, token); err != nil {
		return nil, err
	}
	// Its serving certificate is self-signed: the kubeconfig trusts it.
	config := fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- name: test
  cluster:
    server: %s
    certificate-authority: %s
users:
- name: test
  user:
    token: %s
contexts:
- name: test
  context: {cluster: test, user: test}
current-context: test
`, server, filepath.Join(dir, "certs", "apiserver.crt"), token)
	return k, os.WriteFile(k.Kubeconfig, []byte(config), 0o600)
}

// waitReady polls /readyz until it answers 200 (a few seconds), the
// server exits, or a minute passed.
func (k *KubeAPIServer) waitReady(server, token string) error {
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		// Only the readiness probe: the kubeconfig checks the certificate.
		TLSClientConfig: &tls.Config{InsecureSkipVerify: true},
	}}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, server+"/readyz", nil)
		req.Header.Set("Authorization", "Bearer "+token)
		if resp, err := client.Do(req); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		for _, p := range []*Process{k.etcd, k.api} {
			if exited, err := p.Exited(); exited {
				return fmt.Errorf("%s exited while the API server started (%v); see %s", p.Name, err, p.Log)
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("kube-apiserver not ready at %s in a minute; see %s", server, k.api.Log)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// Stop stops the API server, then etcd.
func (k *KubeAPIServer) Stop() error {
	var errs []error
	for _, p := range []*Process{k.api, k.etcd} {
		if p != nil {
			errs = append(errs, p.Stop(15*time.Second))
		}
	}
	return errors.Join(errs...)
}

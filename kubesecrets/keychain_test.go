package kubesecrets

import (
	"context"
	"encoding/base64"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/cache"
)

func pullSecret(ns, name, config string) *corev1.Secret {
	return &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, ResourceVersion: "1"},
		Type:       corev1.SecretTypeDockerConfigJson,
		Data:       map[string][]byte{corev1.DockerConfigJsonKey: []byte(config)},
	}
}

func basic(user, pass string) string {
	return base64.StdEncoding.EncodeToString([]byte(user + ":" + pass))
}

// TestLookup: the first secret by namespace and name that names the host
// wins; a secret that is not a docker config is skipped, not fatal; Docker
// Hub's legacy key serves docker.io's hosts.
func TestLookup(t *testing.T) {
	store := cache.NewStore(cache.MetaNamespaceKeyFunc)
	for _, s := range []*corev1.Secret{
		pullSecret("b", "regcred", `{"auths":{"registry.example:5000":{"auth":"`+basic("bob", "b-pass")+`"}}}`),
		pullSecret("a", "zz", `{"auths":{"https://registry.example:5000":{"username":"alice","password":"a-pass"}}}`),
		pullSecret("a", "broken", `{"auths":`),
		pullSecret("a", "hub", `{"auths":{"https://index.docker.io/v1/":{"identitytoken":"tok"}}}`),
	} {
		store.Add(s)
	}
	k := &Keychain{stores: []cache.Store{store}, cancel: func() {}}
	for _, c := range []struct {
		host, user, secret string
		found              bool
	}{
		{"registry.example:5000", "alice", "a-pass", true},
		{"registry-1.docker.io", "", "tok", true},
		{"other.example", "", "", false},
	} {
		user, secret, found := k.Lookup(c.host)
		if user != c.user || secret != c.secret || found != c.found {
			t.Errorf("Lookup(%s) = %q, %q, %v; want %q, %q, %v", c.host, user, secret, found, c.user, c.secret, c.found)
		}
	}
	store.Delete(pullSecret("a", "zz", ""))
	if user, secret, _ := k.Lookup("registry.example:5000"); user != "bob" || secret != "b-pass" {
		t.Errorf("after a/zz was deleted: %q, %q; want b/regcred's", user, secret)
	}
}

// TestWatchRefusesBadKubeconfig: a kubeconfig that cannot be read stops
// the start with its name.
func TestWatchRefusesBadKubeconfig(t *testing.T) {
	_, err := Watch(context.Background(), Options{Kubeconfig: "/nonexistent/kubeconfig"})
	if err == nil {
		t.Fatal("Watch with a missing kubeconfig succeeded")
	}
	t.Log(err)
}

package kubesecrets

import (
	"context"
	"encoding/base64"
	"strings"
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

// TestSlim: a watched secret keeps only what a lookup reads, and a docker
// config over the bound is dropped, so a tenant's huge secrets cannot grow
// the process.
func TestSlim(t *testing.T) {
	big := pullSecret("a", "big", `{"auths":{"r.example":{"auth":"`+basic("u", strings.Repeat("p", maxSecretConfig))+`"}}}`)
	small := pullSecret("a", "small", `{"auths":{"r.example":{"auth":"`+basic("u", "p")+`"}}}`)
	small.Labels = map[string]string{"team": "x"}
	small.Annotations = map[string]string{"kubectl.kubernetes.io/last-applied-configuration": strings.Repeat("x", 1<<20)}
	small.Data["extra"] = make([]byte, 1<<20)
	store := cache.NewStore(cache.MetaNamespaceKeyFunc)
	for _, s := range []*corev1.Secret{big, small} {
		obj, err := slim(s)
		if err != nil {
			t.Fatal(err)
		}
		store.Add(obj)
	}
	for _, obj := range store.List() {
		sec := obj.(*corev1.Secret)
		if len(sec.Labels)+len(sec.Annotations) > 0 || len(sec.Data) > 1 || len(sec.Data[corev1.DockerConfigJsonKey]) > maxSecretConfig {
			t.Errorf("secret %s kept %d labels, %d annotations, %d data keys, a %d-byte config", sec.Name, len(sec.Labels), len(sec.Annotations), len(sec.Data), len(sec.Data[corev1.DockerConfigJsonKey]))
		}
	}
	k := &Keychain{stores: []cache.Store{store}, cancel: func() {}}
	if user, secret, found := k.Lookup("r.example"); !found || user != "u" || secret != "p" {
		t.Errorf("Lookup after slim = %q, %q, %v; want the small secret's u, p", user, secret, found)
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

// Package kubesecrets finds registry credentials in a Kubernetes cluster's
// image pull secrets (type kubernetes.io/dockerconfigjson), read with a
// node-level kubeconfig and kept up to date by a watch: the node's
// fallback for private registries when the kubelet's own pull secrets do
// not reach lazypull (the CRI image-service proxy, package cri, is the
// precise path: a pull's secret for that image's repository only).
//
// Any secret it can read serves any image on that secret's registry, so
// give it a kubeconfig that reads only the namespaces whose secrets the
// node may use, or name them in Options.Namespaces. It answers lookups
// by host (remote.Keychain) and knows nothing of the registry protocol.
package kubesecrets

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/containerd/log"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/lazypull/lazypull/remote"
)

// Options say which cluster and which secrets.
type Options struct {
	// Kubeconfig is the kubeconfig file to read the API server, the
	// user and its credentials from; "" is the in-cluster configuration
	// (a pod's service account).
	Kubeconfig string
	// Namespaces whose secrets are read; none is every namespace.
	Namespaces []string
}

// Keychain holds the pull secrets of the namespaces it watches.
type Keychain struct {
	stores []cache.Store // one per watched namespace
	cancel context.CancelFunc
	done   sync.WaitGroup
	warned sync.Map // secret key → true, once a malformed secret was logged
}

// syncWait bounds how long Watch waits for the first listing: a slow or
// absent API server must not hold the daemon's start, and lookups before
// the listing arrived find nothing, as for a secret not created yet.
const syncWait = 10 * time.Second

// Watch lists and then watches the pull secrets until Close.
func Watch(ctx context.Context, opts Options) (*Keychain, error) {
	cfg, err := restConfig(opts.Kubeconfig)
	if err != nil {
		return nil, err
	}
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("kubeconfig %q: %w", opts.Kubeconfig, err)
	}
	namespaces := opts.Namespaces
	if len(namespaces) == 0 {
		namespaces = []string{metav1.NamespaceAll}
	}
	ctx, cancel := context.WithCancel(ctx)
	k := &Keychain{cancel: cancel}
	var synced []cache.InformerSynced
	for _, ns := range namespaces {
		factory := informers.NewSharedInformerFactoryWithOptions(client, 0, informers.WithNamespace(ns),
			informers.WithTweakListOptions(func(o *metav1.ListOptions) {
				o.FieldSelector = fields.OneTermEqualSelector("type", string(corev1.SecretTypeDockerConfigJson)).String()
			}))
		informer := factory.Core().V1().Secrets().Informer()
		if err := informer.SetTransform(slim); err != nil {
			cancel()
			return nil, err
		}
		k.stores = append(k.stores, informer.GetStore())
		synced = append(synced, informer.HasSynced)
		k.done.Add(1)
		go func() {
			defer k.done.Done()
			informer.Run(ctx.Done())
		}()
	}
	waitCtx, stop := context.WithTimeout(ctx, syncWait)
	defer stop()
	if !cache.WaitForCacheSync(waitCtx.Done(), synced...) {
		log.G(ctx).WithField("server", cfg.Host).Warnf("pull secrets: not listed within %v; lookups find them once they are (can this kubeconfig list secrets?)", syncWait)
		return k, nil
	}
	n := 0
	for _, s := range k.stores {
		n += len(s.List())
	}
	log.G(ctx).WithField("server", cfg.Host).WithField("namespaces", opts.Namespaces).Infof("pull secrets: watching %d", n)
	return k, nil
}

// maxSecretConfig bounds the .dockerconfigjson kept of one secret: a
// docker config with a few registries is a few hundred bytes, and whoever
// may write secrets must not grow the process that serves every tenant's
// layers (the API server allows 1 MiB a secret).
const maxSecretConfig = 64 << 10

// slim keeps of a secret only what lookups read (namespace, name,
// version, the docker config if it is small enough): labels, annotations
// and managed fields would otherwise be held for every secret watched.
func slim(obj any) (any, error) {
	sec, ok := obj.(*corev1.Secret)
	if !ok {
		return obj, nil // a deletion's tombstone
	}
	out := &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Namespace: sec.Namespace, Name: sec.Name, ResourceVersion: sec.ResourceVersion, UID: sec.UID},
		Type:       sec.Type,
	}
	if config := sec.Data[corev1.DockerConfigJsonKey]; len(config) <= maxSecretConfig {
		out.Data = map[string][]byte{corev1.DockerConfigJsonKey: config}
	} else {
		log.L.Warnf("pull secret %s/%s: its docker config is %d bytes, over %d: ignored", sec.Namespace, sec.Name, len(config), maxSecretConfig)
	}
	return out, nil
}

// restConfig reads a kubeconfig file, or the in-cluster configuration.
func restConfig(path string) (*rest.Config, error) {
	if path == "" {
		cfg, err := rest.InClusterConfig()
		if err != nil {
			return nil, fmt.Errorf("no kubeconfig_path, and not in a pod: %w", err)
		}
		return cfg, nil
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", path)
	if err != nil {
		return nil, fmt.Errorf("kubeconfig %s: %w", path, err)
	}
	return cfg, nil
}

// Lookup returns the credentials of the first secret, in namespace/name
// order, that has some for host.
func (k *Keychain) Lookup(host string) (user, secret string, found bool) {
	var secrets []*corev1.Secret
	for _, s := range k.stores {
		for _, obj := range s.List() {
			if sec, ok := obj.(*corev1.Secret); ok {
				secrets = append(secrets, sec)
			}
		}
	}
	slices.SortFunc(secrets, func(a, b *corev1.Secret) int {
		return cmp.Or(cmp.Compare(a.Namespace, b.Namespace), cmp.Compare(a.Name, b.Name))
	})
	for _, sec := range secrets {
		user, secret, found, err := remote.LookupDockerConfigJSON(sec.Data[corev1.DockerConfigJsonKey], host)
		if err != nil {
			// Whoever wrote it can fix it; say so once per version.
			key := sec.Namespace + "/" + sec.Name + "@" + sec.ResourceVersion
			if _, seen := k.warned.LoadOrStore(key, true); !seen {
				log.L.WithError(err).Warnf("pull secret %s/%s: not a docker config; skipped", sec.Namespace, sec.Name)
			}
			continue
		}
		if found {
			return user, secret, true
		}
	}
	return "", "", false
}

// Close stops watching.
func (k *Keychain) Close() error {
	k.cancel()
	k.done.Wait()
	return nil
}

var _ remote.Keychain = (*Keychain)(nil)

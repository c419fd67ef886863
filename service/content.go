package service

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"sync"
	"time"

	contentapi "github.com/containerd/containerd/api/services/content/v1"
	namespacesapi "github.com/containerd/containerd/api/services/namespaces/v1"
	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/content"
	contentproxy "github.com/containerd/containerd/v2/core/content/proxy"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/log"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/lazypull/lazypull/labels"
	"github.com/lazypull/lazypull/transport"
)

// imageContent reads the manifest and config of the image a Prepare is for
// from containerd's content store, where containerd put them before it
// asked for the layers, and adds them to the labels the mounter gets
// (labels.ManifestContent): the mounter then skips three round trips to
// the registry (resolve, manifest, config) on the way to each image's
// first layer. Anything missing (no socket, another namespace, content
// already gone) leaves the labels as they are: the mounter fetches.
type imageContent struct {
	address string

	mu         sync.Mutex
	conn       *grpc.ClientConn
	store      content.Store
	namespaces namespaces.Store
}

func newImageContent(address string) *imageContent {
	return &imageContent{address: address}
}

// add returns lbls with the image's manifest and config, or lbls itself.
func (c *imageContent) add(ctx context.Context, lbls map[string]string) map[string]string {
	m := labels.ManifestDigest(lbls)
	if c == nil || m == "" {
		return lbls
	}
	manifest, config, err := c.read(ctx, m)
	if err != nil {
		log.G(ctx).WithError(err).WithField("manifest", m).Debug("image not read from containerd's content store; the mounter fetches it")
		return lbls
	}
	out := maps.Clone(lbls)
	out[labels.ManifestContent] = string(manifest)
	out[labels.ConfigContent] = string(config)
	return out
}

func (c *imageContent) read(ctx context.Context, m string) (manifest, config []byte, err error) {
	d, err := digest.Parse(m)
	if err != nil {
		return nil, nil, err
	}
	store, nss, err := c.connect()
	if err != nil {
		return nil, nil, err
	}
	// The caller's context carries containerd's call in; ours carry the
	// reads out.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), contentTimeout)
	defer cancel()
	// containerd 2.x says which namespace the Prepare is for; 1.6 does not:
	// then look in each (the bytes are checked against their digests
	// whichever holds them).
	names := []string{}
	if ns, ok := namespaces.Namespace(ctx); ok {
		names = append(names, ns)
	} else if names, err = nss.List(ctx); err != nil {
		return nil, nil, fmt.Errorf("list containerd's namespaces: %w", err)
	}
	err = fmt.Errorf("manifest %s: in no namespace", d)
	for _, ns := range names {
		nctx := namespaces.WithNamespace(ctx, ns)
		if manifest, err = readBlob(nctx, store, d); err != nil {
			continue
		}
		var mf ocispec.Manifest
		if err := json.Unmarshal(manifest, &mf); err != nil {
			return nil, nil, fmt.Errorf("manifest %s: %w", d, err)
		}
		if config, err = readBlob(nctx, store, mf.Config.Digest); err != nil {
			return nil, nil, err
		}
		return manifest, config, nil
	}
	return nil, nil, err
}

// contentTimeout bounds the reads from containerd, which is waiting for
// the Prepare that makes them and answers them from its own disk.
const contentTimeout = 5 * time.Second

// readBlob reads a manifest or config, bounded as one from a registry is.
func readBlob(ctx context.Context, store content.Store, d digest.Digest) ([]byte, error) {
	info, err := store.Info(ctx, d)
	if err != nil {
		return nil, fmt.Errorf("content %s: %w", d, err)
	}
	if info.Size > transport.MaxManifestSize {
		return nil, fmt.Errorf("content %s: %d bytes, more than a manifest or config may have", d, info.Size)
	}
	return content.ReadBlob(ctx, store, ocispec.Descriptor{Digest: d, Size: info.Size})
}

// connect dials containerd once; the connection comes up when first used
// and again after containerd restarts.
func (c *imageContent) connect() (content.Store, namespaces.Store, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.conn == nil {
		conn, err := grpc.NewClient("unix://"+c.address, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			return nil, nil, fmt.Errorf("connect to containerd at %s: %w", c.address, err)
		}
		c.conn = conn
		c.store = contentproxy.NewContentStore(contentapi.NewContentClient(conn))
		c.namespaces = containerd.NewNamespaceStoreFromClient(namespacesapi.NewNamespacesClient(conn))
	}
	return c.store, c.namespaces, nil
}

func (c *imageContent) Close() error {
	if c == nil {
		return nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.conn == nil {
		return nil
	}
	return c.conn.Close()
}

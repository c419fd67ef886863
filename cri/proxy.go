// Package cri is the CRI image-service proxy for Kubernetes nodes: the
// kubelet's --image-service-endpoint points at it, it forwards every call
// to containerd's CRI plugin unchanged, and hands the credentials of each
// PullImage (the pod's pull secret) to the process's fetchers before the
// pull goes on, so that the layers mounted lazily during that pull, and
// their reads long after it, authenticate as the pull did. It knows gRPC
// and the CRI's messages; it must not know registries, layers or mounts
// (a Keyring takes the credentials).
package cri

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"strings"

	"github.com/containerd/log"
	"github.com/distribution/reference"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/proto"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// Keyring keeps a pull's credentials for the repository of ref; undo puts
// back what it kept before (the pull failed: they were wrong).
type Keyring interface {
	Keep(ref, user, secret string) (undo func(), err error)
}

// KeyringFunc is a function as a Keyring.
type KeyringFunc func(ref, user, secret string) (undo func(), err error)

// Keep calls f.
func (f KeyringFunc) Keep(ref, user, secret string) (func(), error) { return f(ref, user, secret) }

// pullImage is the one call the proxy reads; every other passes as bytes.
const pullImage = "/runtime.v1.ImageService/PullImage"

// Proxy serves the CRI on a listener and forwards it to containerd.
type Proxy struct {
	upstream *grpc.ClientConn
	srv      *grpc.Server
	keyring  Keyring
}

// New returns a proxy to the CRI served on the unix socket upstream
// (containerd's), keeping pull credentials in keyring.
func New(upstream string, keyring Keyring) (*Proxy, error) {
	conn, err := grpc.NewClient("unix://"+upstream, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.ForceCodecV2(rawCodec{})))
	if err != nil {
		return nil, fmt.Errorf("cri proxy: dial containerd at %s: %w", upstream, err)
	}
	p := &Proxy{upstream: conn, keyring: keyring}
	p.srv = grpc.NewServer(grpc.ForceServerCodecV2(rawCodec{}), grpc.UnknownServiceHandler(p.forward))
	return p, nil
}

// Serve serves lis until Stop.
func (p *Proxy) Serve(lis net.Listener) error { return p.srv.Serve(lis) }

// Stop ends the calls in flight and closes the connection to containerd.
func (p *Proxy) Stop() {
	p.srv.Stop()
	p.upstream.Close()
}

// forward passes one call, of any kind (unary or streaming), to
// containerd and its answers back, with their metadata and status.
func (p *Proxy) forward(_ any, in grpc.ServerStream) error {
	method, ok := grpc.MethodFromServerStream(in)
	if !ok {
		return errors.New("cri proxy: a call with no method")
	}
	ctx, cancel := context.WithCancel(in.Context())
	defer cancel()
	md, _ := metadata.FromIncomingContext(ctx)
	out, err := p.upstream.NewStream(metadata.NewOutgoingContext(ctx, md.Copy()),
		&grpc.StreamDesc{ServerStreams: true, ClientStreams: true}, method)
	if err != nil {
		return err
	}
	var undo func()
	sent := make(chan error, 1)
	go func() {
		for {
			var m []byte
			if err := in.RecvMsg(&m); err != nil {
				if err == io.EOF {
					err = out.CloseSend()
				}
				sent <- err
				return
			}
			if method == pullImage && undo == nil {
				undo = p.keep(m)
			}
			if err := out.SendMsg(&m); err != nil {
				sent <- nil // the upstream's status comes from RecvMsg
				return
			}
		}
	}()
	err = p.answer(in, out)
	if err != nil && method == pullImage {
		// A pull that failed may have failed for its credentials: they
		// do not replace ones that worked. (A unary call's request is
		// in, and sent answers, by the time its answer failed.)
		if <-sent == nil && undo != nil {
			undo()
		}
	}
	return err
}

// answer passes containerd's header, messages and trailer back.
func (p *Proxy) answer(in grpc.ServerStream, out grpc.ClientStream) error {
	header, err := out.Header()
	if err != nil {
		return err
	}
	if err := in.SendHeader(header); err != nil {
		return err
	}
	for {
		var m []byte
		if err := out.RecvMsg(&m); err != nil {
			in.SetTrailer(out.Trailer())
			if err == io.EOF {
				return nil
			}
			return err
		}
		if err := in.SendMsg(&m); err != nil {
			return err
		}
	}
}

// keep hands the credentials of a PullImage request to the keyring, if it
// carries some for the image's registry, and returns their undo. It never
// logs them.
func (p *Proxy) keep(raw []byte) (undo func()) {
	var req runtimeapi.PullImageRequest
	if err := proto.Unmarshal(raw, &req); err != nil || req.GetImage() == nil {
		return nil // containerd will say what is wrong with it
	}
	ref, err := reference.ParseDockerRef(req.GetImage().GetImage())
	if err != nil {
		return nil
	}
	user, secret, ok := credentials(req.GetAuth(), reference.Domain(ref))
	if !ok {
		return nil
	}
	undo, err = p.keyring.Keep(ref.String(), user, secret)
	if err != nil {
		log.L.WithError(err).WithField("image", ref.String()).Warn("cri proxy: cannot keep the pull's credentials; its lazy layers read with the node's")
		return nil
	}
	log.L.WithField("repository", ref.Name()).Debug("cri proxy: keeping the pull's credentials for its repository's lazy layers")
	return undo
}

// credentials reads a pull's AuthConfig as containerd's CRI plugin does:
// an identity token (exchanged for bearer tokens), else a user and
// password, given in full or as base64 "user:password". Those meant for
// another registry (server_address) are not the image's. A bare registry
// token cannot be renewed and is left to containerd's own pull.
func credentials(auth *runtimeapi.AuthConfig, registry string) (user, secret string, ok bool) {
	if auth == nil {
		return "", "", false
	}
	if addr := auth.GetServerAddress(); addr != "" && !sameHost(addr, registry) {
		return "", "", false
	}
	switch {
	case auth.GetIdentityToken() != "":
		return "", auth.GetIdentityToken(), true
	case auth.GetUsername() != "" || auth.GetPassword() != "":
		return auth.GetUsername(), auth.GetPassword(), true
	case auth.GetAuth() != "":
		raw, err := base64.StdEncoding.DecodeString(auth.GetAuth())
		if err != nil {
			return "", "", false
		}
		user, pass, found := strings.Cut(string(raw), ":")
		return user, pass, found
	}
	return "", "", false
}

// sameHost tells whether a server address (a host, or a URL as docker
// config keys are) names registry; Docker Hub answers to several names.
func sameHost(addr, registry string) bool {
	host := addr
	if u, err := url.Parse(addr); err == nil && u.Host != "" {
		host = u.Host
	}
	host = strings.TrimSuffix(host, "/")
	hub := func(h string) bool {
		return h == "docker.io" || h == "index.docker.io" || h == "registry-1.docker.io"
	}
	return host == registry || hub(host) && hub(registry)
}

// rawCodec passes messages as their encoded bytes: the proxy forwards
// them as it got them, whatever the CRI version.
type rawCodec struct{}

func (rawCodec) Marshal(v any) (mem.BufferSlice, error) {
	return mem.BufferSlice{mem.SliceBuffer(*v.(*[]byte))}, nil
}

func (rawCodec) Unmarshal(data mem.BufferSlice, v any) error {
	*v.(*[]byte) = data.Materialize()
	return nil
}

// Name is "proto" so that calls keep their content type.
func (rawCodec) Name() string { return "proto" }

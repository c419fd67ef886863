package service

import (
	"context"
	"errors"
	"fmt"

	"github.com/containerd/log"
	"google.golang.org/grpc"

	"github.com/lazypull/lazypull/cri"
	"github.com/lazypull/lazypull/internal/unixsocket"
	"github.com/lazypull/lazypull/remote"
)

// serveCRI serves the CRI image-service proxy (package cri) at the
// configured address until ctx is done, in the process that fetches lazy
// layers: the credentials of the pulls it forwards are kept in that
// process's memory (remote.KeepCredentials) for their repositories.
func serveCRI(ctx context.Context, cfg Config) error {
	if cfg.CRIImageServiceAddress == "" {
		return nil
	}
	p, err := cri.New(cfg.ContainerdAddress, cri.KeyringFunc(remote.KeepCredentials))
	if err != nil {
		return err
	}
	lis, err := unixsocket.Listen(cfg.CRIImageServiceAddress)
	if err != nil {
		p.Stop()
		return fmt.Errorf("cri_image_service_address: %w", err)
	}
	go func() {
		<-ctx.Done()
		p.Stop()
	}()
	go func() {
		if err := p.Serve(lis); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
			log.G(ctx).WithError(err).Error("the CRI image-service proxy stopped")
		}
	}()
	log.G(ctx).WithField("address", cfg.CRIImageServiceAddress).WithField("containerd", cfg.ContainerdAddress).
		Info("serving the CRI image service for the kubelet (--image-service-endpoint), forwarded to containerd")
	return nil
}

package cri

import (
	"context"
	"encoding/base64"
	"net"
	"path/filepath"
	"sync"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// upstream stands in for containerd's image service: it records what
// reached it and refuses pulls of "refused" images.
type upstream struct {
	runtimeapi.UnimplementedImageServiceServer
	mu    sync.Mutex
	pulls []*runtimeapi.PullImageRequest
}

func (u *upstream) PullImage(ctx context.Context, r *runtimeapi.PullImageRequest) (*runtimeapi.PullImageResponse, error) {
	u.mu.Lock()
	u.pulls = append(u.pulls, r)
	u.mu.Unlock()
	if r.GetImage().GetImage() == "example.com/refused:v1" {
		return nil, status.Error(codes.Unknown, "401 Unauthorized")
	}
	return &runtimeapi.PullImageResponse{ImageRef: "sha256:1234"}, nil
}

func (u *upstream) ListImages(ctx context.Context, r *runtimeapi.ListImagesRequest) (*runtimeapi.ListImagesResponse, error) {
	return &runtimeapi.ListImagesResponse{Images: []*runtimeapi.Image{{Id: "sha256:1234", RepoTags: []string{"docker.io/library/busybox:latest"}}}}, nil
}

type kept struct{ ref, user, secret string }

type keyring struct {
	mu    sync.Mutex
	kept  []kept
	undos int
}

func (k *keyring) Keep(ref, user, secret string) (func(), error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.kept = append(k.kept, kept{ref, user, secret})
	return func() { k.mu.Lock(); k.undos++; k.mu.Unlock() }, nil
}

// TestProxy: calls pass through unchanged, answers and errors come back;
// a pull's credentials for its image's registry are kept (undone when the
// pull fails), others are not.
func TestProxy(t *testing.T) {
	dir := t.TempDir()
	up := &upstream{}
	upSock := filepath.Join(dir, "containerd.sock")
	lis, err := net.Listen("unix", upSock)
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	runtimeapi.RegisterImageServiceServer(srv, up)
	go srv.Serve(lis)
	defer srv.Stop()

	k := &keyring{}
	p, err := New(upSock, k)
	if err != nil {
		t.Fatal(err)
	}
	proxySock := filepath.Join(dir, "cri.sock")
	plis, err := net.Listen("unix", proxySock)
	if err != nil {
		t.Fatal(err)
	}
	go p.Serve(plis)
	defer p.Stop()
	conn, err := grpc.NewClient("unix://"+proxySock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	images := runtimeapi.NewImageServiceClient(conn)
	ctx := context.Background()

	list, err := images.ListImages(ctx, &runtimeapi.ListImagesRequest{})
	if err != nil || len(list.Images) != 1 || list.Images[0].RepoTags[0] != "docker.io/library/busybox:latest" {
		t.Fatalf("ListImages through the proxy: %v, %v", list, err)
	}
	if _, err := images.ImageFsInfo(ctx, &runtimeapi.ImageFsInfoRequest{}); status.Code(err) != codes.Unimplemented {
		t.Errorf("ImageFsInfo, which the upstream lacks: %v, want Unimplemented", err)
	}

	basic := base64.StdEncoding.EncodeToString([]byte("bob:pw2"))
	for _, tc := range []struct {
		image string
		auth  *runtimeapi.AuthConfig
		want  *kept
	}{
		{"busybox", &runtimeapi.AuthConfig{Username: "alice", Password: "pw1"}, &kept{"docker.io/library/busybox:latest", "alice", "pw1"}},
		{"example.com/app:v2", &runtimeapi.AuthConfig{Auth: basic, ServerAddress: "https://example.com/v2/"}, &kept{"example.com/app:v2", "bob", "pw2"}},
		{"example.com/app:v2", &runtimeapi.AuthConfig{IdentityToken: "refresh"}, &kept{"example.com/app:v2", "", "refresh"}},
		{"example.com/app:v2", &runtimeapi.AuthConfig{Username: "eve", Password: "x", ServerAddress: "other.example"}, nil},
		{"example.com/app:v2", nil, nil},
	} {
		k.kept = nil
		resp, err := images.PullImage(ctx, &runtimeapi.PullImageRequest{Image: &runtimeapi.ImageSpec{Image: tc.image}, Auth: tc.auth})
		if err != nil || resp.ImageRef != "sha256:1234" {
			t.Fatalf("PullImage %s: %v, %v", tc.image, resp, err)
		}
		last := up.pulls[len(up.pulls)-1]
		if last.GetImage().GetImage() != tc.image || last.GetAuth().GetPassword() != tc.auth.GetPassword() || last.GetAuth().GetAuth() != tc.auth.GetAuth() {
			t.Errorf("PullImage %s reached containerd as %v", tc.image, last)
		}
		switch {
		case tc.want == nil && len(k.kept) != 0:
			t.Errorf("PullImage %s with %v kept %v, want nothing", tc.image, tc.auth, k.kept)
		case tc.want != nil && (len(k.kept) != 1 || k.kept[0] != *tc.want):
			t.Errorf("PullImage %s kept %v, want %v", tc.image, k.kept, *tc.want)
		}
	}
	if k.undos != 0 {
		t.Errorf("%d undos after pulls that worked", k.undos)
	}

	_, err = images.PullImage(ctx, &runtimeapi.PullImageRequest{Image: &runtimeapi.ImageSpec{Image: "example.com/refused:v1"}, Auth: &runtimeapi.AuthConfig{Username: "mallory", Password: "wrong"}})
	if status.Code(err) != codes.Unknown || status.Convert(err).Message() != "401 Unauthorized" {
		t.Errorf("a refused pull: %v, want containerd's error", err)
	}
	if k.undos != 1 {
		t.Errorf("%d undos after a refused pull, want 1", k.undos)
	}
}

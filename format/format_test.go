package format

import (
	"archive/tar"
	"bytes"
	"errors"
	"testing"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/lazypull/lazypull/format/estargz"
	"github.com/lazypull/lazypull/format/zstdchunked"
)

func layerTar(t *testing.T) []byte {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	tw.WriteHeader(&tar.Header{Name: "hello", Typeflag: tar.TypeReg, Mode: 0o644, Size: 5})
	tw.Write([]byte("hello"))
	tw.Close()
	return buf.Bytes()
}

func TestOpenBothFormats(t *testing.T) {
	var esgz bytes.Buffer
	ew := estargz.NewWriter(&esgz)
	ew.AppendTar(bytes.NewReader(layerTar(t)))
	eres, err := ew.Close()
	if err != nil {
		t.Fatal(err)
	}
	var zstd bytes.Buffer
	zw := zstdchunked.NewWriter(&zstd)
	zw.AppendTar(bytes.NewReader(layerTar(t)))
	zres, err := zw.Close()
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		kind        Kind
		blob        []byte
		annotations map[string]string
	}{
		{EStargz, esgz.Bytes(), eres.Annotations},
		{ZstdChunked, zstd.Bytes(), zres.Annotations},
	} {
		desc := ocispec.Descriptor{Digest: digest.FromBytes(tc.blob), Size: int64(len(tc.blob)), Annotations: tc.annotations}
		blob, kind, err := Open(bytes.NewReader(tc.blob), desc, Options{})
		if err != nil || kind != tc.kind {
			t.Fatalf("%s: Open = %v, %v", tc.kind, kind, err)
		}
		e, ok := blob.TOC().Lookup("hello")
		if !ok {
			t.Fatalf("%s: no hello", tc.kind)
		}
		c := e.Chunks[0]
		data, err := blob.ReadChunk(tc.blob[c.Offset:c.EndOffset], c)
		if err != nil || string(data) != "hello" {
			t.Errorf("%s: ReadChunk = %q, %v", tc.kind, data, err)
		}

		// Without its annotation the layer is refused, or opened by its
		// footer when unverified layers are allowed.
		desc.Annotations = nil
		if _, _, err := Open(bytes.NewReader(tc.blob), desc, Options{}); !errors.Is(err, ErrNotLazy) {
			t.Errorf("%s without annotations: err = %v, want ErrNotLazy", tc.kind, err)
		}
		if _, kind, err := Open(bytes.NewReader(tc.blob), desc, Options{Unverified: true}); err != nil || kind != tc.kind {
			t.Errorf("%s unverified: %v, %v", tc.kind, kind, err)
		}
	}
	plain := layerTar(t)
	desc := ocispec.Descriptor{Digest: digest.FromBytes(plain), Size: int64(len(plain))}
	if _, _, err := Open(bytes.NewReader(plain), desc, Options{Unverified: true}); !errors.Is(err, ErrNotLazy) {
		t.Errorf("a plain tar: err = %v, want ErrNotLazy", err)
	}
}

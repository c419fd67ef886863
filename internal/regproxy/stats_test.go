package regproxy

import (
	"net/http"
	"net/http/httptest"
	"slices"
	"testing"

	"github.com/opencontainers/go-digest"
)

func TestOverlaps(t *testing.T) {
	for _, tc := range []struct {
		in, want [][2]int64
	}{
		{nil, nil},
		{[][2]int64{{0, 99}}, nil},
		{[][2]int64{{0, 99}, {100, 199}}, nil}, // adjacent is not overlapping
		{[][2]int64{{0, 99}, {99, 199}}, [][2]int64{{99, 99}}},                         // one shared byte
		{[][2]int64{{100, 199}, {0, 999}}, [][2]int64{{100, 199}}},                     // order does not matter
		{[][2]int64{{0, 99}, {50, 149}, {120, 300}}, [][2]int64{{50, 99}, {120, 149}}}, // 100-119 only once
		{[][2]int64{{0, 99}, {10, 59}, {50, 149}}, [][2]int64{{10, 99}}},               // overlaps merge
		{[][2]int64{{0, 9}, {5, 9}, {20, 29}, {25, 40}}, [][2]int64{{5, 9}, {25, 29}}},
		{[][2]int64{{0, 999}, {10, 19}, {500, 509}}, [][2]int64{{10, 19}, {500, 509}}},
		{[][2]int64{{100, -1}, {0, 149}}, [][2]int64{{100, 149}}}, // open end
		{[][2]int64{{100, -1}, {200, -1}}, [][2]int64{{200, -1}}}, // both open
		{[][2]int64{{0, 9}, {0, 9}, {0, 9}}, [][2]int64{{0, 9}}},  // thrice is still once in the answer
	} {
		if got := Overlaps(tc.in); !slices.Equal(got, tc.want) {
			t.Errorf("Overlaps(%v) = %v, want %v", tc.in, got, tc.want)
		}
	}
}

func TestClassify(t *testing.T) {
	const d = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
	for _, tc := range []struct {
		method, path, rng string
		kind              PathKind
		digest            digest.Digest
		repo              string
	}{
		{"GET", "/v2/", "", Other, "", ""},
		{"GET", "/token", "", Token, "", ""},
		{"GET", "/v2/library/busybox/manifests/latest", "", Manifest, "", "library/busybox"},
		{"HEAD", "/v2/a/b/c/manifests/" + d, "", Manifest, "", "a/b/c"},
		{"GET", "/v2/app/blobs/" + d, "", Blob, d, "app"},
		{"GET", "/v2/app/blobs/" + d, "bytes=0-9", BlobRange, d, "app"},
		{"POST", "/v2/app/blobs/uploads/", "", Upload, "", "app"},
		{"PATCH", "/v2/app/blobs/uploads/f00", "", Upload, "", "app"},
		{"GET", "/v2/blobs/blobs/" + d, "", Blob, d, "blobs"}, // a repository named like a marker
		{"GET", "/v2/app/tags/list", "", Other, "", "app"},
		{"GET", "/v2/app/referrers/" + d, "", Other, "", "app"},
	} {
		r := httptest.NewRequest(tc.method, tc.path, nil)
		if tc.rng != "" {
			r.Header.Set("Range", tc.rng)
		}
		kind, dgst := classify(r)
		if kind != tc.kind || dgst != tc.digest {
			t.Errorf("classify(%s %s, Range %q) = %s, %q; want %s, %q", tc.method, tc.path, tc.rng, kind, dgst, tc.kind, tc.digest)
		}
		if got := repository(tc.path); got != tc.repo {
			t.Errorf("repository(%s) = %q, want %q", tc.path, got, tc.repo)
		}
	}
}

func TestFetchedRanges(t *testing.T) {
	h := func(kv ...string) http.Header {
		h := http.Header{}
		for i := 0; i+1 < len(kv); i += 2 {
			h.Set(kv[i], kv[i+1])
		}
		return h
	}
	for _, tc := range []struct {
		name   string
		rng    string
		code   int
		header http.Header
		size   int64
		want   [][2]int64
	}{
		{"whole", "", 200, h(), 1000, [][2]int64{{0, 999}}},
		{"range ignored by the server", "bytes=10-19", 200, h(), 1000, [][2]int64{{0, 999}}},
		{"whole of unknown length", "", 200, h(), -1, [][2]int64{{0, -1}}},
		{"empty", "", 200, h(), 0, nil},
		{"single range", "bytes=10-19", 206, h("Content-Range", "bytes 10-19/1000"), 10, [][2]int64{{10, 19}}},
		{"open range placed by Content-Range", "bytes=990-", 206, h("Content-Range", "bytes 990-999/1000"), 10, [][2]int64{{990, 999}}},
		{"suffix range placed by Content-Range", "bytes=-5", 206, h("Content-Range", "bytes 995-999/1000"), 5, [][2]int64{{995, 999}}},
		{"multipart", "bytes=0-9, 20-29,-5, 40-", 206, h("Content-Type", "multipart/byteranges; boundary=x"), -1, [][2]int64{{0, 9}, {20, 29}, {40, -1}}},
	} {
		if got := fetchedRanges(tc.rng, tc.code, tc.header, tc.size); !slices.Equal(got, tc.want) {
			t.Errorf("%s: fetchedRanges = %v, want %v", tc.name, got, tc.want)
		}
	}
}

package verity

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/lazypull/lazypull/internal/testenv"
)

func TestKnownVectors(t *testing.T) {
	for _, tc := range []struct {
		name string
		data []byte
		want string
	}{
		{"empty", nil, "3d248ca542a24fc62d1c43b916eae5016878e2533c88238480b26128a1f1af95"},
		{"hello world", []byte("hello world"), "1e2eaa4202d750a41174ee454970b92c1bc2f925b1e35076d8c7d5f56362ba64"},
		{"4096 zeros", make([]byte, 4096), "babc284ee4ffe7f449377fbf6692715b43aec7bc39c094a95878904d34bac97e"},
		{"4097 zeros", make([]byte, 4097), "093756e4ea9683329106d4a16982682ed182c14bf076463a9e7f97305cbac743"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Digest(bytes.NewReader(tc.data))
			if err != nil {
				t.Fatal(err)
			}
			if got.String() != tc.want {
				t.Errorf("Digest = %s, want %s", got, tc.want)
			}
			h := New()
			h.Write(tc.data)
			if s := fmt.Sprintf("%x", h.Sum([]byte("prefix"))); s != fmt.Sprintf("%x", "prefix")+tc.want {
				t.Errorf("Sum appended %s, want prefix then %s", s, tc.want)
			}
			parsed, err := ParseSum(tc.want)
			if err != nil || parsed != got {
				t.Errorf("ParseSum(%s) = %s, %v", tc.want, parsed, err)
			}
		})
	}
}

// content is deterministic random bytes: zeros would hide blocks or
// hashes taken in the wrong order.
func content(size int, seed uint64) []byte {
	b := make([]byte, size)
	var key [32]byte
	key[0] = byte(seed)
	key[1] = byte(seed >> 8)
	rand.NewChaCha8(key).Read(b)
	return b
}

// oracle is `fsverity digest` of data, from Debian's fsverity package: an
// implementation that is not ours.
func oracle(t *testing.T, bin string, data []byte) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "f")
	if err := os.WriteFile(p, data, 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(bin, "digest", "--compact", "--hash-alg=sha256", "--block-size=4096", p).CombinedOutput()
	if err != nil {
		t.Fatalf("fsverity digest %s: %v: %s", p, err, out)
	}
	return strings.TrimPrefix(strings.TrimSpace(string(out)), "sha256:")
}

// TestAgainstFsverity compares digests with `fsverity digest` at every
// size where the tree changes shape (block, level, 128 hashes a block),
// written in every way a caller may split its writes.
func TestAgainstFsverity(t *testing.T) {
	bin := testenv.NeedBinary(t, "fsverity")
	const B = BlockSize
	sizes := []int{0, 1, 31, 32, 33, 4095, 4096, 4097, 2 * B, 2*B + 1,
		127 * B, 128*B - 1, 128 * B, 128*B + 1, 129 * B,
		128*128*B - 1, 128*128*B + 1, // 64 MiB: a third level
		1<<20 + 12345, 3 << 20, 5<<20 + 7}
	splits := []int{1, 7, 31, 32, 33, 4095, 4096, 4097, 8191, 65537, 1<<20 + 3}
	for i, size := range sizes {
		data := content(size, uint64(i))
		want := oracle(t, bin, data)
		t.Run(fmt.Sprint(size), func(t *testing.T) {
			got, err := Digest(bytes.NewReader(data))
			if err != nil {
				t.Fatal(err)
			}
			if got.String() != want {
				t.Fatalf("Digest of %d bytes = %s, fsverity digest says %s", size, got, want)
			}
			for _, split := range splits {
				if split == 1 && size > 3*B {
					continue // a byte at a time is for the small sizes
				}
				if size > 16<<20 && split < 4095 {
					continue // keep the 64 MiB cases quick
				}
				h := New()
				for p := data; len(p) > 0; {
					n := min(split, len(p))
					if m, err := h.Write(p[:n]); m != n || err != nil {
						t.Fatalf("Write(%d bytes) = %d, %v", n, m, err)
					}
					p = p[n:]
				}
				if h.Written() != int64(size) {
					t.Errorf("Written = %d, want %d", h.Written(), size)
				}
				if got := h.Digest(); got.String() != want {
					t.Errorf("written %d bytes at a time: %s, want %s", split, got, want)
				}
			}
		})
	}
}

// TestDigestLeavesHashAlone: the digest of a prefix, taken midway, must
// not disturb the rest (hash.Hash's contract for Sum), and Reset starts
// over.
func TestDigestLeavesHashAlone(t *testing.T) {
	data := content(128*BlockSize+5000, 7)
	whole, _ := Digest(bytes.NewReader(data))
	h := New()
	for i, cut := range []int{0, 1, 4096, 4097, 128 * BlockSize, len(data)} {
		prev := 0
		if i > 0 {
			prev = []int{0, 1, 4096, 4097, 128 * BlockSize, len(data)}[i-1]
		}
		h.Write(data[prev:cut])
		want, _ := Digest(bytes.NewReader(data[:cut]))
		if got := h.Digest(); got != want {
			t.Fatalf("digest after %d bytes = %s, want %s", cut, got, want)
		}
	}
	if got := h.Digest(); got != whole {
		t.Fatalf("digest at the end = %s, want %s", got, whole)
	}
	h.Reset()
	h.Write([]byte("hello world"))
	if got := h.Digest().String(); got != "1e2eaa4202d750a41174ee454970b92c1bc2f925b1e35076d8c7d5f56362ba64" {
		t.Fatalf("after Reset: %s", got)
	}
}

func TestParseSumRejects(t *testing.T) {
	for _, s := range []string{
		"",
		"1e2eaa",
		"1E2EAA4202D750A41174EE454970B92C1BC2F925B1E35076D8C7D5F56362BA64",
		"1e2eaa4202d750a41174ee454970b92c1bc2f925b1e35076d8c7d5f56362ba6g",
		"sha256:1e2eaa4202d750a41174ee454970b92c1bc2f925b1e35076d8c7d5f56362ba64",
	} {
		if _, err := ParseSum(s); err == nil {
			t.Errorf("ParseSum(%q) accepted it", s)
		}
	}
}

// TestEnableClassifiesNotSupported: where the filesystem cannot do
// fs-verity, Enable and Measure say ErrNotSupported, which callers log
// once and live with. Where it can, the file gets verity and Measure has
// no ErrNoVerity to say.
func TestEnableClassifiesNotSupported(t *testing.T) {
	dir := t.TempDir()
	f := writeFile(t, dir, "f", []byte("hello world"))
	err := Enable(f)
	if err != nil && !errors.Is(err, ErrNotSupported) {
		t.Fatalf("Enable on %s: %v, want success or ErrNotSupported", dir, err)
	}
	supported := err == nil
	t.Logf("fs-verity on %s: supported=%v (%v)", dir, supported, err)
	if err != nil && !strings.Contains(err.Error(), f.Name()) {
		t.Errorf("error %q does not name the file", err)
	}
	_, merr := Measure(f)
	switch {
	case supported && merr != nil:
		t.Errorf("Measure after Enable: %v", merr)
	case !supported && !errors.Is(merr, ErrNotSupported) && !errors.Is(merr, ErrNoVerity):
		t.Errorf("Measure where Enable said not supported: %v, want ErrNotSupported or ErrNoVerity", merr)
	}
}

// TestEnableMeasure enables fs-verity on files of several sizes and checks
// the kernel measures what Digest computed. It needs a filesystem with
// fs-verity: the temp dir's, or else a loop-mounted ext4 made with the
// verity feature. A kernel without fs-verity (CONFIG_FS_VERITY) skips it,
// in CI too: that is the machine's kernel, not something to install.
func TestEnableMeasure(t *testing.T) {
	dir := verityDir(t)
	for i, size := range []int{0, 1, 4096, 4097, 128*BlockSize + 1, 1 << 20} {
		data := content(size, uint64(100+i))
		f := writeFile(t, dir, fmt.Sprintf("f%d", i), data)
		if err := Enable(f); err != nil {
			t.Fatal(err)
		}
		if err := Enable(f); err != nil {
			t.Fatalf("Enable twice (EEXIST is success): %v", err)
		}
		got, err := Measure(f)
		if err != nil {
			t.Fatal(err)
		}
		want, _ := Digest(bytes.NewReader(data))
		if got != want {
			t.Errorf("%d bytes: kernel measures %s, Digest computed %s", size, got, want)
		}
	}
	f := writeFile(t, dir, "plain", []byte("x"))
	if _, err := Measure(f); !errors.Is(err, ErrNoVerity) {
		t.Errorf("Measure of a file without verity: %v, want ErrNoVerity", err)
	}
}

// writeFile writes data to dir/name and opens it read-only, as Enable
// needs it (no writer may hold it open).
func writeFile(t *testing.T, dir, name string, data []byte) *os.File {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, data, 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

// verityDir returns a directory on a filesystem with fs-verity, or skips.
func verityDir(t *testing.T) string {
	t.Helper()
	if dir := t.TempDir(); probe(t, dir) == nil {
		return dir
	}
	// ext4 has fs-verity when made with -O verity and the kernel has it.
	testenv.NeedRoot(t)
	mkfs := testenv.NeedBinary(t, "mkfs.ext4")
	mnt := testenv.NeedBinary(t, "mount")
	work := t.TempDir()
	img, dir := filepath.Join(work, "ext4.img"), filepath.Join(work, "mnt")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(img, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(img, 32<<20); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(mkfs, "-q", "-O", "verity", img).CombinedOutput(); err != nil {
		t.Fatalf("mkfs.ext4 -O verity %s: %v: %s", img, err, out)
	}
	if out, err := exec.Command(mnt, "-o", "loop", img, dir).CombinedOutput(); err != nil {
		t.Fatalf("mount -o loop %s: %v: %s", img, err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("umount", dir).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v: %s", dir, err, out)
		}
	})
	if err := probe(t, dir); err != nil {
		t.Skipf("skipping: this kernel has no fs-verity (even ext4 made with -O verity says %v): a property of the machine's kernel (CONFIG_FS_VERITY), not a missing install", err)
	}
	return dir
}

// probe tries Enable on a new file in dir.
func probe(t *testing.T, dir string) error {
	t.Helper()
	f := writeFile(t, dir, ".probe", []byte("probe"))
	err := Enable(f)
	if err != nil && !errors.Is(err, ErrNotSupported) {
		t.Fatalf("probing fs-verity in %s: %v", dir, err)
	}
	f.Close()
	os.Remove(f.Name())
	return err
}

// BenchmarkHash is the fs-verity digest's throughput beside plain SHA-256
// of the same bytes: the tree hashes each byte once more for each 128th
// of it, so the two should be close.
func BenchmarkHash(b *testing.B) {
	data := content(16<<20, 1)
	b.Run("verity", func(b *testing.B) {
		b.SetBytes(int64(len(data)))
		for b.Loop() {
			h := New()
			h.Write(data)
			h.Digest()
		}
	})
	b.Run("sha256", func(b *testing.B) {
		b.SetBytes(int64(len(data)))
		for b.Loop() {
			sha256.Sum256(data)
		}
	})
}

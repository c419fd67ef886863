package e2e

import (
	"archive/tar"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	"golang.org/x/sys/unix"

	"github.com/lazypull/lazypull/format/toc"
	"github.com/lazypull/lazypull/internal/testenv"
)

// TestHostileImageCannotHurtTheNode pulls and runs hand-made hostile
// eStargz images, one per attack, while a victim container reads its own
// lazy layer in a loop. No attack may kill or restart the FUSE manager
// (its pid stays), grow its peak RSS by 512 MiB, or disturb the victim's
// reads; each hostile layer is refused (and unpacked, or the pull fails)
// with an error that names what is wrong, or is served safely.
//
// The background fetch is off: it would soon verify each layer against its
// diff_id and reject the forged ones, but an attacker has the window before
// that, and without it the window lasts, so every forged TOC is served as
// it claims. Passthrough is off so that each of the victim's reads is
// served by the manager.
func TestHostileImageCannotHurtTheNode(t *testing.T) {
	testenv.ForEachContainerd(t, testHostileImageCannotHurtTheNode)
}

func testHostileImageCannotHurtTheNode(t *testing.T, containerd testenv.Option) {
	attackNode(t, containerd, "[fetch]\nbackground = false\n[fuse]\npassthrough = false\n", []attack{
		{"hole-1TiB", attackHole},
		{"chunk-size-overflow", attackChunkOverflow},
		{"deep-paths", attackDeepPaths},
		{"member-64GiB", attackHugeMember},
		{"overlay-xattrs", attackOverlayXattrs},
	})
}

// TestHostileBackgroundFetch: a layer whose 768 MiB file of zeros
// compresses to under a megabyte is fetched whole in the background and
// verified, while a victim reads its own layer; the FUSE manager must not
// keep what it decodes (its peak RSS grows by less than 512 MiB), nor die.
func TestHostileBackgroundFetch(t *testing.T) {
	testenv.ForEachContainerd(t, func(t *testing.T, containerd testenv.Option) {
		attackNode(t, containerd, "[fuse]\npassthrough = false\n", []attack{{"gzip-bomb", attackGzipBomb}})
	})
}

// TestHostileManyLayers: one image of eight layers, each a TOC at the
// entry limit (half a million directories, some 3 MiB gzipped), all
// mounted at once: the FUSE manager's peak RSS must still grow by less
// than 512 MiB, whatever it refuses to get there.
func TestHostileManyLayers(t *testing.T) {
	testenv.ForEachContainerd(t, func(t *testing.T, containerd testenv.Option) {
		attackNode(t, containerd, "[fetch]\nbackground = false\n[fuse]\npassthrough = false\n", []attack{{"many-full-layers", attackManyLayers}})
	})
}

// An attack pulls (and runs) a hostile image on the node.
type attack struct {
	name string
	run  func(*testing.T, context.Context, *hostile)
}

// attackNode starts the node with the daemon configuration config, a
// victim container that reads its lazy layer in a loop, and runs each
// attack; after each, the FUSE manager must be the same process and the
// victim must still read the right bytes; after all, the manager's peak
// RSS must have grown by less than 512 MiB, and nothing may have panicked.
func attackNode(t *testing.T, containerd testenv.Option, config string, attacks []attack) {
	env := testenv.New(t, containerd, testenv.WithDaemonConfig(config))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	base := helloLayer(t, env)

	// The victim: eight files of random data in a lazy layer.
	r := rand.New(rand.NewPCG(10, 10))
	var victimFiles []testenv.Entry
	var watch []string
	for i := range 8 {
		data := make([]byte, 128<<10)
		for j := range data {
			data[j] = byte(r.Uint32())
		}
		name := fmt.Sprintf("data/f%d", i)
		victimFiles = append(victimFiles, testenv.Entry{Path: name, Type: tar.TypeReg, Mode: 0o644, Data: data})
		sum := sha256.Sum256(data)
		watch = append(watch, "/"+name+"="+hex.EncodeToString(sum[:]))
	}
	victimLayer := eStargzLayer(t, append([]testenv.Entry{testenv.Dir("data")}, victimFiles...))
	victimRef := env.Registry.Host + "/victim:v1"
	pushImage(t, ctx, victimRef, testenv.LayerImage{Layers: []testenv.Layer{base, victimLayer}})
	if out, err := pullLazy(t, env, victimRef); err != nil || strings.Count(out, "mounted lazily") != 2 {
		t.Fatalf("pull the victim: %v\n%s", err, out)
	}
	v := startVictim(t, ctx, env, victimRef, watch)
	v.waitRounds(t, ctx, 1)

	pid := lockedPID(t, env.DaemonRoot)
	hwm0 := procBytes(t, pid, "VmHWM")
	h := &hostile{env: env, base: base}
	for _, a := range attacks {
		t.Run(a.name, func(t *testing.T) { a.run(t, ctx, h) })
		// Whatever the attack did, the node is as it was: the same
		// manager, and the victim still reads the right bytes.
		if got := lockedPID(t, env.DaemonRoot); got != pid {
			t.Fatalf("after %s: the FUSE manager is pid %d, was %d: it died or was replaced", a.name, got, pid)
		}
		if err := syscall.Kill(pid, 0); err != nil {
			t.Fatalf("after %s: the FUSE manager (pid %d): %v", a.name, pid, err)
		}
		v.waitRounds(t, ctx, v.rounds(t)+2)
	}

	hwm1 := procBytes(t, pid, "VmHWM")
	t.Logf("FUSE manager peak RSS: %d MiB before the attacks, %d MiB after (RSS now %d MiB)", hwm0>>20, hwm1>>20, procBytes(t, pid, "VmRSS")>>20)
	if hwm1-hwm0 >= 512<<20 {
		t.Errorf("the FUSE manager's peak RSS grew by %d MiB (from %d to %d MiB), want less than 512", (hwm1-hwm0)>>20, hwm0>>20, hwm1>>20)
	}
	out, err := v.stop(t)
	if err != nil || !strings.HasSuffix(out, "files, all right\n") {
		t.Errorf("the victim container: %v\n%s", err, out)
	}
	t.Logf("the victim: %s", strings.TrimSpace(out))
	checkNoPanic(t, env)
}

// hostile is what the attacks share: the environment and the base layer
// (the hello program) under each hostile layer.
type hostile struct {
	env  *testenv.Env
	base testenv.Layer
}

// push pushes an image of the base layer and layers as hostile-NAME:v1
// and pulls it with `lazypull pull`.
func (h *hostile) pushAndPull(t *testing.T, ctx context.Context, name string, layers ...testenv.Layer) (ref, out string, err error) {
	t.Helper()
	ref = h.env.Registry.Host + "/hostile-" + name + ":v1"
	pushImage(t, ctx, ref, testenv.LayerImage{Layers: append([]testenv.Layer{h.base}, layers...)})
	out, err = pullLazy(t, h.env, ref)
	return ref, out, err
}

// expectRefused pulls an image whose top layer's TOC must be refused: the
// layer is then downloaded (and the reason names the entry: want) or the
// pull fails naming the layer. A container of the image must then print
// wantRun; had the layer been mounted lazily after all, it may also fail
// with EIO, and the node must survive its reads.
func (h *hostile) expectRefused(t *testing.T, ctx context.Context, name string, l testenv.Layer, want string, run []string, wantRun string) {
	t.Helper()
	ref, out, err := h.pushAndPull(t, ctx, name, l)
	if err != nil {
		if !strings.Contains(err.Error(), l.Desc.Digest.String()) {
			t.Errorf("the pull failed with an error that does not name the layer %s: %v", l.Desc.Digest, err)
		}
		return
	}
	line := layerLine(out, l.Desc.Digest)
	refused := strings.Contains(line, "downloaded: ") && strings.Contains(line, want)
	if refused {
		t.Logf("refused: %s", line)
	} else {
		t.Errorf("the hostile layer was not refused with a reason naming %s:\n%s", want, out)
	}
	got, err := h.env.Containerd.Ctr(ctx, append([]string{"run", "--rm", "--snapshotter", "lazypull", ref, ctrID(h.env, "hostile-"+name)}, run...)...)
	if (err != nil || got != wantRun) && (refused || !strings.Contains(got, "input/output error")) {
		t.Errorf("a container of the image: %v\n%s\nwant:\n%s", err, got, wantRun)
	}
}

// attackHole: a file that is one 1 TiB hole. Reading 4 KiB of it must give
// zeros or fail cleanly (EIO), never kill the manager.
func attackHole(t *testing.T, ctx context.Context, h *hostile) {
	l := forgeTOC(t, eStargzLayer(t, []testenv.Entry{testenv.File("big", "")}), func(doc *toc.JSON) {
		e := entryNamed(t, doc, "big")
		e.Size, e.ChunkType, e.ChunkSize, e.Digest, e.ChunkDigest, e.Offset = 1<<40, toc.ChunkTypeZeros, 0, "", "", 0
	})
	ref, out, err := h.pushAndPull(t, ctx, "hole", l)
	if err != nil {
		t.Fatalf("pull: %v\n%s", err, out)
	}
	if line := layerLine(out, l.Desc.Digest); !strings.Contains(line, "mounted lazily") {
		// Refusing it is safe too; then there is nothing to read.
		t.Logf("the 1 TiB hole was not mounted lazily: %s", line)
		return
	}
	got, err := h.env.Containerd.Ctr(ctx, "run", "--rm", "--snapshotter", "lazypull", ref, ctrID(h.env, "hostile-hole"),
		"/hello", "--read", "/big", "0:4096", strconv.FormatInt(1<<40-4096, 10)+":4096")
	want := fmt.Sprintf("/big 0:4096: zeros\n/big %d:4096: zeros\n", int64(1<<40-4096))
	switch {
	case err == nil && got == want:
		t.Logf("the hole reads as zeros: %s", got)
	case err != nil && strings.Contains(got, "input/output error"):
		t.Logf("reading the hole failed cleanly: %s", got)
	default:
		t.Errorf("reading 4 KiB of a 1 TiB hole: %v\n%s\nwant zeros or EIO", err, got)
	}
}

// attackChunkOverflow: a 10-byte file in chunks of 5, MaxInt64, MaxInt64
// and 7 bytes, whose offsets wrap around to cover it. The two huge ones are
// holes, which have no data whose size a reader could check.
func attackChunkOverflow(t *testing.T, ctx context.Context, h *hostile) {
	l := forgeTOC(t, eStargzLayer(t, []testenv.Entry{testenv.File("ten", "0123456789")}), func(doc *toc.JSON) {
		e := entryNamed(t, doc, "ten")
		e.ChunkSize = 5
		hole := toc.WireEntry{Name: "ten", Type: toc.TypeChunk, ChunkSize: math.MaxInt64, ChunkType: toc.ChunkTypeZeros}
		last := toc.WireEntry{Name: "ten", Type: toc.TypeChunk, Offset: e.Offset, InnerOffset: e.InnerOffset + 5, ChunkSize: 7, ChunkDigest: e.ChunkDigest}
		var chunks []toc.WireEntry
		off := int64(5)
		for _, c := range []toc.WireEntry{hole, hole, last} {
			c.ChunkOffset = off
			chunks = append(chunks, c)
			off += c.ChunkSize // wraps, as the attacker means it to
		}
		insertAfter(doc, "ten", chunks)
	})
	h.expectRefused(t, ctx, "overflow", l, `"ten"`, []string{"/hello", "/ten"}, "hello from lazypull\n/ten: 0123456789\n")
}

// attackDeepPaths: 500 directories 2,000 deep, which would imply a million
// directories, in a TOC of a few KiB gzipped.
func attackDeepPaths(t *testing.T, ctx context.Context, h *hostile) {
	l := forgeTOC(t, eStargzLayer(t, []testenv.Entry{testenv.File("ok.txt", "fine")}), func(doc *toc.JSON) {
		deep := strings.Repeat("a/", 2040)
		for i := range 500 {
			doc.Entries = append(doc.Entries, toc.WireEntry{Name: fmt.Sprintf("d%03d/%s", i, deep), Type: toc.TypeDir, Mode: 0o755})
		}
	})
	t.Logf("the layer with 500 deep paths is %d bytes", len(l.Blob))
	h.expectRefused(t, ctx, "deep", l, `toc: entry "d0`, []string{"/hello", "/ok.txt"}, "hello from lazypull\n/ok.txt: fine\n")
}

// attackHugeMember: a file whose compressed member claims to end 64 GiB
// into the blob.
func attackHugeMember(t *testing.T, ctx context.Context, h *hostile) {
	l := forgeTOC(t, eStargzLayer(t, []testenv.Entry{testenv.File("m.txt", "member")}), func(doc *toc.JSON) {
		entryNamed(t, doc, "m.txt").EndOffset = 64 << 30
	})
	h.expectRefused(t, ctx, "member", l, `"m.txt"`, []string{"/hello", "/m.txt"}, "hello from lazypull\n/m.txt: member\n")
}

// attackOverlayXattrs: an upper layer whose directories carry overlayfs's
// own xattrs, forged, to hide a lower layer's directory (opaque) and to
// show another of its directories elsewhere (redirect). The container
// must see the lower layer's files, and the layer's mount must not carry
// those xattrs at all.
func attackOverlayXattrs(t *testing.T, ctx context.Context, h *hostile) {
	lower := eStargzLayer(t, []testenv.Entry{
		testenv.Dir("data"),
		testenv.File("data/keep.txt", "kept from the lower layer"),
		testenv.Dir("secret"),
		testenv.File("secret/s.txt", "the lower layer's secret"),
	})
	forged := map[string]map[string]string{
		"data":  {"trusted.overlay.opaque": "y", "user.overlay.opaque": "y"},
		"redir": {"trusted.overlay.redirect": "/secret", "user.overlay.redirect": "/secret"},
	}
	upper := eStargzLayer(t, []testenv.Entry{
		{Path: "data", Type: tar.TypeDir, Mode: 0o755, Xattrs: forged["data"]},
		testenv.File("data/upper.txt", "added by the upper layer"),
		{Path: "redir", Type: tar.TypeDir, Mode: 0o755, Xattrs: forged["redir"]},
	})
	ref, out, err := h.pushAndPull(t, ctx, "xattrs", lower, upper)
	if err != nil {
		t.Fatalf("pull: %v\n%s", err, out)
	}
	if line := layerLine(out, upper.Desc.Digest); !strings.Contains(line, "mounted lazily") {
		t.Fatalf("the layer with forged xattrs was not mounted lazily (nothing tested):\n%s", out)
	}
	got, err := h.env.Containerd.Ctr(ctx, "run", "--rm", "--snapshotter", "lazypull", ref, ctrID(h.env, "hostile-xattrs"), "/hello", "/data", "/redir")
	want := "hello from lazypull\n/data/\n/data/keep.txt: kept from the lower layer\n/data/upper.txt: added by the upper layer\n/redir/\n"
	if err != nil || got != want {
		t.Errorf("the container of the image with forged overlay xattrs: %v\n%s\nwant:\n%s", err, got, want)
	}
	// On the layer's own mount, the forged names are not there at all.
	mp := mountpointOf(t, h.env, upper.Desc.Digest)
	for dir, xattrs := range forged {
		for name := range xattrs {
			buf := make([]byte, 256)
			n, err := unix.Lgetxattr(filepath.Join(mp, dir), name, buf)
			if !errors.Is(err, unix.ENODATA) && !errors.Is(err, unix.EOPNOTSUPP) {
				t.Errorf("getxattr %s on /%s of the lazy layer: %q, %v; want ENODATA", name, dir, buf[:max(n, 0)], err)
			}
		}
	}
}

// attackGzipBomb: 768 MiB of zeros, real data this time, in a layer of
// under a megabyte: its background fetch decodes it all and verifies it.
// A container then reads its two ends.
func attackGzipBomb(t *testing.T, ctx context.Context, h *hostile) {
	const size = 768 << 20
	l := eStargzLayer(t, []testenv.Entry{{Path: "zeros", Type: tar.TypeReg, Mode: 0o644, Data: make([]byte, size)}})
	t.Logf("%d MiB of zeros in a %d KiB layer", size>>20, len(l.Blob)>>10)
	ref, out, err := h.pushAndPull(t, ctx, "bomb", l)
	if err != nil || !strings.Contains(layerLine(out, l.Desc.Digest), "mounted lazily") {
		t.Fatalf("the layer was not mounted lazily (nothing tested): %v\n%s", err, out)
	}
	waitUntil(t, ctx, "the layer is fetched whole and verified", func() error {
		for _, st := range managerStatus(t, h.env).Layers {
			if st.Digest == l.Desc.Digest.String() {
				if st.Verification != "verified" {
					return fmt.Errorf("%s, %d of %d bytes fetched", st.Verification, st.FetchedBytes, st.Size)
				}
				return nil
			}
		}
		return fmt.Errorf("layer %s not mounted", l.Desc.Digest)
	})
	got, err := h.env.Containerd.Ctr(ctx, "run", "--rm", "--snapshotter", "lazypull", ref, ctrID(h.env, "hostile-bomb"),
		"/hello", "--read", "/zeros", "0:4096", strconv.Itoa(size-4096)+":4096")
	if want := fmt.Sprintf("/zeros 0:4096: zeros\n/zeros %d:4096: zeros\n", size-4096); err != nil || got != want {
		t.Errorf("reading the zeros: %v\n%s\nwant:\n%s", err, got, want)
	}
}

// attackManyLayers pulls an image of eight layers whose TOCs each list as
// many directories as toc.DefaultLimits allows one layer.
func attackManyLayers(t *testing.T, ctx context.Context, h *hostile) {
	var layers []testenv.Layer
	for i := range 8 {
		name := fmt.Sprintf("layer%d.txt", i)
		layers = append(layers, forgeTOC(t, eStargzLayer(t, []testenv.Entry{testenv.File(name, name)}), func(doc *toc.JSON) {
			for j := len(doc.Entries) + 1; j < toc.DefaultLimits.MaxEntries; j++ {
				doc.Entries = append(doc.Entries, toc.WireEntry{Name: fmt.Sprintf("d/%07d", j), Type: toc.TypeDir, Mode: 0o755})
			}
		}))
	}
	t.Logf("8 layers of %d KiB each", len(layers[0].Blob)>>10)
	_, out, err := h.pushAndPull(t, ctx, "many", layers...)
	t.Logf("pull: %v\n%s", err, out)
}

// ctrID names a container for this Env alone. runc keeps a container's
// state under /run/containerd/runc/<namespace>/<id>, whichever containerd
// runs it: two Envs on one machine (tests running at the same time) that
// used the same id would refuse or kill each other's containers.
func ctrID(env *testenv.Env, name string) string {
	return name + "-" + strings.TrimPrefix(filepath.Base(env.Dir), "lazypull-")
}

// helloLayer is an eStargz layer holding the test program at /hello.
func helloLayer(t *testing.T, env *testenv.Env) testenv.Layer {
	t.Helper()
	path, err := testenv.BuildHello(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	hello, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return eStargzLayer(t, []testenv.Entry{{Path: "hello", Type: tar.TypeReg, Mode: 0o755, Data: hello}})
}

func eStargzLayer(t *testing.T, entries []testenv.Entry) testenv.Layer {
	t.Helper()
	l, err := testenv.EStargzLayer(entries)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func pushImage(t *testing.T, ctx context.Context, ref string, img testenv.LayerImage) digest.Digest {
	t.Helper()
	desc, err := testenv.PushImage(ctx, ref, img)
	if err != nil {
		t.Fatal(err)
	}
	return desc.Digest
}

// pullLazy pulls ref into the Env's containerd with `lazypull pull`.
func pullLazy(t *testing.T, env *testenv.Env, ref string) (string, error) {
	t.Helper()
	return lazypull(t, env.BinDir, "pull", "--address", env.Containerd.Address, "--namespace", testenv.Namespace, ref)
}

// layerLine is the line of `lazypull pull`'s output about layer d.
func layerLine(out string, d digest.Digest) string {
	for _, line := range strings.Split(out, "\n") {
		if strings.HasPrefix(line, d.String()) {
			return line
		}
	}
	return ""
}

// mountpointOf is where the FUSE manager serves layer d.
func mountpointOf(t *testing.T, env *testenv.Env, d digest.Digest) string {
	t.Helper()
	for _, l := range managerStatus(t, env).Layers {
		if l.Digest == d.String() {
			return l.Mountpoint
		}
	}
	t.Fatalf("the FUSE manager does not serve layer %s", d)
	return ""
}

// forgeTOC is testenv.ForgeTOC, failing the test on an error.
func forgeTOC(t *testing.T, l testenv.Layer, edit func(*toc.JSON)) testenv.Layer {
	t.Helper()
	forged, err := testenv.ForgeTOC(l, edit)
	if err != nil {
		t.Fatal(err)
	}
	return forged
}

// readTOC is testenv.ReadTOC, failing the test on an error.
func readTOC(t *testing.T, l testenv.Layer) toc.JSON {
	t.Helper()
	doc, err := testenv.ReadTOC(l)
	if err != nil {
		t.Fatal(err)
	}
	return doc
}

// entryNamed is the TOC's entry of a file (not a chunk).
func entryNamed(t *testing.T, doc *toc.JSON, name string) *toc.WireEntry {
	t.Helper()
	for i := range doc.Entries {
		if e := &doc.Entries[i]; e.Name == name && e.Type != toc.TypeChunk {
			return e
		}
	}
	t.Fatalf("no TOC entry %q", name)
	return nil
}

// insertAfter puts entries right after the TOC's entry of name.
func insertAfter(doc *toc.JSON, name string, entries []toc.WireEntry) {
	for i, e := range doc.Entries {
		if e.Name == name {
			rest := append(entries, doc.Entries[i+1:]...)
			doc.Entries = append(doc.Entries[:i+1], rest...)
			return
		}
	}
}

// victim is a container that reads its files over and over (hello
// --watch), checking each read, until told to stop.
type victim struct {
	env  *testenv.Env
	ctl  string // bind-mounted at /ctl: the stop file and the round count
	done chan struct{}
	out  string
	err  error
}

func startVictim(t *testing.T, ctx context.Context, env *testenv.Env, ref string, watch []string) *victim {
	t.Helper()
	v := &victim{env: env, ctl: filepath.Join(env.Dir, "victim-ctl"), done: make(chan struct{})}
	if err := os.Mkdir(v.ctl, 0o755); err != nil {
		t.Fatal(err)
	}
	args := append([]string{"run", "--rm", "--snapshotter", "lazypull",
		"--mount", "type=bind,src=" + v.ctl + ",dst=/ctl,options=rbind:rw",
		ref, ctrID(env, "victim"), "/hello", "--watch", "/ctl/stop", "/ctl/rounds"}, watch...)
	go func() {
		defer close(v.done)
		v.out, v.err = env.Containerd.Ctr(ctx, args...)
	}()
	// Stopped before the Env is torn down, even when the test fails.
	t.Cleanup(func() { v.stop(t) })
	return v
}

// rounds is how many rounds of reads the victim has finished.
func (v *victim) rounds(t *testing.T) int {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(v.ctl, "rounds"))
	if errors.Is(err, os.ErrNotExist) {
		return 0
	}
	if err != nil {
		t.Fatal(err)
	}
	n, err := strconv.Atoi(string(b))
	if err != nil {
		t.Fatalf("the victim's round count %q: %v", b, err)
	}
	return n
}

// waitRounds waits until the victim has finished n rounds; it fails the
// test at once if the victim stops reading (a wrong byte, an error).
func (v *victim) waitRounds(t *testing.T, ctx context.Context, n int) {
	t.Helper()
	waitUntil(t, ctx, fmt.Sprintf("the victim has read its files %d times", n), func() error {
		select {
		case <-v.done:
			t.Fatalf("the victim container ended after %d rounds: %v\n%s\ncontainerd's log:\n%s", v.rounds(t), v.err, v.out, v.env.Containerd.LogTail())
		default:
		}
		if got := v.rounds(t); got < n {
			return fmt.Errorf("%d rounds", got)
		}
		return nil
	})
}

// stop tells the victim to stop and returns what it printed.
func (v *victim) stop(t *testing.T) (string, error) {
	select {
	case <-v.done:
		return v.out, v.err
	default:
	}
	if err := os.WriteFile(filepath.Join(v.ctl, "stop"), nil, 0o644); err != nil {
		t.Error(err)
	}
	select {
	case <-v.done:
	case <-time.After(time.Minute):
		t.Errorf("the victim did not stop within a minute of being told to")
	}
	return v.out, v.err
}

// procBytes reads a size (VmHWM: the peak resident set, VmRSS: the
// current one) from a process's status, in bytes.
func procBytes(t *testing.T, pid int, key string) int64 {
	t.Helper()
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(status), "\n") {
		if rest, ok := strings.CutPrefix(line, key+":"); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			if err != nil {
				t.Fatalf("%s of pid %d: %q", key, pid, line)
			}
			return kb << 10
		}
	}
	t.Fatalf("no %s in /proc/%d/status", key, pid)
	return 0
}

// checkNoPanic fails the test if the daemon or its FUSE manager logged a
// panic, even a recovered one: untrusted input must never reach one.
func checkNoPanic(t *testing.T, env *testenv.Env) {
	t.Helper()
	for _, path := range []string{env.Daemon.Log, filepath.Join(env.DaemonRoot, "fusemanager.log")} {
		f, err := os.Open(path)
		if err != nil {
			t.Logf("%s: %v", path, err)
			continue
		}
		b, _ := io.ReadAll(f)
		f.Close()
		for _, line := range strings.Split(string(b), "\n") {
			if strings.Contains(line, "panic") || strings.Contains(line, "fatal error") {
				t.Errorf("%s: %s", filepath.Base(path), line)
			}
		}
	}
}

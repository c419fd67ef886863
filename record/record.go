// Package record runs an image's workload once, through containerd and
// runc, on its layers mounted lazily in record mode, and returns the
// workload profile of what it read (profile.Profile).
//
// Record mode is a private mount of each lazy layer, in this process: no
// passthrough, so that every read reaches the layer (page faults of mapped
// files included) and is recorded; a fresh FUSE mount per run, so that no
// page cache of an earlier run hides a read. Ordinary layers are unpacked
// beside them (nothing of theirs is fetched lazily, so nothing to record).
// It joins transport (the image), layer, fusefs and containerd's client;
// the snapshotter and the FUSE manager are not involved.
package record

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/archive"
	"github.com/containerd/containerd/v2/pkg/archive/compression"
	"github.com/containerd/containerd/v2/pkg/cio"
	"github.com/containerd/containerd/v2/pkg/oci"
	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"golang.org/x/sys/unix"

	"github.com/lazypull/lazypull/cache"
	"github.com/lazypull/lazypull/format"
	"github.com/lazypull/lazypull/format/toc"
	"github.com/lazypull/lazypull/fusefs"
	"github.com/lazypull/lazypull/layer"
	"github.com/lazypull/lazypull/profile"
	"github.com/lazypull/lazypull/remote"
	"github.com/lazypull/lazypull/transport"
)

// Options say what to run and how to end it.
type Options struct {
	// Client is containerd's; the container runs in its namespace.
	Client *containerd.Client
	// Args replace the image's Cmd; Entrypoint (if set) its Entrypoint;
	// Env is added to the image's.
	Args       []string
	Entrypoint []string
	Env        []string
	// WaitFor ends the run when the workload prints it; else Period
	// does, after that long; else the workload's exit.
	WaitFor string
	Period  time.Duration
	// Output gets what the workload prints (nil: discarded).
	Output io.Writer
	// TempDir holds the run's mounts and cache (default: the system's).
	TempDir string
	// ReadAheadKiB is the layers' read-ahead (fusefs.Options): what a page
	// fault reads, and so what the profile holds. Match the nodes'.
	ReadAheadKiB int
	// Registry is how a docker:// image's registry is reached.
	Registry remote.Options
}

// Run records the workload of the image ref names.
func Run(ctx context.Context, ref transport.Ref, opts Options) (*profile.Profile, error) {
	loc, err := transport.Open(ctx, ref, opts.Registry)
	if err != nil {
		return nil, err
	}
	root, err := loc.Resolve(ctx)
	if err != nil {
		return nil, err
	}
	img, err := transport.ReadImage(ctx, loc, root)
	if err != nil {
		return nil, err
	}
	tmp, err := os.MkdirTemp(opts.TempDir, "lazypull-record-")
	if err != nil {
		return nil, err
	}
	r := &run{ref: ref, loc: loc, registry: opts.Registry, readAhead: opts.ReadAheadKiB, dir: tmp, rec: profile.NewRecorder()}
	defer r.cleanup()
	if r.cache, err = cache.New(filepath.Join(tmp, "cache"), cache.WithSync(false)); err != nil {
		return nil, err
	}
	var lowers []string
	for i, desc := range img.Manifest.Layers {
		dir, err := r.mountLayer(ctx, i, desc)
		if err != nil {
			return nil, fmt.Errorf("layer %d (%s): %w", i, desc.Digest, err)
		}
		lowers = append([]string{dir}, lowers...) // overlayfs: top first
	}
	rootfs, err := r.mountRootfs(lowers)
	if err != nil {
		return nil, err
	}
	args, err := process(img.Config.Config, opts)
	if err != nil {
		return nil, err
	}
	log.G(ctx).WithField("args", args).Info("recording a workload profile")
	if err := r.runContainer(ctx, rootfs, img.Config.Config, args, opts); err != nil {
		return nil, err
	}
	w := profile.Workload{Image: ref.String(), Args: args, WaitFor: opts.WaitFor}
	if opts.WaitFor == "" && opts.Period > 0 {
		w.Period = opts.Period.String()
	}
	var digests []digest.Digest
	var tocs []*toc.TOC
	for _, desc := range img.Manifest.Layers {
		digests = append(digests, desc.Digest)
		tocs = append(tocs, r.tocs[desc.Digest])
	}
	p := r.rec.Profile(w, digests, tocs)
	// Where the reads' chunks lie in each blob, for a node to fetch them
	// before it has the TOC.
	for _, l := range r.layers {
		d := l.Descriptor().Digest
		ranges, err := p.Plan(d, l.TOC())
		if err != nil {
			return nil, fmt.Errorf("layer %s: the profile just recorded does not fit it: %w", d, err)
		}
		i := slices.IndexFunc(p.Layers, func(pl profile.Layer) bool { return pl.Digest == d })
		// The plan's ranges are the layer's reads, in order: a span's rank
		// (its first range) names the read.
		var reads []int
		for j, r := range p.Reads {
			if r.Layer == i {
				reads = append(reads, j)
			}
		}
		for _, s := range l.Spans(ranges) {
			read := reads[s.Rank]
			p.Layers[i].Spans = append(p.Layers[i].Spans, profile.Span{Offset: s.Offset, Length: s.Length, Read: &read})
		}
	}
	return p, nil
}

// run is one recording: what it mounted, to undo.
type run struct {
	ref       transport.Ref
	loc       transport.Location
	registry  remote.Options
	readAhead int // KiB, fusefs.Options
	closers   []io.Closer
	dir       string
	rec       *profile.Recorder
	cache     *cache.Cache
	tocs      map[digest.Digest]*toc.TOC
	layers    []*layer.Layer
	fuse      []*fusefs.MountedLayer
	rootfs    string // mounted overlay, if any
}

// mountLayer mounts layer i for recording (a lazy one) or unpacks it (an
// ordinary one), and returns its directory.
func (r *run) mountLayer(ctx context.Context, i int, desc ocispec.Descriptor) (string, error) {
	dir := filepath.Join(r.dir, "layers", fmt.Sprint(i))
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", err
	}
	if _, lazy := format.KindOf(desc); !lazy {
		return dir, r.unpack(ctx, desc, dir)
	}
	f, err := r.fetcher(ctx, desc)
	if err != nil {
		return "", err
	}
	d := desc.Digest
	l, err := layer.Open(ctx, desc, f, r.cache, layer.Options{
		Record: func(e *toc.Entry, off, n int64) { r.rec.Record(d, e.Path(), off, n) },
	})
	if err != nil {
		return "", err
	}
	r.layers = append(r.layers, l)
	if r.tocs == nil {
		r.tocs = make(map[digest.Digest]*toc.TOC)
	}
	r.tocs[d] = l.TOC()
	// No passthrough: every read must reach the layer to be recorded.
	m, err := fusefs.Mount(dir, l, fusefs.Options{ReadAheadKiB: r.readAhead})
	if err != nil {
		return "", err
	}
	r.fuse = append(r.fuse, m)
	return dir, nil
}

// fetcher opens a layer's blob for ranged reads: from a registry as the
// snapshotter reads it (parallel Range requests, retries), from a layout
// as a file.
func (r *run) fetcher(ctx context.Context, desc ocispec.Descriptor) (layer.Fetcher, error) {
	if r.ref.Transport == transport.Docker {
		return remote.OpenBlob(ctx, r.ref.Name, desc, r.registry, remote.BlobOptions{})
	}
	ra, err := r.loc.ReaderAt(ctx, desc)
	if err != nil {
		return nil, err
	}
	r.closers = append(r.closers, ra)
	return readerAtFetcher{ra}, nil
}

// readerAtFetcher reads a layer's blob from a layout's file.
type readerAtFetcher struct{ ra transport.ReaderAt }

func (f readerAtFetcher) Size() int64 { return f.ra.Size() }

func (f readerAtFetcher) FetchAt(_ context.Context, p []byte, off int64) error {
	_, err := f.ra.ReadAt(p, off)
	if errors.Is(err, io.EOF) && off+int64(len(p)) <= f.ra.Size() {
		err = nil
	}
	return err
}

// unpack applies an ordinary layer to dir, whiteouts in overlayfs's form.
func (r *run) unpack(ctx context.Context, desc ocispec.Descriptor, dir string) error {
	rc, err := r.loc.Fetch(ctx, desc)
	if err != nil {
		return err
	}
	defer rc.Close()
	ds, err := compression.DecompressStream(rc)
	if err != nil {
		return err
	}
	defer ds.Close()
	_, err = archive.Apply(ctx, dir, ds, archive.WithConvertWhiteout(archive.OverlayConvertWhiteout))
	return err
}

// mountRootfs stacks the layers under a writable upper directory.
func (r *run) mountRootfs(lowers []string) (string, error) {
	rootfs, upper, work := filepath.Join(r.dir, "rootfs"), filepath.Join(r.dir, "upper"), filepath.Join(r.dir, "work")
	for _, d := range []string{rootfs, upper, work} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return "", err
		}
	}
	data := fmt.Sprintf("lowerdir=%s,upperdir=%s,workdir=%s", strings.Join(lowers, ":"), upper, work)
	if err := unix.Mount("overlay", rootfs, "overlay", 0, data); err != nil {
		return "", fmt.Errorf("mount the workload's root filesystem (overlay on %s): %w", rootfs, err)
	}
	r.rootfs = rootfs
	return rootfs, nil
}

// process is the workload's command: the image's entrypoint and cmd, as
// overridden.
func process(c ocispec.ImageConfig, opts Options) ([]string, error) {
	entrypoint, cmd := c.Entrypoint, c.Cmd
	if len(opts.Entrypoint) > 0 {
		entrypoint, cmd = opts.Entrypoint, nil
	}
	if len(opts.Args) > 0 {
		cmd = opts.Args
	}
	args := append(append([]string(nil), entrypoint...), cmd...)
	if len(args) == 0 {
		return nil, errors.New("the image has no entrypoint or command: give the workload's (--args, --entrypoint)")
	}
	return args, nil
}

// runContainer runs args in rootfs through containerd until the workload
// prints opts.WaitFor, opts.Period passes, or it exits.
func (r *run) runContainer(ctx context.Context, rootfs string, c ocispec.ImageConfig, args []string, opts Options) error {
	client := opts.Client
	id := filepath.Base(r.dir) // lazypull-record-<random>
	specOpts := []oci.SpecOpts{
		oci.WithRootFSPath(rootfs),
		oci.WithProcessArgs(args...),
		oci.WithEnv(append(append([]string(nil), c.Env...), opts.Env...)),
	}
	if c.WorkingDir != "" {
		specOpts = append(specOpts, oci.WithProcessCwd(c.WorkingDir))
	}
	if c.User != "" {
		specOpts = append(specOpts, oci.WithUser(c.User))
	}
	container, err := client.NewContainer(ctx, id, containerd.WithNewSpec(specOpts...))
	if err != nil {
		return fmt.Errorf("create the workload's container: %w", err)
	}
	defer container.Delete(context.WithoutCancel(ctx))

	pr, pw := io.Pipe()
	defer pw.Close()
	fifos := filepath.Join(r.dir, "fifo")
	task, err := container.NewTask(ctx, cio.NewCreator(cio.WithStreams(nil, pw, pw), cio.WithFIFODir(fifos)))
	if err != nil {
		return fmt.Errorf("create the workload's task: %w", err)
	}
	defer task.Delete(context.WithoutCancel(ctx), containerd.WithProcessKill)
	exited, err := task.Wait(ctx)
	if err != nil {
		return err
	}
	seen := make(chan struct{})
	go watch(pr, opts.Output, opts.WaitFor, seen)
	if err := task.Start(ctx); err != nil {
		return fmt.Errorf("start the workload: %w", err)
	}
	var period <-chan time.Time
	if opts.WaitFor == "" && opts.Period > 0 {
		period = time.After(opts.Period)
	}
	select {
	case <-seen:
	case <-period:
	case st := <-exited:
		task.IO().Wait() // all it printed is read
		select {
		case <-seen:
		default:
			if opts.WaitFor != "" {
				return fmt.Errorf("the workload exited (status %d) without printing %q", st.ExitCode(), opts.WaitFor)
			}
		}
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
	if err := task.Kill(ctx, syscall.SIGKILL); err != nil && !errdefs.IsNotFound(err) { // NotFound: it has just exited
		return fmt.Errorf("stop the workload: %w", err)
	}
	<-exited
	return nil
}

// watch copies the workload's output to out, and closes seen when it has
// printed text (never, if text is empty).
func watch(r io.Reader, out io.Writer, text string, seen chan struct{}) {
	if out == nil {
		out = io.Discard
	}
	var tail string // the end of what was read, for a text split across reads
	closed := false
	buf := make([]byte, 32<<10)
	for {
		n, err := r.Read(buf)
		out.Write(buf[:n])
		if text != "" && !closed {
			tail += string(buf[:n])
			if strings.Contains(tail, text) {
				close(seen)
				closed = true
			} else if len(tail) > len(text) {
				tail = tail[len(tail)-len(text):]
			}
		}
		if err != nil {
			return
		}
	}
}

// cleanup unmounts and removes what the run made, top first.
func (r *run) cleanup() {
	if r.rootfs != "" {
		if err := unix.Unmount(r.rootfs, 0); err != nil {
			log.L.WithError(err).WithField("mountpoint", r.rootfs).Warn("cannot unmount the workload's root filesystem; detaching it")
			unix.Unmount(r.rootfs, unix.MNT_DETACH)
		}
	}
	for _, m := range r.fuse {
		if err := m.Unmount(); err != nil {
			log.L.WithError(err).Warn("cannot unmount a recorded layer")
		}
	}
	for _, l := range r.layers {
		l.Close()
	}
	for _, c := range r.closers {
		c.Close()
	}
	if r.cache != nil {
		r.cache.Close()
	}
	os.RemoveAll(r.dir)
}

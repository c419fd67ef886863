package images

import (
	"archive/tar"
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/containerd/containerd/v2/core/mount"
)

// base returns the base layer, shared by all images, and the path of its
// blob, building it the first time.
func (b *Builder) base(ctx context.Context) (_ layer, blob string, err error) {
	dir := b.baseDir()
	ly, err := loadBase(dir)
	if err == nil {
		return ly, filepath.Join(dir, "blobs", "sha256", ly.Desc.Digest.Encoded()), nil
	}
	if err := clearEntry(dir, err, b.logf); err != nil {
		return layer{}, "", err
	}

	start := time.Now()
	tmp, err := b.tempDir("base")
	if err != nil {
		return layer{}, "", err
	}
	defer func() {
		if rerr := removeTemp(tmp); rerr != nil && err == nil {
			err = rerr
		}
	}()
	tree := filepath.Join(tmp, "rootfs")
	if err := b.makeBase(ctx, tree); err != nil {
		return layer{}, "", err
	}
	layout := filepath.Join(tmp, "layer")
	lw, err := newLayout(layout)
	if err != nil {
		return layer{}, "", err
	}
	b.logf("base: writing the base layer")
	if ly, err = lw.writeLayer(func(tw *tar.Writer) error { return writeTree(tw, tree) }); err != nil {
		return layer{}, "", fmt.Errorf("base layer from %s: %w", tree, err)
	}
	data, err := json.Marshal(ly)
	if err != nil {
		return layer{}, "", err
	}
	if err := os.WriteFile(filepath.Join(layout, baseFile), data, 0o644); err != nil {
		return layer{}, "", err
	}
	if err := publish(layout, dir); err != nil {
		return layer{}, "", err
	}
	b.logf("base: %d bytes, made in %v", ly.Desc.Size, time.Since(start).Round(time.Second))
	return ly, filepath.Join(dir, "blobs", "sha256", ly.Desc.Digest.Encoded()), nil
}

// loadBase reads the base layer cached in dir.
func loadBase(dir string) (layer, error) {
	var ly layer
	data, err := os.ReadFile(filepath.Join(dir, baseFile))
	if err != nil {
		return layer{}, err
	}
	if err := json.Unmarshal(data, &ly); err != nil {
		return layer{}, fmt.Errorf("%s: %w", filepath.Join(dir, baseFile), err)
	}
	return ly, checkBlob(dir, ly.Desc)
}

// debootstrap makes a minbase Debian tree at dir and tidies it into an
// image's base.
func (b *Builder) debootstrap(ctx context.Context, dir string) error {
	mirror := b.mirror
	if mirror == "" {
		var err error
		if mirror, err = aptMirror("/etc/apt", b.suite); err != nil {
			return err
		}
	}
	bin, err := ensureDebootstrap(ctx, b)
	if err != nil {
		return err
	}
	b.logf("base: debootstrap --variant=minbase %s from %s (a minute or so)", b.suite, mirror)
	out := &tailBuffer{max: 16 << 10}
	cmd := exec.CommandContext(ctx, bin, "--variant=minbase", b.suite, dir, mirror)
	cmd.Stdout, cmd.Stderr = out, out
	err = cmd.Run()
	// debootstrap mounts /proc and /sys in the tree while it works and
	// may leave them behind when it fails.
	if uerr := mount.UnmountRecursive(dir, 0); uerr != nil && err == nil {
		err = uerr
	}
	if err != nil {
		return fmt.Errorf("debootstrap %s from %s into %s: %w; it printed:\n%s", b.suite, mirror, dir, err, out)
	}
	return tidyBase(dir)
}

// ensureDebootstrap finds debootstrap, installing Debian's package when it
// is missing: the benchmark is meant to run on a fresh machine.
func ensureDebootstrap(ctx context.Context, b *Builder) (string, error) {
	if bin, err := exec.LookPath("debootstrap"); err == nil {
		return bin, nil
	}
	b.logf("base: installing debootstrap (apt-get install -y debootstrap)")
	install := func() error {
		cmd := exec.CommandContext(ctx, "apt-get", "install", "-y", "-q", "--no-install-recommends", "debootstrap")
		cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("apt-get install debootstrap: %w: %s", err, strings.TrimSpace(string(out)))
		}
		return nil
	}
	if err := install(); err != nil { // perhaps the package lists are missing
		if out, uerr := exec.CommandContext(ctx, "apt-get", "update", "-q").CombinedOutput(); uerr != nil {
			return "", fmt.Errorf("%w; apt-get update: %v: %s", err, uerr, strings.TrimSpace(string(out)))
		}
		if err := install(); err != nil {
			return "", err
		}
	}
	return exec.LookPath("debootstrap")
}

// tidyBase removes from a fresh debootstrap tree what belongs to the build
// host or to the build rather than to an image, as Debian's official images
// do: device nodes (a runtime makes /dev), the host's resolv.conf and
// hostname, downloaded packages and package lists, debootstrap's log.
func tidyBase(root string) error {
	for _, glob := range []string{
		"dev/*",
		"etc/resolv.conf", "etc/hostname",
		"var/cache/apt/archives/*.deb", "var/cache/apt/*.bin",
		"var/lib/apt/lists/*",
		"var/log/bootstrap.log",
	} {
		matches, err := filepath.Glob(filepath.Join(root, glob))
		if err != nil {
			return err
		}
		for _, m := range matches {
			if filepath.Base(m) == "partial" { // apt's download directories stay, as in a fresh install
				continue
			}
			if err := os.RemoveAll(m); err != nil {
				return fmt.Errorf("tidy base tree: %w", err)
			}
		}
	}
	return nil
}

// aptMirror returns the first Debian mirror that the apt sources under
// etcApt (sources.list, sources.list.d/*.list and *.sources) list for suite:
// the one this machine can reach.
func aptMirror(etcApt, suite string) (string, error) {
	files := []string{filepath.Join(etcApt, "sources.list")}
	for _, pattern := range []string{"*.list", "*.sources"} {
		m, _ := filepath.Glob(filepath.Join(etcApt, "sources.list.d", pattern))
		files = append(files, m...)
	}
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		var uri string
		if strings.HasSuffix(f, ".sources") {
			uri = deb822Mirror(string(data), suite)
		} else {
			uri = oneLineMirror(string(data), suite)
		}
		if uri != "" {
			return uri, nil
		}
	}
	return "", fmt.Errorf("no apt source under %s lists suite %s: pass the mirror (--mirror)", etcApt, suite)
}

// oneLineMirror reads the one-line format: "deb [options] uri suite component...".
func oneLineMirror(data, suite string) string {
	s := bufio.NewScanner(strings.NewReader(data))
	for s.Scan() {
		line, _, _ := strings.Cut(s.Text(), "#")
		fields := strings.Fields(line)
		if len(fields) < 3 || fields[0] != "deb" {
			continue
		}
		fields = fields[1:]
		if strings.HasPrefix(fields[0], "[") { // options, up to the closing bracket
			i := slices.IndexFunc(fields, func(f string) bool { return strings.HasSuffix(f, "]") })
			if i < 0 {
				continue
			}
			fields = fields[i+1:]
		}
		if len(fields) >= 2 && fields[1] == suite {
			return fields[0]
		}
	}
	return ""
}

// deb822Mirror reads the deb822 format: stanzas of "Field: value" lines.
func deb822Mirror(data, suite string) string {
	for _, stanza := range strings.Split(strings.ReplaceAll(data, "\r\n", "\n"), "\n\n") {
		fields := map[string]string{}
		for _, line := range strings.Split(stanza, "\n") {
			if strings.HasPrefix(line, "#") {
				continue
			}
			if k, v, ok := strings.Cut(line, ":"); ok && !strings.HasPrefix(k, " ") {
				fields[strings.ToLower(strings.TrimSpace(k))] = strings.TrimSpace(v)
			}
		}
		if strings.EqualFold(fields["enabled"], "no") ||
			!slices.Contains(strings.Fields(fields["types"]), "deb") ||
			!slices.Contains(strings.Fields(fields["suites"]), suite) {
			continue
		}
		if uris := strings.Fields(fields["uris"]); len(uris) > 0 {
			return uris[0]
		}
	}
	return ""
}

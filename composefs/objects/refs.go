package objects

import (
	"bufio"
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/containerd/log"
	"github.com/opencontainers/go-digest"
	"golang.org/x/sys/unix"
)

// A refs file is text: a header line, then one digest a line, sorted.
const refsHeader = "lazypull-refs 1"

const maxOwnerLen = 200

// validOwner checks an owner is a safe file name: it becomes refs/<owner>.
func validOwner(owner string) error {
	if owner == "" || len(owner) > maxOwnerLen || owner[0] == '.' {
		return fmt.Errorf("objects: owner %.100q: want 1 to %d characters, not starting with '.'", owner, maxOwnerLen)
	}
	for i := 0; i < len(owner); i++ {
		c := owner[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '.' || c == '_' || c == '-' || c == ':') {
			return fmt.Errorf("objects: owner %.100q: only letters, digits, '.', '_', '-' and ':'", owner)
		}
	}
	return nil
}

// writeRefs replaces refs/<owner> with the set, atomically: written whole
// to a temp file and synced, renamed into place, the directory synced. A
// crash leaves the old file or the new one, and perhaps a temp file, which
// GC removes. Unsynced (a Claim), a crash may also leave an empty file or
// none.
func (s *Store) writeRefs(owner string, set map[digest.Digest]struct{}, synced bool) error {
	var buf bytes.Buffer
	buf.WriteString(refsHeader + "\n")
	for _, d := range sortedDigests(set) {
		buf.WriteString(string(d))
		buf.WriteByte('\n')
	}
	f, err := os.CreateTemp(s.tmpDir(), "refs-")
	if err != nil {
		return fmt.Errorf("objects: refs of %q: %w", owner, err)
	}
	tmp := f.Name()
	_, err = f.Write(buf.Bytes())
	if err == nil && synced {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, filepath.Join(s.refsDir(), owner))
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("objects: refs of %q: %w", owner, err)
	}
	if !synced {
		return nil
	}
	return syncDir(s.refsDir())
}

// Claim records that owner names each of ds, present or yet to come, as a
// Batch that only Adds does, but leaves its refs file unsynced: for an
// owner that claims again whenever it is served (a lazily pulled layer,
// until it settles), for whom a crash costs a claim made again, never an
// object it counted on. Sync makes such claims durable. An fsync each
// would cost a lazy pull some 10-30 ms a layer, more while its fetches
// fill the page cache.
func (s *Store) Claim(ctx context.Context, owner string, ds []digest.Digest) error {
	// A batch for the lock it holds: no GC that read the old refs sweeps
	// what the new ones name.
	b, err := s.Batch(ctx, owner)
	if err != nil {
		return err
	}
	defer b.Abort()
	set := make(map[digest.Digest]struct{}, len(ds))
	for _, d := range ds {
		if _, err := parseDigest(d); err != nil {
			return err
		}
		set[d] = struct{}{}
	}
	return s.writeRefs(owner, set, false)
}

// Sync makes everything written to the store's filesystem durable
// (syncfs): Claims, and objects written by batches since their commit.
func (s *Store) Sync() error {
	if err := unix.Syncfs(int(s.rootDir.Fd())); err != nil {
		return fmt.Errorf("objects: syncfs %s: %w", s.root, err)
	}
	return nil
}

// Refs returns the digests owner names (fs.ErrNotExist if it has no
// refs).
func (s *Store) Refs(owner string) ([]digest.Digest, error) {
	if err := validOwner(owner); err != nil {
		return nil, err
	}
	var ds []digest.Digest
	err := s.readRefs(filepath.Join(s.refsDir(), owner), func(d digest.Digest, _ [32]byte) {
		ds = append(ds, d)
	})
	return ds, err
}

// Owners lists the owners that have refs.
func (s *Store) Owners() ([]string, error) {
	entries, err := os.ReadDir(s.refsDir())
	if err != nil {
		return nil, fmt.Errorf("objects: %w", err)
	}
	var owners []string
	for _, e := range entries {
		if validOwner(e.Name()) == nil && e.Type().IsRegular() {
			owners = append(owners, e.Name())
		}
	}
	return owners, nil
}

// readRefs parses a refs file, strictly: GC must not decide what is
// garbage from a file it does not understand.
func (s *Store) readRefs(path string, fn func(digest.Digest, [32]byte)) error {
	f, err := os.OpenFile(path, os.O_RDONLY|unix.O_NOFOLLOW, 0)
	if err != nil {
		return fmt.Errorf("objects: refs %s: %w", path, err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	line := 0
	for sc.Scan() {
		line++
		text := sc.Text()
		if line == 1 {
			if text != refsHeader {
				return fmt.Errorf("objects: refs %s: not a refs file (first line %.80q)", path, text)
			}
			continue
		}
		d := digest.Digest(text)
		enc, err := parseDigest(d)
		if err != nil {
			return fmt.Errorf("objects: refs %s line %d: %w", path, line, err)
		}
		var key [32]byte
		hex.Decode(key[:], []byte(enc))
		fn(d, key)
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("objects: refs %s: %w", path, err)
	}
	if line == 0 {
		return fmt.Errorf("objects: refs %s: empty, not a refs file", path)
	}
	return nil
}

// Release forgets owner's refs: the objects only it named become garbage
// for the next GC. Release an owner only when nothing mounts its metadata
// image any more. Releasing an owner without refs is no error.
func (s *Store) Release(owner string) error {
	if err := validOwner(owner); err != nil {
		return err
	}
	p := filepath.Join(s.refsDir(), owner)
	if err := os.Remove(p); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		return fmt.Errorf("objects: release %q: %w", owner, err)
	}
	return syncDir(s.refsDir())
}

// GCResult is what a GC removed.
type GCResult struct {
	Objects int   // objects no owner named
	Bytes   int64 // their content's size
	Temps   int   // temp files left by crashed writers
}

// GC removes every object no refs file names, and every temp file. It
// waits (until ctx is done) for open batches, in any process, to end, and
// holds new ones off while it runs. A refs file it cannot parse stops it
// before it removes anything.
func (s *Store) GC(ctx context.Context) (GCResult, error) {
	var res GCResult
	lock, err := s.lock(ctx, unix.LOCK_EX)
	if err != nil {
		return res, err
	}
	defer lock.Close()

	// Mark.
	live := make(map[[32]byte]struct{})
	owners, err := os.ReadDir(s.refsDir())
	if err != nil {
		return res, fmt.Errorf("objects: %w", err)
	}
	for _, e := range owners {
		p := filepath.Join(s.refsDir(), e.Name())
		if validOwner(e.Name()) != nil || !e.Type().IsRegular() {
			return res, fmt.Errorf("objects: %s: not a refs file; GC stops rather than guess what it keeps alive", p)
		}
		err := s.readRefs(p, func(_ digest.Digest, key [32]byte) { live[key] = struct{}{} })
		if errors.Is(err, fs.ErrNotExist) {
			continue // released since the listing (Release takes no lock)
		}
		if err != nil {
			return res, err
		}
	}

	// Sweep: nothing writes while the lock is held exclusively, so every
	// temp file is a crashed writer's.
	temps, err := os.ReadDir(s.tmpDir())
	if err != nil {
		return res, fmt.Errorf("objects: %w", err)
	}
	for _, e := range temps {
		p := filepath.Join(s.tmpDir(), e.Name())
		if err := os.RemoveAll(p); err != nil {
			return res, fmt.Errorf("objects: remove %s: %w", p, err)
		}
		res.Temps++
	}
	err = s.walkObjects(ctx, func(d digest.Digest, path string) error {
		var key [32]byte
		hex.Decode(key[:], []byte(strings.TrimPrefix(string(d), "sha256:")))
		if _, ok := live[key]; ok {
			return nil
		}
		var st unix.Stat_t
		if err := unix.Lstat(path, &st); err != nil {
			return fmt.Errorf("objects: stat %s: %w", path, err)
		}
		if err := os.Remove(path); err != nil {
			return fmt.Errorf("objects: remove object %s: %w", d, err)
		}
		res.Objects++
		res.Bytes += st.Size
		return nil
	})
	if err != nil {
		return res, err
	}
	log.G(ctx).WithField("root", s.root).WithField("objects", res.Objects).WithField("bytes", res.Bytes).WithField("temps", res.Temps).Debug("objects: gc")
	return res, nil
}

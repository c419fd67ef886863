package objects

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sync"

	"github.com/containerd/log"
	"github.com/opencontainers/go-digest"
	"golang.org/x/sys/unix"

	"github.com/lazypull/lazypull/composefs/verity"
)

// Adopt makes the regular file at path an object, without copying its
// content where it can. It reads the file once (SHA-256 and fs-verity);
// an object present already is pinned and neither it nor the file is
// touched. Otherwise, on the store's filesystem, the file's inode itself
// is hard-linked into place after it is made the store's (owned by the
// store's user, read-only, its xattrs replaced by the store's own): the
// file at path then is the object, so the caller must not change it (nor
// read its metadata again) and should only remove it. On another
// filesystem, or where the link is refused, the content is copied and
// the file left as it was.
//
// It is for a directory the caller owns and no one writes (an unpacked
// layer being converted): the content is not re-checked after it is read.
func (b *Batch) Adopt(path string) (Object, error) {
	return b.putFile(path, true)
}

// PutFile writes the regular file at path as an object, reading it first
// to learn its digest so that content present already is not written
// again. The file is left as it is.
func (b *Batch) PutFile(path string) (Object, error) {
	return b.putFile(path, false)
}

func (b *Batch) putFile(path string, link bool) (Object, error) {
	b.mu.Lock()
	if b.ended {
		b.mu.Unlock()
		return Object{}, fmt.Errorf("objects: add %s to the batch for %q: it has ended", path, b.owner)
	}
	b.open++ // Commit waits for this one too
	b.mu.Unlock()

	obj, dir, err := b.s.putFile(b, path, link)

	b.mu.Lock()
	defer b.mu.Unlock()
	b.open--
	if err != nil {
		return Object{}, err
	}
	b.pins[obj.Digest] = struct{}{}
	if dir != "" {
		b.dirs[dir] = struct{}{}
	}
	return obj, nil
}

// putFile does Adopt's and PutFile's work; dir is the fan-out directory
// renamed into, when an object was placed (for Commit's fsync).
func (s *Store) putFile(b *Batch, path string, link bool) (obj Object, dir string, err error) {
	f, err := os.OpenFile(path, os.O_RDONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return Object{}, "", fmt.Errorf("objects: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return Object{}, "", fmt.Errorf("objects: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return Object{}, "", fmt.Errorf("objects: %s: not a regular file (%s)", path, fi.Mode().Type())
	}
	obj.Info, err = hashFile(f)
	if err != nil {
		return Object{}, "", fmt.Errorf("objects: %s: %w", path, err)
	}
	if obj.Size != fi.Size() {
		return Object{}, "", fmt.Errorf("objects: %s: read %d bytes of %d: changed while read", path, obj.Size, fi.Size())
	}
	name, _ := Name(obj.Digest)
	final := filepath.Join(s.objectsDir(), name)
	if present(final, obj.Size) {
		return obj, "", nil
	}
	if link {
		placed, dir, err := s.link(b, f, obj, final)
		if err != nil {
			return Object{}, "", fmt.Errorf("objects: adopt %s as %s: %w", path, obj.Digest, err)
		}
		if placed != nil {
			return *placed, dir, nil
		}
	}
	// A copy: through a Writer, which checks the content against the
	// digest just taken (the file is read twice, written once).
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return Object{}, "", fmt.Errorf("objects: %s: %w", path, err)
	}
	w, err := b.Create()
	if err != nil {
		return Object{}, "", err
	}
	if _, err := w.ReadFrom(f); err != nil {
		w.Close()
		return Object{}, "", fmt.Errorf("objects: copy %s: %w", path, err)
	}
	o, err := w.Commit(obj.Digest)
	if err != nil {
		return Object{}, "", fmt.Errorf("objects: copy %s: %w", path, err)
	}
	return o, "", nil // the Writer told the batch of its directory
}

// hashers are reused: an fs-verity hash holds a 4 KiB block a tree level,
// which for a layer of many small files was most of what it allocated.
var hashers = sync.Pool{New: func() any { return &hasher{sha256.New(), verity.New()} }}

type hasher struct {
	sha hash.Hash
	v   *verity.Hash
}

// hashFile reads f to its end, taking the SHA-256 and fs-verity digests.
func hashFile(f *os.File) (Info, error) {
	h := hashers.Get().(*hasher)
	defer hashers.Put(h)
	sha, vh := h.sha, h.v
	sha.Reset()
	vh.Reset()
	bp := copyBufs.Get().(*[]byte)
	defer copyBufs.Put(bp)
	buf := *bp
	var size int64
	for {
		n, err := io.ReadFull(f, buf)
		sha.Write(buf[:n])
		vh.Write(buf[:n]) // whole 1 MiB reads: hashed in place
		size += int64(n)
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			break
		}
		if err != nil {
			return Info{}, err
		}
	}
	return Info{Digest: digest.NewDigest(digest.SHA256, sha), Size: size, Verity: vh.Digest()}, nil
}

// present tells whether an object is in place at final: a regular file
// of its size (anything else is damage that a new copy replaces).
func present(final string, size int64) bool {
	fi, err := os.Lstat(final)
	return err == nil && fi.Mode().IsRegular() && fi.Size() == size
}

// link hard-links f's inode into tmp/, makes it an object there (owner,
// mode, xattrs, durability, fs-verity) and renames it into place. A nil
// Object and no error means the link cannot be made here: copy instead.
func (s *Store) link(b *Batch, f *os.File, obj Object, final string) (*Object, string, error) {
	var rb [8]byte
	if _, err := rand.Read(rb[:]); err != nil {
		return nil, "", err
	}
	tmp := filepath.Join(s.tmpDir(), "adopt-"+hex.EncodeToString(rb[:]))
	// By descriptor: the inode just hashed, whatever the name now holds.
	err := unix.Linkat(int(f.Fd()), "", unix.AT_FDCWD, tmp, unix.AT_EMPTY_PATH)
	switch {
	case errors.Is(err, unix.EXDEV), errors.Is(err, unix.EPERM), errors.Is(err, unix.EMLINK), errors.Is(err, unix.EOPNOTSUPP):
		log.G(b.ctx).WithError(err).WithField("file", f.Name()).Debug("objects: cannot link the file into the store, copying it")
		return nil, "", nil
	case err != nil:
		return nil, "", fmt.Errorf("link into %s: %w", tmp, err)
	}
	placed := false
	defer func() {
		if !placed {
			os.Remove(tmp)
		}
	}()
	// The inode is the store's from here: what the file was (owner,
	// setuid, capabilities, a forged user.lazypull.verity) must not
	// stay on an object. Owner first: chown clears setuid bits and
	// security.capability anyway.
	if err := f.Chown(os.Geteuid(), os.Getegid()); err != nil {
		return nil, "", err
	}
	if err := removeXattrs(f); err != nil {
		return nil, "", err
	}
	if err := f.Chmod(objectMode); err != nil {
		return nil, "", err
	}
	if err := s.setVerityXattr(b.ctx, f, obj.Size, obj.Verity); err != nil {
		log.G(b.ctx).WithError(err).Warn("objects: recording an object's fs-verity digest")
	}
	if !s.opts.batchSync {
		if err := f.Sync(); err != nil {
			return nil, "", fmt.Errorf("fsync: %w", err)
		}
	}
	if s.Verity() != VerityUnsupported {
		s.enableVerity(b.ctx, tmp)
	}
	name, _ := Name(obj.Digest)
	dir := filepath.Join(s.objectsDir(), name[:2])
	err = place(tmp, final)
	if errors.Is(err, fs.ErrNotExist) {
		if err := os.Mkdir(dir, dirMode); err != nil && !errors.Is(err, fs.ErrExist) {
			return nil, "", err
		}
		err = place(tmp, final)
	}
	switch {
	case err == nil:
		placed = true
		obj.New = true
	case errors.Is(err, unix.EEXIST), errors.Is(err, fs.ErrExist):
		// Placed by another writer since present() looked.
		if !present(final, obj.Size) {
			log.G(b.ctx).WithField("path", final).WithField("size", obj.Size).Warn("objects: replacing a damaged object")
			if err := os.Rename(tmp, final); err != nil {
				return nil, "", fmt.Errorf("replace damaged %s: %w", final, err)
			}
			placed = true
			obj.New = true
		}
	default:
		return nil, "", fmt.Errorf("rename %s to %s: %w", tmp, final, err)
	}
	return &obj, dir, nil
}

// removeXattrs removes every xattr f has.
func removeXattrs(f *os.File) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var xerr error
	cerr := rc.Control(func(fd uintptr) {
		buf := make([]byte, 4096)
		for {
			n, err := unix.Flistxattr(int(fd), buf)
			if errors.Is(err, unix.ERANGE) {
				buf = make([]byte, 2*len(buf))
				continue
			}
			if errors.Is(err, unix.ENOTSUP) || errors.Is(err, unix.EOPNOTSUPP) {
				return
			}
			if err != nil {
				xerr = fmt.Errorf("list xattrs: %w", err)
				return
			}
			for _, name := range splitNames(buf[:n]) {
				if err := unix.Fremovexattr(int(fd), name); err != nil && !errors.Is(err, unix.ENODATA) {
					xerr = fmt.Errorf("remove xattr %s: %w", name, err)
					return
				}
			}
			return
		}
	})
	if cerr != nil {
		return cerr
	}
	return xerr
}

// splitNames splits listxattr's NUL-terminated names.
func splitNames(b []byte) []string {
	var names []string
	for len(b) > 0 {
		i := 0
		for i < len(b) && b[i] != 0 {
			i++
		}
		if i > 0 {
			names = append(names, string(b[:i]))
		}
		if i == len(b) {
			break
		}
		b = b[i+1:]
	}
	return names
}

// KernelVerity tells whether the kernel has fs-verity enabled on the
// object named d with the digest want (its content's, as Info.Verity):
// what overlayfs's verity=require checks at every open. A store on a
// filesystem without fs-verity answers false without opening anything.
func (s *Store) KernelVerity(d digest.Digest, want verity.Sum) (bool, error) {
	if s.Verity() != VerityEnabled {
		return false, nil
	}
	f, _, err := s.open(d)
	if err != nil {
		return false, err
	}
	defer f.Close()
	sum, err := s.opts.measure(f)
	if errors.Is(err, verity.ErrNoVerity) || errors.Is(err, verity.ErrNotSupported) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("objects: object %s: measure fs-verity: %w", d, err)
	}
	return sum == want, nil
}

package layer

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"sync"

	"github.com/containerd/log"
	"github.com/opencontainers/go-digest"

	"github.com/lazypull/lazypull/format"
	"github.com/lazypull/lazypull/metrics"
)

// Expect is what a layer's content must be, from its image: the digest
// of its uncompressed stream (the config's diff_id). containerd names
// snapshots by chain IDs made of diff_ids and gives a snapshot to every
// later image that names the same ones: a lazily mounted layer whose
// content is not its diff_id's would show one image's files in another's
// containers.
type Expect struct {
	DiffID digest.Digest
}

// Verification is where a layer's check against its image stands.
type Verification string

const (
	// NotVerified: the layer has no Expect, or fetches no background.
	NotVerified Verification = "not verified"
	// Verifying: the check waits for the layer's bytes.
	Verifying Verification = "verifying"
	// Verified: blob digest, diff_id and TOC agree with the tar.
	Verified Verification = "verified"
	// Rejected: they do not; the layer serves no more reads.
	Rejected Verification = "rejected"
)

// startVerify starts checking the layer against opts.Expect: every byte
// range fetched from now on (and the tail Open read) is also kept in a
// spool file; once the background fetch has brought the rest, verify
// fetches the missing ranges and checks the whole blob (format.Verify).
// A layer found wrong serves no more reads (EIO, and the reason in its
// Stats). A layer verified before (its marker in SpoolDir) is not again.
func (l *Layer) startVerify(tail []byte, tailOff int64) {
	e := l.opts.Expect
	if e.DiffID == "" {
		return
	}
	l.verifyDone = make(chan struct{})
	if l.verifiedBefore(e) {
		l.setVerification(Verified, nil)
		return
	}
	if reason, ok := l.rejectedBefore(e); ok {
		l.setVerification(Rejected, errors.New(reason))
		return
	}
	sp, err := newSpool(l.opts.SpoolDir, l.desc.Size)
	if err != nil {
		log.L.WithError(err).WithField("layer", l.desc.Digest).Warn("cannot keep the layer's bytes to verify it; it stays unverified")
		l.setVerification(NotVerified, nil)
		return
	}
	l.spool, l.verification = sp, Verifying
	sp.write(tailOff, tail)
}

// verify waits for the background fetch, completes the spool and checks
// it. It runs in the background fetch's goroutine.
func (l *Layer) verify(ctx context.Context) {
	sp, e := l.spool, l.opts.Expect
	if sp == nil {
		return
	}
	for _, gap := range sp.gaps() {
		for off := gap[0]; off < gap[1]; {
			n := min(gap[1]-off, 4<<20)
			buf := make([]byte, n)
			l.requests.Add(1)
			if err := l.fetcher.FetchAt(ctx, buf, off); err != nil {
				if ctx.Err() == nil {
					log.L.WithError(err).WithField("layer", l.desc.Digest).Warn("cannot fetch the layer's bytes to verify it; it stays unverified")
					l.setVerification(NotVerified, nil)
				}
				return
			}
			l.fetched.Add(n)
			sp.write(off, buf)
			off += n
		}
	}
	blob := io.NewSectionReader(sp.f, 0, l.desc.Size)
	compressed := l.desc.Digest.Algorithm().Digester()
	err := format.Verify(io.TeeReader(blob, compressed.Hash()), l.kind, l.blob.TOC(), e.DiffID)
	if err == nil && compressed.Digest() != l.desc.Digest {
		err = fmt.Errorf("the blob has digest %s, the manifest says %s", compressed.Digest(), l.desc.Digest)
	}
	if err != nil && !format.IsVerifyError(err) && ctx.Err() != nil {
		return
	}
	if err != nil {
		err = fmt.Errorf("layer %s is not the content its image names (diff_id %s): %w; it is not served", l.desc.Digest, e.DiffID, err)
		log.L.WithError(err).Error("rejected a lazily mounted layer")
		l.remember(e, "rejected", err.Error())
		metrics.LayerVerifications.WithLabelValues("rejected").Inc()
		l.setVerification(Rejected, err)
		return
	}
	l.remember(e, "verified", "")
	metrics.LayerVerifications.WithLabelValues("verified").Inc()
	l.setVerification(Verified, nil)
	log.L.WithField("layer", l.desc.Digest).WithField("diff_id", e.DiffID).Debug("layer verified against its image")
}

func (l *Layer) setVerification(v Verification, err error) {
	l.mu.Lock()
	l.verification = v
	if err != nil {
		l.rejected = err
		l.isRejected.Store(true)
	}
	done := l.verifyDone
	l.mu.Unlock()
	if err != nil {
		l.record(err)
	}
	if v != Verifying && done != nil {
		select {
		case <-done:
		default:
			close(done)
		}
	}
}

// Verification returns where the layer's check stands, and why it was
// rejected if it was.
func (l *Layer) Verification() (Verification, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.verification == "" {
		return NotVerified, nil
	}
	return l.verification, l.rejected
}

// Verified tells whether the layer was found to be its image's.
func (l *Layer) Verified() bool {
	v, _ := l.Verification()
	return v == Verified
}

// WaitVerified fetches the whole layer now and waits for its check (for
// sites that verify before first use). It fails if the layer is rejected
// or cannot be verified.
func (l *Layer) WaitVerified(ctx context.Context) error {
	l.mu.Lock()
	done := l.verifyDone
	l.mu.Unlock()
	if done == nil {
		return errors.New("the layer has no background fetch to verify it with")
	}
	select {
	case <-done:
	case <-ctx.Done():
		return ctx.Err()
	}
	switch v, err := l.Verification(); v {
	case Verified:
		return nil
	case Rejected:
		return err
	default:
		return fmt.Errorf("layer %s could not be verified (see its last error)", l.desc.Digest)
	}
}

// marker is the file a checked layer leaves under SpoolDir (kind is
// "verified" or "rejected"), so that opening it again (after a restart)
// neither fetches it again to check it nor serves a rejected layer until
// it is found wrong again.
func (l *Layer) marker(e Expect, kind string) string {
	if l.opts.SpoolDir == "" {
		return ""
	}
	sum := sha256.Sum256([]byte(l.desc.Digest.String() + " " + e.DiffID.String() + " " + l.blob.TOCDigest().String()))
	return filepath.Join(l.opts.SpoolDir, kind, hex.EncodeToString(sum[:]))
}

func (l *Layer) verifiedBefore(e Expect) bool {
	name := l.marker(e, "verified")
	if name == "" {
		return false
	}
	_, err := os.Stat(name)
	return err == nil
}

func (l *Layer) rejectedBefore(e Expect) (reason string, ok bool) {
	name := l.marker(e, "rejected")
	if name == "" {
		return "", false
	}
	data, err := os.ReadFile(name)
	return string(data), err == nil
}

func (l *Layer) remember(e Expect, kind, reason string) {
	name := l.marker(e, kind)
	if name == "" {
		return
	}
	if err := os.MkdirAll(filepath.Dir(name), 0o700); err == nil {
		err = os.WriteFile(name, []byte(reason), 0o600)
	}
}

// spool keeps the byte ranges of a blob as they are fetched, in an
// unlinked sparse file, until the whole blob can be checked.
type spool struct {
	f    *os.File
	size int64

	mu   sync.Mutex
	have [][2]int64 // sorted, disjoint, not touching
	err  error
}

func newSpool(dir string, size int64) (*spool, error) {
	if dir == "" {
		dir = os.TempDir()
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	f, err := os.CreateTemp(dir, "blob-*")
	if err != nil {
		return nil, err
	}
	os.Remove(f.Name()) // gone when closed, even after a crash
	return &spool{f: f, size: size}, nil
}

// write keeps p, the blob's bytes at off.
func (s *spool) write(off int64, p []byte) {
	if len(p) == 0 || off < 0 || off+int64(len(p)) > s.size {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.err != nil {
		return
	}
	if _, err := s.f.WriteAt(p, off); err != nil {
		s.err = err // a full disk: the check fetches the range again
		return
	}
	s.have = addRange(s.have, [2]int64{off, off + int64(len(p))})
}

// gaps are the ranges not written yet.
func (s *spool) gaps() [][2]int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out [][2]int64
	at := int64(0)
	for _, r := range s.have {
		if r[0] > at {
			out = append(out, [2]int64{at, r[0]})
		}
		at = r[1]
	}
	if at < s.size {
		out = append(out, [2]int64{at, s.size})
	}
	if s.err != nil {
		s.err, s.have = nil, nil
		return [][2]int64{{0, s.size}}
	}
	return out
}

func (s *spool) close() { s.f.Close() }

// addRange merges r into the sorted ranges rs.
func addRange(rs [][2]int64, r [2]int64) [][2]int64 {
	i, _ := slices.BinarySearchFunc(rs, r[0], func(x [2]int64, off int64) int {
		switch {
		case x[1] < off:
			return -1
		case x[0] > off:
			return 1
		}
		return 0
	})
	// rs[i:] end at or after r's start; merge those that touch r.
	j := i
	for j < len(rs) && rs[j][0] <= r[1] {
		r[0], r[1] = min(r[0], rs[j][0]), max(r[1], rs[j][1])
		j++
	}
	return slices.Replace(rs, i, j, r)
}

package erofs

import (
	"bytes"
	"flag"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
)

// fuzzSource hands out the fuzz input as small numbers; past its end,
// zeros.
type fuzzSource struct {
	b     []byte
	chaos bool // whether invalid and conflicting entries come up at all
}

func (s *fuzzSource) byte() byte {
	if len(s.b) == 0 {
		return 0
	}
	c := s.b[0]
	s.b = s.b[1:]
	return c
}

func (s *fuzzSource) n(max int) int { return int(s.byte()) % max }

func (s *fuzzSource) u16() int { return int(s.byte())<<8 | int(s.byte()) }

// Few names, so that parents, links and shared xattrs meet; the ones after
// the first eight are invalid and come rarely.
var fuzzNames = []string{"a", "b", "c", ".a", "-", "...", strings.Repeat("L", 255), "d", "", ".", "..", strings.Repeat("M", 256), "x\x00"}

// rare is true about once in 16 for a chaotic source, else never (most
// inputs should make a valid tree, to check what the writer writes).
func (s *fuzzSource) rare() bool { return s.n(16) == 0 && s.chaos }

func (s *fuzzSource) name() string {
	if s.rare() {
		return fuzzNames[8+s.n(len(fuzzNames)-8)]
	}
	return fuzzNames[s.n(8)]
}

// path is a random path: mostly a new name in a directory made so far
// (sometimes below a directory nobody adds), rarely anything; ok says it
// is the former.
func (s *fuzzSource) path(dirs []string, kinds map[string]uint32) (p string, ok bool) {
	if s.rare() {
		if s.rare() {
			return "", false
		}
		parts := []string{s.name()}
		for range s.n(3) {
			parts = append(parts, s.name())
		}
		return strings.Join(parts, "/"), false
	}
	p = join(dirs[s.n(len(dirs))], fuzzNames[s.n(8)])
	if k, seen := kinds[p]; s.n(8) == 0 && (!seen || k == sIFDIR) {
		kinds[p] = sIFDIR // made by the writer if not added
		p = join(p, fuzzNames[s.n(8)])
	}
	return p, true
}

var fuzzXattrNames = []string{"trusted.overlay.metacopy", "trusted.overlay.redirect", "security.capability", "user.a", "user.b", "system.posix_acl_access", "security.selinux", "trusted." + strings.Repeat("n", 247), "bogus.x", "user."}

var fuzzTypes = []uint32{sIFREG, sIFREG, sIFREG, sIFDIR, sIFDIR, sIFLNK, sIFCHR, sIFBLK, sIFIFO, sIFSOCK}

// fuzzEntries turns fuzz bytes into up to 64 entries, a few of them
// invalid or in conflict (duplicates, files as parents, links to nothing).
func fuzzEntries(data []byte) []Entry {
	s := &fuzzSource{b: data}
	s.chaos = s.n(4) == 0
	var es []Entry
	kinds := map[string]uint32{} // path → type, for directories to add to and files to link to
	dirs := []string{""}
	var files []string
	for range s.n(64) + 1 {
		if len(s.b) == 0 {
			break
		}
		p, valid := s.path(dirs, kinds)
		if _, dup := kinds[p]; dup && !s.rare() {
			continue
		}
		e := Entry{Path: p}
		if len(files) > 0 && s.n(8) == 0 {
			e.Link = files[s.n(len(files))]
			if s.rare() {
				e.Link, _ = s.path(dirs, kinds)
			}
			kinds[p] = sIFREG
			es = append(es, e)
			continue
		}
		e.Mode = fuzzTypes[s.n(len(fuzzTypes))] | uint32(s.u16())&0o7777
		if e.Path == "" && !s.rare() {
			e.Mode = sIFDIR | e.Mode&0o7777
		}
		if s.rare() {
			e.Mode = uint32(s.u16()) << s.n(3)
		}
		e.UID = uint32(s.byte()) << (8 * uint(s.n(4)))
		e.GID = uint32(s.byte())
		e.Mtime = 1700000000 + int64(s.n(3)) - 1
		if s.rare() {
			e.Mtime = -int64(s.u16()) << 16
		}
		e.MtimeNsec = uint32(s.n(3)) * 333333333
		if _, dup := kinds[p]; !dup {
			kinds[p] = e.Mode & sIFMT
			if valid && e.Mode&sIFMT == sIFDIR {
				dirs = append(dirs, p)
			}
			if valid && e.Mode&sIFMT == sIFREG {
				files = append(files, p)
			}
		}
		switch e.Mode & sIFMT {
		case sIFREG:
			e.Size = uint64(s.u16()) << (s.n(6) * 10)
			if s.n(3) == 0 {
				e.Size = uint64(s.u16() % 9000)
				e.Data = bytes.Repeat([]byte{s.byte()}, int(e.Size))
			}
		case sIFLNK:
			e.Target = strings.Repeat("t", 1+s.u16()%4095)
			if s.rare() {
				e.Target = strings.Repeat("u", s.u16()%5000)
			}
		case sIFCHR, sIFBLK:
			e.DevMajor, e.DevMinor = uint32(s.u16()%4096), uint32(s.u16())<<s.n(5)
		}
		for range s.n(4) {
			if e.Xattrs == nil {
				e.Xattrs = map[string][]byte{}
			}
			name := fuzzXattrNames[s.n(8)]
			if s.rare() {
				name = fuzzXattrNames[8+s.n(2)]
			}
			size := s.n(8)
			if s.n(4) == 0 {
				size = s.u16()
			}
			e.Xattrs[name] = bytes.Repeat([]byte{'v'}, size)
			if name == "system.posix_acl_access" && !s.rare() {
				e.Xattrs[name] = validACL()
			}
		}
		es = append(es, e)
	}
	if s.n(2) == 0 {
		slices.Reverse(es) // children before parents
	}
	return es
}

// FuzzWrite writes random entry sets: the writer must never panic, and an
// image it writes must read back (go-erofs) as the entries it accepted.
func FuzzWrite(f *testing.F) {
	// Pseudo-random inputs of several sizes make trees of a few to 64
	// entries, a quarter of them with invalid or conflicting entries.
	for i := range 24 {
		r := rand.New(rand.NewPCG(uint64(i), 7))
		seed := make([]byte, 200+i*150)
		for j := range seed {
			seed[j] = byte(r.Uint32())
		}
		f.Add(seed)
	}
	fuzzing := flag.Lookup("test.fuzz").Value.String() != ""
	f.Fuzz(func(t *testing.T, data []byte) {
		var accepted []Entry
		w := NewWriter()
		for _, e := range fuzzEntries(data) {
			if err := w.Add(e); err == nil {
				accepted = append(accepted, e)
			}
		}
		var buf bytes.Buffer
		if _, err := w.WriteTo(&buf); err != nil {
			return
		}
		checkWithGoErofs(t, buf.Bytes(), accepted)
		if !fuzzing {
			imgPath := saveImage(t, buf.Bytes())
			checkWithErofsUtils(t, imgPath)
			checkKernel(t, imgPath, accepted)
		}
	})
}

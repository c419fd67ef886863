package toc

import (
	"archive/tar"
	"strings"
	"time"
)

// JSON is the TOC document as both formats store it: eStargz in the
// stargz.index.json tar member, zstd:chunked in its manifest frame. The
// schema is CRFS's, which both adopted.
type JSON struct {
	Version int         `json:"version"`
	Entries []WireEntry `json:"entries"`
}

// WireEntry is one TOC entry as stored. Regular files larger than a chunk
// are followed by "chunk" entries of the same name.
type WireEntry struct {
	Name        string            `json:"name"`
	Type        Type              `json:"type"`
	Size        int64             `json:"size,omitempty"`
	ModTime     string            `json:"modtime,omitempty"` // RFC 3339
	AccessTime  string            `json:"accesstime,omitempty"`
	ChangeTime  string            `json:"changetime,omitempty"`
	LinkName    string            `json:"linkName,omitempty"`
	Mode        int64             `json:"mode,omitempty"`
	UID         int               `json:"uid,omitempty"`
	GID         int               `json:"gid,omitempty"`
	UserName    string            `json:"userName,omitempty"`
	GroupName   string            `json:"groupName,omitempty"`
	DevMajor    int               `json:"devMajor,omitempty"`
	DevMinor    int               `json:"devMinor,omitempty"`
	Xattrs      map[string][]byte `json:"xattrs,omitempty"`
	Digest      string            `json:"digest,omitempty"`
	Offset      int64             `json:"offset,omitempty"`
	EndOffset   int64             `json:"endOffset,omitempty"` // zstd:chunked
	ChunkOffset int64             `json:"chunkOffset,omitempty"`
	ChunkSize   int64             `json:"chunkSize,omitempty"`
	ChunkDigest string            `json:"chunkDigest,omitempty"`
	ChunkType   string            `json:"chunkType,omitempty"`   // zstd:chunked: "" data, "zeros" a hole
	InnerOffset int64             `json:"innerOffset,omitempty"` // eStargz
}

// ChunkTypeZeros marks a zstd:chunked chunk that is all zeros and has no
// data in the blob.
const ChunkTypeZeros = "zeros"

// xattrPAXPrefix is how tar stores extended attributes in PAX records.
const xattrPAXPrefix = "SCHILY.xattr."

// EntryFromTar describes a tar header as a TOC entry, without any of the
// placement fields (offsets, chunks, digests) that the writer fills in.
// It returns false for tar members that are not files (PAX globals).
func EntryFromTar(h *tar.Header) (WireEntry, bool) {
	e := WireEntry{
		Name:      CleanTarName(h.Name),
		Mode:      h.Mode & 0o7777,
		UID:       h.Uid,
		GID:       h.Gid,
		UserName:  h.Uname,
		GroupName: h.Gname,
	}
	if !h.ModTime.IsZero() {
		e.ModTime = h.ModTime.UTC().Format(time.RFC3339)
	}
	switch h.Typeflag {
	case tar.TypeDir:
		e.Type = TypeDir
	case tar.TypeReg, tar.TypeRegA, tar.TypeGNUSparse:
		e.Type = TypeReg
		e.Size = h.Size
	case tar.TypeSymlink:
		e.Type = TypeSymlink
		e.LinkName = h.Linkname
	case tar.TypeLink:
		e.Type = TypeHardlink
		e.LinkName = CleanTarName(h.Linkname)
	case tar.TypeChar:
		e.Type = TypeChar
		e.DevMajor, e.DevMinor = int(h.Devmajor), int(h.Devminor)
	case tar.TypeBlock:
		e.Type = TypeBlock
		e.DevMajor, e.DevMinor = int(h.Devmajor), int(h.Devminor)
	case tar.TypeFifo:
		e.Type = TypeFifo
	default:
		return WireEntry{}, false
	}
	for k, v := range h.PAXRecords {
		if name, ok := strings.CutPrefix(k, xattrPAXPrefix); ok {
			if e.Xattrs == nil {
				e.Xattrs = make(map[string][]byte)
			}
			e.Xattrs[name] = []byte(v)
		}
	}
	return e, true
}

// CleanTarName turns a tar member name into a TOC name: no leading "./" or
// "/", no trailing slash. It does not confine the name: Parse does.
func CleanTarName(name string) string {
	for {
		switch {
		case strings.HasPrefix(name, "./"):
			name = name[2:]
		case strings.HasPrefix(name, "/"):
			name = name[1:]
		default:
			name = strings.TrimRight(name, "/")
			if name == "." {
				return ""
			}
			return name
		}
	}
}

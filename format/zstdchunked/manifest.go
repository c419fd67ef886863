package zstdchunked

import (
	"bytes"
	stdjson "encoding/json"
	"fmt"

	"github.com/go-json-experiment/json"

	"github.com/lazypull/lazypull/format/toc"
)

// decompressManifest decompresses the manifest, which must be exactly
// uncompressedLength bytes.
func decompressManifest(compressed []byte, uncompressedLength int64) ([]byte, error) {
	data, sized, err := decodeSized(nil, compressed, uncompressedLength, true)
	if err == nil && !sized {
		data, err = decodePrefix(anyWindowDecoders, nil, bytes.NewReader(compressed), uncompressedLength, true, contentSizeHint(compressed))
	}
	if err != nil {
		return nil, fmt.Errorf("manifest: %w", err)
	}
	return data, nil
}

// parseManifest parses a manifest with toc.Parse. A manifest that
// toc.Parse refuses may be one of containers/storage's: it is parsed again
// as normalizeManifest rewrites it. (Rewriting every manifest first would
// decode each twice; ours and stargz-snapshotter's never need it.)
func parseManifest(data []byte, dataEnd int64, limits toc.Limits) (*toc.TOC, error) {
	t, err := toc.Parse(data, dataEnd, limits)
	if err == nil {
		return t, nil
	}
	normalized, changed, nerr := normalizeManifest(data)
	if nerr != nil || !changed {
		return nil, err
	}
	return toc.Parse(normalized, dataEnd, limits)
}

// Manifest versions: containers/storage marks manifests of layers without
// tar-split, whose tar is rebuilt in a canonical form, as version 2. The
// entries are the same, so a reader of files takes both.
const (
	manifestVersion          = 1
	manifestVersionCanonical = 2
)

// normalizeManifest rewrites what containers/storage's writer puts in a
// manifest differently from what format/toc expects, and tells whether
// anything needed it:
//
//   - version 2 (see manifestVersionCanonical) becomes 1;
//   - a file stored as one chunk carries only its file digest, which is
//     also its chunk digest;
//   - a file stored as several chunks has, on its first entry, the end of
//     its last chunk, and no ends on its chunk entries, whose frames follow
//     one another: each chunk ends where the next begins.
func normalizeManifest(data []byte) ([]byte, bool, error) {
	// Decode as toc.Parse will (same library, same strictness), so that
	// the rewrite cannot read a document differently from it.
	var doc toc.JSON
	if err := json.Unmarshal(data, &doc); err != nil {
		return nil, false, fmt.Errorf("manifest is not valid JSON: %w", err)
	}
	changed := false
	if doc.Version == manifestVersionCanonical {
		doc.Version = manifestVersion
		changed = true
	}
	es := doc.Entries
	for i := 0; i < len(es); i++ {
		if es[i].Type != toc.TypeReg {
			continue
		}
		n := 1 // entries of this file: the reg entry and its chunks
		for i+n < len(es) && es[i+n].Type == toc.TypeChunk {
			n++
		}
		file := es[i : i+n]
		i += n - 1
		if n == 1 {
			if file[0].ChunkDigest == "" && file[0].Digest != "" && file[0].Size > 0 {
				file[0].ChunkDigest = file[0].Digest
				changed = true
			}
			continue
		}
		if fillChunkEnds(file) {
			changed = true
		}
	}
	if !changed {
		return data, false, nil
	}
	out, err := stdjson.Marshal(doc) // omits zero fields, as the writers do
	return out, err == nil, err
}

// fillChunkEnds sets the ends of a file's chunks stored the
// containers/storage way (see normalizeManifest), and tells whether it
// did. Anything else it leaves for toc.Parse to judge.
func fillChunkEnds(file []toc.WireEntry) bool {
	fileEnd := file[0].EndOffset
	if fileEnd == 0 {
		return false
	}
	for j, c := range file {
		if j > 0 && c.EndOffset != 0 {
			return false
		}
		if j > 0 && c.Offset <= file[j-1].Offset {
			return false
		}
	}
	if fileEnd <= file[len(file)-1].Offset {
		return false
	}
	for j := range file {
		if j+1 < len(file) {
			file[j].EndOffset = file[j+1].Offset
		} else {
			file[j].EndOffset = fileEnd
		}
	}
	return true
}

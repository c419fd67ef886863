package testenv

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"

	"github.com/opencontainers/go-digest"

	"github.com/lazypull/lazypull/format/estargz"
	"github.com/lazypull/lazypull/format/toc"
)

// ForgeTOC replaces the TOC of an eStargz layer with edit's version of it,
// keeping the file data and the footer (the TOC starts where it did), and
// describes the result truthfully: its digest, TOC digest and diff_id are
// those of the forged blob, as an attacker would make them.
func ForgeTOC(l Layer, edit func(*toc.JSON)) (Layer, error) {
	tocOffset, err := strconv.ParseInt(l.Desc.Annotations[estargz.TOCOffsetAnnotation], 10, 64)
	if err != nil {
		return Layer{}, fmt.Errorf("forge a TOC: %w", err)
	}
	footer := l.Blob[len(l.Blob)-estargz.FooterSize:]
	doc, err := ReadTOC(l)
	if err != nil {
		return Layer{}, err
	}
	edit(&doc)
	tocJSON, err := json.Marshal(doc)
	if err != nil {
		return Layer{}, err
	}
	var member bytes.Buffer
	zw := gzip.NewWriter(&member)
	tw := tar.NewWriter(zw)
	tw.WriteHeader(&tar.Header{Name: estargz.TOCTarName, Typeflag: tar.TypeReg, Mode: 0o644, Size: int64(len(tocJSON))})
	tw.Write(tocJSON)
	if err := errors.Join(tw.Close(), zw.Close()); err != nil {
		return Layer{}, err
	}
	blob := append(append(append([]byte(nil), l.Blob[:tocOffset]...), member.Bytes()...), footer...)
	diffID, size, err := DiffIDOf(blob)
	if err != nil {
		return Layer{}, err
	}
	forged := Layer{Blob: blob, DiffID: diffID, Desc: l.Desc}
	forged.Desc.Digest, forged.Desc.Size = digest.FromBytes(blob), int64(len(blob))
	forged.Desc.Annotations = map[string]string{
		estargz.TOCDigestAnnotation:        digest.FromBytes(tocJSON).String(),
		estargz.UncompressedSizeAnnotation: strconv.FormatInt(size, 10),
		estargz.TOCOffsetAnnotation:        strconv.FormatInt(tocOffset, 10),
	}
	return forged, nil
}

// ReadTOC decodes the TOC of an eStargz layer our writer made.
func ReadTOC(l Layer) (toc.JSON, error) {
	var doc toc.JSON
	tocOffset, err := strconv.ParseInt(l.Desc.Annotations[estargz.TOCOffsetAnnotation], 10, 64)
	if err != nil {
		return doc, fmt.Errorf("read a TOC: %w", err)
	}
	zr, err := gzip.NewReader(bytes.NewReader(l.Blob[tocOffset : len(l.Blob)-estargz.FooterSize]))
	if err != nil {
		return doc, err
	}
	tr := tar.NewReader(zr)
	if h, err := tr.Next(); err != nil || h.Name != estargz.TOCTarName {
		return doc, fmt.Errorf("the TOC member: %v", err)
	}
	err = json.NewDecoder(tr).Decode(&doc)
	return doc, err
}

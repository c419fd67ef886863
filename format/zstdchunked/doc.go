// Package zstdchunked reads and writes zstd:chunked layers, the lazily
// pullable format of containers/storage (podman, CRI-O) that
// stargz-snapshotter also reads and writes.
//
// A zstd:chunked blob is a zstd-compressed tar in which every regular file's
// content, or every chunk of it, is a zstd frame of its own, so that one
// file can be fetched with a Range request and decompressed alone. After the
// tar come zstd skippable frames, which plain decoders ignore: the table of
// contents (the "manifest", CRFS JSON compressed with zstd), optionally
// tar-split data, and a footer that says where the manifest is. The layer
// descriptor repeats the manifest's position in an annotation, with the
// digest of the compressed manifest.
//
//	[frame: tar headers][frame: file 1 chunk 1][frame: file 1 chunk 2]…[frame: padding, tar end]
//	[skippable: zstd(manifest JSON)][skippable: tar-split]?[skippable: footer]
//
// Two writers made the format, and their blobs differ: stargz-snapshotter
// writes a 40-byte footer ("GnUlInUx") and annotates the layer as eStargz
// too (the digest of the manifest JSON); containers/storage writes a
// 64-byte footer ("GNUlInUx"), tar-split data, and the annotations under
// io.github.containers. Open reads both. Writer writes what both read: the
// 40-byte footer (containers/storage places everything by annotations,
// never by the footer) and tar-split data, with either writer's
// annotations (Result).
//
// Open reads a blob's manifest and hands it to format/toc, which checks it;
// File reads one file's chunks and verifies each against its digest before
// returning any of its bytes. Writer converts an uncompressed tar, compressing
// frames on every core while its output stays byte-for-byte deterministic.
//
// This package knows the bytes of one blob and nothing around it: it imports
// only format/toc of lazypull, and knows no registry, cache or FUSE. Callers
// hand it an io.ReaderAt (a file, or ranged reads of a registry blob).
package zstdchunked

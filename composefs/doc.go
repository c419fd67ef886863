// Package composefs is lazypull's composefs mode: each layer a read-only
// EROFS image holding only metadata, whose regular files point (through
// overlayfs's trusted.overlay.metacopy and trusted.overlay.redirect xattrs)
// into one node-wide, content-addressed object directory; containers get an
// overlay with the layers' images as lower layers and the object directory
// as a data-only lower (`lowerdir=metaN:…:meta1::objects`, kernel ≥ 6.5;
// the verity= option Overlay names, ≥ 6.6; MountAt's lowerdir+ and datadir+
// for stacks too deep for mount(2), ≥ 6.8).
//
// This package mounts and unmounts metadata images (file-backed EROFS,
// else a read-only loop device), builds the overlay mount a snapshotter
// hands to containerd, and decides its fs-verity policy (verity=require
// only when every object has fs-verity). The images themselves are written
// by composefs/erofs, the objects kept by composefs/objects, their digests
// computed by composefs/verity.
//
// It must not know registries, TOC formats or snapshot metadata: it is
// given paths to images, mountpoints and directories.
package composefs

// Package runner is the benchmark behind issue 6: it measures how soon a
// container on a cold node does its first useful work, for each image and
// scenario (containerd's overlayfs with a full pull, lazypull with eStargz,
// lazypull with zstd:chunked, lazypull's composefs mode with a full pull),
// through a shaped link, N times each, and writes the raw results as JSON,
// a markdown table and a PNG chart. With all the images on one node it also
// measures the disk and page cache each snapshotter uses (Footprint).
//
// It drives the real stack that internal/testenv starts (registry,
// lazypull-snapshotter with its FUSE manager, containerd) from the outside,
// through the same commands a user types (ctr, lazypull), and puts
// internal/regproxy between every registry client and the registry.
//
// It must not know how images are built (it takes OCI layouts; the command
// asks bench/images for them) nor how lazypull works inside: it sees only
// processes, commands, the proxy's counters and /proc.
package runner

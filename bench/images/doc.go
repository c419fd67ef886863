// Package images builds the benchmark's images from real Debian software.
//
// Each image is an OCI image layout with two layers: a base layer made by
// `debootstrap --variant=minbase` and an application layer, either what
// `apt-get install` adds in a chroot (python, gcc, java) or incompressible
// data from a seeded generator (data). Each image's command is a short
// workload that prints one line (Image.Ready) once it has done its first
// useful work, which is what the benchmark times.
//
// Builds take minutes, so results live in a cache directory keyed by the
// recipe; a repeated build returns the cached layout.
//
// It knows Debian's tools, overlayfs and the OCI image layout. It must not
// know registries, containerd, lazypull's layer formats or how the benchmark
// runs and times the images: those take the layout it returns.
package images

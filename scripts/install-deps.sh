#!/usr/bin/env bash
# Installs what lazypull's demo and tests run against, from Debian's
# packages, when it is missing, and fetches the Go modules. Safe to re-run.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
have() { command -v "$1" >/dev/null 2>&1; }
have containerd      || missing+=(containerd)
have ctr             || missing+=(containerd)
have runc            || missing+=(runc)
have docker-registry || missing+=(docker-registry)
have skopeo          || missing+=(skopeo)
have fusermount3     || missing+=(fuse3)
# Independent checks in the tests: the zstd command decompresses our
# zstd:chunked blobs; a JVM runs the class file the java image starts.
have zstd            || missing+=(zstd)
have java            || missing+=(default-jre-headless)
# The composefs mode's independent oracles: fsck.erofs/dump.erofs check the
# EROFS images we write; fsverity computes fs-verity digests in user space.
have fsck.erofs      || missing+=(erofs-utils)
have fsverity        || missing+=(fsverity)
# containers/storage, which format/interop tests against, builds its btrfs
# driver with cgo.
[[ -e /usr/include/btrfs/ioctl.h ]] || missing+=(libbtrfs-dev)
# The rootless test runs containerd in containerd's rootless recipe:
# rootlesskit makes the user namespace, uidmap maps the user's subuids.
have rootlesskit     || missing+=(rootlesskit)
have newuidmap       || missing+=(uidmap)
# systemd-analyze checks the units under deploy/systemd.
have systemd-analyze || missing+=(systemd)

if ((${#missing[@]})); then
	if [[ $(id -u) != 0 ]]; then
		echo "install-deps: missing ${missing[*]}; run as root (or: sudo apt-get install -y ${missing[*]})" >&2
		exit 1
	fi
	echo "install-deps: installing ${missing[*]}"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# FUSE and overlayfs are in the kernel here; make sure /dev/fuse exists.
if [[ ! -e /dev/fuse && $(id -u) == 0 ]]; then
	modprobe fuse 2>/dev/null || true
	[[ -e /dev/fuse ]] || mknod -m 0666 /dev/fuse c 10 229
fi

# containerd 2.x: Debian 12 has only 1.6, which is out of support. The e2e
# suite, the demo and the benchmark also run against 2.x, built from its Go
# module once (about 2 minutes on 2 cores) and kept in a cache outside the
# tree. internal/testenv (Containerd2Version) looks for it there.
CONTAINERD2_VERSION=v2.2.9
containerd2=/var/cache/lazypull/containerd-$CONTAINERD2_VERSION
# Stamped with its version as containerd's release builds are (a bare
# module build says "+unknown"); the check below rebuilds anything else.
if [[ ! -x $containerd2/bin/ctr || ! -x $containerd2/bin/containerd-shim-runc-v2 ||
	$("$containerd2/bin/containerd" --version 2>/dev/null) != *" $CONTAINERD2_VERSION "* ]]; then
	echo "install-deps: building containerd $CONTAINERD2_VERSION into $containerd2/bin"
	mkdir -p "$(dirname "$containerd2")"
	# Into a temporary directory first: an interrupted build leaves no
	# half-filled cache that the check above would take as done.
	tmp=$(mktemp -d "$containerd2.XXXXXX")
	trap 'rm -rf "$tmp"' EXIT
	GOBIN=$tmp/bin go install -tags "no_btrfs no_devmapper no_zfs" \
		-ldflags "-X github.com/containerd/containerd/v2/version.Version=$CONTAINERD2_VERSION" \
		"github.com/containerd/containerd/v2/cmd/containerd@$CONTAINERD2_VERSION" \
		"github.com/containerd/containerd/v2/cmd/ctr@$CONTAINERD2_VERSION" \
		"github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2@$CONTAINERD2_VERSION"
	rm -rf "$containerd2"
	chmod 755 "$tmp"
	# -T: never into a directory that a concurrent run put there meanwhile.
	mv -T "$tmp" "$containerd2" || echo "install-deps: keeping the $containerd2 that another run built meanwhile"
fi

go mod download

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

go mod download

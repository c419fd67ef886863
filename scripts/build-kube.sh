#!/usr/bin/env bash
# Builds a real kube-apiserver and a one-member etcd from their Go modules
# into /var/cache/lazypull/kube-$KUBE_VERSION/bin, for the tests tagged
# `apiserver` (make test-kube). Not part of `make test`: a cold build
# downloads about 1.8 GB of modules and takes 10-20 minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
KUBE_VERSION=v1.37.2
bin=/var/cache/lazypull/kube-$KUBE_VERSION/bin
if [[ -x $bin/kube-apiserver && -x $bin/etcd && $("$bin/kube-apiserver" --version 2>/dev/null) == "Kubernetes $KUBE_VERSION" ]]; then
	exit 0
fi
echo "build-kube: building kube-apiserver $KUBE_VERSION and etcd into $bin"
mkdir -p "$bin"
tmp=$(mktemp -d "$bin.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
minor=${KUBE_VERSION#v1.}; minor=${minor%%.*}
(cd internal/testenv/kube/etcd && go build -trimpath -o "$tmp/etcd" .)
(cd internal/testenv/kube/apiserver && go build -trimpath -o "$tmp/kube-apiserver" \
	-ldflags "-X k8s.io/component-base/version.gitVersion=$KUBE_VERSION -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$minor" .)
mv "$tmp/etcd" "$tmp/kube-apiserver" "$bin/"

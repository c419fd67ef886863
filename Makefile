# lazypull: `make demo` shows it working, `make test` runs every test.
GO      ?= go
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -X github.com/lazypull/lazypull/version.Version=$(VERSION)
export PATH := /usr/local/go/bin:$(PATH)

.PHONY: all build deps demo test test-kube fuzz bench bench-images incumbent vet clean

all: build

# bin/lazypull and bin/lazypull-snapshotter
build:
	$(GO) build -ldflags '$(LDFLAGS)' -o bin/ ./cmd/...

deps:
	./scripts/install-deps.sh

# Starts a registry, containerd and our daemon under a temporary root, runs a
# container through lazypull, prints what happened and tears it all down.
demo: deps build
	$(GO) run ./bench/demo

# The whole suite: unit, conformance (containerd's snapshotter suite),
# daemon and end-to-end tests. Needs root; CI=true turns skips into failures.
# First, no tracked file over 1 MiB outside a testdata/ directory: a build
# output committed by mistake (a 23 MB binary was, once) fails here.
test: deps
	@big=$$(git ls-files -z | xargs -0 -r stat --printf '%s\t%n\n' 2>/dev/null | \
		awk -F'\t' '$$1 > 1048576 && $$2 !~ /(^|\/)testdata\//'); \
	if [ -n "$$big" ]; then \
		echo "make test: tracked files over 1 MiB outside testdata/ (bytes, path); a build output? git rm --cached it and ignore it; test data goes under testdata/:" >&2; \
		echo "$$big" >&2; exit 1; \
	fi
	$(GO) vet ./...
	cd bench/incumbent && $(GO) vet ./...
	$(GO) test -count=1 -timeout 30m ./...
	$(MAKE) fuzz FUZZTIME=10000x

# The tests that need a real Kubernetes API server (the kubeconfig
# keychain), built from Go modules by scripts/build-kube.sh: 10-20 minutes
# and about 1.8 GB of modules the first time, hence not in `make test`.
test-kube: deps
	./scripts/build-kube.sh
	$(GO) test -count=1 -tags apiserver -run 'TestKubeconfigKeychain' ./test/e2e

# A short run of every fuzz target over untrusted input (the parsers of
# TOCs, footers and chunks); the corpus in testdata/fuzz runs in `go test`.
# Budgets are counts of inputs, not durations: Go 1.26's coordinator can report
# its own -fuzztime deadline as a failure (golang/go#75804, fixed in 1.27), and a
# count also does the same work on a loaded CI machine as on a fast one.
FUZZTIME ?= 100000x
FUZZ_TARGETS = ./format/toc:FuzzParse ./format/estargz:FuzzOpen ./format/estargz:FuzzParseFooter \
	./format/zstdchunked:FuzzOpen ./format/zstdchunked:FuzzReadChunk ./format:FuzzAnnotations ./elfdeps:FuzzRead \
	./convert:FuzzConvertLayer ./layer:FuzzLayerRead ./mounter:FuzzTargetFromLabels \
	./composefs/objects:FuzzName ./profile:FuzzParse ./remote:FuzzLookupDockerConfigJSON
fuzz:
	@for t in $(FUZZ_TARGETS); do \
		pkg=$${t%%:*}; name=$${t##*:}; \
		$(GO) test $$pkg -run '^$$' -fuzz "^$$name$$" -fuzztime $(FUZZTIME) || exit 1; \
	done

# Benchmarks, each reporting its ratio to a baseline measured in the same run.
bench:
	$(GO) test -run '^$$' -bench . -benchtime 3s ./...

# Time to first output of real images (python, gcc, java, and a 1 GiB data
# image) through a 20 ms, 100 Mbit/s link: containerd's overlayfs full pull
# against lazypull (eStargz without and with a workload profile, and
# zstd:chunked) and stargz-snapshotter, the incumbent (on the same eStargz
# image, and on one optimized for the workload as ctr-remote does it).
# Builds the images from Debian packages the first time (cached).
# Results: bench/results/<time>/{results.md,totals.png,results.json}.
BENCH_RUNS ?= 5
BENCH_IMAGES ?= python,gcc,java,data
BENCH_SCENARIOS ?= overlayfs,lazypull-estargz,lazypull-estargz-profiled,lazypull-zstd,bench/scenarios/stargz-snapshotter.toml,bench/scenarios/stargz-snapshotter-optimized.toml
bench-images: deps build incumbent
	PATH="$(CURDIR)/bin:$$PATH" $(GO) run ./bench/cmd/bench -n $(BENCH_RUNS) --images $(BENCH_IMAGES) --scenarios $(BENCH_SCENARIOS)

# bin/containerd-stargz-grpc: stargz-snapshotter's daemon, built from its
# library module (bench/incumbent), for the side-by-side scenarios.
incumbent:
	cd bench/incumbent && $(GO) build -o ../../bin/containerd-stargz-grpc .

clean:
	rm -rf bin

# The two commands a newcomer needs: `make demo` (the seed's walkthrough on a local stack) and
# `make test` (the whole suite against a real control plane). `make tools` builds the pinned
# Kubernetes tools from their Go modules and prints, as its last line, where they are.
SHELL := /usr/bin/env bash
.DEFAULT_GOAL := help
CARGO ?= cargo

.PHONY: help tools test lint fmt up down demo bench bench-scale image

help:
	@echo "make demo   - the seed's walkthrough on a local stack (control plane, kwok, cloudsim, eklet, ...)"
	@echo "make test   - unit, integration and end-to-end tests against a real control plane"
	@echo "make up     - start the local stack in the background; make down stops it"
	@echo "make tools  - build the pinned test-bed tools (etcd, kube-*, kubectl, kubelet, kube-proxy, kwok, helm, metrics-server, kube-state-metrics; Prometheus from Debian); prints their directory"
	@echo "make bench  - eklet vs virtual-kubelet's mock provider on one control plane (PODS=500 WORKLOADS=0 ROUNDS=1)"
	@echo "make bench-scale - eklet at 1k, 5k and 10k cloud pods, then eks-admission tolerating an overflow (STEPS=1000,5000,10000 OVERFLOW=10000 CLOUD_RATE_LIMIT=0)"
	@echo "make lint   - rustfmt and clippy, as CI runs them"
	@echo "make image  - the tke-resilience OCI image archive, reproducibly, without Docker; prints its path last"

tools:
	@hack/tools.sh

test:
	@hack/realnode-deps.sh
	@bin=$$(hack/tools.sh | tail -n 1) && TKE_TESTBED_BIN=$$bin $(CARGO) test --workspace --all-targets

lint:
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

up:
	@hack/stack.sh up

down:
	@hack/stack.sh down

demo:
	@hack/demo.sh

# Benchmarks, side by side in one run (not tests): eklet against virtual-kubelet's mock provider.
PODS ?= 500
WORKLOADS ?= 0
ROUNDS ?= 1
CLOUD_RATE_LIMIT ?= 20
bench:
	@bin=$$(hack/tools.sh k8s etcd kwok helm vk | tail -n 1) && target=$${CARGO_TARGET_DIR:-target} && \
	  $(CARGO) build --release -q -p tke-resilience --bin tke-resilience -p tke-testbed --bin tke-bench && \
	  TKE_TESTBED_BIN=$$bin $$target/release/tke-bench eklet --binary $$target/release/tke-resilience \
	    --vk $$bin/virtual-kubelet --pods $(PODS) --workloads $(WORKLOADS) --rounds $(ROUNDS) --cloud-rate-limit $(CLOUD_RATE_LIMIT)

# eklet at 1k, 5k and 10k cloud pods on one control plane (STEPS=...): time to Running and gone,
# RSS per pod, idle CPU, cloud calls and apiserver requests per second; then eks-admission
# tolerating an overflow of OVERFLOW pods (0: none). CLOUD_RATE_LIMIT=20 for the real limit.
STEPS ?= 1000,5000,10000
OVERFLOW ?= 10000
CLOUD_RATE_LIMIT ?= 0
bench-scale:
	@bin=$$(hack/tools.sh k8s etcd kwok | tail -n 1) && target=$${CARGO_TARGET_DIR:-target} && \
	  $(CARGO) build --release -q -p tke-resilience --bin tke-resilience -p tke-testbed --bin tke-bench-scale && \
	  TKE_TESTBED_BIN=$$bin $$target/release/tke-bench-scale --binary $$target/release/tke-resilience --steps $(STEPS) \
	  --overflow $(OVERFLOW) --cloud-rate-limit $(CLOUD_RATE_LIMIT)

fmt:
	$(CARGO) fmt --all

# An OCI image archive of the release binary (UID 65532, CA certificates, the libraries it links;
# nothing else), the same bytes for the same binary. Load it with `ctr images import` or push it
# with skopeo/crane (see the README).
IMAGE_NAME ?= ghcr.io/tke-resilience/tke-resilience:dev
image:
	@target=$${CARGO_TARGET_DIR:-target} && \
	  $(CARGO) build --release -q -p tke-resilience --bin tke-resilience && \
	  $(CARGO) build -q -p tke-testbed --bin tke-image && \
	  $$target/debug/tke-image $$target/release/tke-resilience $$target/image/tke-resilience.oci.tar --name $(IMAGE_NAME)

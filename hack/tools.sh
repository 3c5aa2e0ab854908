#!/usr/bin/env bash
# Builds the pinned test-bed tools (etcd, kube-apiserver, kube-controller-manager, kube-scheduler,
# kubectl, kubelet, kube-proxy, kwok, helm, metrics-server, kube-state-metrics) from their Go modules under tools/, into a cache directory keyed by the
# pinned version, the tool module's go.mod/go.sum and the Go version, and unpacks Prometheus (prometheus,
# promtool) from Debian's package. Work already done is skipped.
# Usage: hack/tools.sh [k8s|etcd|kwok|helm|metrics-server|kube-state-metrics|prometheus|vk]...   (default: all but vk, the benchmark peer)
# The last line printed on stdout is the directory that holds all the binaries.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=../tools/versions.env
source "$root/tools/versions.env"

cache=${TKE_TOOLS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tke-resilience/tools}
# Never download a toolchain; every tool module says `go 1.26.0`. go.sum is committed, so no
# module is resolved anew (-mod=readonly), and builds are static like the upstream releases.
export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS="-trimpath -mod=readonly"
go_version=$(go env GOVERSION)

log() { printf '[tools] %s\n' "$*" >&2; }

key_of() { # TOOL VERSION -> cache key
  local sum
  sum=$(cat "$root/tools/$1/go.mod" "$root/tools/$1/go.sum" | sha256sum | cut -c1-12)
  printf '%s-%s-%s-%s' "$1" "$2" "$go_version" "$sum"
}

# build TOOL VERSION LDFLAGS NAME=PACKAGE...
build() {
  local tool=$1 version=$2 ldflags=$3; shift 3
  local dir pair missing=0
  dir="$cache/$(key_of "$tool" "$version")"
  for pair in "$@"; do [ -x "$dir/${pair%%=*}" ] || missing=1; done
  if [ "$missing" = 0 ]; then
    log "$tool $version: cached ($dir)"
  else
    local start=$SECONDS tmp="$dir.tmp.$$"
    rm -rf "$tmp"; mkdir -p "$tmp"
    for pair in "$@"; do
      log "$tool $version: building ${pair%%=*} (a cold build takes minutes)"
      (cd "$root/tools/$tool" && go build -ldflags "$ldflags" -o "$tmp/${pair%%=*}" "${pair#*=}")
    done
    rm -rf "$dir"; mv "$tmp" "$dir"
    log "$tool $version: built in $((SECONDS - start))s"
  fi
  for pair in "$@"; do ln -sfn "$dir/${pair%%=*}" "$out/${pair%%=*}"; done
}

k8s_ldflags() {
  local v=$K8S_VERSION minor p ldf="-s -w"
  minor=$(echo "$v" | cut -d. -f2)
  for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldf="$ldf -X $p.gitVersion=$v -X $p.gitMajor=1 -X $p.gitMinor=$minor"
    ldf="$ldf -X $p.gitCommit=0000000000000000000000000000000000000000 -X $p.gitTreeState=clean"
    ldf="$ldf -X $p.buildDate=2026-01-01T00:00:00Z"
  done
  printf '%s' "$ldf"
}

helm_ldflags() {
  local minor p ldf="-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION"
  minor=$(echo "$K8S_VERSION" | cut -d. -f2)
  for p in helm.sh/helm/v3/pkg/chartutil helm.sh/helm/v3/pkg/lint/rules; do
    ldf="$ldf -X $p.k8sVersionMajor=1 -X $p.k8sVersionMinor=$minor"
  done
  printf '%s' "$ldf"
}

metrics_server_ldflags() {
  local p=k8s.io/client-go/pkg/version
  printf '%s' "-s -w -X $p.gitVersion=$METRICS_SERVER_VERSION -X $p.gitCommit=0000000000000000000000000000000000000000 -X $p.gitTreeState=clean -X $p.buildDate=2026-01-01T00:00:00Z"
}

# The kwok binary has no built-in stages (kwokctl injects them). Take the default node and pod stages
# from the same kwok module the binary was built from: Ready nodes with lease heartbeats, pods that
# start Running, complete when owned by a Job, and go away when deleted.
kwok_stages() {
  local dest="$out/kwok-stages.yaml" src f
  src=$(cd "$root/tools/kwok" && go list -m -f '{{.Dir}}' sigs.k8s.io/kwok)
  [ -n "$src" ] && [ -d "$src/kustomize/stage" ] || (cd "$root/tools/kwok" && go mod download sigs.k8s.io/kwok)
  src=$(cd "$root/tools/kwok" && go list -m -f '{{.Dir}}' sigs.k8s.io/kwok)
  {
    for f in node/fast/node-initialize node/heartbeat-with-lease/node-heartbeat-with-lease \
             pod/fast/pod-ready pod/fast/pod-complete pod/fast/pod-delete; do
      echo "---"; cat "$src/kustomize/stage/$f.yaml"
    done
  } > "$dest.tmp"
  mv "$dest.tmp" "$dest"
}

# Prometheus and promtool from Debian's package, unpacked into the cache (not installed: no
# service, no user, nothing under /etc). Debian's build, not one from the Go module: Prometheus'
# web UI assets are built with npm, which the test bed does not need and will not run; Debian
# builds the server and promtool from source without them (the UI is absent, the API is whole).
# `apt-get download` fetches the pinned version with apt's verification; lists are updated once
# when the version is not known yet. Without apt-get, the Prometheus test says it is missing.
prometheus() {
  local version=$PROMETHEUS_DEB_VERSION dir deb
  dir="$cache/prometheus-$version"
  if [ -x "$dir/usr/bin/prometheus" ] && [ -x "$dir/usr/bin/promtool" ]; then
    log "prometheus $version: cached ($dir)"
  elif ! command -v apt-get >/dev/null || ! command -v dpkg-deb >/dev/null; then
    log "prometheus $version: no apt-get/dpkg-deb here; not unpacked (the Prometheus test will say so)"
    return 0
  else
    local start=$SECONDS tmp="$dir.tmp.$$"
    rm -rf "$tmp"; mkdir -p "$tmp"
    log "prometheus $version: downloading Debian's package"
    if ! (cd "$tmp" && apt-get download -qq "prometheus=$version" >&2 2>/dev/null); then
      log "prometheus $version: not in apt's lists; apt-get update"
      if ! { apt-get update -qq >&2 && (cd "$tmp" && apt-get download -qq "prometheus=$version" >&2); }; then
        # Not fatal: every other test runs without it, and the Prometheus test names what is missing.
        log "prometheus $version: cannot download it (not root, or the version left the archive); not unpacked"
        rm -rf "$tmp"
        return 0
      fi
    fi
    deb=$(ls "$tmp"/prometheus_*.deb)
    dpkg-deb -x "$deb" "$tmp"
    rm -f "$deb"
    rm -rf "$dir"; mv "$tmp" "$dir"
    log "prometheus $version: unpacked in $((SECONDS - start))s"
  fi
  ln -sfn "$dir/usr/bin/prometheus" "$out/prometheus"
  ln -sfn "$dir/usr/bin/promtool" "$out/promtool"
}

all_key=$( { cat "$root/tools/versions.env" "$root"/tools/*/go.mod "$root"/tools/*/go.sum; echo "$go_version"; } \
  | sha256sum | cut -c1-12)
out="$cache/bin-$all_key"
mkdir -p "$out"

[ $# -gt 0 ] || set -- k8s etcd kwok helm metrics-server kube-state-metrics prometheus
for tool in "$@"; do
  case $tool in
    k8s) build k8s "$K8S_VERSION" "$(k8s_ldflags)" \
           kube-apiserver=k8s.io/kubernetes/cmd/kube-apiserver \
           kube-controller-manager=k8s.io/kubernetes/cmd/kube-controller-manager \
           kube-scheduler=k8s.io/kubernetes/cmd/kube-scheduler \
           kubectl=k8s.io/kubernetes/cmd/kubectl \
           kube-proxy=k8s.io/kubernetes/cmd/kube-proxy \
           kubelet=k8s.io/kubernetes/cmd/kubelet ;;
    etcd) build etcd "$ETCD_VERSION" "-s -w -X go.etcd.io/etcd/api/v3/version.GitSHA=$ETCD_VERSION" \
           etcd=go.etcd.io/etcd/server/v3 ;;
    kwok) build kwok "$KWOK_VERSION" "-s -w -X sigs.k8s.io/kwok/pkg/consts.Version=${KWOK_VERSION#v}" \
           kwok=sigs.k8s.io/kwok/cmd/kwok
          kwok_stages ;;
    helm) build helm "$HELM_VERSION" "$(helm_ldflags)" helm=helm.sh/helm/v3/cmd/helm ;;
    # What `kubectl top` and the HPA read: scrapes /metrics/resource of every node's kubelet,
    # eklet's virtual nodes included.
    metrics-server) build metrics-server "$METRICS_SERVER_VERSION" "$(metrics_server_ldflags)" \
          metrics-server=sigs.k8s.io/metrics-server/cmd/metrics-server ;;
    # What the chart's alert rules and dashboard read about pods and nodes (kube_pod_*, kube_node_*).
    kube-state-metrics) build kube-state-metrics "$KUBE_STATE_METRICS_VERSION" \
          "-s -w -X github.com/prometheus/common/version.Version=${KUBE_STATE_METRICS_VERSION#v}" \
          kube-state-metrics=k8s.io/kube-state-metrics/v2 ;;
    prometheus) prometheus ;;
    # The benchmark peer: virtual-kubelet with its mock provider. Not needed by the tests.
    vk) build vk "$VK_VERSION" "-s -w" \
          virtual-kubelet=github.com/virtual-kubelet/virtual-kubelet/cmd/virtual-kubelet ;;
    *) echo "unknown tool: $tool (want k8s, etcd, kwok, helm, metrics-server, kube-state-metrics, prometheus or vk)" >&2; exit 2 ;;
  esac
done
echo "$out"

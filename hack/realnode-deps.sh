#!/usr/bin/env bash
# Installs what a real node of the test bed runs besides the kubelet (which hack/tools.sh builds):
# containerd (with ctr and the runc shim), runc, the CNI plugins (bridge, host-local, loopback),
# iptables (for kube-proxy, which runs in each node's network namespace only) and busybox-static
# (the test image's userland). Debian packages; `apt-get update` once, and only when
# something is missing. Needs root. Without root it only says what is missing (the real-node tests
# then say so too).
set -euo pipefail

need=()
command -v containerd >/dev/null || need+=(containerd)
command -v runc >/dev/null || [ -x /usr/sbin/runc ] || need+=(runc)
[ -x /usr/lib/cni/bridge ] && [ -x /usr/lib/cni/host-local ] && [ -x /usr/lib/cni/loopback ] \
  || need+=(containernetworking-plugins)
{ command -v iptables-restore >/dev/null || [ -x /usr/sbin/iptables-restore ]; } || need+=(iptables)
[ -x /bin/busybox ] && ! ldd /bin/busybox >/dev/null 2>&1 || need+=(busybox-static)

if [ ${#need[@]} -eq 0 ]; then
  echo "[realnode-deps] containerd, runc, CNI plugins, iptables and busybox-static present" >&2
  exit 0
fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
  echo "[realnode-deps] missing ${need[*]}; not root or no apt-get, so not installed (real-node tests will say so)" >&2
  exit 0
fi
echo "[realnode-deps] installing ${need[*]} from Debian packages" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >&2
apt-get install -y -qq --no-install-recommends "${need[@]}" >&2

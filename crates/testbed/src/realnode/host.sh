# The host side of one real node: `up DIR OWNER_PID` and `down DIR`. Run by the test bed (sh, as
# root).
#
# up takes a node index by creating its network namespace tke-rnN (`ip netns add` fails when it
# exists, so two test processes never share one), wires it to the root namespace with a veth pair,
# creates the node's cgroups and records the host sysctls the kubelet changes. It prints N.
#   node IP  198.18.0.N/32 on tke-rnNn inside the namespace (198.18.0.0/15 is reserved for
#            benchmarking, so it collides with no real network)
#   pods     198.19.N.0/24 on the CNI bridge inside the namespace
#   apiserver 198.18.255.254/32 on the namespace's loopback, the same in every node: where pods
#            reach the apiserver (the `kubernetes` Service's endpoint; a forwarder listens there)
#   root     tke-rnNh has NO address: a device route to the node IP and a route to the pods via it.
#            The root namespace answers from the address it already uses; the namespace gets a
#            route back to exactly that address and nothing else (no default route).
# down removes everything the node left on the host: processes (kubelet, containerd, shims, pod
# processes), mounts under DIR, shim sockets and CNI results outside it, the namespace and veth,
# the cgroups, and, when it was the machine's last real node, the recorded sysctls. It is safe to
# run after SIGKILL, more than once, and on a half-made node.
#
# Each node is registered in $state/nodes/N as "OWNER_PID DIR". The test process's watchdog runs
# down when the owner dies; if the watchdog died too (a session ended by killing everything), the
# next up finds the owner gone and reaps the node: kernel state (namespaces, veths, mounts,
# cgroups, sysctls) outlives processes.
set -u
cmd=$1 dir=$2 owner=${3:-}
state=/run/tke-testbed
mkdir -p $state/nodes

# Fixed paths that kubelet, containerd and libcni use whatever they are told. Those the first real
# node finds missing are removed (when empty) by the last one.
host_dirs="/run/containerd /run/containerd/s /var/lib/cni /var/lib/cni/results /var/log/containers
  /var/lib/kubelet /var/lib/kubelet/device-plugins"

lock() { exec 9>$state/realnode.lock; flock 9; }
unlock() { flock -u 9; }

reap_stale() {
  for f in $state/nodes/*; do
    [ -f "$f" ] || continue
    read -r pid stale_dir < "$f" || continue
    kill -0 "$pid" 2>/dev/null && continue
    echo "reaping real node tke-rn${f##*/} of process $pid, which is gone ($stale_dir)" >&2
    (set +e; dir=$stale_dir idx=${f##*/}; down_idx && rm -rf "$stale_dir")
  done
}

up() {
  [ -n "$owner" ] || { echo "usage: host.sh up DIR OWNER_PID" >&2; exit 2; }
  reap_stale
  set -e
  lock
  idx=
  for i in $(seq 1 250); do
    if ip netns add tke-rn$i 2>/dev/null; then idx=$i; break; fi
  done
  [ -n "$idx" ] || { echo "no free real-node index: 250 network namespaces tke-rn* exist" >&2; exit 1; }
  echo $idx > "$dir/idx"
  echo "$owner $dir" > $state/nodes/$idx
  if [ ! -f $state/sysctl.orig ]; then
    # The machine's first real node: what the last one puts back.
    for p in $host_dirs; do [ -e $p ] || echo $p; done > $state/created
    for k in vm/overcommit_memory kernel/panic kernel/panic_on_oops; do echo "$k $(cat /proc/sys/$k)"; done > $state/sysctl.orig.tmp
    mv $state/sysctl.orig.tmp $state/sysctl.orig
  fi
  unlock
  ns=tke-rn$idx host=tke-rn${idx}h node=tke-rn${idx}n ip=198.18.0.$idx pods=198.19.$idx.0/24
  ip link add $host type veth peer name $node netns $ns
  # No IPv6 link-local address on the root end either.
  ip link set $host addrgenmode none
  ip link set $host up
  ip -n $ns link set lo up
  ip -n $ns addr add 198.18.255.254/32 dev lo
  ip -n $ns addr add $ip/32 dev $node
  ip -n $ns link set $node up
  ip route add $ip/32 dev $host
  ip route add $pods via $ip dev $host onlink
  src=$(ip -o route get $ip | sed -n 's/.* src \([0-9.]*\).*/\1/p')
  [ -n "$src" ] || { echo "the root namespace has no source address towards $ip" >&2; exit 1; }
  ip -n $ns route add $src/32 dev $node
  ip netns exec $ns sh -c 'echo 1 > /proc/sys/net/ipv4/ip_forward'
  cg=tke-rn$idx
  if [ -f /sys/fs/cgroup/cgroup.controllers ]; then
    mkdir -p /sys/fs/cgroup/$cg
  else
    # cgroup v1: the kubelet's cgroupRoot must exist in every hierarchy.
    for h in /sys/fs/cgroup/*/; do case $h in */unified/) continue ;; esac; mkdir -p $h$cg; done
    cat /sys/fs/cgroup/cpuset/cpuset.cpus > /sys/fs/cgroup/cpuset/$cg/cpuset.cpus
    cat /sys/fs/cgroup/cpuset/cpuset.mems > /sys/fs/cgroup/cpuset/$cg/cpuset.mems
  fi
  echo $idx
}

kill_all() { # every process naming DIR, and every process in the node's cgroups
  for p in /proc/[0-9]*; do
    pid=${p#/proc/}
    [ "$pid" = $$ ] && continue
    case "$(tr '\0' ' ' < $p/cmdline 2>/dev/null)" in *"$dir/"*) kill -9 $pid 2>/dev/null ;; esac
  done
  for f in $(find /sys/fs/cgroup/$cg /sys/fs/cgroup/*/$cg -name cgroup.procs 2>/dev/null); do
    for pid in $(cat $f 2>/dev/null); do kill -9 $pid 2>/dev/null; done
  done
}

down() {
  [ -f "$dir/idx" ] || return 0
  idx=$(cat "$dir/idx")
  down_idx
}

down_idx() { # DIR and node index $idx
  # Processes are matched by DIR in their command lines: never with anything but a node's directory.
  case "$dir" in /?*/rn-?*) ;; *) echo "refusing to clean up '$dir': not a real node's directory" >&2; return 1 ;; esac
  case "$idx" in '' | *[!0-9]*) echo "refusing to clean up node index '$idx'" >&2; return 1 ;; esac
  ns=tke-rn$idx cg=tke-rn$idx
  for _ in 1 2 3; do kill_all; sleep 0.1; done
  # Mounts under DIR (overlay rootfs, sandbox netns and shm, the kubelet's bind mount of its root
  # and pod volumes), deepest first, until none is left.
  for _ in 1 2 3 4 5; do
    mounts=$(cut -d' ' -f2 /proc/self/mounts | grep -F "$dir/" | sort -r)
    [ -n "$mounts" ] || break
    for m in $mounts; do umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null; done
  done
  # Outside DIR: shim sockets, /run/containerd/s/sha256(<containerd address>/<namespace>/<id>),
  # and libcni's result cache, <network>-<id>-<ifname> (our network and containerd's cni-loopback).
  for id in $(ls "$dir/containerd/state/io.containerd.runtime.v2.task/k8s.io" 2>/dev/null) \
            $(ls "$dir/containerd/state/io.containerd.grpc.v1.cri/sandboxes" 2>/dev/null); do
    rm -f /run/containerd/s/$(printf '%s' "$dir/containerd/containerd.sock/k8s.io/$id" | sha256sum | cut -c1-64)
    rm -f /var/lib/cni/results/*-"$id"-*
  done
  [ -f "$dir/cni-network" ] && rm -f /var/lib/cni/results/"$(cat "$dir/cni-network")"-*
  for l in /var/log/containers/*.log; do
    case "$(readlink "$l" 2>/dev/null)" in "$dir/"*) rm -f "$l" ;; esac
  done
  for _ in $(seq 1 50); do
    left=$(find /sys/fs/cgroup/$cg /sys/fs/cgroup/*/$cg -depth -type d 2>/dev/null)
    [ -n "$left" ] || break
    for d in $left; do rmdir $d 2>/dev/null; done
    [ -z "$(find /sys/fs/cgroup/$cg /sys/fs/cgroup/*/$cg -depth -type d 2>/dev/null)" ] && break
    kill_all; sleep 0.1
  done
  ip link del tke-rn${idx}h 2>/dev/null
  lock
  ip netns delete $ns 2>/dev/null
  if [ -f $state/sysctl.orig ] && ! ls /run/netns 2>/dev/null | grep -q '^tke-rn'; then
    # The machine's last real node: put back what the kubelet changed.
    while read -r k v; do echo "$v" > /proc/sys/$k; done < $state/sysctl.orig
    rm -f $state/sysctl.orig
    if grep -qx /var/lib/kubelet/device-plugins $state/created 2>/dev/null; then
      # Every kubelet binds its device-plugin socket here; ours made the directory.
      rm -f /var/lib/kubelet/device-plugins/kubelet.sock /var/lib/kubelet/device-plugins/kubelet_internal_checkpoint
    fi
    for p in $(sort -r $state/created 2>/dev/null); do rmdir $p 2>/dev/null; done
    rm -f $state/created
  fi
  rm -f $state/nodes/$idx
  unlock
  rm -f "$dir/idx"
}

case $cmd in
  up) up ;;
  down) down ;;
  *) echo "usage: host.sh up DIR OWNER_PID | down DIR" >&2; exit 2 ;;
esac

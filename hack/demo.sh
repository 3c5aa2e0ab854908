#!/usr/bin/env bash
# `make demo`: the seed's walkthrough on the local stack. Starts it (make up), shows each command
# before running it, and stops the stack at the end unless KEEP=1.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

"$root/hack/stack.sh" up
bin=$("$root/hack/tools.sh" 2>/dev/null | tail -n 1)
export KUBECONFIG="$root/.stack/kubeconfig" PATH="$bin:$PATH"

finish() {
  if [ -n "${forward_pid:-}" ]; then kill "$forward_pid" 2>/dev/null || true; fi
  if [ -n "${prometheus_pid:-}" ]; then kill "$prometheus_pid" 2>/dev/null || true; fi
  if [ "${KEEP:-0}" = 1 ]; then
    echo; echo "KEEP=1: the stack keeps running. export KUBECONFIG=$KUBECONFIG; make down stops it."
  else
    echo; "$root/hack/stack.sh" down
  fi
}
trap finish EXIT

show() { printf '\n$ %s\n' "$*"; "$@"; }

tke=${CARGO_TARGET_DIR:-$root/target}
case $tke in /*) ;; *) tke="$root/$tke" ;; esac

# A Prometheus of the demo's own (unpacked by hack/tools.sh), scraping eklet every second as the
# chart's ServiceMonitor does (honor_labels), so the demo can end with `tke-resilience report`.
eklet_metrics=$(sed -n 's/^EKLET_METRICS=//p' "$root/.stack/env")
prometheus_url=
if [ -x "$bin/prometheus" ] && [ -n "$eklet_metrics" ]; then
  prom_dir="$root/.stack/prometheus"
  mkdir -p "$prom_dir/data"
  printf 'scrape_configs:\n  - job_name: eklet\n    honor_labels: true\n    scrape_interval: 1s\n    static_configs:\n      - targets: [%s]\n' \
    "$eklet_metrics" > "$prom_dir/prometheus.yml"
  for _ in 1 2 3; do
    port=$((20000 + RANDOM % 40000))
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && continue  # taken
    "$bin/prometheus" --config.file="$prom_dir/prometheus.yml" --storage.tsdb.path="$prom_dir/data" \
      --web.listen-address="127.0.0.1:$port" --log.level=warn > "$prom_dir/log" 2>&1 &
    prometheus_pid=$!
    for _ in $(seq 1 50); do
      if curl -fsS "http://127.0.0.1:$port/-/ready" >/dev/null 2>&1; then prometheus_url="http://127.0.0.1:$port"; break 2; fi
      kill -0 "$prometheus_pid" 2>/dev/null || break
      sleep 0.2
    done
    kill "$prometheus_pid" 2>/dev/null || true
    prometheus_pid=
  done
fi

# Waits until the Deployment's pods are exactly `want`, all Running and none terminating.
wait_pods() {
  local want=$1 deadline=$((SECONDS + 180)) running total
  while :; do
    running=$(kubectl get pod -l app=nginx --no-headers 2>/dev/null | awk '$3 == "Running"' | wc -l)
    total=$(kubectl get pod -l app=nginx --no-headers 2>/dev/null | wc -l)
    [ "$running" -eq "$want" ] && [ "$total" -eq "$want" ] && return 0
    if [ $SECONDS -gt $deadline ]; then
      echo "timed out waiting for $want Running pods:" >&2
      kubectl get pod -owide >&2
      kubectl get events --sort-by=.lastTimestamp >&2 | tail -20
      exit 1
    fi
    sleep 1
  done
}

echo
echo "== The virtual node, registered by eklet (VERSION is the eklet version)"
show kubectl get node

echo
echo "== The seed's nginx-deployment: 4 replicas, LOCAL_REPLICAS: \"1\", schedulerName: tke-scheduler"
show kubectl apply -f examples/nginx-deployment.yaml
wait_pods 4
echo
echo "== 1 replica on a local (IDC) node, 3 on the virtual node eklet-subnet-..."
show kubectl get pod -owide

cloud_pod=$(kubectl get pod -l app=nginx -o jsonpath='{range .items[*]}{.metadata.name} {.spec.nodeName}{"\n"}{end}' | awk '$2 ~ /^eklet-/ {print $1; exit}')

# Waits until the Service's EndpointSlices list `want` ready addresses.
wait_endpoints() {
  local want=$1 deadline=$((SECONDS + 120)) ready
  while :; do
    ready=$(kubectl get endpointslices -l kubernetes.io/service-name=nginx-deployment \
      -o jsonpath='{range .items[*].endpoints[?(@.conditions.ready==true)]}{.addresses[0]}{"\n"}{end}' 2>/dev/null | grep -c . || true)
    [ "$ready" -eq "$want" ] && return 0
    if [ $SECONDS -gt $deadline ]; then
      echo "timed out waiting for $want ready endpoints:" >&2
      kubectl get endpointslices -o wide >&2
      exit 1
    fi
    sleep 1
  done
}

echo
echo "== A Service over the burst workload: one endpoint per Ready replica, local and cloud alike;"
echo "   the cloud pods' addresses are in the local stack's VPC (a network namespace, see the README)"
show kubectl expose deployment nginx-deployment --port 80
wait_endpoints 4
show kubectl get endpointslices -l kubernetes.io/service-name=nginx-deployment
cloud_ips=$(kubectl get pod -l app=nginx -o jsonpath='{range .items[*]}{.status.podIP} {.spec.nodeName}{"\n"}{end}' | awk '$2 ~ /^eklet-/ {print $1}')
if curl -s --max-time 2 -o /dev/null "http://$(echo "$cloud_ips" | head -n 1)/"; then
  echo
  echo "== One request per cloud replica, from this machine over the VPC's route (the local replica"
  echo "   runs on a simulated kwok node: nothing listens at its address)"
  for ip in $cloud_ips; do show curl -sS --max-time 5 "http://$ip/"; done
else
  echo
  echo "(the cloud pods' addresses are not reachable here: the stack has no VPC network namespace)"
fi
echo
echo "== kubectl logs reaches the cloud pod through the virtual node's kubelet API"
show kubectl logs "$cloud_pod" --tail=3

node=$(kubectl get pod "$cloud_pod" -o jsonpath='{.spec.nodeName}')
if [ "$(kubectl get node "$node" -o jsonpath='{.status.addresses[0].address}')" != 127.0.0.1 ]; then
  echo
  echo "== The apiserver's node proxy reaches the virtual node's kubelet API like a kubelet's"
  show kubectl get --raw "/api/v1/nodes/$node/proxy/runningpods/"
  echo
fi

echo
echo "== kubectl top: metrics-server reads the cloud pods' usage from the virtual node's kubelet API"
echo "   (eklet scrapes each sandbox's agent; metrics-server needs two scrapes for a rate)"
deadline=$((SECONDS + 120))
until kubectl top pod "$cloud_pod" >/dev/null 2>&1; do
  if [ $SECONDS -gt $deadline ]; then
    echo "kubectl top never showed $cloud_pod:" >&2
    kubectl top pod "$cloud_pod" >&2 || true
    exit 1
  fi
  sleep 2
done
show kubectl top pod -l app=nginx

echo
echo "== kubectl exec runs a real process in the cloud pod, through eklet and the sandbox's agent"
show kubectl exec "$cloud_pod" -- sh -c 'echo "a real process in $(pwd)"'

echo
echo "== kubectl port-forward reaches the cloud pod's port 80 the same way (cloudsim answers there)"
forward_log=$(mktemp)
kubectl port-forward "pod/$cloud_pod" :80 >"$forward_log" 2>&1 &
forward_pid=$!
deadline=$((SECONDS + 60))
until local_port=$(sed -n 's/^Forwarding from 127.0.0.1:\([0-9]*\) .*/\1/p' "$forward_log" | head -n 1) && [ -n "$local_port" ]; do
  if [ $SECONDS -gt $deadline ] || ! kill -0 "$forward_pid" 2>/dev/null; then
    echo "kubectl port-forward did not start:" >&2
    cat "$forward_log" >&2
    exit 1
  fi
  sleep 0.5
done
printf '\n$ kubectl port-forward pod/%s :80 &   # %s\n' "$cloud_pod" "$(head -n 1 "$forward_log")"
show curl -sS "http://127.0.0.1:$local_port/"
kill "$forward_pid" 2>/dev/null || true
wait "$forward_pid" 2>/dev/null || true
rm -f "$forward_log"

echo
echo "== Would tke-resilience rebalance bring a cloud pod home now? (explain's last line)"
printf '\n$ tke-resilience explain pod %s --hold-down=0 | tail -n 1\n' "$cloud_pod"
"$tke/debug/tke-resilience" explain pod "$cloud_pod" --hold-down=0 | tail -n 1

echo
echo "== Scale in: cloud replicas go first (eklet sets controller.kubernetes.io/pod-deletion-cost)"
show kubectl scale deployment nginx-deployment --replicas=3
wait_pods 3
show kubectl get pod -owide
wait_endpoints 3
show kubectl get endpointslices -l kubernetes.io/service-name=nginx-deployment

local_pods=$(kubectl get pod -l app=nginx -o jsonpath='{range .items[*]}{.spec.nodeName}{"\n"}{end}' | grep -vc '^eklet-' || true)
cloud_pods=$(kubectl get pod -l app=nginx -o jsonpath='{range .items[*]}{.spec.nodeName}{"\n"}{end}' | grep -c '^eklet-' || true)
echo
echo "== Result: $local_pods local, $cloud_pods in the cloud"
if [ "$local_pods" -ne 1 ] || [ "$cloud_pods" -ne 2 ]; then
  echo "expected 1 local and 2 in the cloud after scaling to 3" >&2
  exit 1
fi

echo
if [ -n "$prometheus_url" ]; then
  echo "== What the burst used and would cost: eklet's usage counters, through Prometheus"
  sleep 2  # one more scrape, so the report reaches the scale-in
  printf 'core-hour: 0.12\ngib-hour: 0.016\ngpu-hour: 2.5\ncurrency: CNY\n' > "$root/.stack/prices.yaml"
  printf '\n$ cat .stack/prices.yaml\n'; cat "$root/.stack/prices.yaml"
  printf '\n$ tke-resilience report --prometheus %s --since 1h --by workload --prices .stack/prices.yaml\n' "$prometheus_url"
  "$tke/debug/tke-resilience" report --prometheus "$prometheus_url" --since 1h --by workload --prices "$root/.stack/prices.yaml"
else
  echo "== What the burst used: eklet's usage counters (no Prometheus here for tke-resilience report)"
  printf '\n$ curl -sS http://%s/metrics | grep ^eklet_cloud_\n' "$eklet_metrics"
  curl -fsS "http://$eklet_metrics/metrics" | grep '^eklet_cloud_' || true
fi

#!/usr/bin/env bash
# `make up` / `make down`: the local stack in the background (see crates/testbed/src/bin/tke-stack.rs).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
state="$root/.stack"
cargo=${CARGO:-cargo}

running() { [ -f "$state/pid" ] && kill -0 "$(cat "$state/pid")" 2>/dev/null; }

up() {
  if running && [ -f "$state/ready" ]; then
    echo "[stack] already up (pid $(cat "$state/pid")); export KUBECONFIG=$state/kubeconfig"
    return 0
  fi
  running && down
  echo "[stack] building the test-bed tools (cached after the first time)"
  TKE_TESTBED_BIN=$("$root/hack/tools.sh" | tail -n 1)
  export TKE_TESTBED_BIN
  echo "[stack] building tke-resilience and tke-stack"
  (cd "$root" && $cargo build --quiet -p tke-resilience --bin tke-resilience -p tke-testbed --bin tke-stack)
  mkdir -p "$state"
  rm -f "$state/ready"
  # Where cargo put them: CARGO_TARGET_DIR (relative to the repository, where cargo ran) or target/.
  local target=${CARGO_TARGET_DIR:-target}
  case $target in /*) ;; *) target="$root/$target" ;; esac
  setsid "$target/debug/tke-stack" --state-dir "$state" --binary "$target/debug/tke-resilience" \
    > "$state/stack.log" 2>&1 < /dev/null &
  echo $! > "$state/pid"
  local shown=0
  while ! [ -f "$state/ready" ]; do
    if ! running; then
      cat "$state/stack.log" >&2
      echo "[stack] failed to start; the log is above and in $state/stack.log" >&2
      exit 1
    fi
    shown=$(print_new "$shown")
    sleep 0.3
  done
  print_new "$shown" >/dev/null
  echo "[stack] make down stops it"
}

# Prints the stack's progress lines that have not been shown yet; echoes how many lines are shown.
print_new() {
  local n
  n=$(wc -l < "$state/stack.log")
  if [ "$n" -gt "$1" ]; then sed -n "$(( $1 + 1 )),${n}p" "$state/stack.log" | grep -E '^\[(stack|testbed|tools)\]' >&2 || true; fi
  echo "$n"
}

down() {
  if running; then
    local pid; pid=$(cat "$state/pid")
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    echo "[stack] stopped"
  else
    echo "[stack] not running"
  fi
  rm -rf "$state"
}

case ${1:-} in
  up) up ;;
  down) down ;;
  *) echo "usage: hack/stack.sh up|down" >&2; exit 2 ;;
esac

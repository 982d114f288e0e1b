#!/usr/bin/env bash
# The cost of metrics on the Broadcast path (BENCHMARKS.md, "Metrics on the
# Broadcast path"): instructions the node executes per envelope, counted by
# callgrind, for two binaries (e.g. before and after metrics) or one binary
# with metrics on and off (ORDERER_METRICS_PROVIDER=disabled).
#
#   scripts/metrics-cost.sh BIN [ENV=VALUE...]
#
# Runs the node under callgrind twice, with N1 and N2 unsigned 1 KiB
# envelopes from `consenter-host bench` (the dev channel, 2 clients), and
# prints (Ir(N2) - Ir(N1)) / (N2 - N1): start-up and shutdown cancel out.
set -euo pipefail
bin=$1; shift
n1=${N1:-5000}
n2=${N2:-15000}
work=$(mktemp -d)
port=$((20000 + RANDOM % 20000))
run() {
  local n=$1 out=$2
  rm -rf "$work/data"
  # Warm the compiled-plugin cache natively, so callgrind never runs Cranelift.
  if [ ! -d "$work/cache" ]; then
    env "${ENVS[@]}" "$bin" start --data-dir "$work/data" --listen 127.0.0.1:$port --no-admin >/dev/null 2>&1 &
    local p=$!
    for _ in $(seq 100); do "$bin" bench --orderer 127.0.0.1:$port --messages 1 >/dev/null 2>&1 && break; sleep 0.2; done
    kill -INT $p; wait $p || true
    cp -a "$work/data/plugin-cache" "$work/cache"; cp "$work/data/plugin-cache.key" "$work/cache.key"
    rm -rf "$work/data"
  fi
  mkdir -p "$work/data"; cp -a "$work/cache" "$work/data/plugin-cache"; cp "$work/cache.key" "$work/data/plugin-cache.key"
  env "${ENVS[@]}" valgrind --tool=callgrind --callgrind-out-file="$out" \
    "$bin" start --data-dir "$work/data" --listen 127.0.0.1:$port --no-admin >/dev/null 2>&1 &
  local p=$!
  for _ in $(seq 600); do "$bin" bench --orderer 127.0.0.1:$port --messages 1 --commit-timeout 120s >/dev/null 2>&1 && break; sleep 0.5; done
  "$bin" bench --orderer 127.0.0.1:$port --messages "$n" --clients 2 --size 1024 --commit-timeout 600s >&2
  kill -INT $p; wait $p || true
}
ENVS=("$@")
[ ${#ENVS[@]} -eq 0 ] && ENVS=(METRICS_COST_RUN=1)
run "$n1" "$work/a.out"
run "$n2" "$work/b.out"
ir() { grep -E '^(summary|totals):' "$1" | head -1 | awk '{print $2}'; }
a=$(ir "$work/a.out"); b=$(ir "$work/b.out")
echo "Ir($n1)=$a Ir($n2)=$b per envelope: $(( (b - a) / (n2 - n1) ))"
if [ -n "${KEEP:-}" ]; then cp "$work/a.out" "$work/b.out" "$KEEP"/; fi
rm -rf "$work"

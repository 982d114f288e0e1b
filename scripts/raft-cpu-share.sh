#!/usr/bin/env bash
# The consensus plugin's share of CPU on three consenter-host nodes (release
# build) from Fabric's raftchannel.genesis.block, while `bench` sends signed
# 1 KiB envelopes through the leader: `perf record` samples the three node
# processes; a sample whose innermost frame is in JIT code (wasmtime's
# compiled plugin, which perf labels with the process's perf map) is the
# plugin's own CPU; a sample with a JIT frame anywhere on its stack is CPU
# spent inside a plugin call, with the host functions it called (cutter,
# block hashing, signing, storage). Needs `perf` (Debian: linux-perf).
#   scripts/raft-cpu-share.sh [MESSAGES] [CLIENTS]
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-target/release/consenter-host}
F=${F:-../shared/fixtures/fabric}
O=$F/crypto/ordererOrganizations/example.com
U=$F/crypto/peerOrganizations/org1.example.com/users/User1@org1.example.com
CA=$O/tlsca/tlsca.example.com-cert.pem
N=${1:-50000}
C=${2:-8}
D=$(mktemp -d)
pids=()
for i in 0 1 2; do
  "$BIN" start --data-dir "$D/n$i" --listen "127.0.0.1:7${i}50" --admin-listen "127.0.0.1:9${i}53" \
    --msp-dir "$O/orderers/orderer$i.example.com/msp" --mspid OrdererMSP \
    --tls-cert "$O/orderers/orderer$i.example.com/tls/server.crt" \
    --tls-key "$O/orderers/orderer$i.example.com/tls/server.key" --tls-root-ca "$CA" \
    --genesis-block "$F/blocks/raftchannel.genesis.block" >"$D/n$i.out" 2>"$D/n$i.log" &
  pids[$i]=$!
done
trap 'kill ${pids[*]} 2>/dev/null || true' EXIT
L=""
for _ in $(seq 1 600); do
  for i in 0 1 2; do
    if "$BIN" channel show -o "127.0.0.1:9${i}53" -c raftchannel 2>/dev/null | grep -q '"isLeader": true'; then
      L=$i; break 2
    fi
  done
  sleep 0.1
done
[ -n "$L" ] || { echo "no leader" >&2; exit 1; }
perf record -e cpu-clock -F 999 -g -o "$D/perf.data" -p "${pids[0]},${pids[1]},${pids[2]}" 2>"$D/perf.err" &
PERF=$!
# perf attaches in well under a second; the bench's first second would
# otherwise go unsampled.
sleep 1
"$BIN" bench --orderer "127.0.0.1:7${L}50" --channel raftchannel --msp-dir "$U/msp" --mspid Org1MSP \
  --tls-root-ca "$CA" --messages "$N" --clients "$C" --size 1024
kill -INT "$PERF"
wait "$PERF" || true
echo "== CPU samples per node (leader: node $L)"
perf script -i "$D/perf.data" -F pid,ip,dso 2>/dev/null | awk -v leader="${pids[$L]}" '
  BEGIN { RS = "" }
  {
    split($0, lines, "\n"); split(lines[1], first, " "); p = first[1]
    n[p]++; all++
    # lines[1] is the pid, lines[2] the innermost frame.
    if (lines[2] ~ /perf-[0-9]+\.map/) { own[p]++; own_all++ }
    if ($0 ~ /perf-[0-9]+\.map/) { in_call[p]++; in_all++ }
  }
  END {
    for (p in n)
      printf "pid %s%s: %d samples; plugin code %.1f%%; inside plugin calls %.1f%%\n", p, (p == leader ? " (leader)" : ""),
        n[p], 100 * own[p] / n[p], 100 * in_call[p] / n[p]
    printf "all three: %d samples; plugin code %.1f%%; inside plugin calls %.1f%%\n", all, 100 * own_all / all, 100 * in_all / all
  }'

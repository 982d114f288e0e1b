#!/usr/bin/env bash
# Three consenter-host nodes (release build) from Fabric's
# raftchannel.genesis.block with the fixture crypto, then `bench` through
# the leader and through a follower (User1@org1, signed 1 KiB envelopes,
# TLS), then the leader killed (SIGKILL) with the time to the next block
# from a new leader. Figures go to BENCHMARKS.md by hand.
#   scripts/raft-bench.sh [MESSAGES] [CLIENTS]
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
start() {
  local i=$1
  "$BIN" start --data-dir "$D/n$i" --listen "127.0.0.1:7${i}50" --admin-listen "127.0.0.1:9${i}53" \
    --msp-dir "$O/orderers/orderer$i.example.com/msp" --mspid OrdererMSP \
    --tls-cert "$O/orderers/orderer$i.example.com/tls/server.crt" \
    --tls-key "$O/orderers/orderer$i.example.com/tls/server.key" --tls-root-ca "$CA" \
    --genesis-block "$F/blocks/raftchannel.genesis.block" >"$D/n$i.out" 2>"$D/n$i.log" &
  pids[$i]=$!
}
trap 'kill ${pids[*]} 2>/dev/null || true' EXIT
for i in 0 1 2; do start $i; done
leader() {
  for _ in $(seq 1 600); do
    for i in 0 1 2; do
      if "$BIN" channel show -o "127.0.0.1:9${i}53" -c raftchannel 2>/dev/null | grep -q '"isLeader": true'; then
        echo "$i"; return
      fi
    done
    sleep 0.1
  done
  echo "no leader" >&2; exit 1
}
L=$(leader)
FOL=$(( (L + 1) % 3 ))
bench() {
  "$BIN" bench --orderer "127.0.0.1:7${1}50" --channel raftchannel --msp-dir "$U/msp" --mspid Org1MSP \
    --tls-root-ca "$CA" --messages "$N" --clients "$C" --size 1024
}
echo "== through the leader (node $L)"; bench "$L"
echo "== through a follower (node $FOL)"; bench "$FOL"
echo "== failover: SIGKILL of the leader (node $L)"
h0=$("$BIN" channel show -o "127.0.0.1:9${FOL}53" -c raftchannel | grep -o '"height": [0-9]*' | grep -o '[0-9]*')
t0=$(date +%s%N)
kill -9 "${pids[$L]}"
# Keep offering envelopes at the follower until a block past h0 exists.
while :; do
  "$BIN" bench --orderer "127.0.0.1:7${FOL}50" --channel raftchannel --msp-dir "$U/msp" --mspid Org1MSP \
    --tls-root-ca "$CA" --messages 1 --clients 1 --size 64 --commit-timeout 2s >/dev/null 2>&1 || true
  h=$("$BIN" channel show -o "127.0.0.1:9${FOL}53" -c raftchannel | grep -o '"height": [0-9]*' | grep -o '[0-9]*')
  if [ "$h" -gt "$h0" ]; then break; fi
done
t1=$(date +%s%N)
echo "failover: $(( (t1 - t0) / 1000000 )) ms from the kill to the first new block (height $h0 -> $h)"

#!/usr/bin/env python3
"""Grows a node's devchannel ledger with `consenter-host bench` until blocks.dat
reaches TARGET_GB (runs of 65,536 envelopes of 16 KiB).
usage: grow-ledger.py BINARY DATA_DIR TARGET_GB"""
import os, subprocess, sys, signal, time
binary, data, target = sys.argv[1], sys.argv[2], float(sys.argv[3])
blocks = os.path.join(data, "chains/devchannel/blocks.dat")
p = subprocess.Popen([binary, "start", "--data-dir", data, "--listen", "127.0.0.1:7451", "--no-admin"],
                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
for line in p.stdout:
    if line.startswith("consenter-host listening on"):
        break
t0 = time.monotonic()
while not os.path.exists(blocks) or os.path.getsize(blocks) < target * 1e9:
    r = subprocess.run([binary, "bench", "--orderer", "127.0.0.1:7451", "--messages", "65536", "--size", "16384",
                        "--clients", "4"], capture_output=True, text=True, cwd=os.path.dirname(os.path.abspath(data)))
    if r.returncode != 0:
        print(r.stdout, r.stderr); break
    committed = [l for l in r.stdout.splitlines() if l.startswith("committed")]
    print(f"{os.path.getsize(blocks)/1e9:.2f} GB after {time.monotonic()-t0:.0f} s; {committed}", flush=True)
p.send_signal(signal.SIGINT)
p.wait()

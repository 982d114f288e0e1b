#!/usr/bin/env python3
"""Start time after a crash: run a node, bench ~48 MB (3,000 x 16 KiB), SIGKILL it,
then time the next start (which scans what followed the last checkpoint).
usage: crash-start-time.py BINARY DATA_DIR"""
import os, subprocess, sys, time, signal
binary, data = sys.argv[1], sys.argv[2]
p = subprocess.Popen([binary, "start", "--data-dir", data, "--listen", "127.0.0.1:7452", "--no-admin"],
                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
for line in p.stdout:
    if line.startswith("consenter-host listening on"):
        break
r = subprocess.run([binary, "bench", "--orderer", "127.0.0.1:7452", "--messages", "3000", "--size", "16384",
                    "--clients", "2"], capture_output=True, text=True, cwd=os.path.dirname(os.path.abspath(data)))
assert r.returncode == 0, r.stdout + r.stderr
p.kill(); p.wait()
subprocess.run([os.path.join(os.path.dirname(os.path.abspath(__file__)), "start-time.py"), binary, data, "1"])

#!/usr/bin/env python3
"""Start time of a consenter-host node: process spawn to its 'listening on' line.
usage: start-time.py BINARY DATA_DIR RUNS"""
import subprocess, sys, time, signal
binary, data, runs = sys.argv[1], sys.argv[2], int(sys.argv[3])
times = []
for _ in range(runs):
    t0 = time.monotonic()
    p = subprocess.Popen([binary, "start", "--data-dir", data, "--listen", "127.0.0.1:0", "--no-admin"],
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    for line in p.stdout:
        if line.startswith("consenter-host listening on"):
            times.append(time.monotonic() - t0)
            break
    else:
        sys.exit(f"node exited before listening: {p.wait()}")
    p.send_signal(signal.SIGINT)
    p.wait()
times.sort()
print(" ".join(f"{t:.3f}" for t in times), "median", f"{times[len(times)//2]:.3f}")

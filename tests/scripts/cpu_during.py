#!/usr/bin/env python3
"""Each CPU's busy, user, system and softirq share every 0.5 s while a
command runs, beside the command's stderr lines, each stamped with seconds
since the start: which CPU a benchmark's phase saturates, and with what.

Usage: tests/scripts/cpu_during.py target/release/proxy-bench --runs 1 --download-mib 1024
(reads /proc/stat only; stops sampling when the command ends)
"""
import subprocess
import sys
import threading
import time

t0 = time.time()


def per_cpu():
    # cpuN user nice system idle iowait irq softirq steal
    return {l.split()[0]: list(map(int, l.split()[1:9])) for l in open("/proc/stat") if l.startswith("cpu") and l[3] != " "}


stop = threading.Event()


def sample():
    before = per_cpu()
    while not stop.wait(0.5):
        now = per_cpu()
        row = []
        for cpu in sorted(now):
            d = [a - b for a, b in zip(now[cpu], before[cpu])]
            total = sum(d) or 1
            busy = 100 * (total - d[3] - d[4]) / total
            row.append(f"{cpu}: busy {busy:3.0f} usr {100 * (d[0] + d[1]) / total:3.0f} sys {100 * d[2] / total:3.0f} si {100 * d[6] / total:3.0f}")
        print(f"{time.time() - t0:6.1f} " + " | ".join(row), flush=True)
        before = now


sampler = threading.Thread(target=sample)
sampler.start()
try:
    command = subprocess.Popen(sys.argv[1:], stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    for line in command.stderr:
        print(f"{time.time() - t0:6.1f} {line.rstrip()}", flush=True)
    sys.exit(command.wait())
finally:
    stop.set()
    sampler.join()

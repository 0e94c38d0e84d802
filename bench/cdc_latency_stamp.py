#!/usr/bin/env python3
"""Baseline for bench/cdc_latency.sh: reads pg_recvlogical's test_decoding output (include-timestamp=1) on
stdin, stamps every COMMIT line on arrival, and for transactions that inserted into the given table records
arrival time minus commit time. On end of input prints one line:

    <count> <p50 ms> <p99 ms> <max ms> <mean ms>

Standard library only. Usage: pg_recvlogical … -f - | cdc_latency_stamp.py [crm.deals] [samples-file]
"""
import math
import re
import sys
import time
from datetime import datetime

TABLE = sys.argv[1] if len(sys.argv) > 1 else "crm.deals"
SAMPLES = sys.argv[2] if len(sys.argv) > 2 else None
TABLE_PREFIX = f"table {TABLE}: INSERT:".encode()
# COMMIT 1234 (at 2026-11-28 06:27:06.866051+00)
COMMIT = re.compile(rb"^COMMIT(?: \d+)? \(at (.+)\)$")


def parse_ts(text: str) -> float:
    # PostgreSQL prints offsets as +00 or +05:30; fromisoformat wants +00:00.
    m = re.match(r"^(.*[+-])(\d\d)(?::?(\d\d))?$", text)
    if m:
        text = f"{m.group(1)}{m.group(2)}:{m.group(3) or '00'}"
    return datetime.fromisoformat(text).timestamp()


def percentile(sorted_values, p):
    # Nearest rank, like percentile_disc.
    if not sorted_values:
        return float("nan")
    rank = max(1, math.ceil(p * len(sorted_values)))
    return sorted_values[rank - 1]


def main():
    latencies = []
    relevant = False
    stdin = sys.stdin.buffer
    while True:
        line = stdin.readline()
        if not line:
            break
        arrived = time.time()
        line = line.rstrip(b"\n")
        if line.startswith(b"BEGIN"):
            relevant = False
        elif line.startswith(TABLE_PREFIX):
            relevant = True
        elif line.startswith(b"COMMIT"):
            m = COMMIT.match(line)
            if m and relevant:
                latencies.append((arrived - parse_ts(m.group(1).decode())) * 1000.0)
            relevant = False
    if SAMPLES:
        with open(SAMPLES, "w") as f:
            f.writelines(f"{v:.3f}\n" for v in latencies)
    values = sorted(latencies)
    mean = sum(values) / len(values) if values else float("nan")
    print(f"{len(values)} {percentile(values, 0.5):.2f} {percentile(values, 0.99):.2f} "
          f"{values[-1] if values else float('nan'):.2f} {mean:.2f}")


if __name__ == "__main__":
    main()

"""Peak memory of a GCA run of 200 samples x 3 repeats (every sample of every repeat runs as a task).

    python bench/gca_memory.py [--samples 200] [--repeats 3] [--workers 64] [--median 0.0]

Runs gca_evaluation/main.py in a subprocess (cold cache) against the fake server of
bench/gca_throughput.py, answering at once by default, and prints the child's peak resident set
size (getrusage ru_maxrss) beside its wall time and number of calls.
"""
from __future__ import annotations

import argparse
import os
import resource
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.gca_throughput import LatencyLog, run_gca  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--samples", type=int, default=200)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--workers", type=int, default=64)
    p.add_argument("--median", type=float, default=0.0, help="median latency per request (s); 0 = at once")
    args = p.parse_args(argv)
    log = LatencyLog(args.median, 0.5)
    _, wall, _ = run_gca(log, args.samples, args.workers, args.repeats)
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss   # KiB on Linux
    print(f"samples {args.samples} x repeats {args.repeats}, --num_workers {args.workers}: {len(log.rows)} calls, "
          f"wall {wall:.1f} s; peak RSS of the run {peak_kib / 1024:.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())

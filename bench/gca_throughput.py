"""GCA evaluation wall time against its bound: 200 samples, lognormal latency, 64 calls in flight.

    python bench/gca_throughput.py [--samples 200] [--workers 64] [--median 1.0] [--sigma 0.5] [--repeats 1]

Runs gca_evaluation/main.py (in a subprocess, as a user would, cold cache) against the test suite's
fake OpenAI-compatible server in this process. Each request waits a latency drawn from a lognormal
(median --median, shape --sigma) seeded by the request itself, so every run sees the same latency
for the same request whatever the order. No schedule can beat

    bound = max(longest chain, sum of all latencies / --workers)

where a sample's chain is the sum of its simulation calls' latencies (each turn waits for the one
before) plus the slowest of its judge calls (the dimensions are independent). The script prints
wall / bound from this one run; process start-up (imports, ~1-2 s) is inside the wall time.
"""
from __future__ import annotations

import argparse
import copy
import hashlib
import json
import os
import random
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from tests.fakeserver import FakeServer  # noqa: E402
from tests.gca_fakes import kind, responder  # noqa: E402

TEST_SET = os.path.join(ROOT, "..", "shared", "coser-data", "test", "test_set.json")
MARK = re.compile(r"\[bench scene (\d+)\]")


def bench_items(n: int) -> list[dict]:
    """n test items: the published test set's, cycled and renamed (i_c), each scene marked with its number."""
    if os.path.exists(TEST_SET):
        with open(TEST_SET, encoding="utf-8") as f:
            base = json.load(f)
    else:  # without the shared data: the test suite's synthetic items
        from tests.test_faults import gca_test_set
        base = gca_test_set(12)
    items = []
    for k in range(n):
        it = copy.deepcopy(base[k % len(base)])
        it["i_c"] = it["i_c"] + 1000 * (k // len(base))   # a unique key per copy
        it["scenario"] = f"{it['scenario']} [bench scene {k}]"
        items.append(it)
    return items


class LatencyLog:
    """Per request: scene number, kind and the latency it was given."""

    def __init__(self, median: float, sigma: float):
        self.median, self.sigma = median, sigma
        self.rows: list[tuple[int, str, float]] = []
        self.spans: list[tuple[float, float]] = []   # (arrival, departure) of every request
        self.lock = threading.Lock()

    def latency(self, body: dict) -> float:
        seed = hashlib.sha256(json.dumps(body.get("messages"), sort_keys=True).encode()).hexdigest()
        return self.median * random.Random(seed).lognormvariate(0.0, self.sigma)

    def respond(self, body: dict):
        wait = self.latency(body)
        m = MARK.search(body["messages"][0]["content"])
        t0 = time.perf_counter()
        with self.lock:
            self.rows.append((int(m.group(1)) if m else -1, kind(body), wait))
            self.spans.append((t0, t0 + wait))
        time.sleep(wait)
        if kind(body) == "nsp":
            # Scenes end after 5..16 rounds (by the length of the predictor's prompt): chains of many lengths.
            n_rounds = (len(body["messages"]) - 1) // 2
            if n_rounds >= 5 + len(body["messages"][0]["content"]) % 12:
                return "Reasoning: the scene is over.\nNext Speaker: <END CHAT>"
        return responder()(body)

    def bound(self, workers: int) -> tuple[float, float, float, int]:
        """(chain bound, work bound, mean latency, calls)."""
        sim, judge = defaultdict(float), defaultdict(float)
        for scene, k, wait in self.rows:
            if k == "judge":
                judge[scene] = max(judge[scene], wait)
            else:
                sim[scene] += wait
        chain = max(sim[s] + judge[s] for s in set(sim) | set(judge))
        total = sum(w for _, _, w in self.rows)
        return chain, total / workers, total / len(self.rows), len(self.rows)

    def full_until(self, workers: int, start: float) -> tuple[float, float]:
        """(seconds from start until requests in flight first reach `workers`, seconds from when they last
        were at `workers` until the last reply): the ramp-up and the tail of the run."""
        events = sorted([(a, 1) for a, _ in self.spans] + [(d, -1) for _, d in self.spans])
        live, first, last = 0, None, None
        for t, step in events:
            live += step
            if live >= workers:
                first = t if first is None else first
                last = t
        end = events[-1][0]
        return (first - start if first else float("nan")), (end - last if last else float("nan"))


def run_gca(log: LatencyLog, samples: int, workers: int, repeats: int) -> tuple[float, float, int]:
    """gca_evaluation/main.py on `samples` bench items (cold cache) against a fake server answering
    through log; returns (start time, wall seconds, peak requests in flight)."""
    with FakeServer(log.respond) as server, tempfile.TemporaryDirectory() as tmp:
        test_file = os.path.join(tmp, "bench_set.json")
        with open(test_file, "w", encoding="utf-8") as f:
            json.dump(bench_items(samples), f)
        env = dict(os.environ, OPENAI_BASE_URL=server.base_url, OPENAI_API_KEY="sk-bench", PYTHONPATH=ROOT)
        cmd = [sys.executable, os.path.join(ROOT, "gca_evaluation", "main.py"), "--test_file", test_file,
               "--num_workers", str(workers), "--repeats", str(repeats),
               "--exp_dir", os.path.join(tmp, "exp"), "--cache_path", os.path.join(tmp, "cache.sqlite")]
        t0 = time.perf_counter()
        r = subprocess.run(cmd, env=env, cwd=tmp, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if r.returncode != 0:
            raise SystemExit(f"the run failed:\n{r.stderr[-3000:]}")
        return t0, wall, server.max_in_flight


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--samples", type=int, default=200)
    p.add_argument("--workers", type=int, default=64, help="--num_workers: the calls in flight")
    p.add_argument("--median", type=float, default=1.0, help="median latency per request (s)")
    p.add_argument("--sigma", type=float, default=0.5, help="lognormal shape of the latency")
    p.add_argument("--repeats", type=int, default=1, help="--repeats of the run (3 = the paper's)")
    args = p.parse_args(argv)
    log = LatencyLog(args.median, args.sigma)
    t0, wall, peak = run_gca(log, args.samples, args.workers, args.repeats)
    first_request = min(a for a, _ in log.spans) - t0
    chain, work, mean, calls = log.bound(args.workers)
    bound = max(chain, work)
    print(f"samples {args.samples} x repeats {args.repeats}, --num_workers {args.workers}, {calls} calls, "
          f"latency lognormal(median {args.median} s, sigma {args.sigma}): mean {mean:.3f} s")
    print(f"longest chain {chain:.2f} s; all latencies / {args.workers} = {work:.2f} s; bound {bound:.2f} s")
    ramp, tail = log.full_until(args.workers, t0)
    print(f"first request {first_request:.2f} s after start (imports, set-up); {args.workers} in flight from "
          f"{ramp:.2f} s; fewer for the last {tail:.2f} s")
    print(f"wall {wall:.2f} s (peak requests in flight {peak}); wall / bound = {wall / bound:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

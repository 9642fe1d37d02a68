"""GCA evaluation throughput: the same N-sample simulation + judging with 1 vs many workers.

    python bench/gca_throughput.py [--latency 0.05] [--samples 16] [--workers 1 32]

Runs gca_evaluation/main.py (as a user would, in a subprocess) against the test suite's fake
OpenAI-compatible server with a fixed per-request latency and a cold cache. Within a sample the
turns are sequential, so no worker count can beat the critical path: the longest sample's chain
of simulation calls plus the longest chain of judge calls (the two stages run one after the
other), times the latency. Process start-up (imports) is included in both wall times.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from http.server import BaseHTTPRequestHandler

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from tests.fakeserver import FakeServer  # noqa: E402
from tests.gca_fakes import kind, responder  # noqa: E402

TEST_SET = os.path.join(ROOT, "..", "shared", "coser-data", "test", "test_set.json")


def _nsp(body: dict) -> str:
    # Scenes end at different rounds (5..16), so samples have chains of different lengths.
    n_rounds = (len(body["messages"]) - 1) // 2
    if n_rounds >= 5 + len(body["messages"][0]["content"]) % 12:
        return "Reasoning: the scene is over.\nNext Speaker: <END CHAT>"
    return responder()(body)


def respond(body: dict):
    return _nsp(body) if kind(body) == "nsp" else responder()(body)


def run(server: FakeServer, workers: int, samples: int, tmp: str, test_set: str = TEST_SET) -> tuple[float, str]:
    out = os.path.join(tmp, f"w{workers}-{os.path.basename(test_set)}")
    env = dict(os.environ, OPENAI_BASE_URL=server.base_url, OPENAI_API_KEY="sk-bench", COSER_RETRY_BASE="0.01",
               PYTHONPATH=ROOT)
    cmd = [sys.executable, os.path.join(ROOT, "gca_evaluation", "main.py"), "--test_file", test_set,
           "--limit", str(samples), "--num_workers", str(workers), "--exp_dir", os.path.join(out, "exp"),
           "--cache_path", os.path.join(out, "cache.sqlite")]
    server.reset()
    t0 = time.perf_counter()
    r = subprocess.run(cmd, env=env, cwd=tmp, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"run with {workers} workers failed:\n{r.stderr[-2000:]}")
    return wall, os.path.join(out, "exp")


def critical_path_calls(exp_dir: str) -> tuple[int, int, int]:
    """(longest simulation chain, longest judge chain, total calls) from the written files."""
    name = "test_set_gpt-4o.json"
    with open(os.path.join(exp_dir, "simulation", name), encoding="utf-8") as f:
        sims = json.load(f)
    sim_chain = max(len(rec["simulation"]) for rec in sims)  # one call per logged turn (no empty replies here)
    judge_chain = 4  # one call per dimension, every reply valid
    total = sum(len(rec["simulation"]) for rec in sims) + 4 * len(sims)
    return sim_chain, judge_chain, total


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--latency", type=float, default=0.05, help="seconds the fake server waits per request")
    p.add_argument("--samples", type=int, default=16, help="test samples (first N of the published test set)")
    p.add_argument("--workers", type=int, nargs=2, default=[1, 32], metavar=("FEW", "MANY"))
    args = p.parse_args(argv)
    if not os.path.exists(TEST_SET):
        raise SystemExit(f"shared CoSER data not present: {os.path.normpath(TEST_SET)}")
    # The fake server writes headers and body separately; without this each reply waits for a
    # delayed ACK (~40 ms), which would swamp the latency being measured.
    BaseHTTPRequestHandler.disable_nagle_algorithm = True
    with FakeServer(respond, latency=args.latency) as server, tempfile.TemporaryDirectory() as tmp:
        few, many = args.workers
        empty = os.path.join(tmp, "empty.json")
        with open(empty, "w", encoding="utf-8") as f:
            f.write("[]")
        t_start, _ = run(server, many, args.samples, tmp, empty)  # imports, settings, files: no LLM call
        t_few, exp_few = run(server, few, args.samples, tmp)
        n_req = len(server.chat_requests())
        t_many, exp_many = run(server, many, args.samples, tmp)
        peak = server.max_in_flight
        same = all(open(os.path.join(exp_few, s, "test_set_gpt-4o.json"), "rb").read()
                   == open(os.path.join(exp_many, s, "test_set_gpt-4o.json"), "rb").read()
                   for s in ("simulation", "evaluation"))
        sim_chain, judge_chain, total = critical_path_calls(exp_many)
    bound = (sim_chain + judge_chain) * args.latency
    print(f"samples {args.samples}, latency {args.latency:.3f} s, LLM calls {n_req} (from files: {total})")
    print(f"--num_workers {few:>3}: {t_few:7.2f} s   (serial bound {total * args.latency:.2f} s)")
    print(f"--num_workers {many:>3}: {t_many:7.2f} s   (peak requests in flight {peak})")
    print(f"speed-up {t_few / t_many:.1f}x")
    print(f"critical-path bound: ({sim_chain} simulation + {judge_chain} judge calls) x {args.latency} s "
          f"= {bound:.2f} s; many-worker wall / bound = {t_many / bound:.2f}")
    print(f"process start-up (same command on an empty test set): {t_start:.2f} s; "
          f"(wall - start-up) / bound = {(t_many - t_start) / bound:.2f}")
    print(f"identical output files: {same}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())

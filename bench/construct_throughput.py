"""Construction of two books against its bound: Othello and King Lear, 2048-token chunks, 1 s per call.

    python bench/construct_throughput.py [--books Othello "King Lear"] [--chunk_size 2048] [--latency 1.0] [--workers 16]

Runs data_construction/main.py (in a subprocess, as a user would, cold cache) on books of the
published books_example.jsonl against the test suite's scripted fake server. A book's chunks are a
chain (each extraction carries the previous chunk's unfinished plot), and after its last chunk at
least one enhancement and then its profiles must still run, so no schedule can beat

    bound = max(max over books of (extraction calls + 2) x latency, all calls x latency / --workers)

The script prints wall / bound from this one run; process start-up is inside the wall time.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from tests import construction_script as S  # noqa: E402
from tests.fakeserver import FakeServer  # noqa: E402

BOOKS = os.path.join(ROOT, "..", "shared", "coser-data", "src", "books_example.jsonl")


def book_of(body: dict, titles: list[str]) -> str:
    text = body["messages"][-1]["content"]
    return next((t for t in titles if f'"{t}"' in text or f"'{t}'" in text or t in text[:400]), "?")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--books", nargs="+", default=["Othello", "King Lear"])
    p.add_argument("--chunk_size", type=int, default=2048)
    p.add_argument("--latency", type=float, default=1.0, help="seconds the fake server waits per request")
    p.add_argument("--workers", type=int, default=16, help="--num_workers: the calls in flight")
    args = p.parse_args(argv)
    if not os.path.exists(BOOKS):
        raise SystemExit(f"shared CoSER data not present: {os.path.normpath(BOOKS)}")
    with FakeServer(S.respond, latency=args.latency) as server, tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ, OPENAI_BASE_URL=server.base_url, OPENAI_API_KEY="sk-bench", PYTHONPATH=ROOT)
        cmd = [sys.executable, os.path.join(ROOT, "data_construction", "main.py"), "--input", BOOKS,
               "--books", *args.books, "--output_dir", os.path.join(tmp, "data"), "--model", "gpt-4o",
               "--chunk_size", str(args.chunk_size), "--num_workers", str(args.workers),
               "--cache_path", os.path.join(tmp, "cache.sqlite")]
        t0 = time.perf_counter()
        r = subprocess.run(cmd, env=env, cwd=tmp, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if r.returncode != 0:
            raise SystemExit(f"the run failed:\n{r.stderr[-3000:]}")
        reqs = server.chat_requests()
        peak = server.max_in_flight
    chains = Counter(book_of(b, args.books) for b in reqs if S.kind(b) == "extract")
    kinds = Counter(S.kind(b) for b in reqs)
    chain = (max(chains.values()) + 2) * args.latency
    work = len(reqs) * args.latency / args.workers
    bound = max(chain, work)
    print(f"books {', '.join(args.books)}; --chunk_size {args.chunk_size}; --num_workers {args.workers}; "
          f"{len(reqs)} calls at {args.latency} s ({', '.join(f'{k} {n}' for k, n in sorted(kinds.items()))})")
    print(f"extraction chain per book: {', '.join(f'{b} {n}' for b, n in chains.items())}")
    print(f"chain bound ({max(chains.values())} + 2) x {args.latency} = {chain:.2f} s; "
          f"calls x latency / workers = {work:.2f} s; bound {bound:.2f} s")
    print(f"wall {wall:.2f} s (peak requests in flight {peak}); wall / bound = {wall / bound:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Assembly throughput: one book's enhancement, names and profile calls with 1 vs 16 workers.

    python bench/construct_throughput.py [--latency 0.2] [--plots 20] [--workers 1 16]

Runs against the test suite's fake OpenAI-compatible server with a fixed per-request latency
and no cache, so the wall time measures only how well independent calls overlap.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from coser.config import Settings  # noqa: E402
from coser.llm import LLM  # noqa: E402
from data_construction.assemble import assemble_book  # noqa: E402
from tests import construction_script  # noqa: E402
from tests.fakeserver import FakeServer  # noqa: E402


def synthetic_book(n_plots: int, convs_per_plot: int = 2) -> dict:
    cast = ["Iago", "Roderigo", "Othello", "Desdemona", "Michael Cassio", "Emilia", "Brabantio"]
    plots = []
    for i in range(n_plots):
        names = [cast[i % len(cast)], cast[(i + 1) % len(cast)]]
        convs = [{"scenario": f"scene {i}.{c}", "topic": "t",
                  "key_characters": [{"name": n, "motivation": "m"} for n in names],
                  "dialogues": [{"character": names[u % 2], "message": f"[thinks] line {u}"} for u in range(10)]}
                 for c in range(convs_per_plot)]
        plots.append({"text": f"text {i}", "summary": f"summary {i}", "prominence": 50,
                      "key_characters": [{"name": n, "description": "d", "experience": "e"} for n in names],
                      "chapter": "I", "conversation": convs, "state": "finished", "i_chunk": i})
    return {"chapter_beginnings": [], "plots": plots, "fail_to_parse_responses": []}


def run(server: FakeServer, book: dict, workers: int, out_dir: str) -> tuple[float, int]:
    settings = Settings(api_key="sk-bench", base_url=server.base_url, retry_base=0.01, timeout=30,
                        cache_dir=os.path.join(out_dir, ".cache"))
    llm = LLM(settings, cache=None, max_in_flight=workers, use_cache=False)
    server.reset()
    t0 = time.perf_counter()
    assemble_book(llm, f"Bench {workers}", book, out_dir, "gpt-4o", "gpt-4o", num_workers=workers)
    return time.perf_counter() - t0, len(server.chat_requests())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--latency", type=float, default=0.2, help="seconds the fake server waits per request")
    p.add_argument("--plots", type=int, default=20, help="plots in the synthetic book (2 conversations each)")
    p.add_argument("--workers", type=int, nargs=2, default=[1, 16], metavar=("FEW", "MANY"))
    args = p.parse_args(argv)
    book = synthetic_book(args.plots)
    with FakeServer(construction_script.respond, latency=args.latency) as server, \
            tempfile.TemporaryDirectory() as tmp:
        times = {}
        for w in args.workers:
            seconds, calls = run(server, book, w, os.path.join(tmp, str(w)))
            times[w] = seconds
            print(f"workers={w:<3} calls={calls:<4} wall={seconds:7.2f}s  max in flight={server.max_in_flight}")
        few, many = args.workers
        print(f"speed-up {few} -> {many} workers: {times[few] / times[many]:.1f}x "
              f"(latency {args.latency}s per call)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

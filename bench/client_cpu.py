"""Client CPU per LLM call with many calls in flight, against a server that answers at once.

    python bench/client_cpu.py [--in_flight 256] [--calls 4096] [--no_cache] [--profile]

The fake OpenAI-compatible server runs in a child process, so this process's CPU time is the
client's alone: LLM.chat with the response cache on (as every script runs), --in_flight threads
each sending GCA-sized requests (a 4,000-character system prompt and a 20-turn history, every
request different, so each is a cache miss and a cache write). Prints CPU ms per call and the
calls per second the client sustains; --profile adds the top functions by own time.
"""
from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from coser.cache import Cache  # noqa: E402
from coser.config import Settings  # noqa: E402
from coser.llm import LLM  # noqa: E402

SERVER = """
import sys, time
sys.path.insert(0, sys.argv[1])
from tests.fakeserver import FakeServer
srv = FakeServer(lambda body: "[thinks] (nods) A short reply of about twenty words, as actors give, " * 2).start()
print(srv.base_url, flush=True)
sys.stdin.read()   # until the parent closes the pipe
"""


def messages(k: int) -> list[dict]:
    system = ("You are playing Iago, a character from Othello. " * 80)[:4000] + f" (request {k})"
    turns = [{"role": "user" if t % 2 else "assistant", "content": f"Othello: turn {t} of the scene, " * 6}
             for t in range(20)]
    return [{"role": "system", "content": system}] + turns


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--in_flight", type=int, default=256)
    p.add_argument("--calls", type=int, default=4096)
    p.add_argument("--no_cache", action="store_true", help="without the response cache")
    p.add_argument("--profile", action="store_true", help="print the top functions by own CPU time")
    args = p.parse_args(argv)
    server = subprocess.Popen([sys.executable, "-c", SERVER, ROOT], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True)
    try:
        base_url = server.stdout.readline().strip()
        with tempfile.TemporaryDirectory() as tmp:
            settings = Settings(api_key="sk-bench", base_url=base_url, cache_dir=tmp, timeout=60)
            cache = None if args.no_cache else Cache(os.path.join(tmp, "llm_cache.sqlite"))
            llm = LLM(settings, cache=cache, max_in_flight=args.in_flight, use_cache=not args.no_cache)
            llm.chat("gpt-4o", messages(-1), stage="warm-up")   # imports, client and connection set-up
            todo = iter(range(args.calls))
            lock = threading.Lock()

            profiles: list = []

            def worker():
                prof = cProfile.Profile() if args.profile else None   # cProfile sees one thread
                if prof:
                    prof.enable()
                while True:
                    with lock:
                        k = next(todo, None)
                    if k is None:
                        break
                    llm.chat("gpt-4o", messages(k), stage="bench")
                if prof:
                    prof.disable()
                    with lock:
                        profiles.append(prof)

            threads = [threading.Thread(target=worker) for _ in range(args.in_flight)]
            cpu0, t0 = time.process_time(), time.perf_counter()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            cpu, wall = time.process_time() - cpu0, time.perf_counter() - t0
    finally:
        server.stdin.close()
        server.wait(10)
    print(f"{args.calls} calls, {args.in_flight} in flight, cache {'off' if args.no_cache else 'on'}: "
          f"client CPU {cpu * 1000 / args.calls:.2f} ms per call; {args.calls / wall:.0f} calls/s "
          f"(wall {wall:.2f} s)")
    if profiles:
        pstats.Stats(*profiles).sort_stats(os.environ.get("BENCH_SORT", "tottime")).print_stats(int(os.environ.get("BENCH_TOP", "25")))
    return 0


if __name__ == "__main__":
    sys.exit(main())

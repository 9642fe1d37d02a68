"""Cache cost per call at 100 vs 100,000 entries (the reference re-pickled its whole cache per call).

    python bench/cache_cost.py [--big 100000]

Measures, in one run, the mean time of a cache write and of a cache hit through the production
client (LLM.chat answered from the SQLite cache) for a small and a large cache file, and prints
the ratio large/small. O(1) writes mean a ratio near 1.
"""
import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from coser.cache import Cache, cache_key  # noqa: E402
from coser.config import Settings  # noqa: E402
from coser.llm import LLM  # noqa: E402


def fill(cache: Cache, n: int) -> None:
    conn = cache._conn()
    conn.execute("BEGIN")
    for i in range(n):
        req = {"model": "m", "messages": [{"role": "user", "content": f"prompt {i}"}], "max_tokens": 16384,
               "temperature": 0.0, "nth_generation": 0}
        conn.execute("INSERT OR REPLACE INTO responses(key, model, stage, created, request, response) VALUES (?,?,?,?,?,?)",
                     (cache_key(req), "m", "bench", 0.0, "{}", '{"content": "' + "x" * 400 + '"}'))
    conn.execute("COMMIT")


def measure(n: int, probes: int = 300) -> tuple[float, float]:
    with tempfile.TemporaryDirectory() as d:
        cache = Cache(os.path.join(d, "c.sqlite"))
        fill(cache, n)
        llm = LLM(Settings(api_key="unused", cache_dir=d), cache=cache)
        t0 = time.perf_counter()
        for i in range(probes):
            req = {"model": "m", "i": i, "messages": [{"role": "user", "content": f"new {i}"}]}
            cache.put(cache_key(req), req, {"content": "y" * 400}, "bench")
        write = (time.perf_counter() - t0) / probes
        t0 = time.perf_counter()
        for i in range(probes):
            llm.chat("m", [{"role": "user", "content": f"prompt {i * (n // probes or 1) % n}"}])
        hit = (time.perf_counter() - t0) / probes
        return write, hit


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--small", type=int, default=100)
    ap.add_argument("--big", type=int, default=100_000)
    a = ap.parse_args()
    ws, hs = measure(a.small)
    wb, hb = measure(a.big)
    print(f"entries   write/call   hit/call (through LLM.chat)")
    print(f"{a.small:>7}   {ws * 1e6:8.1f} us   {hs * 1e6:8.1f} us")
    print(f"{a.big:>7}   {wb * 1e6:8.1f} us   {hb * 1e6:8.1f} us")
    print(f"ratio {a.big}/{a.small}: write {wb / ws:.2f}x, hit {hb / hs:.2f}x")


if __name__ == "__main__":
    main()

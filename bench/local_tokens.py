"""Embedded model tokens per second: through the toolkit (LLM.chat, cache off) vs llama-cpp-python directly.

    python bench/local_tokens.py [--runs 3] [--max_tokens 128]
"""
import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from coser import local  # noqa: E402
from coser.config import Settings  # noqa: E402
from coser.llm import LLM  # noqa: E402

PROMPTS = ["Tell a short story about a lighthouse keeper.", "Describe a storm at sea in detail.",
           "Write a dialogue between a king and his fool."]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--max_tokens", type=int, default=128)
    a = ap.parse_args()
    s = Settings(local_max_tokens=a.max_tokens)
    llm = LLM(s, use_cache=False)
    model = local._load(s.local_n_ctx)
    direct_tok = direct_t = tk_tok = tk_t = 0.0
    for r in range(a.runs):
        for p in PROMPTS:
            msgs = [{"role": "user", "content": p}]
            t0 = time.perf_counter()
            out = model.create_chat_completion(messages=msgs, max_tokens=a.max_tokens, temperature=0.0, seed=r)
            direct_t += time.perf_counter() - t0
            direct_tok += out["usage"]["completion_tokens"]
            before = llm.usage.totals()["completion_tokens"]
            t0 = time.perf_counter()
            llm.chat("local", msgs, max_tokens=a.max_tokens, nth_generation=r, temperature=0.0)
            tk_t += time.perf_counter() - t0
            tk_tok += llm.usage.totals()["completion_tokens"] - before
    d, t = direct_tok / direct_t, tk_tok / tk_t
    print(f"llama-cpp-python direct: {d:7.1f} tokens/s ({int(direct_tok)} tokens)")
    print(f"toolkit LLM.chat:        {t:7.1f} tokens/s ({int(tk_tok)} tokens)")
    print(f"ratio toolkit/direct: {t / d:.2f}")


if __name__ == "__main__":
    main()

"""Batch mode vs online for the GCA judge stage: same evaluation, half the cost; resume after kill -9.

    python bench/batch_cost.py [--samples 50] [--poll 0.05]

One run of gca_evaluation/main.py --simulation_file (as a user would, in a subprocess) judges a
synthetic simulation file online, then the same with --batch against the test suite's fake Batch API,
then once more with --batch killed by SIGKILL while it polls and rerun, then through
--batch_export / a `vllm run-batch` stand-in / --batch_import. Every judge reply is a pure function
of its request, and one in five first replies is prose, so those cases take the reference protocol's
repair and regeneration: three batch rounds. Prints a Markdown table for bench/RESULTS.md.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from http.server import BaseHTTPRequestHandler

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from tests.batch_fakes import config, judge, write_simulation  # noqa: E402
from tests.fakeserver import FakeServer  # noqa: E402

GCA = os.path.join(ROOT, "gca_evaluation", "main.py")
STANDIN = os.path.join(ROOT, "tests", "vllm_standin.py")


def command(tmp: str, name: str, *extra: str) -> list[str]:
    return [sys.executable, GCA, "--simulation_file", os.path.join(tmp, "sim.json"), "--judge_model", "gpt-4o",
            "--num_workers", "8", "--config", os.path.join(tmp, "config.json"),
            "--exp_dir", os.path.join(tmp, name, "exp"), "--cache_path", os.path.join(tmp, name, "cache.sqlite"),
            *extra]


def run(cmd: list[str], env: dict) -> float:
    t0 = time.perf_counter()
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[1:3])} failed:\n{r.stderr[-2000:]}")
    return time.perf_counter() - t0


def evaluation(tmp: str, name: str) -> dict:
    folder = os.path.join(tmp, name, "exp", "evaluation")
    (only,) = [f for f in os.listdir(folder) if f.endswith(".json")]
    with open(os.path.join(folder, only), encoding="utf-8") as f:
        return json.load(f)


def totals(tmp: str, name: str) -> dict:
    """Calls, batch calls and exact cost summed over every invocation's record (exp/runs/)."""
    out = {"calls": 0, "batch_calls": 0, "cost_usd": 0.0}
    runs = os.path.join(tmp, name, "exp", "runs")
    for fname in sorted(os.listdir(runs)):
        if fname.endswith(".json"):
            with open(os.path.join(runs, fname), encoding="utf-8") as f:
                usage = json.load(f).get("usage") or {"rows": []}
            for row in usage["rows"]:
                out["calls"] += row["calls"]
                out["batch_calls"] += row["batch_calls"]
                out["cost_usd"] += row["cost_usd"] or 0.0
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--samples", type=int, default=50, help="simulated scenes to judge (4 judge calls each)")
    p.add_argument("--poll", type=float, default=0.05, help="--batch_poll seconds")
    args = p.parse_args(argv)
    BaseHTTPRequestHandler.disable_nagle_algorithm = True
    server = FakeServer(responder=judge()).start()
    env = dict(os.environ, OPENAI_BASE_URL=server.base_url, OPENAI_API_KEY="sk-bench", COSER_RETRY_BASE="0.01",
               PYTHONPATH=ROOT)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        write_simulation(os.path.join(tmp, "sim.json"), args.samples)
        config(os.path.join(tmp, "config.json"))
        poll = ["--batch_poll", str(args.poll)]

        wall = run(command(tmp, "online"), env)
        ref = evaluation(tmp, "online")
        rows.append(("online", wall, len(server.chat_requests()), {}, totals(tmp, "online"), True))

        server.reset()
        wall = run(command(tmp, "batch", "--batch", *poll), env)
        rows.append(("--batch", wall, len(server.chat_requests()), dict(server.batches.counts),
                     totals(tmp, "batch"), evaluation(tmp, "batch") == ref))

        # Killed by SIGKILL while polling its first batch, then rerun: the same batch is resumed.
        server.reset()
        server.batches = type(server.batches)(server)
        server.batches.steps = 20
        t0 = time.perf_counter()
        proc = subprocess.Popen(command(tmp, "killed", "--batch", *poll), env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        while server.batches.counts["poll"] < 5 and proc.poll() is None:
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        before = dict(server.batches.counts)
        server.batches.steps = 1
        run(command(tmp, "killed", "--batch", *poll), env)
        counts = dict(server.batches.counts)
        counts["created before the kill"] = before["create"]
        rows.append(("--batch, kill -9 at poll 5, rerun", time.perf_counter() - t0, len(server.chat_requests()),
                     counts, totals(tmp, "killed"), evaluation(tmp, "killed") == ref))

        # --batch_export -> vllm run-batch stand-in -> --batch_import, round by round.
        server.reset()
        t0, imports, sent_by_toolkit = time.perf_counter(), [], 0
        for n in range(1, 10):
            req, res = os.path.join(tmp, f"req{n}.jsonl"), os.path.join(tmp, f"res{n}.jsonl")
            before = len(server.chat_requests())
            run(command(tmp, "files", *sum((["--batch_import", x] for x in imports), []), "--batch_export", req), env)
            sent_by_toolkit += len(server.chat_requests()) - before
            if not os.path.exists(req):
                break
            subprocess.run([sys.executable, STANDIN, "-i", req, "-o", res, "--url", server.base_url], check=True)
            imports.append(res)
        rows.append((f"--batch_export / vllm stand-in / --batch_import ({len(imports)} rounds)",
                     time.perf_counter() - t0, sent_by_toolkit, {"files answered offline": len(imports)},
                     totals(tmp, "files"), evaluation(tmp, "files") == ref))
    server.stop()

    base = rows[0][4]["cost_usd"]
    print(f"{args.samples} scenes x 4 dimensions, judge gpt-4o priced 2.50 / 10.00 USD per 1M tokens "
          "(batch: half, the default)\n")
    print("| run | wall | requests online | Batch API requests | LLM calls (of which batch) | cost USD | "
          "cost / online | evaluation == online |")
    print("|---|---:|---:|---|---:|---:|---:|---|")
    for name, wall, online, counts, t, same in rows:
        api = ", ".join(f"{k} {v}" for k, v in counts.items()) or "-"
        print(f"| {name} | {wall:.2f} s | {online} | {api} | {t['calls']} ({t['batch_calls']}) | "
              f"{t['cost_usd']:.6f} | {t['cost_usd'] / base:.3f} | {'yes' if same else 'NO'} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

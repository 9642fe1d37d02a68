"""Batch mode: a stage's calls answered by a Batch API (half price, up to 24 h) or an offline batch run.

Batch mode is a cache prefill. The stage runs with the client in *collect* mode: a cache miss records
the exact request the cache keys on and raises `Deferred` instead of sending it; the stage leaves that
item pending (`deferrable`, `check`). The pending requests go out as batches (one per model and
endpoint, at most 50,000 lines each, custom_id = the cache key); their answers are stored in the
response cache under the key an online call would use, and the stage runs again, now on cache hits.
A reply that fails parsing asks for the next generation, which simply becomes the next round.

State (batch ids, their custom_ids, answered keys, per-request failures) is saved atomically in
`{output folder}/batches/NAME.json` after every change, so a killed run resumes polling the same
batches instead of paying twice. `--batch_export` writes the pending requests as Batch JSONL files
and stops; `--batch_import` loads the results of such files (OpenAI's output format or
`vllm run-batch`'s) and sends nothing that they answer.
"""
from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from typing import Callable

from . import batchfiles as BF
from .errors import BatchExported, CoserError, InputError
from .io import atomic_write_json, read_json
from .llm import _estimate
from .tokens import count_tokens

STATE_VERSION = 1
DEFAULT_ROUNDS = 64   # bound on batch rounds per stage (construction's extraction is one round per chunk)


class Deferred(BaseException):
    """A call whose answer waits in a batch. A BaseException, so no `except Exception` on the way
    records it as a failed item; stages turn it into a pending item with `deferrable`."""


PENDING = object()


def deferrable(fn: Callable) -> Callable:
    """fn for map_ordered: a Deferred item yields PENDING, so the other items still collect their calls."""
    def run(item):
        try:
            return fn(item)
        except Deferred:
            return PENDING
    return run


def check(results: list) -> list:
    """Raise Deferred when some item of a stage is still waiting for a batch."""
    if any(r is PENDING for r in results):
        raise Deferred()
    return results


def add_args(parser: argparse.ArgumentParser, what: str) -> None:
    g = parser.add_argument_group("batch mode (README 'Batch mode')")
    g.add_argument("--batch", action="store_true",
                   help=f"send {what} through the endpoint's Batch API (half price, answers within 24 h); "
                        "a killed run resumes the same batches")
    g.add_argument("--batch_export", default=None, metavar="PATH",
                   help="write the pending requests as Batch JSONL (one model per file, PATH-N when split) and "
                        "stop, e.g. for `vllm run-batch -i PATH -o RESULTS`")
    g.add_argument("--batch_import", action="append", default=None, metavar="PATH",
                   help="load a batch results file (OpenAI output or vllm run-batch output) into the cache "
                        "first; repeatable")
    g.add_argument("--batch_poll", type=float, default=30.0, metavar="SECONDS",
                   help="seconds between batch status polls (default %(default)s)")
    g.add_argument("--batch_rounds", type=int, default=DEFAULT_ROUNDS, metavar="N",
                   help="at most N batch rounds per stage; what is still pending then runs online "
                        "(default %(default)s)")


def enabled(args) -> bool:
    return bool(getattr(args, "batch", False) or getattr(args, "batch_export", None)
                or getattr(args, "batch_import", None))


class Session:
    """The batch state of one stage, shared by the client's worker threads during a pass."""

    def __init__(self, llm, path: str):
        self.llm, self.path = llm, path
        self.lock = threading.Lock()
        self.state = _load(path)
        self.answered = set(self.state["answered"])
        self.empty = set(self.state["empty"])
        # Requests that failed in batches as often as an online call may fail go online instead.
        self.max_failures = max(1, int(llm.settings.max_attempts))
        self.released = {k for k, n in self.state["failures"].items() if n >= self.max_failures}
        self.pending: dict[str, dict] = {}
        self.hits: list[tuple[str, str]] = []
        self.polls = 0

    # -- called by LLM.chat (any thread) ----------------------------------------------------------
    def hit(self, key: str, model: str, stage: str) -> None:
        with self.lock:
            if key not in self.answered:  # a batch answer is counted as a batch call, not as a hit
                self.hits.append((model, stage))

    def miss(self, key: str, request: dict, model: str, stage: str) -> str | None:
        """The reply a batch of this session brought (even if since rejected: an online run sees each
        reply once before asking again), None to call online, or Deferred."""
        if key in self.empty:
            return ""
        if key in self.answered:
            row = self.llm.cache.get(key, include_rejected=True)
            if row is not None and isinstance(row.get("content"), str):
                return row["content"]
        if key in self.released:
            return None
        with self.lock:
            self.pending[key] = {"model": model, "request": request, "stage": stage}
        raise Deferred()

    # -- the driver's side ----------------------------------------------------------------------
    def save(self) -> None:
        self.state["answered"] = sorted(self.answered)
        self.state["empty"] = sorted(self.empty)
        atomic_write_json(self.path, self.state, indent=None)

    def store(self, results: list[BF.Result]) -> int:
        """Answers into the cache under their online keys; failures counted. Returns the number stored."""
        stored = 0
        cache, usage = self.llm.cache, self.llm.usage
        for r in results:
            p = self.pending.get(r.custom_id)
            if p is None or r.custom_id in self.answered:
                continue  # not asked by this pass (an older round's line), or already in
            if r.content is None:
                fails = self.state["failures"]
                fails[r.custom_id] = fails.get(r.custom_id, 0) + 1
                if fails[r.custom_id] >= self.max_failures:
                    self.released.add(r.custom_id)
                continue
            if not (r.prompt_tokens or r.completion_tokens):  # a results file without usage: estimate, as online
                r.prompt_tokens, r.completion_tokens = _estimate(p["request"]["messages"]), count_tokens(r.content)
            if r.content == "":
                self.empty.add(r.custom_id)  # as online: an empty reply is not cached
            else:
                cache.put(r.custom_id, p["request"], {"content": r.content, "prompt_tokens": r.prompt_tokens,
                                                      "completion_tokens": r.completion_tokens}, p["stage"])
            usage.record(p["model"], p["stage"], r.prompt_tokens, r.completion_tokens, batch=True)
            self.answered.add(r.custom_id)
            stored += 1
        self.save()
        return stored

    def groups(self, keys: list[str]) -> dict[tuple, list[str]]:
        """Pending keys per (model entry, model sent): a batch never mixes models or endpoints."""
        out: dict[tuple, list[str]] = {}
        for k in keys:
            route = self.llm.route(self.pending[k]["model"])
            out.setdefault((route.entry or "", route.sent, self.pending[k]["model"]), []).append(k)
        return out

    def lines(self, keys: list[str]) -> list[str]:
        return [BF.request_line(k, self.llm.batch_body(self.pending[k]["model"], self.pending[k]["request"]))
                for k in keys]


def run_stage(llm, fn: Callable, state_path: str, args, label: str):
    """Run fn to completion; in batch mode its deferred calls are answered by batches first."""
    if not enabled(args):
        return fn()
    if llm.cache is None:
        raise CoserError("batch mode stores every answer in the response cache: drop --no_cache")
    if getattr(args, "batch_rounds", 1) < 1 or getattr(args, "batch_poll", 1) < 0:
        raise CoserError("--batch_rounds must be at least 1 and --batch_poll at least 0")
    session = Session(llm, state_path)
    imported = {}
    for path in getattr(args, "batch_import", None) or []:
        imported.update({r.custom_id: r for r in BF.read_results(path)})
    rounds = 0
    while True:
        done, result = _pass(llm, session, fn)
        if done:
            _finish(llm, session, label, rounds, len(imported))
            return result
        waiting = list(session.pending)
        if imported and session.store([imported[k] for k in waiting if k in imported]):
            continue
        inflight = {k for b in session.state["batches"] if not b.get("done") for k in b["custom_ids"]}
        new = [k for k in waiting if k not in inflight]
        if getattr(args, "batch_export", None) and new:
            _export(session, new, args.batch_export, label)
        if not getattr(args, "batch", False) or rounds >= args.batch_rounds:
            if not inflight:
                _release(session, new, label)
                continue
            new = []
        if new:
            llm.usage.check_budget()
            _submit(session, new, label)
            rounds += 1
        _await(session, args.batch_poll)


def _pass(llm, session: Session, fn) -> tuple[bool, object]:
    session.pending, session.hits = {}, []
    llm.batch = session
    try:
        return True, fn()
    except Deferred:
        return False, None
    finally:
        llm.batch = None


def _finish(llm, session: Session, label: str, rounds: int, imported: int) -> None:
    for model, stage in session.hits:
        llm.usage.record(model, stage, cached=True)
    # For the run record: which batches answered this stage (ids and endpoints, never keys).
    llm.batch_runs.append({"stage": label, "rounds": rounds, "polls": session.polls, "imported_lines": imported,
                           "answered": len(session.answered), "online_after_batches": len(session.released),
                           "batches": [{k: b.get(k) for k in ("id", "model", "endpoint", "status")}
                                       | {"requests": len(b["custom_ids"])} for b in session.state["batches"]]})
    try:
        os.unlink(session.path)
    except OSError:
        pass


def _release(session: Session, keys: list[str], label: str) -> None:
    if not keys:  # cannot happen (a deferred call is pending or in flight); never loop on it
        raise CoserError(f"{label}: batch mode made no progress")
    print(f"note: {label}: {len(keys)} request(s) not answered by a batch go online", file=sys.stderr)
    session.released.update(keys)


def _export(session: Session, keys: list[str], path: str, label: str) -> None:
    groups = [lines for ks in session.groups(keys).values() for _, lines in BF.split(ks, session.lines(ks))]
    paths = BF.write_requests(path, groups)
    session.save()
    shown = paths[0] if len(paths) == 1 else f"{paths[0]} .. {paths[-1]} ({len(paths)} files)"
    raise BatchExported(f"{label}: wrote {len(keys)} pending request(s) to {shown}; answer them (e.g. vllm "
                        f"run-batch -i FILE -o RESULTS), then rerun the same command with --batch_import RESULTS")


def _submit(session: Session, keys: list[str], label: str) -> None:
    from .batchapi import BatchAPI

    for (_, _, model), ks in session.groups(keys).items():
        api = BatchAPI(session.llm, session.llm.route(model))
        for part, lines in BF.split(ks, session.lines(ks)):
            rec = {"model": model, "endpoint": api.route.shown, "custom_ids": part, "done": False}
            rec["input_file_id"] = api.upload("coser-batch.jsonl", "".join(lines).encode("utf-8"))
            session.state["batches"].append(rec)
            session.save()   # killed from here on, a rerun finds the batch made from this file (or makes it)
            rec.update(api.create(rec["input_file_id"], {"coser": label[:500]}))
            session.save()
            print(f"note: {label}: batch {rec['id']} ({len(part)} requests to {model}) submitted", file=sys.stderr)


def _await(session: Session, poll: float) -> None:
    """Poll every unfinished batch until it ends; store its answers; failed lines are asked again."""
    from .batchapi import TERMINAL, BatchAPI

    for rec in session.state["batches"]:
        if rec.get("done"):
            continue
        api = BatchAPI(session.llm, session.llm.route(rec["model"]))
        if not rec.get("id"):
            rec.update(api.find(rec["input_file_id"]) or api.create(rec["input_file_id"], {"coser": "resumed"}))
            session.save()
        while rec.get("status") not in TERMINAL:
            time.sleep(poll)
            rec.update(api.retrieve(rec["id"]))
            session.polls += 1
            session.save()
        results = api.results(rec.get("output_file_id")) + api.results(rec.get("error_file_id"))
        seen = {r.custom_id for r in results}
        # Lines a failed, expired or cancelled batch never ran count as failed lines.
        results += [BF.Result(k, None, error=rec["status"]) for k in rec["custom_ids"] if k not in seen]
        session.store(results)
        rec["done"] = True
        session.save()


def _load(path: str) -> dict:
    fresh = {"version": STATE_VERSION, "batches": [], "answered": [], "empty": [], "failures": {}}
    if not os.path.exists(path):
        return fresh
    state = read_json(path, "batch state file")  # written atomically: unreadable only if edited by hand
    if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
        raise InputError(f"{path}: not a batch state file of this toolkit (version {STATE_VERSION}); "
                         "delete it to start the batches over (submitted batches are then paid again)")
    return {**fresh, **state}


def state_path(out_dir: str, name: str) -> str:
    return os.path.join(out_dir, "batches", name + ".json")

"""Plumbing every script shares: common flags, setup, the run record, one-line errors."""
from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
from typing import Callable

from .cache import Cache
from .config import LOCAL_MODEL, load_settings
from .errors import BudgetExceeded, CoserError
from .io import atomic_write_json
from .llm import LLM, set_llm
from .usage import Usage

_parser: argparse.ArgumentParser | None = None
_notices: set[str] = set()


def add_common_args(parser: argparse.ArgumentParser, workers: bool = True, workers_default: int = 1) -> None:
    global _parser
    _parser = parser
    g = parser.add_argument_group("LLM client")
    g.add_argument("--config", default=None, metavar="PATH",
                   help="settings file (default: ./config.json); OPENAI_API_KEY / OPENAI_BASE_URL override it")
    g.add_argument("--no_cache", action="store_true", help="bypass the response cache (neither read nor write)")
    g.add_argument("--cache_path", default=None, metavar="FILE",
                   help="SQLite cache file (default: .cache/llm_cache.sqlite under the current directory)")
    g.add_argument("--max_cost", type=float, default=None, metavar="USD",
                   help="stop starting new LLM calls once this cost is reached (needs prices in config.json)")
    if workers:
        g.add_argument("--num_workers", type=int, default=workers_default, help="parallel LLM work (default %(default)s)")


def notice(msg: str) -> None:
    """Print a one-line notice once per process."""
    if msg not in _notices:
        _notices.add(msg)
        print(f"note: {msg}", file=sys.stderr)


def setup(args: argparse.Namespace) -> LLM:
    """Load settings, build cache and usage, pick defaults; returns the process-wide client."""
    settings = load_settings(getattr(args, "config", None))
    if getattr(args, "num_workers", 1) is not None and getattr(args, "num_workers", 1) < 1:
        raise CoserError("--num_workers must be at least 1")
    # A model flag left at its default falls back to the embedded model when no key is configured.
    if _parser is not None and not settings.has_remote_key():
        for action in _parser._actions:
            dest = action.dest
            if dest.endswith("model") and isinstance(action.default, str) and getattr(args, dest, None) == action.default \
                    and action.default != LOCAL_MODEL:
                setattr(args, dest, LOCAL_MODEL)
                notice(f"no API key configured: --{dest} uses the embedded offline model 'local' "
                       f"instead of {action.default}")
    use_cache = not getattr(args, "no_cache", False)
    cache = None
    if use_cache:
        path = getattr(args, "cache_path", None) or os.path.join(settings.cache_dir, "llm_cache.sqlite")
        cache = Cache(path)
    usage = Usage(settings.prices, getattr(args, "max_cost", None))
    workers = getattr(args, "num_workers", 1) or 1
    llm = LLM(settings, cache=cache, usage=usage, max_in_flight=max(1, workers), use_cache=use_cache)
    set_llm(llm)
    args._started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    return llm


def run_record(args: argparse.Namespace, llm: LLM, stage: str, extra: dict | None = None) -> dict:
    flags = {k: v for k, v in vars(args).items() if not k.startswith("_")}
    return {
        "stage": stage,
        "started": getattr(args, "_started", None),
        "finished": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "argv": sys.argv[1:],
        "flags": flags,
        "settings": llm.settings.public(),
        "cache": None if llm.cache is None else os.path.relpath(llm.cache.path),
        "usage": llm.usage.to_dict(),
        **(extra or {}),
    }


def finish(out_dir: str, args: argparse.Namespace, stage: str, extra: dict | None = None, quiet: bool = False) -> str:
    """Save the run record (effective config without keys, usage) beside the outputs; print usage."""
    from .llm import get_llm

    llm = get_llm()
    record = run_record(args, llm, stage, extra)
    path = os.path.join(out_dir, f"run_{stage}.json")
    atomic_write_json(path, record)
    if not quiet:
        print(llm.usage.table(), file=sys.stderr)
    return path


def main(entry: Callable[..., int | None]) -> None:
    """Run a script's main(); user errors become one line on stderr and a non-zero exit."""
    try:
        code = entry()
    except BudgetExceeded as e:
        print(f"stopped: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
    except CoserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        print("interrupted: finished work is saved; rerun to resume", file=sys.stderr)
        sys.exit(130)
    except BrokenPipeError:
        sys.exit(1)
    sys.exit(code or 0)

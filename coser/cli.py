"""Plumbing every script shares: common flags, setup, the run record, one-line errors."""
from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import sys
import threading
from typing import Callable

from .cache import Cache
from .config import LOCAL_MODEL, PLACEHOLDER_PREFIXES, is_local, load_settings
from .endpoints import key_setting, resolve
from .errors import BatchExported, BudgetExceeded, ConfigError, CoserError
from .io import atomic_write_json
from .llm import LLM, set_llm
from .usage import Usage

_parser: argparse.ArgumentParser | None = None
_notices: set[str] = set()


def add_common_args(parser: argparse.ArgumentParser, workers: bool = True, workers_default: int = 1) -> None:
    global _parser
    _parser = parser
    # The SDK takes ~2 s to import: started now, it loads while the script reads its inputs and plans,
    # instead of holding up the first calls.
    threading.Thread(target=_import_sdk, daemon=True).start()
    g = parser.add_argument_group("LLM client")
    g.add_argument("--config", default=None, metavar="PATH",
                   help="settings file (default: ./config.json); OPENAI_API_KEY / OPENAI_BASE_URL override it")
    g.add_argument("--no_cache", action="store_true", help="bypass the response cache (neither read nor write)")
    g.add_argument("--cache_path", default=None, metavar="FILE",
                   help="SQLite cache file (default: .cache/llm_cache.sqlite under the current directory)")
    g.add_argument("--max_cost", type=non_negative_number, default=None, metavar="USD",
                   help="stop starting new LLM calls once this cost is reached (needs prices in config.json)")
    if workers:
        g.add_argument("--num_workers", type=positive_int, default=workers_default,
                       help="parallel LLM work (default %(default)s)")


def non_negative_number(text: str) -> float:
    """argparse type: a finite number, 0 or more ('nan' and 'inf' parse as floats but mean nothing here)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number: {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"should be a finite number, 0 or more, got {text!r}")
    return value


def positive_int(text: str) -> int:
    """argparse type: a whole number, 1 or more."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid int value: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"should be at least 1, got {value}")
    return value


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
    # With no usable endpoint for a model (no key, no own base_url in config.json `models`): a model
    # flag left at its default falls back to the embedded model; one named on the command line is an error.
    if _parser is not None:
        argv = sys.argv[1:]
        for action in _parser._actions:
            dest, value = action.dest, getattr(args, action.dest, None)
            if dest.endswith("model") and isinstance(value, str) and not value.strip():
                # An empty name would silently become the embedded model (or be sent as is).
                raise ConfigError(f"--{dest} is empty: name a model (or 'local' for the embedded one)")
            if not dest.endswith("model") or not isinstance(value, str) or not value or is_local(value):
                continue
            if resolve(settings, value).usable(PLACEHOLDER_PREFIXES):
                continue
            explicit = any(a == o or a.startswith(o + "=") for o in action.option_strings for a in argv)
            if value == action.default and not explicit:
                setattr(args, dest, LOCAL_MODEL)
                notice(f"no API key configured: --{dest} uses the embedded offline model 'local' "
                       f"instead of {action.default}")
            else:
                raise ConfigError(f"--{dest} {value}: no API key for this model: set "
                                  f"{key_setting(settings, value)} (or give --{dest} local)")
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


def _import_sdk() -> None:
    try:
        import openai  # noqa: F401
    except ImportError:  # reported where a call needs it
        pass


def run_record(args: argparse.Namespace, llm: LLM, stage: str, extra: dict | None = None) -> dict:
    flags = {k: v for k, v in vars(args).items() if not k.startswith("_")}
    return {
        "stage": stage,
        "started": getattr(args, "_started", None),
        "finished": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "argv": sys.argv[1:],
        "flags": flags,
        "settings": llm.settings.public(),
        # Per role: the model name sent and its endpoint (no key, no credentials in the URL).
        "endpoints": {k: llm.endpoint_info(v) for k, v in sorted(flags.items())
                      if k.endswith("model") and isinstance(v, str) and v},
        "cache": None if llm.cache is None else os.path.relpath(llm.cache.path),
        "usage": llm.usage.to_dict(),
        **({"batches": llm.batch_runs} if getattr(llm, "batch_runs", None) else {}),
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


def _exit_on_sigint() -> None:
    import signal

    def now(signum, frame):
        os.write(2, b"\ninterrupted again: exiting now\n")
        os._exit(130)
    try:
        if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
            signal.signal(signal.SIGINT, now)
    except ValueError:  # not the main thread
        pass


def main(entry: Callable[..., int | None]) -> None:
    """Run a script's main(); user errors become one line on stderr and a non-zero exit."""
    from .errors import Interrupted
    try:
        code = entry()
    except BudgetExceeded as e:
        print(f"stopped: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
    except BatchExported as e:
        print(str(e), file=sys.stderr)
        sys.exit(e.exit_code)
    except CoserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
    except (KeyboardInterrupt, Interrupted):
        # From here on another Ctrl-C (a second or third) ends the process at once, never with a
        # traceback of this handler or of the interpreter joining threads.
        _exit_on_sigint()
        # Exit without joining worker threads still inside an LLM call (their work is abandoned;
        # finished items are checkpointed). sys.exit would wait for them.
        print("\ninterrupted: finished work is saved; rerun the same command to resume", file=sys.stderr)
        from .io import discard_temp_files
        discard_temp_files()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(130)
    except BrokenPipeError:
        sys.exit(1)
    except OSError as e:  # last resort: a write the script did not route through coser.io
        where = f"{e.filename}: " if getattr(e, "filename", None) else ""
        print(f"error: {where}{e.strerror or e}", file=sys.stderr)
        sys.exit(2)
    except RecursionError:
        print("error: input nested too deeply to process", file=sys.stderr)
        sys.exit(2)
    sys.exit(code or 0)

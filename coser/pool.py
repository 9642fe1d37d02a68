"""Bounded concurrency with results in input order and a progress bar."""
from __future__ import annotations

import concurrent.futures as cf
import contextlib
import os
import signal
import sys
import threading
from typing import Any, Callable, Iterable

from .errors import BudgetExceeded, Interrupted

GRACE_SECONDS = 3.0   # after Ctrl-C, how long calls already on the wire may finish (and be cached)


def _bar(total: int, desc: str | None):
    try:
        from tqdm import tqdm
    except ImportError:  # progress bars are a nicety, never a dependency of correctness
        return None
    return tqdm(total=total, desc=desc, unit="item", file=sys.stderr, leave=False, dynamic_ncols=True,
                disable=total <= 1 or not desc)


_interrupted = False
_stopping = threading.Event()


def check_not_stopping() -> None:
    """Called before each new LLM call: after Ctrl-C nothing new starts (the run is stopping)."""
    if _stopping.is_set():
        raise Interrupted("interrupted")


def _on_sigint(signum, frame) -> None:
    """First Ctrl-C: KeyboardInterrupt in the main thread (stop, save, exit 130). Second: exit at once."""
    global _interrupted
    if _interrupted:
        try:
            os.write(2, b"\ninterrupted again: exiting now\n")
        finally:
            os._exit(130)
    _interrupted = True
    _stopping.set()
    raise KeyboardInterrupt


@contextlib.contextmanager
def _ctrl_c():
    """While pool work runs in the main thread, the first Ctrl-C also stops new LLM calls in the worker
    threads (check_not_stopping) and a second Ctrl-C ends the process without waiting.

    The handler stays armed after an interrupt so a second Ctrl-C during the unwinding exits at
    once; otherwise the previous handler comes back. An ignored SIGINT (background job) stays ignored.
    """
    if threading.current_thread() is not threading.main_thread() \
            or signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        yield
        return
    signal.signal(signal.SIGINT, _on_sigint)
    try:
        yield
    finally:
        if not _interrupted:
            signal.signal(signal.SIGINT, signal.default_int_handler)


def map_ordered(fn: Callable[[Any], Any], items: Iterable[Any], num_workers: int = 1, desc: str | None = None,
                return_exceptions: bool = False) -> list:
    """Run fn over items with at most num_workers at once; results come back in input order.

    With return_exceptions, a failed item yields its exception in place of a result. On
    BudgetExceeded no new item is started, the ones in flight finish, and it is re-raised.
    On Ctrl-C (KeyboardInterrupt) nothing more starts, not even a new LLM call inside a running item;
    calls already on the wire get GRACE_SECONDS to finish (so the cache keeps them), then it re-raises,
    abandoning whatever is still running.
    """
    with _ctrl_c():
        return _map_ordered(fn, list(items), num_workers, desc, return_exceptions)


def _map_ordered(fn, items: list, num_workers: int, desc: str | None, return_exceptions: bool) -> list:
    results: list = [None] * len(items)
    bar = _bar(len(items), desc)
    budget: BudgetExceeded | None = None
    try:
        if num_workers <= 1:
            for i, item in enumerate(items):
                try:
                    results[i] = fn(item)
                except BudgetExceeded:
                    raise
                except Exception as e:
                    if not return_exceptions:
                        raise
                    results[i] = e
                if bar:
                    bar.update(1)
            return results
        ex = cf.ThreadPoolExecutor(max_workers=num_workers)
        try:
            pending: dict[cf.Future, int] = {}
            it = iter(enumerate(items))
            stop = False

            def submit_next() -> bool:
                nxt = next(it, None)
                if nxt is None:
                    return False
                pending[ex.submit(fn, nxt[1])] = nxt[0]
                return True

            for _ in range(num_workers):
                if not submit_next():
                    break
            first_error: BaseException | None = None
            while pending:
                done, _ = cf.wait(pending, return_when=cf.FIRST_COMPLETED)
                for fut in done:
                    i = pending.pop(fut)
                    try:
                        results[i] = fut.result()
                    except BudgetExceeded as e:
                        budget, stop = e, True
                    except Exception as e:
                        if return_exceptions:
                            results[i] = e
                        else:
                            first_error, stop = first_error or e, True
                    if bar:
                        bar.update(1)
                    if not stop:
                        submit_next()
            if first_error is not None:
                raise first_error
        except KeyboardInterrupt:
            # Ctrl-C: no new item and no new LLM call starts (check_not_stopping); the calls already on
            # the wire get a short grace to finish, so their replies reach the cache and a rerun does not
            # pay for them again. Items cut short are redone on rerun. A second Ctrl-C exits at once.
            for fut in pending:
                fut.cancel()
            cf.wait(pending, timeout=GRACE_SECONDS)
            raise
        finally:
            # Normally nothing is pending here. On Ctrl-C (KeyboardInterrupt in this, the main thread)
            # nothing more starts and the calls in flight are not waited for: finished items are already
            # checkpointed by their callers, and coser.cli exits the process without joining the workers.
            ex.shutdown(wait=False, cancel_futures=True)
        if budget is not None:
            raise budget
        return results
    finally:
        if bar:
            bar.close()

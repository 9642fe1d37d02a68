"""Bounded concurrency with results in input order and a progress bar.

Tasks hold a thread while they wait, so a pool may run more tasks than there are LLM slots: the
number of calls in flight is bounded where the calls are made (coser/limits.py, used by coser/llm.py),
never by how many tasks happen to be waiting. A task that needs a few independent calls at once
(the four judge dimensions of a sample) uses fan_out, which runs them on short-lived threads of
their own, so a task waiting on its sub-tasks can never starve a bounded pool (no deadlock).
"""
from __future__ import annotations

import concurrent.futures as cf
import contextlib
import os
import queue
import signal
import sys
import threading
import time
from typing import Any, Callable, Iterable

from .errors import BudgetExceeded, Interrupted

GRACE_SECONDS = 3.0   # after Ctrl-C, how long calls already on the wire may finish (and be cached)
TASKS_PER_WORKER = 4  # tasks kept running per LLM slot: a task spends much of its life between calls


def task_threads(num_workers: int, n_tasks: int | None = None) -> int:
    """Threads for tasks that wait on LLM calls bounded elsewhere (1: everything runs serially)."""
    if num_workers <= 1:
        return 1
    n = TASKS_PER_WORKER * num_workers
    # At least 2 even for one task: it then runs off the main thread, whose Ctrl-C lets its call finish.
    return max(2, min(n, n_tasks)) if n_tasks is not None else n


def _bar(total: int, desc: str | None):
    try:
        from tqdm import tqdm
    except ImportError:  # progress bars are a nicety, never a dependency of correctness
        return None
    return tqdm(total=total, desc=desc, unit="item", file=sys.stderr, leave=False, dynamic_ncols=True,
                disable=total <= 1 or not desc)


_interrupted = False
_stopping = threading.Event()
_on_stop: list[Callable[[], None]] = []   # wake-ups for threads parked on a limit (coser/limits.py)


_drains: list[Callable[[float], None]] = []   # wait(deadline) for calls on the wire (coser/limits.py)


def on_stop(fn: Callable[[], None]) -> None:
    """Call fn (from a helper thread) when the first Ctrl-C arrives."""
    _on_stop.append(fn)


def on_drain(fn: Callable[[float], None]) -> None:
    """After Ctrl-C, fn(deadline) waits (until time.monotonic() reaches deadline) for calls still on the wire."""
    _drains.append(fn)


def _drain_calls(deadline: float) -> None:
    """After Ctrl-C: wait, until deadline at the latest, for the calls still on the wire to be stored."""
    for drain in _drains:
        drain(deadline)


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
    # Threads parked on a concurrency limit must see the stop now; the wake-up takes locks, which a
    # signal handler must not, so it runs on its own thread.
    threading.Thread(target=lambda: [fn() for fn in list(_on_stop)], daemon=True).start()
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
                return_exceptions: bool = False, on_result: Callable[[int, Any], None] | None = None) -> list:
    """Run fn over items with at most num_workers at once; results come back in input order.

    on_result(i, result) runs in the calling thread as each item finishes (in completion order),
    e.g. to write an output file as soon as all of its items are done.

    With return_exceptions, a failed item yields its exception in place of a result. On
    BudgetExceeded no new item is started, the ones in flight finish, and it is re-raised.
    On Ctrl-C (KeyboardInterrupt) nothing more starts, not even a new LLM call inside a running item;
    calls already on the wire get GRACE_SECONDS to finish (so the cache keeps them), then it re-raises,
    abandoning whatever is still running.
    """
    with _ctrl_c():
        return _map_ordered(fn, list(items), num_workers, desc, return_exceptions, on_result)


def _map_ordered(fn, items: list, num_workers: int, desc: str | None, return_exceptions: bool,
                 on_result=None) -> list:
    results: list = [None] * len(items)
    bar = _bar(len(items), desc)
    budget: BudgetExceeded | None = None
    try:
        if num_workers <= 1:
            return _serial(fn, items, results, bar, return_exceptions, on_result)
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
                        if on_result is not None:
                            on_result(i, results[i])
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
            deadline = time.monotonic() + GRACE_SECONDS
            cf.wait(pending, timeout=GRACE_SECONDS)
            _drain_calls(deadline)   # calls made outside these items (e.g. a shared LeafPool) too
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


def _serial(fn, items: list, results: list, bar, return_exceptions: bool, on_result) -> list:
    try:
        for i, item in enumerate(items):
            try:
                results[i] = fn(item)
            except BudgetExceeded:
                raise
            except Exception as e:
                if not return_exceptions:
                    raise
                results[i] = e
            if on_result is not None:
                on_result(i, results[i])
            if bar:
                bar.update(1)
        return results
    except KeyboardInterrupt:
        # The call this thread was making is abandoned; others (a shared LeafPool's) get the grace.
        _drain_calls(time.monotonic() + GRACE_SECONDS)
        raise


def fan_out(fns: list[Callable[[], Any]], parallel: bool = True) -> list:
    """Run a few independent callables at once (the first in this thread), results in order.

    Each extra callable gets a short-lived thread of its own, never a slot of a bounded pool, so a
    pooled task waiting here cannot deadlock the pool. Every callable finishes before the first
    exception (in order) is re-raised. Not parallel: one after another, as written.
    """
    if not parallel or len(fns) <= 1:
        return [f() for f in fns]
    out: list = [None] * len(fns)
    errors: list = [None] * len(fns)

    def run(i: int) -> None:
        try:
            out[i] = fns[i]()
        except BaseException as e:  # noqa: BLE001 - handed back to the caller below
            errors[i] = e

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(1, len(fns))]
    for t in threads:
        t.start()
    run(0)
    for t in threads:
        t.join()
    for e in errors:
        if e is not None:
            raise e
    return out


class LeafPool:
    """A shared pool for leaf tasks: independent calls that never wait on another task (assembly calls of
    every book). Daemon threads, so a run that stops never waits for queued work at exit.

    Callers may block on its futures from any other thread; since leaf tasks themselves never wait on
    the pool, this cannot deadlock. size 1 or less: each task runs in the caller's thread as it is
    submitted, and its exception propagates from submit().
    """

    def __init__(self, size: int):
        self.size = size
        self._queue: "queue.SimpleQueue" = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()

    def submit(self, fn: Callable[[], Any]) -> cf.Future:
        fut: cf.Future = cf.Future()
        if self.size <= 1:   # serial: a failure stops the caller at once, as in map_ordered
            fut.set_result(fn())
            return fut
        with self._lock:
            if len(self._threads) < self.size:
                t = threading.Thread(target=self._work, daemon=True, name="coser-leaf")
                self._threads.append(t)
                t.start()
        self._queue.put((fut, fn))
        return fut

    def map(self, fn: Callable[[Any], Any], items: Iterable[Any]) -> list:
        """fn over items, results in input order; after all finish, the first exception is re-raised."""
        futs = [self.submit(lambda x=x: fn(x)) for x in items]
        cf.wait(futs)
        return [f.result() for f in futs]

    def _work(self) -> None:
        while True:
            fut, fn = self._queue.get()
            if fut.set_running_or_notify_cancel():
                _run_into(fut, fn)


def _run_into(fut: cf.Future, fn: Callable[[], Any]) -> None:
    try:
        fut.set_result(fn())
    except BaseException as e:  # noqa: BLE001 - the caller sees it through the future
        fut.set_exception(e)

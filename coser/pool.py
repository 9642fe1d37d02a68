"""Bounded concurrency with results in input order and a progress bar."""
from __future__ import annotations

import concurrent.futures as cf
import sys
from typing import Any, Callable, Iterable

from .errors import BudgetExceeded


def _bar(total: int, desc: str | None):
    try:
        from tqdm import tqdm
    except ImportError:  # progress bars are a nicety, never a dependency of correctness
        return None
    return tqdm(total=total, desc=desc, unit="item", file=sys.stderr, leave=False, dynamic_ncols=True,
                disable=total <= 1 or not desc)


def map_ordered(fn: Callable[[Any], Any], items: Iterable[Any], num_workers: int = 1, desc: str | None = None,
                return_exceptions: bool = False) -> list:
    """Run fn over items with at most num_workers at once; results come back in input order.

    With return_exceptions, a failed item yields its exception in place of a result. On
    BudgetExceeded no new item is started, the ones in flight finish, and it is re-raised.
    KeyboardInterrupt cancels what has not started.
    """
    items = list(items)
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
        with cf.ThreadPoolExecutor(max_workers=num_workers) as ex:
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
        if budget is not None:
            raise budget
        return results
    finally:
        if bar:
            bar.close()

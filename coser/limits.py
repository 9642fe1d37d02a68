"""How many requests may be in flight at once: a fixed bound, or one that adapts to overload.

An endpoint answering 429 is saying it has too many requests from us. Rather than every waiting
thread sleeping and retrying at the same moment, the endpoint's limit is halved, and it grows back by
one per `limit` successful replies (additive increase, multiplicative decrease, as in TCP congestion
control), never above the configured `max_connections`. A burst of 429s to requests that were sent
together is one signal: the limit is cut at most once per round of requests (a request sent before
the last cut cannot cut again).

Waiters are served first come, first served. After the first Ctrl-C (coser/pool.py) a waiter never
gets a slot: it raises Interrupted instead, so nothing new goes on the wire.
"""
from __future__ import annotations

import collections
import contextlib
import threading
import time
import weakref

from .errors import Interrupted
from .pool import check_not_stopping, on_drain, on_stop

_live: "weakref.WeakSet[Limit]" = weakref.WeakSet()


def _wake_all() -> None:
    for lim in list(_live):
        lim._stop_waiters()


_calls = [0]   # calls between their start and their reply being cached (see calling())
_calls_lock = threading.Lock()


@contextlib.contextmanager
def calling():
    """Marks one call from its start until its reply is stored, so Ctrl-C's grace waits for the store too."""
    with _calls_lock:
        _calls[0] += 1
    try:
        yield
    finally:
        with _calls_lock:
            _calls[0] -= 1


def _drain(deadline: float) -> None:
    while _calls[0] and time.monotonic() < deadline:
        time.sleep(0.02)


on_stop(_wake_all)
on_drain(_drain)


class Limit:
    """At most `limit` holders at once; adaptive limits move between 1 and `ceiling`."""

    def __init__(self, ceiling: int, adaptive: bool = False):
        self.ceiling = max(1, int(ceiling))
        self.adaptive = adaptive
        self.limit = float(self.ceiling)
        self.in_flight = 0
        self.cuts = 0                       # how often overload halved the limit (for reports and tests)
        self.lowest = self.ceiling          # the smallest limit reached
        self._epoch = 0                     # bumped at every cut
        self._lock = threading.Lock()
        self._queue: collections.deque = collections.deque()
        _live.add(self)

    def acquire(self) -> int:
        """Wait for a slot (first come, first served); returns a ticket for release()."""
        check_not_stopping()
        with self._lock:
            if not self._queue and self.in_flight < int(self.limit):
                self.in_flight += 1
                return self._epoch
            waiter = _Waiter()
            self._queue.append(waiter)
        # The releasing thread hands its slot over (waiter.granted), so only the head wakes: no
        # thundering herd with hundreds of tasks parked here.
        waiter.event.wait()
        if not waiter.granted:   # woken by the first Ctrl-C, holding nothing
            check_not_stopping()
            raise Interrupted("interrupted")
        try:
            check_not_stopping()
        except Interrupted:
            self.release(waiter.ticket)
            raise
        return waiter.ticket

    def release(self, ticket: int, overloaded: bool = False, ok: bool = False) -> None:
        """Give the slot back, saying whether the request was refused as overload (429) or succeeded."""
        with self._lock:
            self.in_flight -= 1
            if self.adaptive and overloaded and ticket == self._epoch:
                self.limit = max(1.0, self.limit / 2)
                self._epoch += 1
                self.cuts += 1
                self.lowest = min(self.lowest, int(self.limit))
            elif self.adaptive and ok and self.limit < self.ceiling:
                self.limit = min(float(self.ceiling), self.limit + 1.0 / self.limit)
            while self._queue and self.in_flight < int(self.limit):
                waiter = self._queue.popleft()
                self.in_flight += 1
                waiter.ticket, waiter.granted = self._epoch, True
                waiter.event.set()

    def _stop_waiters(self) -> None:
        with self._lock:
            while self._queue:
                self._queue.popleft().event.set()   # not granted: the waiter raises Interrupted

    def slot(self) -> "_Slot":
        """A context manager holding one slot; tell it the outcome with .overloaded() / .ok()."""
        return _Slot(self)


class _Waiter:
    __slots__ = ("event", "granted", "ticket")

    def __init__(self):
        self.event, self.granted, self.ticket = threading.Event(), False, 0


class _Slot:
    def __init__(self, limit: Limit):
        self.limit, self.outcome = limit, None

    def __enter__(self) -> "_Slot":
        self.ticket = self.limit.acquire()
        return self

    def overloaded(self) -> None:
        self.outcome = "overloaded"

    def ok(self) -> None:
        self.outcome = "ok"

    def __exit__(self, *exc) -> None:
        self.limit.release(self.ticket, overloaded=self.outcome == "overloaded", ok=self.outcome == "ok")

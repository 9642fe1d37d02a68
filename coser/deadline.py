"""A deadline for one whole HTTP request (connect, send, every read), not just for each read.

httpx's timeouts bound each socket operation: a server that trickles one byte every half second
keeps a request alive forever. The client (coser/llm.py) runs each request inside `deadline(s)`;
the network backend installed here shortens every socket operation of that thread to the time
left, so the request ends when the deadline passes, however the server paces its bytes. Requests
run in the calling thread (the sync client), so a thread-local deadline follows the request.
"""
from __future__ import annotations

import contextlib
import importlib
import threading
import time

_local = threading.local()


@contextlib.contextmanager
def deadline(seconds: float | None):
    """Bound every network operation of this thread by one total time budget."""
    if not seconds or seconds <= 0:
        yield
        return
    previous = getattr(_local, "until", None)
    _local.until = time.monotonic() + seconds
    try:
        yield
    finally:
        _local.until = previous


def _left(timeout: float | None, exc_type) -> float | None:
    until = getattr(_local, "until", None)
    if until is None:
        return timeout
    left = until - time.monotonic()
    if left <= 0:
        raise exc_type("the request's total deadline passed")
    return left if timeout is None else min(timeout, left)


class _Stream:
    """A network stream whose every operation gets at most the time left before the deadline.
    `core` is the HTTP core package in use (its timeout exceptions are the ones the client maps)."""

    def __init__(self, inner, core):
        self._inner, self._core = inner, core

    def read(self, max_bytes, timeout=None):
        return self._inner.read(max_bytes, _left(timeout, self._core.ReadTimeout))

    def write(self, buffer, timeout=None):
        return self._inner.write(buffer, _left(timeout, self._core.WriteTimeout))

    def close(self):
        return self._inner.close()

    def start_tls(self, ssl_context, server_hostname=None, timeout=None):
        inner = self._inner.start_tls(ssl_context, server_hostname, _left(timeout, self._core.ConnectTimeout))
        return _Stream(inner, self._core)

    def get_extra_info(self, info):
        return self._inner.get_extra_info(info)


class _Backend:
    """Wraps the pool's network backend: connections and their streams honour the thread's deadline."""

    def __init__(self, inner, core):
        self._inner, self._core = inner, core

    def connect_tcp(self, host, port, timeout=None, local_address=None, socket_options=None):
        inner = self._inner.connect_tcp(host, port, _left(timeout, self._core.ConnectTimeout), local_address,
                                        socket_options)
        return _Stream(inner, self._core)

    def connect_unix_socket(self, path, timeout=None, socket_options=None):
        inner = self._inner.connect_unix_socket(path, _left(timeout, self._core.ConnectTimeout), socket_options)
        return _Stream(inner, self._core)

    def sleep(self, seconds):
        return self._inner.sleep(seconds)


def install(http_client) -> bool:
    """Put the deadline backend under every connection pool of an httpx.Client (default and proxy
    mounts). Returns False when the client's layout is not the one this was written for."""
    transports = [getattr(http_client, "_transport", None), *getattr(http_client, "_mounts", {}).values()]
    done = False
    for t in transports:
        pool = getattr(t, "_pool", None)
        if pool is not None and hasattr(pool, "_network_backend"):
            if not isinstance(pool._network_backend, _Backend):
                # The package the pool comes from (httpcore, or the SDK's httpcore2) raises the timeouts.
                core = importlib.import_module(type(pool).__module__.split(".")[0])
                pool._network_backend = _Backend(pool._network_backend, core)
            done = True
    return done

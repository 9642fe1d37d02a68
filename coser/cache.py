"""Durable response cache: canonical JSON of the request -> sha256 -> one SQLite row.

WAL mode makes each write O(1) and lets many threads and several processes share a file;
a process killed mid-write leaves the database usable (SQLite's journal rolls it back).
Nothing secret is stored: the key covers model, messages and generation parameters only.
"""
from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import threading
import time
from typing import Any

from .errors import OutputError

_SCHEMA = """
CREATE TABLE IF NOT EXISTS responses (
    key TEXT PRIMARY KEY,
    model TEXT NOT NULL,
    stage TEXT,
    created REAL NOT NULL,
    request TEXT NOT NULL,
    response TEXT NOT NULL
)
"""


def _problem(e: BaseException) -> str:
    """One short line for a SQLite or OS failure ("file is not a database", "disk is full", ...)."""
    if isinstance(e, OSError):
        return e.strerror or str(e)
    msg = str(e).strip() or type(e).__name__
    if "not a database" in msg:
        return "file is not a SQLite database"
    if "disk is full" in msg or "disk I/O" in msg:
        return f"{msg} (is the disk full?)"
    return msg


def _transient(e: sqlite3.OperationalError) -> bool:
    """Busy/locked errors are worth a retry; full disk, read-only or corrupt files are not."""
    msg = str(e).lower()
    return "locked" in msg or "busy" in msg


def _add_rejected_column(conn: sqlite3.Connection) -> bool:
    """Tolerant migration: caches written before the `rejected` flag get it (default 0, not rejected)."""
    try:
        cols = {row[1] for row in conn.execute("PRAGMA table_info(responses)")}
        if "rejected" not in cols:
            conn.execute("ALTER TABLE responses ADD COLUMN rejected INTEGER NOT NULL DEFAULT 0")
        return True
    except sqlite3.OperationalError as e:
        if "duplicate column" in str(e).lower():  # another process migrated it first
            return True
        return False  # e.g. a read-only file: rejections fall back to deleting the row


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def cache_key(request: dict) -> str:
    return hashlib.sha256(canonical_json(request).encode("utf-8")).hexdigest()


class Cache:
    """Thread-safe (one connection per thread) and process-safe (SQLite locking) response store."""

    def __init__(self, path: str):
        self.path = path
        folder = os.path.dirname(os.path.abspath(path))
        self._local = threading.local()
        # Threads of one process queue here rather than in SQLite's busy handler, which polls
        # with sleeps of up to 25 ms (other processes still meet SQLite's own locking).
        self._write_lock = threading.Lock()
        if os.path.isdir(path):
            raise OutputError(f"{path}: cache file is a directory (give --cache_path a file name)")
        try:
            os.makedirs(folder, exist_ok=True)
            conn = self._conn()
            conn.execute(_SCHEMA)
            conn.commit()
            self._has_rejected = _add_rejected_column(conn)
        except (sqlite3.Error, OSError) as e:
            self.close()
            raise OutputError(f"{path}: cannot use response cache: {_problem(e)} "
                              "(use another --cache_path, or --no_cache)") from None

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=60, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA busy_timeout=60000")
            self._local.conn = conn
        return conn

    def get(self, key: str, include_rejected: bool = False) -> dict | None:
        """The stored response record, or None. A broken row is a miss, never a crash.

        include_rejected: also a reply marked rejected (batch mode replays, within one batch session,
        the replies its own batches brought, as an online run sees each reply once before rejecting it)."""
        try:
            # A reply marked rejected (it failed parsing/validation) is never served again as good.
            skip = self._has_rejected and not include_rejected
            sql = "SELECT response FROM responses WHERE key=?" + (" AND rejected=0" if skip else "")
            row = self._conn().execute(sql, (key,)).fetchone()
        except sqlite3.DatabaseError:
            return None
        if row is None:
            return None
        try:
            value = json.loads(row[0])
        except (TypeError, json.JSONDecodeError):
            return None
        return value if isinstance(value, dict) else None

    def put(self, key: str, request: dict, response: dict, stage: str = "") -> None:
        # Serialized once, outside the lock and the retry loop: only the INSERT waits for other writers.
        row = (key, request.get("model", ""), stage, time.time(), canonical_json(request), canonical_json(response))
        for attempt in range(5):
            try:
                with self._write_lock:
                    self._conn().execute(
                        "INSERT OR REPLACE INTO responses(key, model, stage, created, request, response) VALUES (?,?,?,?,?,?)",
                        row,
                    )
                return
            except sqlite3.OperationalError as e:
                if attempt == 4 or not _transient(e):
                    raise OutputError(f"{self.path}: cannot write response cache: {_problem(e)}") from None
                time.sleep(0.05 * (attempt + 1))
            except sqlite3.Error as e:
                raise OutputError(f"{self.path}: cannot write response cache: {_problem(e)}") from None

    def reject(self, key: str) -> None:
        """Mark a stored reply as failed parsing/validation: get() misses it, put() replaces it."""
        if not self._has_rejected:
            self.delete(key)
            return
        try:
            with self._write_lock:
                self._conn().execute("UPDATE responses SET rejected=1 WHERE key=?", (key,))
        except sqlite3.Error as e:
            raise OutputError(f"{self.path}: cannot write response cache: {_problem(e)}") from None

    def delete(self, key: str) -> None:
        try:
            with self._write_lock:
                self._conn().execute("DELETE FROM responses WHERE key=?", (key,))
        except sqlite3.Error as e:
            raise OutputError(f"{self.path}: cannot write response cache: {_problem(e)}") from None

    def __len__(self) -> int:
        return self._conn().execute("SELECT COUNT(*) FROM responses").fetchone()[0]

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

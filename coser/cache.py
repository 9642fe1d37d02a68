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


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def cache_key(request: dict) -> str:
    return hashlib.sha256(canonical_json(request).encode("utf-8")).hexdigest()


class Cache:
    """Thread-safe (one connection per thread) and process-safe (SQLite locking) response store."""

    def __init__(self, path: str):
        self.path = path
        folder = os.path.dirname(os.path.abspath(path))
        os.makedirs(folder, exist_ok=True)
        self._local = threading.local()
        # Threads of one process queue here rather than in SQLite's busy handler, which polls
        # with sleeps of up to 25 ms (other processes still meet SQLite's own locking).
        self._write_lock = threading.Lock()
        conn = self._conn()
        conn.execute(_SCHEMA)
        conn.commit()

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=60, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA busy_timeout=60000")
            self._local.conn = conn
        return conn

    def get(self, key: str) -> dict | None:
        """The stored response record, or None. A broken row is a miss, never a crash."""
        try:
            row = self._conn().execute("SELECT response FROM responses WHERE key=?", (key,)).fetchone()
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
            except sqlite3.OperationalError:
                if attempt == 4:
                    raise
                time.sleep(0.05 * (attempt + 1))

    def __len__(self) -> int:
        return self._conn().execute("SELECT COUNT(*) FROM responses").fetchone()[0]

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

"""Run specs: what produced a result, and the plumbing that keeps results apart.

A *spec* describes everything that changes what is simulated or scored:

    {"spec_version": 1, "stage": "simulation" | "evaluation" | ...,
     "protocol": "reference" | "fixed",
     "roles": {"actor": {"model": NAME_SENT, "endpoint": URL_WITHOUT_CREDENTIALS}, "env": ..., "nsp": ..., "judge": ...},
     "settings": {"continue_from", "wo_thought", "use_motivation", "retrieval", "seed", "repeat", "max_tokens"},
     "test_set": {"path", "hash", "keys", "n"},
     "toolkit": {"version", "commit"}}

`spec_hash(spec)` is a short hash of the spec's *identity*: everything above except the toolkit, the test
file's path and the endpoints (recorded for provenance; moving a server to another port does not make a
result another result; the model name sent does) and an evaluation's `simulation_file` (where its simulation lies, for
readers; the simulation itself is identified by its spec or content hash). Two results are the same result exactly when their
identities are equal (`same_spec`).

Also here, shared by every script: per-item checkpoints (`Checkpoints`), the output naming rule
(`choose_path`), an exclusive lock on an output folder (`DirLock`), time-stamped run records under
exp/runs/ (`RunRecord`) and a readable log of retries, repairs and failures (`run_logger`).
"""
from __future__ import annotations

import datetime
import errno
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
from typing import Any, Iterable

from .errors import InputError, OutputError
from .io import atomic_write_json, make_dirs

SPEC_VERSION = 1
HASH_LEN = 10
REFERENCE_FILE = "reference-implementation"  # marks a result file written without a spec


# ---- hashing ------------------------------------------------------------------------------------
def canonical(obj: Any) -> str:
    """One JSON text per value: sorted keys, no whitespace, non-ASCII kept."""
    return json.dumps(obj, sort_keys=True, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def content_hash(obj: Any, length: int = 16) -> str:
    return hashlib.sha256(canonical(obj).encode("utf-8")).hexdigest()[:length]


def identity(spec: dict) -> dict:
    """The part of a spec that decides whether two results are the same result."""
    ident = {k: v for k, v in spec.items() if k not in ("toolkit", "simulation_file")}
    ident["roles"] = {r: {"model": (v or {}).get("model")} for r, v in (spec.get("roles") or {}).items()}
    ts = dict(spec.get("test_set") or {})
    ts.pop("path", None)
    ident["test_set"] = ts
    return ident


def spec_hash(spec: dict) -> str:
    return content_hash(identity(spec), HASH_LEN)


def same_spec(a: dict | None, b: dict | None) -> bool:
    if not isinstance(a, dict) or not isinstance(b, dict):
        return False
    try:
        return canonical(identity(a)) == canonical(identity(b))
    except (TypeError, ValueError):
        return False


def diff_specs(a: dict, b: dict, prefix: str = "") -> list[str]:
    """Dotted names of the identity fields that differ (for messages)."""
    a, b = (identity(a), identity(b)) if not prefix else (a, b)
    out = []
    for k in sorted(set(a) | set(b), key=str):
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += diff_specs(va, vb, f"{prefix}{k}.")
        elif va != vb:
            out.append(prefix + str(k))
    return out


# ---- building -------------------------------------------------------------------------------------
_toolkit: dict | None = None


def toolkit_info() -> dict:
    """Package version and the git commit of this checkout (None outside a git checkout)."""
    global _toolkit
    if _toolkit is None:
        from . import __version__
        commit = None
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        try:
            r = subprocess.run(["git", "-C", root, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
            if r.returncode == 0:
                commit = r.stdout.strip() or None
        except (OSError, subprocess.SubprocessError):
            pass
        _toolkit = {"version": __version__, "commit": commit}
    return dict(_toolkit)


def role_info(llm, model: str | None) -> dict:
    """{"model": name sent, "endpoint": URL without credentials}; works with or without llm.endpoint_info."""
    if not model:
        return {"model": None, "endpoint": None}
    info = getattr(llm, "endpoint_info", None)
    if callable(info):
        try:
            got = info(model)
            return {"model": got.get("model", model), "endpoint": got.get("endpoint")}
        except Exception:  # noqa: BLE001 - provenance must never stop a run
            pass
    from .endpoints import redact_url  # noqa: F401 - only when available
    base = getattr(getattr(llm, "settings", None), "base_url", None)
    return {"model": model, "endpoint": redact_url(base) if base else "default"}


def test_set_info(path: str | None, items: list[dict], keys: list[str]) -> dict:
    return {"path": path, "hash": content_hash(items), "keys": list(keys), "n": len(items)}


def build_spec(stage: str, llm, roles: dict[str, str | None], settings: dict, test_set: dict,
               protocol: str = "reference") -> dict:
    return {
        "spec_version": SPEC_VERSION,
        "stage": stage,
        "protocol": protocol or "reference",
        "roles": {name: role_info(llm, model) for name, model in roles.items()},
        "settings": dict(settings),
        "test_set": dict(test_set),
        "toolkit": toolkit_info(),
    }


def file_spec(obj: Any) -> dict | None:
    """The spec carried by a result file, or None for a file of the reference implementation."""
    if isinstance(obj, dict) and isinstance(obj.get("spec"), dict):
        return obj["spec"]
    return None


# ---- naming -------------------------------------------------------------------------------------
def suffixed(base_path: str, spec: dict) -> str:
    """`name.json` -> `name_spec=HASH.json`: the hash covers the whole identity, so names cannot collide."""
    root, ext = os.path.splitext(base_path)
    return f"{root}_spec={spec_hash(spec)}{ext}"


def choose_path(base_path: str, spec: dict, reference_default: bool, accept_reference_file=None) -> tuple[str, str]:
    """Where the result of `spec` lives, and whether it is already there.

    Returns (path, state) with state "reuse" (a file with this spec, or a reference file that
    `accept_reference_file(path)` accepts), "resume" (no file yet at the path to write) .
    The reference's file name is used for the reference's default setting, unless a file produced
    under another spec holds it; every other setting gets the spec-hash suffix. An existing file of
    another spec is never overwritten.
    """
    candidates = ([base_path] if reference_default else []) + [suffixed(base_path, spec)]
    for path in candidates:
        if not os.path.exists(path):
            return path, "new"
        try:
            from .io import read_json
            existing = read_json(path)
        except InputError as e:
            raise InputError(f"{e} (an existing result file: move it away or fix it; it is never overwritten)") from None
        got = file_spec(existing) if isinstance(existing, dict) else None
        if got is None and isinstance(existing, list) and existing and isinstance(existing[0], dict):
            got = existing[0].get("spec") if isinstance(existing[0].get("spec"), dict) else None
        if got is not None:
            if same_spec(got, spec):
                return path, "reuse"
            continue
        # A file without a spec: the reference implementation's (or ours before specs).
        if path == base_path and accept_reference_file is not None and accept_reference_file(path):
            return path, "reuse"
    raise OutputError(f"{candidates[-1]}: exists and holds a result of another spec; move it away")


# ---- checkpoints ----------------------------------------------------------------------------------
def fingerprint(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, ensure_ascii=False).encode()).hexdigest()[:16]


class Checkpoints:
    """One JSON file per finished item; a file written for other inputs or settings is ignored."""

    def __init__(self, directory: str):
        self.dir = directory

    def _path(self, i) -> str:
        return os.path.join(self.dir, f"{i:05d}.json" if isinstance(i, int) else f"{i}.json")

    def get(self, i, fp: str):
        path = self._path(i)
        if not os.path.exists(path):
            return None
        try:
            with open(path, encoding="utf-8") as f:
                saved = json.load(f)
        except (OSError, ValueError, RecursionError):
            return None  # a torn checkpoint is redone, never trusted
        return saved.get("value") if isinstance(saved, dict) and saved.get("fingerprint") == fp else None

    def put(self, i, fp: str, value) -> None:
        # Another process running the same job may finish and remove this folder mid-write:
        # the checkpoint is then simply written again into a fresh folder.
        for attempt in range(3):
            try:
                return atomic_write_json(self._path(i), {"fingerprint": fp, "value": value})
            except OutputError as e:
                if getattr(e, "errno", None) != errno.ENOENT or attempt == 2:
                    raise

    def clear(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)
        try:
            os.rmdir(os.path.dirname(self.dir))  # only succeeds once no other run has checkpoints there
        except OSError:
            pass


# ---- lock -------------------------------------------------------------------------------------------
class LockBusy(InputError):
    pass


class DirLock:
    """An exclusive lock on an output folder (`.lock` inside it), released when the process ends,
    even by kill -9. A second run on the same folder refuses with the other run's PID."""

    def __init__(self, folder: str):
        self.folder = folder
        self.path = os.path.join(folder, ".lock")
        self._fd: int | None = None

    def acquire(self, wait: bool = True) -> "DirLock":
        """wait=True: print one line naming the other run's PID and wait for it (its finished outputs
        are then reused, so no call is paid twice); wait=False: refuse with that line (LockBusy)."""
        import fcntl
        make_dirs(self.folder)
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise OutputError(f"{self.path}: cannot create lock file ({e.strerror})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            other = os.pread(fd, 64, 0).decode("ascii", "replace").strip() or "unknown"
            msg = f"{self.folder}: another run (PID {other}) is writing here"
            if not wait:
                os.close(fd)
                raise LockBusy(msg + "; wait for it to finish or use another output folder") from None
            print(f"note: {msg}; waiting for it to finish (its results will be reused)", file=sys.stderr, flush=True)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
            except BaseException:
                os.close(fd)
                raise
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        os.fsync(fd)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            try:
                os.ftruncate(self._fd, 0)
                os.close(self._fd)
            except OSError:
                pass
            self._fd = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()


# ---- run records and logs -------------------------------------------------------------------------
def _redact_argv(argv: Iterable[str]) -> list[str]:
    from .endpoints import redact_url
    out, hide_next = [], False
    for a in argv:
        if hide_next:
            out.append("***")
            hide_next = False
            continue
        low = a.lower()
        if any(s in low for s in ("api_key", "apikey", "token", "secret", "password")):
            if "=" in a:
                out.append(a.split("=", 1)[0] + "=***")
            else:
                out.append(a)
                hide_next = True
            continue
        out.append(redact_url(a) if "://" in a else a)
    return out


class RunRecord:
    """exp/runs/{UTC time}_{stage}_{pid}.json for one invocation (created exclusively, never overwritten),
    plus a readable log beside it (or at `log_path`)."""

    def __init__(self, exp_dir: str, stage: str, log_path: str | None = None):
        self.started = datetime.datetime.now(datetime.timezone.utc)
        stamp = self.started.strftime("%Y%m%dT%H%M%SZ")
        folder = os.path.join(exp_dir, "runs")
        make_dirs(folder)
        base = os.path.join(folder, f"run_{stamp}_{stage}_{os.getpid()}")
        n = 0
        while True:
            path = base + (f"-{n}" if n else "") + ".json"
            try:
                os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
                break
            except FileExistsError:
                n += 1
            except OSError as e:
                raise OutputError(f"{path}: cannot write run record ({e.strerror})") from None
        self.path = path
        self.stage = stage
        self.log_path = log_path or path[:-len(".json")] + ".log"
        self.log = run_logger(self.log_path, stage)
        self.log.info("start: %s", " ".join(_redact_argv(sys.argv)))
        self.data: dict = {"stage": stage, "argv": _redact_argv(sys.argv[1:]),
                           "started": self.started.isoformat(timespec="seconds"), "specs": [], "outputs": [],
                           "durations": {}, "log": self.log_path, "status": "running"}
        atomic_write_json(self.path, self.data)  # a valid record from the start, completed by save()

    def add(self, spec: dict | None = None, output: str | None = None, reused: bool = False,
            seconds: float | None = None) -> None:
        if spec is not None:
            self.data["specs"].append({"spec": spec, "spec_hash": spec_hash(spec)})
        if output is not None:
            self.data["outputs"].append({"path": output, "reused": reused})
            if seconds is not None:
                self.data["durations"][output] = round(seconds, 3)

    def save(self, llm=None, status: str = "finished") -> str:
        end = datetime.datetime.now(datetime.timezone.utc)
        self.data["finished"] = end.isoformat(timespec="seconds")
        self.data["seconds"] = round((end - self.started).total_seconds(), 3)
        self.data["status"] = status
        self.data["toolkit"] = toolkit_info()
        if llm is not None and getattr(llm, "usage", None) is not None:
            usage = llm.usage.to_dict()
            self.data["usage"] = usage
            self.data["cost"] = (usage.get("totals") or {}).get("cost_usd") if isinstance(usage, dict) else None
            if getattr(llm, "batch_runs", None):
                self.data["batches"] = llm.batch_runs  # batch mode: the batches behind this run's answers
        atomic_write_json(self.path, self.data)
        self.log.info("%s in %.1fs; record %s", status, self.data["seconds"], self.path)
        for h in list(self.log.handlers):
            h.flush()
        return self.path


class _QuietFileHandler(logging.FileHandler):
    """A log line that cannot be written (full disk) is dropped: no traceback on stderr; the outputs'
    own atomic writes report the failure as one line naming the file."""

    def handleError(self, record) -> None:
        pass


def run_logger(path: str, stage: str) -> logging.Logger:
    """A logger appending readable lines to `path` (folders made as needed). Callers log reasons,
    never keys; URLs are redacted on the way out."""
    from .endpoints import redact_url

    class _Redact(logging.Filter):
        def filter(self, record):
            msg = record.getMessage()
            if "://" in msg:
                record.msg, record.args = " ".join(redact_url(w) if "://" in w else w for w in msg.split(" ")), ()
            return True

    make_dirs(os.path.dirname(path) or ".")
    log = logging.getLogger(f"coser.run.{stage}.{os.path.abspath(path)}")
    log.setLevel(logging.INFO)
    log.propagate = False
    if not log.handlers:
        try:
            h = _QuietFileHandler(path, encoding="utf-8", delay=True)
        except OSError as e:
            raise OutputError(f"{path}: cannot open log ({e.strerror})") from None
        h.setFormatter(logging.Formatter("%(asctime)s %(levelname)s " + stage + ": %(message)s",
                                         "%Y-%m-%dT%H:%M:%S"))
        h.addFilter(_Redact())
        log.addHandler(h)
    return log

"""File I/O with atomic writes and input errors that name the file, line and field."""
from __future__ import annotations

import errno
import json
import os
import tempfile
from typing import Any, Iterator

from .errors import InputError, OutputError

_temp_files: set[str] = set()   # temp files of atomic writes in progress
_UMASK = os.umask(0)
os.umask(_UMASK)


def write_problem(e: OSError) -> str:
    """A short cause for a failed write: the OS reason without Python's repr noise."""
    reason = e.strerror or str(e) or type(e).__name__
    if e.errno == errno.ENOSPC:
        reason = "disk full (no space left on device)"
    elif e.errno == errno.EDQUOT:
        reason = "disk quota exceeded"
    elif e.errno == errno.ENAMETOOLONG:
        reason = "file name too long"
    elif e.errno in (errno.ENOTDIR, errno.EEXIST):
        reason = f"{reason} (a file stands where a folder is needed)"
    return reason


def make_dirs(folder: str, what: str = "output folder") -> None:
    """os.makedirs(exist_ok=True) whose failure is an OutputError naming the folder."""
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as e:
        raise OutputError(f"{folder}: cannot create {what}: {write_problem(e)}", e.errno) from None
    if not os.path.isdir(folder):
        raise OutputError(f"{folder}: cannot create {what}: a file with that name exists")


def atomic_write_text(path: str, text: str) -> None:
    """Write via a temp file in the same folder, fsync, then rename: readers never see half a file.

    Any OSError (read-only folder, a file where a folder is needed, name too long, disk full)
    becomes an OutputError naming the path; the previous version of the file stays intact.
    """
    try:
        _atomic_write_text(path, text)
    except OSError as e:
        raise OutputError(f"{path}: cannot write: {write_problem(e)}", e.errno) from None


def _atomic_write_text(path: str, text: str) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    if os.path.isdir(path):
        raise IsADirectoryError(errno.EISDIR, "a folder stands where the file should be")
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=os.path.basename(path)[-40:], dir=folder)
    _temp_files.add(tmp)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; outputs get the usual permissions
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    finally:
        _temp_files.discard(tmp)


def discard_temp_files() -> None:
    """Remove temp files of writes still in progress (threads abandoned on Ctrl-C); targets stay intact."""
    for tmp in list(_temp_files):
        try:
            os.unlink(tmp)
        except OSError:
            pass


def atomic_write_json(path: str, obj: Any, indent: int | None = 2) -> None:
    """JSON as the reference writes it (indent 2, ensure_ascii=False), atomically."""
    atomic_write_text(path, json.dumps(obj, ensure_ascii=False, indent=indent))


def read_text(path: str, what: str = "file") -> str:
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise InputError(f"{path}: {what} not found") from None
    except IsADirectoryError:
        raise InputError(f"{path}: expected a {what}, found a directory") from None
    except OSError as e:
        raise InputError(f"{path}: cannot read {what} ({e.strerror})") from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise InputError(f"{path}: line {line}: not valid UTF-8 (byte offset {e.start})") from None


def read_json(path: str, what: str = "JSON file") -> Any:
    text = read_text(path, what)
    if not text.strip():
        raise InputError(f"{path}: {what} is empty")
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise InputError(f"{path}: line {e.lineno}: not valid JSON ({e.msg})") from None
    except (RecursionError, ValueError, MemoryError) as e:
        raise InputError(f"{path}: not usable JSON ({json_problem(e)})") from None
    if too_deep(value):
        raise InputError(f"{path}: not usable JSON (nested too deeply: more than {MAX_DEPTH} levels)")
    return value


MAX_DEPTH = 200   # CoSER files nest fewer than 10 levels; deeper data would only overflow the stack later


def too_deep(value: Any, limit: int = MAX_DEPTH) -> bool:
    """Whether lists/objects nest more than `limit` levels (iterative: it never recurses itself).

    The parser accepts up to about a thousand levels, but copying, hashing or writing such data
    later runs out of stack far from the file it came from."""
    stack = [(value, 1)]
    while stack:
        v, depth = stack.pop()
        if depth > limit:
            return True
        if isinstance(v, dict):
            stack.extend((x, depth + 1) for x in v.values() if isinstance(x, (dict, list)))
        elif isinstance(v, list):
            stack.extend((x, depth + 1) for x in v if isinstance(x, (dict, list)))
    return False


def json_problem(e: BaseException) -> str:
    """Why the parser refused text that is JSON-shaped (nesting too deep, a huge integer, ...)."""
    if isinstance(e, RecursionError):
        return "nested too deeply"
    if isinstance(e, MemoryError):
        return "too large to load"
    msg = str(e).split(";")[0]
    if "integer string conversion" in msg:
        return "an integer has too many digits"
    return msg[:120]


def iter_jsonl(path: str, what: str = "JSONL file") -> Iterator[tuple[int, Any | InputError]]:
    """Yield (line number, object) for each non-blank line; a bad line yields an InputError value.

    Bad lines are yielded rather than raised so a caller can skip one book and keep the rest.
    """
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        raise InputError(f"{path}: {what} not found") from None
    except OSError as e:
        raise InputError(f"{path}: cannot read {what} ({e.strerror})") from None
    with f:
        for lineno, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                yield lineno, InputError(f"{path}: line {lineno}: not valid UTF-8 (byte {e.start})")
                continue
            try:
                value = json.loads(line)
                if too_deep(value):
                    raise RecursionError
                yield lineno, value
            except json.JSONDecodeError as e:
                yield lineno, InputError(f"{path}: line {lineno}: not valid JSON ({e.msg} at column {e.colno})")
            except (RecursionError, ValueError, MemoryError) as e:
                yield lineno, InputError(f"{path}: line {lineno}: not usable JSON ({json_problem(e)})")


def require(obj: Any, key: str, where: str, kind: type | tuple | None = None) -> Any:
    """obj[key] or an InputError naming where and the field."""
    if not isinstance(obj, dict):
        raise InputError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    if key not in obj:
        raise InputError(f"{where}: missing field '{key}'")
    value = obj[key]
    if kind is not None and not isinstance(value, kind):
        names = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
        raise InputError(f"{where}: field '{key}' should be {names}, got {type(value).__name__}")
    return value

"""Batch JSONL files: the request lines we write and the result lines we read.

Request line (OpenAI Batch API input, also `vllm run-batch -i`):
    {"custom_id": KEY, "method": "POST", "url": "/v1/chat/completions", "body": {chat request}}
Result line (OpenAI output and error files, also `vllm run-batch -o`):
    {"id": ..., "custom_id": KEY, "response": {"status_code": 200, "body": {chat completion}} | null,
     "error": null | {"code": ..., "message": ...}}
"""
from __future__ import annotations

import dataclasses
import json
import os

from .errors import InputError
from .io import atomic_write_text

MAX_LINES = 50_000          # OpenAI's limit of requests per batch file
MAX_BYTES = 190_000_000     # under OpenAI's 200 MB per input file (judge prompts run to ~10 KB a line)
URL = "/v1/chat/completions"


@dataclasses.dataclass
class Result:
    """One answered (or failed) request of a batch."""
    custom_id: str
    content: str | None            # None: the line failed
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error: str = ""


def request_line(custom_id: str, body: dict) -> str:
    return json.dumps({"custom_id": custom_id, "method": "POST", "url": URL, "body": body},
                      ensure_ascii=False, separators=(",", ":")) + "\n"


def split(keys: list[str], lines: list[str]) -> list[tuple[list[str], list[str]]]:
    """(keys, lines) pieces of at most MAX_LINES lines and MAX_BYTES bytes (limits read at call time,
    so tests can lower them); a single line larger than MAX_BYTES still gets a piece of its own."""
    pieces, size = [([], [])], 0
    for k, line in zip(keys, lines):
        n = len(line.encode("utf-8"))
        if pieces[-1][0] and (len(pieces[-1][0]) >= MAX_LINES or size + n > MAX_BYTES):
            pieces.append(([], []))
            size = 0
        pieces[-1][0].append(k)
        pieces[-1][1].append(line)
        size += n
    return pieces


def numbered_paths(path: str, n: int) -> list[str]:
    """PATH for one file; PATH-1, PATH-2, ... (before the extension) for more."""
    if n == 1:
        return [path]
    stem, ext = os.path.splitext(path)
    return [f"{stem}-{i}{ext}" for i in range(1, n + 1)]


def write_requests(path: str, groups: list[list[str]]) -> list[str]:
    """One file per group (one model each); returns the paths written."""
    paths = numbered_paths(path, len(groups))
    for p, lines in zip(paths, groups):
        atomic_write_text(p, "".join(lines))
    return paths


def parse_result(obj) -> Result:
    """A result line as a Result; ValueError (with a short reason) when it is not one."""
    if not isinstance(obj, dict):
        raise ValueError("expected a JSON object")
    cid = obj.get("custom_id")
    if not isinstance(cid, str) or not cid:
        raise ValueError("missing field 'custom_id'")
    err, resp = obj.get("error"), obj.get("response")
    if resp is None:
        if not err:
            raise ValueError("neither 'response' nor 'error'")
        return Result(cid, None, error=_error_text(err))
    if not isinstance(resp, dict) or not isinstance(resp.get("status_code"), int):
        raise ValueError("field 'response' needs an integer 'status_code'")
    body = resp.get("body")
    if resp["status_code"] != 200:
        detail = body.get("error") if isinstance(body, dict) else body
        return Result(cid, None, error=f"HTTP {resp['status_code']}: {_error_text(detail)}")
    try:
        message = body["choices"][0]["message"]
        content = message.get("content")
    except (KeyError, IndexError, TypeError, AttributeError):
        raise ValueError("field 'response.body' is not a chat completion (no choices[0].message)") from None
    if content is None:
        content = ""
    if not isinstance(content, str):
        raise ValueError("field 'response.body.choices[0].message.content' is not a string")
    usage = body.get("usage") if isinstance(body.get("usage"), dict) else {}
    return Result(cid, content, _int(usage.get("prompt_tokens")), _int(usage.get("completion_tokens")))


def _int(x) -> int:
    return x if isinstance(x, int) and not isinstance(x, bool) and x >= 0 else 0


def _error_text(err) -> str:
    if isinstance(err, dict):
        return str(err.get("message") or err.get("code") or err)[:200]
    return str(err)[:200]


def parse_text(text: str, where: str) -> list[Result]:
    """Every result line of a file's text; a bad line is an InputError naming where and the line."""
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            out.append(parse_result(json.loads(line)))
        except json.JSONDecodeError as e:
            raise InputError(f"{where}: line {n}: not valid JSON ({e.msg} at column {e.colno})") from None
        except (ValueError, RecursionError) as e:
            raise InputError(f"{where}: line {n}: not a batch result line ({e})") from None
    return out


def read_results(path: str) -> list[Result]:
    from .io import read_text

    return parse_text(read_text(path, "batch results file"), path)

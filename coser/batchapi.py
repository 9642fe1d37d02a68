"""An OpenAI-compatible Batch API, reached through the client's own endpoint routing and keys.

    upload   POST /v1/files (purpose "batch")                  -> input_file_id
    create   POST /v1/batches (endpoint /v1/chat/completions, completion_window 24h) -> batch id
    poll     GET  /v1/batches/{id}   validating -> in_progress -> completed | failed | expired | cancelled
    results  GET  /v1/files/{output_file_id | error_file_id}/content

Requests go to the route of the model (config.json `models`, else the top level) with that route's
key only, through the same SDK client as its chat calls. Transient failures (429, 5xx, timeouts,
dropped connections) are retried with the client's bounded backoff; others fail at once, naming the
endpoint, never the key.
"""
from __future__ import annotations

import time

from .batchfiles import URL, Result, parse_text
from .endpoints import Route, key_setting, redact_url
from .errors import LLMPermanentError, LLMUnavailable

TERMINAL = ("completed", "failed", "expired", "cancelled")


class BatchAPI:
    """The Batch API of one route (its first base URL: a batch is one job, not spread over replicas)."""

    def __init__(self, llm, route: Route):
        self.llm, self.route = llm, route
        self.url = route.base_urls[0]
        self.where = f"Batch API of {route.where}"

    def _call(self, what: str, fn):
        import openai
        s = self.llm.settings
        attempts = max(1, int(s.max_attempts))
        last = ""
        for attempt in range(1, attempts + 1):
            try:
                return fn(self.llm._remote_client(self.route, self.url))
            except openai.APIStatusError as e:
                status = e.status_code
                detail = self.llm._scrub(_detail(e))
                if status in (401, 403):
                    raise LLMPermanentError(f"{self.where}: authentication failed (HTTP {status}); check "
                                            f"{key_setting(s, self.route.name)}") from None
                if not (status in (408, 429) or status >= 500):
                    raise LLMPermanentError(f"{self.where}: {what}: HTTP {status}: {detail}") from None
                last, wait = f"HTTP {status}", _retry_after(e)
            except (openai.APITimeoutError, openai.APIConnectionError, openai.APIResponseValidationError) as e:
                last, wait = type(e).__name__, None
            if attempt < attempts:
                delay = wait if wait is not None else s.retry_base * 2 ** (attempt - 1)
                time.sleep(min(s.retry_cap, delay))
        raise LLMUnavailable(f"{self.where}: {what}: gave up after {attempts} attempts ({last})")

    def upload(self, name: str, data: bytes) -> str:
        return self._call("upload", lambda c: c.files.create(file=(name, data, "application/jsonl"),
                                                             purpose="batch")).id

    def create(self, input_file_id: str, metadata: dict) -> dict:
        b = self._call("create", lambda c: c.batches.create(input_file_id=input_file_id, endpoint=URL,
                                                            completion_window="24h", metadata=metadata))
        return _state(b)

    def retrieve(self, batch_id: str) -> dict:
        return _state(self._call("poll", lambda c: c.batches.retrieve(batch_id)))

    def find(self, input_file_id: str) -> dict | None:
        """A batch already created from this file (a run killed between create and saving its id)."""
        try:
            page = self._call("list", lambda c: c.batches.list(limit=100))
        except LLMPermanentError:
            return None  # a server without the list call: create anew
        for b in getattr(page, "data", None) or []:
            if getattr(b, "input_file_id", None) == input_file_id:
                return _state(b)
        return None

    def results(self, file_id: str | None) -> list[Result]:
        if not file_id:
            return []
        text = self._call("download", lambda c: c.files.content(file_id).text)
        return parse_text(text, f"{redact_url(self.url)} file {file_id}")


def _state(b) -> dict:
    return {"id": b.id, "status": b.status, "output_file_id": getattr(b, "output_file_id", None),
            "error_file_id": getattr(b, "error_file_id", None)}


def _detail(e) -> str:
    from .llm import _error_detail
    return _error_detail(e)


def _retry_after(e):
    from .llm import _retry_after as ra
    return ra(e)

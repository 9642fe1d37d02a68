"""A fake OpenAI-compatible server for tests and benchmarks (stdlib only, 127.0.0.1, ephemeral port).

It scripts replies per request, injects faults (HTTP errors with Retry-After, hangs, malformed or
cut bodies, dropped connections), records every request body it receives (the Authorization
header is never recorded), and counts the maximum number of requests in flight.

It also serves a Batch API (`FakeBatches`): file upload and content, batch create, retrieve and list,
with status transitions validating -> in_progress -> completed over polls, answering each line with
the same responder as online calls; per-line failures and expired batches can be scripted.
"""
from __future__ import annotations

import hashlib
import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable


class Fault:
    """A scripted misbehaviour instead of a normal reply."""

    def __init__(self, kind: str, status: int = 200, retry_after: float | None = None, seconds: float = 0.0,
                 body: str | None = None):
        self.kind, self.status, self.retry_after, self.seconds, self.body = kind, status, retry_after, seconds, body

    @classmethod
    def http(cls, status: int, retry_after: float | None = None, message: str = "injected fault") -> "Fault":
        return cls("http", status=status, retry_after=retry_after, body=message)

    @classmethod
    def hang(cls, seconds: float) -> "Fault":
        return cls("hang", seconds=seconds)

    @classmethod
    def malformed(cls) -> "Fault":
        return cls("malformed")

    @classmethod
    def truncated_body(cls) -> "Fault":
        return cls("truncated_body")

    @classmethod
    def drop(cls) -> "Fault":
        return cls("drop")

    @classmethod
    def cut_stream(cls, content: str = "I was saying that") -> "Fault":
        """A streamed reply whose connection closes mid-way: no finish_reason, no [DONE]."""
        return cls("cut_stream", body=content)

    @classmethod
    def length(cls, content: str) -> "Fault":
        """A complete reply that the server cut at max_tokens (finish_reason 'length')."""
        return cls("length", body=content)

    @classmethod
    def slow_stream(cls, content: str, seconds: float) -> "Fault":
        """A stream that sends its first half, pauses `seconds`, then the rest (for Ctrl-C mid-reply)."""
        return cls("slow_stream", seconds=seconds, body=content)

    @classmethod
    def empty(cls, null: bool = False) -> "Fault":
        """HTTP 200 with empty content ("" or, with null, a JSON null) -- the reply of a broken server."""
        return cls("empty", body=None if null else "")

    @classmethod
    def trickle(cls, seconds: float = 0.5, headers_too: bool = False) -> "Fault":
        """A server that sends its reply one byte every `seconds` (after the headers, or from the first
        byte with headers_too): each read gets data in time, so only a whole-request deadline ends it.
        Like slow_stream, and unlike every other reply, it is written in many pieces: that is the fault."""
        return cls("trickle", seconds=seconds, body="headers" if headers_too else "body")

    def __repr__(self) -> str:
        return f"Fault({self.kind}, {self.status})"


Reply = "str | Fault"


def _completion(model: str, content: str, finish: str = "stop") -> dict:
    return {
        "id": "chatcmpl-fake", "object": "chat.completion", "created": int(time.time()), "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": finish}],
        "usage": {"prompt_tokens": 10, "completion_tokens": max(1, len(content.split())), "total_tokens": 10},
    }


class _Server(ThreadingHTTPServer):
    request_queue_size = 128  # bursts of concurrent workers must not stall in accept()
    daemon_threads = True


class FakeServer:
    def __init__(self, responder: Callable[[dict], Any] | None = None, latency: float = 0.0,
                 api_key: str | None = None, models: list[str] | None = None):
        self.responder = responder or (lambda body: "ok")
        self.latency = latency
        # Like a real endpoint: only this key (None = any) and these model names (None = any) are served,
        # others get 401 / 404. Of the Authorization header only a sha256 is kept (auth_hashes).
        self.api_key = api_key
        self.models = models
        self.requests: list[dict] = []
        self.auth_seen: list[bool] = []
        self.auth_hashes: list[str] = []
        self._queue: list = []
        self._lock = threading.Lock()
        self.in_flight = 0
        self.max_in_flight = 0
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.batches = FakeBatches(self)

    # -- scripting ----------------------------------------------------------------------------
    def set_responder(self, fn: Callable[[dict], Any]) -> None:
        self.responder = fn

    def queue(self, *replies) -> None:
        with self._lock:
            self._queue.extend(replies)

    def reset(self) -> None:
        with self._lock:
            self.requests.clear()
            self._queue.clear()
            self.max_in_flight = 0

    def chat_requests(self) -> list[dict]:
        return [r for r in self.requests if r.get("_path", "").endswith("/chat/completions")]

    # -- lifecycle ----------------------------------------------------------------------------
    def start(self) -> "FakeServer":
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self):
                super().setup()
                try:
                    self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                except OSError:
                    pass

            def log_message(self, *a):  # keep test output clean
                pass

            def do_GET(self):
                if server.api_key is not None and self.headers.get("Authorization") != f"Bearer {server.api_key}":
                    return self._send(401, {"error": {"message": "Incorrect API key provided", "type": "auth"}})
                if "/files/" in self.path or "/batches" in self.path:
                    return self._raw(*server.batches.get(self.path))
                names = server.models if server.models is not None else ["fake-model"]
                self._send(200, {"object": "list", "data": [{"id": n, "object": "model"} for n in names]})

            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                if self.path.endswith(("/files", "/batches")):
                    if server.api_key is not None and self.headers.get("Authorization") != f"Bearer {server.api_key}":
                        return self._send(401, {"error": {"message": "Incorrect API key provided", "type": "auth"}})
                    return self._raw(*server.batches.post(self.path, self.headers.get("Content-Type", ""), raw))
                try:
                    body = json.loads(raw or b"{}")
                except json.JSONDecodeError:
                    body = {"_unparseable": raw.decode("utf-8", "replace")}
                body["_path"] = self.path
                with server._lock:
                    server.requests.append(body)
                    auth = self.headers.get("Authorization") or ""
                    server.auth_seen.append(bool(auth))
                    server.auth_hashes.append(hashlib.sha256(auth.encode()).hexdigest())
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                    reply = server._queue.pop(0) if server._queue else None
                try:
                    if server.latency:
                        time.sleep(server.latency)
                    if server.api_key is not None and self.headers.get("Authorization") != f"Bearer {server.api_key}":
                        return self._send(401, {"error": {"message": "Incorrect API key provided", "type": "auth"}})
                    if server.models is not None and body.get("model") not in server.models:
                        return self._send(404, {"error": {"message": f"model {body.get('model')} does not exist",
                                                          "type": "not_found"}})
                    if self.path.endswith("/embeddings"):
                        return self._send(200, _embeddings(body))
                    if reply is None:
                        reply = server.responder(body)
                    self._reply(body, reply)
                finally:
                    with server._lock:
                        server.in_flight -= 1

            def _reply(self, body: dict, reply):
                if isinstance(reply, Fault):
                    if reply.kind == "http":
                        headers = {"Retry-After": str(reply.retry_after)} if reply.retry_after is not None else {}
                        return self._send(reply.status, {"error": {"message": reply.body, "type": "fake"}}, headers)
                    if reply.kind == "hang":
                        time.sleep(reply.seconds)
                        return self._send(200, _completion(body.get("model", ""), "late"))
                    if reply.kind == "malformed":
                        return self._raw(200, b"this is not json {")
                    if reply.kind == "truncated_body":
                        full = json.dumps(_completion(body.get("model", ""), "cut")).encode()
                        return self._raw(200, full[: len(full) // 2])
                    if reply.kind in ("cut_stream", "length", "slow_stream") and body.get("stream"):
                        return self._stream(body.get("model", ""), reply.body, fault=reply)
                    if reply.kind in ("cut_stream", "length", "slow_stream"):
                        finish = "length" if reply.kind == "length" else "stop"
                        return self._send(200, _completion(body.get("model", ""), reply.body, finish))
                    if reply.kind == "empty":
                        if body.get("stream"):
                            return self._stream(body.get("model", ""), "")
                        completion = _completion(body.get("model", ""), "")
                        completion["choices"][0]["message"]["content"] = reply.body
                        return self._send(200, completion)
                    if reply.kind == "trickle":
                        return self._trickle(body, reply)
                    if reply.kind == "drop":
                        self.close_connection = True
                        try:
                            self.connection.shutdown(2)
                        except OSError:
                            pass
                        return
                content = reply if isinstance(reply, str) else json.dumps(reply)
                if body.get("stream"):
                    return self._stream(body.get("model", ""), content)
                self._send(200, _completion(body.get("model", ""), content))

            def _send(self, status: int, obj: dict, headers: dict | None = None):
                self._raw(status, json.dumps(obj).encode(), headers)

            def _head(self, status: int, headers: dict) -> bytes:
                """Status line and headers as bytes, to go out in the same write as the body."""
                lines = [f"HTTP/1.1 {status} {self.responses.get(status, ('',))[0]}",
                         f"Server: fake-openai", f"Date: {self.date_time_string()}"]
                lines += [f"{k}: {v}" for k, v in headers.items()]
                return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

            def _raw(self, status: int, data: bytes, headers: dict | None = None):
                # One write per response: headers and body written separately on a keep-alive socket
                # meet Nagle + delayed ACK and stall ~40 ms each.
                self.log_request(status)
                head = self._head(status, {"Content-Type": "application/json", "Content-Length": str(len(data)),
                                           **(headers or {})})
                try:
                    self.wfile.write(head + data)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def _trickle(self, body: dict, fault: Fault):
                data = json.dumps(_completion(body.get("model", ""), "a reply that takes all day")).encode()
                head = self._head(200, {"Content-Type": "application/json", "Content-Length": str(len(data))})
                self.close_connection = True
                try:
                    if fault.body == "headers":
                        data = head + data
                    else:
                        self.wfile.write(head)
                        self.wfile.flush()
                    for i in range(len(data)):
                        time.sleep(fault.seconds)
                        self.wfile.write(data[i:i + 1])
                        self.wfile.flush()
                except (BrokenPipeError, ConnectionResetError, OSError):
                    pass

            def _stream(self, model: str, content: str, fault: Fault | None = None):
                def event(delta: dict, finish=None) -> bytes:
                    chunk = {"id": "c", "object": "chat.completion.chunk", "created": 0, "model": model,
                             "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
                    return f"data: {json.dumps(chunk)}\n\n".encode()

                words = content.split(" ")
                events = [event({"content": w if i == 0 else " " + w}) for i, w in enumerate(words)]
                kind = fault.kind if fault else ""
                if kind == "cut_stream":
                    tail = []  # the connection closes here: no finish_reason, no [DONE]
                else:
                    tail = [event({}, "length" if kind == "length" else "stop"), b"data: [DONE]\n\n"]
                head = self._head(200, {"Content-Type": "text/event-stream", "Connection": "close"})
                self.close_connection = True
                try:
                    self.log_request(200)
                    if kind == "slow_stream":  # the only stream written in two pieces: a pause mid-reply
                        half = max(1, len(events) // 2)
                        self.wfile.write(head + b"".join(events[:half]))
                        self.wfile.flush()
                        time.sleep(fault.seconds)
                        self.wfile.write(b"".join(events[half:] + tail))
                    else:  # one write, as every other response
                        self.wfile.write(head + b"".join(events + tail))
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self._httpd = _Server(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()
        return self

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

    def stop(self) -> None:
        if self._httpd:
            self._httpd.shutdown()
            self._httpd.server_close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


class FakeBatches:
    """The Batch API part of the fake server. Counters in `counts`; each answered line's body in `bodies`.

    Scripting: `steps` polls per status before the next one; `line_fault(custom_id, body)` returns an
    HTTP status to fail that line with (or None); `expire` batches to end as "expired" after answering
    only their first half (the rest go to the error file with code batch_expired).
    """

    def __init__(self, server: "FakeServer"):
        self.server = server
        self.lock = threading.Lock()
        self.files: dict[str, bytes] = {}
        self.jobs: dict[str, dict] = {}
        self.counts = {"upload": 0, "create": 0, "poll": 0, "list": 0, "download": 0}
        self.bodies: list[dict] = []
        self.steps = 1
        self.line_fault: Callable[[str, dict], int | None] | None = None
        self.expire = 0

    def _file(self, data: bytes, purpose: str) -> dict:
        fid = f"file-{len(self.files) + 1}"
        self.files[fid] = data
        return {"id": fid, "object": "file", "bytes": len(data), "created_at": int(time.time()),
                "filename": f"{fid}.jsonl", "purpose": purpose, "status": "processed"}

    def post(self, path: str, content_type: str, raw: bytes) -> tuple[int, bytes]:
        with self.lock:
            if path.endswith("/files"):
                self.counts["upload"] += 1
                fields = _multipart(content_type, raw)
                if fields.get("purpose") != b"batch" or "file" not in fields:
                    return _json(400, {"error": {"message": "purpose must be batch, with a file"}})
                return _json(200, self._file(fields["file"], "batch"))
            self.counts["create"] += 1
            req = json.loads(raw or b"{}")
            if req.get("input_file_id") not in self.files or req.get("endpoint") != "/v1/chat/completions" \
                    or req.get("completion_window") != "24h":
                return _json(400, {"error": {"message": "bad batch request"}})
            bid = f"batch_{len(self.jobs) + 1}"
            self.jobs[bid] = {"id": bid, "object": "batch", "endpoint": req["endpoint"], "errors": None,
                              "input_file_id": req["input_file_id"], "completion_window": "24h",
                              "status": "validating", "output_file_id": None, "error_file_id": None,
                              "created_at": int(time.time()), "metadata": req.get("metadata"),
                              "request_counts": {"total": 0, "completed": 0, "failed": 0}, "_polls": 0}
            return _json(200, self._public(bid))

    def get(self, path: str) -> tuple[int, bytes]:
        with self.lock:
            parts = path.split("?")[0].rstrip("/").split("/")
            if parts[-1] == "content" and parts[-2] in self.files:
                self.counts["download"] += 1
                return 200, self.files[parts[-2]]
            if parts[-1] == "batches":
                self.counts["list"] += 1
                return _json(200, {"object": "list", "data": [self._public(b) for b in self.jobs],
                                   "has_more": False})
            if parts[-1] in self.jobs:
                self.counts["poll"] += 1
                self._advance(self.jobs[parts[-1]])
                return _json(200, self._public(parts[-1]))
            return _json(404, {"error": {"message": f"no such object: {parts[-1]}"}})

    def _public(self, bid: str) -> dict:
        return {k: v for k, v in self.jobs[bid].items() if not k.startswith("_")}

    def _advance(self, job: dict) -> None:
        if job["status"] not in ("validating", "in_progress"):
            return
        job["_polls"] += 1
        if job["_polls"] < self.steps:
            return
        job["_polls"] = 0
        if job["status"] == "validating":
            job["status"] = "in_progress"
            return
        expired = self.expire > 0
        self.expire -= expired
        lines = [json.loads(x) for x in self.files[job["input_file_id"]].decode().splitlines() if x.strip()]
        cut = len(lines) // 2 if expired else len(lines)
        out, err = [], []
        for n, line in enumerate(lines):
            cid, body = line["custom_id"], line["body"]
            if n >= cut:
                err.append({"id": f"req-{n}", "custom_id": cid, "response": None,
                            "error": {"code": "batch_expired", "message": "expired before it ran"}})
                continue
            self.bodies.append({"custom_id": cid, **body})
            status = self.line_fault(cid, body) if self.line_fault else None
            reply = self.server.responder(body) if status is None else None
            if isinstance(reply, Fault):
                status = reply.status if reply.kind == "http" else 500
            if status is not None:
                err.append({"id": f"req-{n}", "custom_id": cid, "error": None, "response": {
                    "status_code": status, "request_id": f"r{n}",
                    "body": {"error": {"message": "injected line failure", "type": "fake"}}}})
                continue
            content = reply if isinstance(reply, str) else json.dumps(reply)
            out.append({"id": f"req-{n}", "custom_id": cid, "error": None, "response": {
                "status_code": 200, "request_id": f"r{n}", "body": _completion(body.get("model", ""), content)}})
        to_bytes = lambda rows: "".join(json.dumps(r) + "\n" for r in rows).encode()  # noqa: E731
        job["output_file_id"] = self._file(to_bytes(out), "batch_output")["id"] if out else None
        job["error_file_id"] = self._file(to_bytes(err), "batch_output")["id"] if err else None
        job["request_counts"] = {"total": len(lines), "completed": len(out), "failed": len(err)}
        job["status"] = "expired" if expired else "completed"


def _json(status: int, obj) -> tuple[int, bytes]:
    return status, json.dumps(obj).encode()


def _multipart(content_type: str, raw: bytes) -> dict[str, bytes]:
    """Field name -> value of a multipart/form-data body (enough for the SDK's file upload)."""
    boundary = content_type.split("boundary=")[-1].strip().strip('"').encode()
    fields = {}
    for part in raw.split(b"--" + boundary):
        head, sep, value = part.partition(b"\r\n\r\n")
        if not sep or b"name=" not in head:
            continue
        name = head.split(b'name="', 1)[1].split(b'"', 1)[0].decode()
        fields[name] = value[:-2] if value.endswith(b"\r\n") else value
    return fields


def _embeddings(body: dict) -> dict:
    """Deterministic bag-of-words hash vectors, so retrieval tests have meaningful similarity."""
    inputs = body.get("input")
    if isinstance(inputs, str):
        inputs = [inputs]
    data = []
    for i, text in enumerate(inputs or []):
        vec = [0.0] * 64
        for word in str(text).lower().split():
            h = int(hashlib.md5(word.encode()).hexdigest(), 16)
            vec[h % 64] += 1.0
        norm = sum(v * v for v in vec) ** 0.5 or 1.0
        data.append({"object": "embedding", "index": i, "embedding": [v / norm for v in vec]})
    return {"object": "list", "data": data, "model": body.get("model", ""), "usage": {"prompt_tokens": 1, "total_tokens": 1}}


def last_user_text(body: dict) -> str:
    msgs = body.get("messages") or []
    return msgs[-1]["content"] if msgs else ""


def system_text(body: dict) -> str:
    msgs = body.get("messages") or []
    return msgs[0]["content"] if msgs and msgs[0].get("role") == "system" else ""

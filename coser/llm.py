"""The one LLM client: cache -> budget -> concurrency bound -> bounded retry over one transport.

Reference semantics kept (METHOD 2.2 / 4.2): a plain-string prompt is one user message;
temperature 0 for the first generation and 1 for retries (nth_generation > 0); claude/o1
models get the system prompt as a user message; adjacent user messages are merged by plain
concatenation. Beyond the reference: transient failures are retried with jittered backoff
honouring Retry-After and a bound, permanent ones fail at once with a clear message, and
every response is kept in a durable SQLite cache so a rerun repeats no call.

Diagnostic:  python -m coser.llm --model local "Say hello as Hamlet"   [--json]
"""
from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import math
import os
import random
import re
import sys
import threading
import time
from typing import Callable

from . import deadline
from . import local as local_backend
from .cache import Cache, cache_key
from .config import LOCAL_MODEL, PLACEHOLDER_PREFIXES, Settings, is_local, load_settings
from .endpoints import NO_KEY, Route, entry_route, key_setting, match_entry, redact_text, redact_url, resolve
from .errors import ConfigError, LLMPermanentError, LLMUnavailable
from .limits import Limit, calling
from .pool import check_not_stopping
from .tokens import count_tokens
from .usage import Usage

_REASONING = re.compile(r"<(think|thinking|reasoning)>.*?</\1>\s*", re.DOTALL | re.IGNORECASE)
REPLICA_COOLDOWN = 30.0  # seconds a failing replica stays out of rotation
POOL_SHARE = 16          # calls in flight per HTTP connection pool (see LLM._remote_client)
_DANGLING_CLOSE = re.compile(r"^.*?</(think|thinking|reasoning)>\s*", re.DOTALL | re.IGNORECASE)


def strip_reasoning(text: str) -> str:
    """Drop <think>...</think>-style blocks (and a prefix ending in a lone closing tag)."""
    text = _REASONING.sub("", text)
    if re.search(r"</(think|thinking|reasoning)>", text, re.IGNORECASE):
        text = _DANGLING_CLOSE.sub("", text, count=1)
    return text


def prepare_messages(model: str, messages) -> list[dict]:
    """Model-family adjustments on a copy of the messages."""
    if isinstance(messages, str):
        messages = [{"role": "user", "content": messages}]
    out: list[dict] = []
    system_as_user = model.lower().startswith(("claude", "o1"))
    for m in messages:
        role, content = m.get("role"), m.get("content")
        if role not in ("system", "user", "assistant"):
            raise ConfigError(f"message role must be system/user/assistant, got {role!r}")
        if not isinstance(content, str):
            raise ConfigError(f"message content must be a string, got {type(content).__name__}")
        if role == "system" and system_as_user:
            role = "user"
        if out and role == "user" and out[-1]["role"] == "user":
            out[-1] = {"role": "user", "content": out[-1]["content"] + content}
        else:
            out.append({"role": role, "content": content})
    return out


def default_max_tokens(model: str) -> int:
    return 8192 if model.lower().startswith("claude") else 16384


class LLM:
    """Policy wrapper around one transport. Thread-safe; share one instance per process."""

    def __init__(self, settings: Settings | None = None, cache: Cache | None = None, usage: Usage | None = None,
                 max_in_flight: int = 8, use_cache: bool = True):
        self.settings = settings or load_settings()
        self.use_cache = use_cache
        self.cache = cache if cache is not None or not use_cache else Cache(
            os.path.join(self.settings.cache_dir, "llm_cache.sqlite"))
        self.usage = usage or Usage(self.settings.prices)
        self._max_in_flight = max(1, max_in_flight)
        self._slots = Limit(self._max_in_flight)   # all calls of this client, every endpoint
        self._clients: dict = {}
        self._ep_slots: dict = {}
        self._replica_load: dict[str, int] = {}
        self._down_until: dict[str, float] = {}
        self._client_lock = threading.RLock()
        self._tls = None
        self._no_schema: set[tuple] = set()
        self._jitter = random.Random()
        # Batch mode (coser/batch.py): while a stage runs under a batch session, a cache miss is
        # recorded for a Batch API request instead of being sent (or answered from the session).
        self.batch = None
        self.batch_runs: list[dict] = []   # one summary per stage finished in batch mode, for run records

    # -- public API ---------------------------------------------------------------------------
    def chat(self, model: str, messages, max_tokens: int | None = None, nth_generation: int = 0,
             stage: str = "default", temperature: float | None = None, response_format: dict | None = None,
             schema: dict | None = None, on_token: Callable[[str], None] | None = None,
             cache_tag: str = "", keep_reasoning: bool = False) -> str:
        """One chat completion; returns the content ("" possible) with reasoning blocks removed
        (kept when keep_reasoning: the reference protocol). The cache holds the raw text, so both share rows."""
        out = (lambda t: t) if keep_reasoning else strip_reasoning
        model = model or LOCAL_MODEL
        request = self._request(model, messages, max_tokens, nth_generation, temperature, schema, response_format,
                                cache_tag)
        msgs, max_tokens, temperature = request["messages"], request["max_tokens"], request["temperature"]
        key = cache_key(request)
        session = self.batch
        if self.use_cache and self.cache is not None:
            hit = self.cache.get(key)
            if hit is not None and isinstance(hit.get("content"), str) and out(hit["content"]) != "":
                if session is None:
                    self.usage.record(model, stage, cached=True)
                else:
                    session.hit(key, model, stage)  # counted once, by the pass that finishes the stage
                if on_token is not None:
                    on_token(out(hit["content"]))
                return out(hit["content"])
        if session is not None and not is_local(model):
            served = session.miss(key, request, model, stage)  # raises batch.Deferred while it waits
            if served is not None:
                return out(served)
        check_not_stopping()   # after Ctrl-C no new call starts (coser/pool.py)
        self.usage.check_budget()
        with calling():   # Ctrl-C's grace lasts until the reply is stored
            text, p_tok, c_tok = self._call_with_retry(model, msgs, max_tokens, temperature, nth_generation, schema,
                                                       response_format, on_token, stage)
            self.usage.record(model, stage, p_tok, c_tok)
            # Empty replies are not stored (reference: a cached '' counts as a miss).
            if self.use_cache and self.cache is not None and text != "":
                self.cache.put(key, request, {"content": text, "prompt_tokens": p_tok, "completion_tokens": c_tok},
                               stage)
        return out(text)

    def chat_retry(self, model: str, messages, max_retry: int = 5, **kw) -> str:
        """Re-ask with nth_generation 1..max_retry while the reply is empty (reference get_response_with_retry)."""
        for nth in range(max_retry + 1):
            text = self.chat(model, messages, nth_generation=nth, **kw)
            if text.strip():
                return text
        return ""

    def reject(self, model: str, messages, **kw) -> None:
        """Mark the cached reply of chat(model, messages, **kw) as failed parsing/validation, so a rerun
        asks again instead of serving it as good (issue 19). Same keywords as chat()."""
        if not self.use_cache or self.cache is None:
            return
        req = self._request(model or LOCAL_MODEL, messages, kw.get("max_tokens"), kw.get("nth_generation", 0),
                            kw.get("temperature"), kw.get("schema"), kw.get("response_format"), kw.get("cache_tag", ""))
        self.cache.reject(cache_key(req))

    def was_cached(self, model: str, messages, **kw) -> bool:
        """Whether chat(model, messages, **kw) would be answered from the cache."""
        req = self._request(model or LOCAL_MODEL, messages, kw.get("max_tokens"), kw.get("nth_generation", 0),
                            kw.get("temperature"), kw.get("schema"), kw.get("response_format"), kw.get("cache_tag", ""))
        return bool(self.cache is not None and self.cache.get(cache_key(req)))

    def _request(self, model, messages, max_tokens, nth_generation, temperature, schema, response_format,
                 cache_tag) -> dict:
        """The generation request as the cache keys it (no key, no endpoint)."""
        if max_tokens is None:
            max_tokens = default_max_tokens(model)
        if temperature is None:
            temperature = 0.0 if nth_generation == 0 else 1.0
        # Checked here, before anything is sent: NaN cannot even be written as JSON, and the
        # transport would call that an unreadable reply.
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) \
                or not math.isfinite(temperature) or temperature < 0:
            raise ConfigError(f"temperature should be a finite number, 0 or more, got {temperature!r}")
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
            raise ConfigError(f"max_tokens should be a whole number, 1 or more, got {max_tokens!r}")
        # The name sent and, for a models entry with its own base_url, the endpoint's identity
        # (URL without credentials): one model name at two servers never shares answers.
        route = None if is_local(model) else self.route(model)
        sent = route.sent if route is not None else model
        request = {"model": sent, "messages": prepare_messages(sent, messages), "max_tokens": max_tokens,
                   "temperature": temperature, "nth_generation": nth_generation}
        if route is not None and route.identity:
            request["endpoint"] = route.identity
        if schema is not None:
            request["schema"] = schema
        if response_format is not None:
            request["response_format"] = response_format
        if cache_tag:
            request["tag"] = cache_tag
        if is_local(model):
            request["repeat_penalty"] = self.settings.local_repeat_penalty
        return request

    # -- transport ------------------------------------------------------------------------------
    def route(self, model: str) -> Route:
        """Where a remote model lives (config.json `models`, else the top-level endpoint)."""
        return resolve(self.settings, model)

    def endpoint_info(self, model: str) -> dict:
        """{"model": name sent, "endpoint": base URL without credentials, or "embedded"} for records."""
        model = model or LOCAL_MODEL
        if is_local(model):
            return {"model": LOCAL_MODEL, "endpoint": "embedded"}
        r = self.route(model)
        return {"model": r.sent, "endpoint": r.shown}

    def _endpoint(self) -> str:
        return redact_url(self.settings.base_url) or "the default OpenAI endpoint"

    def _remote_client(self, route: Route | None = None, url: str | None = None):
        route = route or Route("", "", [self.settings.base_url or ""], self.settings.api_key)
        url = route.base_urls[0] if url is None else url
        if not route.usable(PLACEHOLDER_PREFIXES):
            raise ConfigError(
                f"no API key for {route.where}: set {key_setting(self.settings, route.name)} "
                "(or use --model local for the embedded offline model)")
        # Clients are per (URL, key): a key is only ever sent to the URL it is configured with.
        ident = (url, hashlib.sha256(route.key_to_send().encode()).hexdigest(), route.timeout)
        with self._client_lock:
            clients = self._clients.get(ident)
            if clients is None:
                # One HTTP connection pool serializes its bookkeeping under one lock and scans all its
                # connections per request: with hundreds of calls in flight that lock, not the network,
                # was the client's main cost. So an endpoint gets a pool per POOL_SHARE calls in flight,
                # each thread keeping to one of them.
                n = max(1, -(-max(route.max_connections or 0, self._max_in_flight) // POOL_SHARE))
                clients = [self._new_client(route, url) for _ in range(n)]
                self._clients[ident] = clients
        return clients[_thread_shard() % len(clients)]

    def _new_client(self, route: Route, url: str):
        import httpx2
        import openai
        timeout = route.timeout or self.settings.timeout
        with self._client_lock:
            if self._tls is None:   # ~0.1-0.3 s to load the CA bundle: once, shared by every pool
                self._tls = httpx2.create_ssl_context()
        # The SDK's default HTTP client (its proxies from the environment) with the whole-request
        # deadline under its connection pools (coser/deadline.py). Idle connections are kept for all
        # the calls a pool may carry (the SDK's default of 100 would reconnect past that).
        http_client = openai.DefaultHttpxClient(timeout=timeout, verify=self._tls, limits=httpx2.Limits(
            max_connections=None, max_keepalive_connections=2 * POOL_SHARE))
        deadline.install(http_client)
        # The SDK's own retries are off: this class is the one retry layer.
        return openai.OpenAI(api_key=route.key_to_send(), base_url=url or None, timeout=timeout,
                             max_retries=0, http_client=http_client)

    def _endpoint_slots(self, route: Route) -> Limit:
        """At most max_connections requests in flight to one endpoint, across all threads; fewer while
        it answers 429 (coser/limits.py: halved on overload, grows back with successes)."""
        key = route.identity or f"(top level){route.entry or ''}"
        with self._client_lock:
            sem = self._ep_slots.get(key)
            if sem is None:
                sem = Limit(route.max_connections or self._max_in_flight, adaptive=True)
                self._ep_slots[key] = sem
            return sem

    def _pick_replica(self, route: Route, avoid: str | None) -> str:
        """Fewest in flight among the replicas in rotation (a failing one is out for a while)."""
        if len(route.base_urls) == 1:
            return route.base_urls[0]
        now = time.monotonic()
        with self._client_lock:
            up = [u for u in route.base_urls if self._down_until.get(u, 0) <= now] or list(route.base_urls)
            if avoid in up and len(up) > 1:
                up.remove(avoid)
            url = min(up, key=lambda u: self._replica_load.get(u, 0))
            self._replica_load[url] = self._replica_load.get(url, 0) + 1
            return url

    def _other_replica_up(self, route: Route, url: str | None) -> bool:
        now = time.monotonic()
        with self._client_lock:
            return any(u != url and self._down_until.get(u, 0) <= now for u in route.base_urls)

    def _release_replica(self, route: Route, url: str, failed: bool) -> None:
        if len(route.base_urls) == 1:
            return
        with self._client_lock:
            self._replica_load[url] = self._replica_load.get(url, 1) - 1
            if failed:
                self._down_until[url] = time.monotonic() + REPLICA_COOLDOWN

    def _call_with_retry(self, model, msgs, max_tokens, temperature, nth, schema, response_format, on_token, stage):
        s = self.settings
        attempts = max(1, int(s.max_attempts))
        last = ""
        route = None if is_local(model) else self.route(model)
        url = None
        for attempt in range(1, attempts + 1):
            try:
                if route is None:
                    with self._slots.slot():
                        return local_backend.complete(msgs, min(max_tokens, s.local_max_tokens), temperature,
                                                      seed=nth, n_ctx=s.local_n_ctx, schema=schema, on_token=on_token,
                                                      repeat_penalty=s.local_repeat_penalty)
                # The endpoint's own bound first: a thread waiting for a busy server holds no global slot.
                with self._endpoint_slots(route).slot() as ep, self._slots.slot():
                    url = self._pick_replica(route, url)
                    failed = True
                    try:
                        out = self._remote(route, url, msgs, max_tokens, temperature, schema, response_format,
                                           on_token)
                        failed = False
                        ep.ok()
                        return out
                    except _Transient as e:
                        if e.status == 429:
                            ep.overloaded()   # fewer requests to this endpoint until it recovers
                        raise
                    except LLMPermanentError:
                        failed = False
                        raise
                    finally:
                        self._release_replica(route, url, failed)
            except _Transient as e:
                last = str(e)
                self.usage.fault(model, stage, retried=attempt < attempts)
                if attempt == attempts:
                    break
                if route is not None and self._other_replica_up(route, url):
                    continue  # another replica takes the request at once
                delay = e.retry_after if e.retry_after is not None else s.retry_base * 2 ** (attempt - 1)
                delay = min(s.retry_cap, delay) * (1.0 if e.retry_after is not None else 0.5 + self._jitter.random() / 2)
                time.sleep(delay)
        where = route.where if route is not None else f"model '{model}' at the embedded backend"
        raise LLMUnavailable(f"{where}: gave up after {attempts} attempts ({last})")

    def embedding_route(self, model: str) -> Route:
        """The embedding model's endpoint: a `models` entry if one matches, else embedding_base_url /
        embedding_api_key (reference keys), else the top-level pair. A key goes only to its own URL."""
        s = self.settings
        if match_entry(s.models or {}, model) is not None or not s.embedding_base_url:
            route = self.route(model)
            if route.entry is None and s.embedding_api_key and not s.embedding_api_key.startswith(
                    PLACEHOLDER_PREFIXES) and not s.embedding_base_url:
                route.api_key = s.embedding_api_key
            return route
        key = s.embedding_api_key if s.embedding_api_key and not s.embedding_api_key.startswith(
            PLACEHOLDER_PREFIXES) else ""
        return Route(model, model, [s.embedding_base_url], key, own_endpoint=True, source=s.source or "config.json")

    def embed(self, model: str, texts: list[str], stage: str = "embedding") -> list[list[float]]:
        """Embedding vectors through the same layer as chat: endpoint table, cache, retries, limits, usage."""
        route = self.embedding_route(model)
        out: dict[str, list[float]] = {}
        keys = {}
        for t in dict.fromkeys(texts):
            req = {"model": route.sent, "embedding_input": t}
            if route.identity:
                req["endpoint"] = route.identity
            keys[t] = (cache_key(req), req)
            hit = self.cache.get(keys[t][0]) if self.use_cache and self.cache is not None else None
            if hit is not None and isinstance(hit.get("embedding"), list):
                out[t] = hit["embedding"]
                self.usage.record(model, stage, cached=True)
        todo = [t for t in keys if t not in out]
        for start in range(0, len(todo), 100):
            batch = todo[start:start + 100]
            vectors, p_tok = self._embed_with_retry(route, batch, stage)
            self.usage.record(model, stage, p_tok, 0)
            for t, v in zip(batch, vectors):
                out[t] = v
                if self.use_cache and self.cache is not None:
                    self.cache.put(keys[t][0], keys[t][1], {"embedding": v}, stage)
        return [out[t] for t in texts]

    def _embed_with_retry(self, route: Route, batch: list[str], stage: str):
        import openai
        s = self.settings
        attempts = max(1, int(s.max_attempts))
        last, url = "", None
        for attempt in range(1, attempts + 1):
            self.usage.check_budget()
            try:
                with self._endpoint_slots(route).slot(), self._slots.slot():
                    url = self._pick_replica(route, url)
                    failed = True
                    try:
                        with deadline.deadline(route.timeout or s.timeout):
                            resp = self._remote_client(route, url).embeddings.create(model=route.sent, input=batch)
                        failed = False
                    finally:
                        self._release_replica(route, url, failed)
                data = sorted(resp.data, key=lambda d: d.index)
                if len(data) != len(batch):
                    raise _Transient("embedding reply with a wrong number of vectors")
                u = getattr(resp, "usage", None)
                return [list(d.embedding) for d in data], getattr(u, "prompt_tokens", 0) or 0
            except openai.APIStatusError as e:
                if e.status_code in (401, 403):
                    raise LLMPermanentError(f"{route.where}: authentication failed (HTTP {e.status_code}); check "
                                            f"{key_setting(self.settings, route.name)}") from None
                if not (e.status_code in (408, 429) or e.status_code >= 500):
                    raise LLMPermanentError(f"{route.where}: HTTP {e.status_code}: "
                                            f"{self._scrub(_error_detail(e))}") from None
                last, retry_after = f"HTTP {e.status_code}", _retry_after(e)
            except (openai.APITimeoutError, openai.APIConnectionError, openai.APIResponseValidationError,
                    _Transient, json.JSONDecodeError, ValueError, KeyError, AttributeError, TypeError) as e:
                last, retry_after = type(e).__name__, None
            self.usage.fault(route.name, stage, retried=attempt < attempts)
            if attempt < attempts and not self._other_replica_up(route, url):
                delay = retry_after if retry_after is not None else s.retry_base * 2 ** (attempt - 1)
                time.sleep(min(s.retry_cap, delay))
        raise LLMUnavailable(f"{route.where}: gave up after {attempts} attempts ({last})")

    def _wants_schema(self, route: Route) -> bool:
        mode = route.structured_output or self.settings.structured_output
        if mode == "on":
            return True
        if mode == "off":
            return False
        return route.sent.lower().startswith(("gpt-4o", "gpt-4.1", "gpt-5", "o3", "o4"))

    def _served_models(self, route: Route, url: str) -> list[str] | None:
        """What the endpoint's /models lists, or None when it does not answer."""
        try:
            limit = min(10.0, route.timeout or 10.0)
            client = self._remote_client(route, url).with_options(timeout=limit)
            with deadline.deadline(limit):
                return sorted(m.id for m in client.models.list())
        except Exception:
            return None

    def _body(self, route: Route, url: str, msgs, max_tokens, temperature, schema, response_format) -> dict:
        """The chat-completions request body, the same whether it goes online or into a batch file."""
        model = route.sent
        kwargs = dict(model=model, messages=msgs, temperature=temperature)
        if model.lower().startswith(("o1", "o3", "o4", "gpt-5")):
            kwargs["max_completion_tokens"] = max_tokens
        else:
            kwargs["max_tokens"] = max_tokens
        if response_format is not None:
            kwargs["response_format"] = response_format
        elif schema is not None and _schema_key(route, url) not in self._no_schema and self._wants_schema(route):
            kwargs["response_format"] = {"type": "json_schema",
                                         "json_schema": {"name": "output", "schema": schema, "strict": False}}
        return kwargs

    def batch_body(self, model: str, request: dict) -> dict:
        """The body an online call of this cached request would send (for Batch API files)."""
        route = self.route(model)
        return self._body(route, route.base_urls[0], request["messages"], request["max_tokens"],
                          request["temperature"], request.get("schema"), request.get("response_format"))

    def _remote(self, route: Route, url: str, msgs, max_tokens, temperature, schema, response_format, on_token):
        import openai
        client = self._remote_client(route, url)
        model = route.sent
        where = f"model '{route.name}'" + (f" ({os.path.basename(route.source) or 'config.json'} "
                                            f"models[\"{route.entry}\"])" if route.entry else "") + \
            f" at {redact_url(url) or 'the default OpenAI endpoint'}"
        schema_key = _schema_key(route, url)
        kwargs = self._body(route, url, msgs, max_tokens, temperature, schema, response_format)
        total = route.timeout or self.settings.timeout
        due = time.monotonic() + total  # a timeout at or past this moment was the total deadline's
        try:
            with deadline.deadline(total):
                return _send(client, kwargs, msgs, on_token)
        except openai.APIStatusError as e:
            status = e.status_code
            detail = self._scrub(_error_detail(e))
            low = detail.lower()
            # An endpoint that rejects the schema we added (llama-cpp-python's server: HTTP 500 naming
            # response_format) is asked again without it, and this endpoint is remembered.
            if response_format is None and "response_format" in kwargs and status not in (401, 403, 404, 429) \
                    and ("response_format" in low or "json_schema" in low or "schema" in low):
                with self._client_lock:
                    self._no_schema.add(schema_key)
                return self._remote(route, url, msgs, max_tokens, temperature, None, None, on_token)
            if status == 429 or status >= 500 or status == 408:
                raise _Transient(f"HTTP {status}", _retry_after(e), status) from None
            if status in (401, 403):
                raise LLMPermanentError(
                    f"{where}: authentication failed (HTTP {status}); check "
                    f"{key_setting(self.settings, route.name)}") from None
            if status == 404:
                served = self._served_models(route, url)
                listing = (f"; it serves: {', '.join(served[:20])}" if served else
                           "; its /models lists nothing" if served == [] else "; its /models did not answer")
                raise LLMPermanentError(
                    f"{where}: model '{model}' not found (HTTP 404): check the model name and base_url{listing}"
                ) from None
            raise LLMPermanentError(f"{where}: HTTP {status}: {detail}") from None
        except (openai.APITimeoutError, openai.APIConnectionError) as e:
            if time.monotonic() >= due:
                raise _Transient(_overdue(total)) from None
            raise _Transient(type(e).__name__.replace("API", "")) from None
        except _StreamCut as e:
            raise _Transient(_overdue(total) if time.monotonic() >= due else str(e)) from None
        except openai.APIResponseValidationError:
            raise _Transient("malformed reply body") from None
        except (json.JSONDecodeError, ValueError, KeyError, AttributeError, TypeError) as e:
            # A reply whose JSON body is cut or malformed: the server misbehaved, try again.
            raise _Transient(f"unreadable reply ({type(e).__name__})") from None

    def _scrub(self, text: str) -> str:
        secrets = [self.settings.api_key, self.settings.embedding_api_key]
        for e in (self.settings.models or {}).values():
            secrets.append(e.get("api_key") or "")
            if e.get("api_key_env"):
                secrets.append(os.environ.get(e["api_key_env"], ""))
        for secret in secrets:
            if secret and len(secret) >= 6 and secret != NO_KEY:
                text = text.replace(secret, "***")
        return redact_text(text)


def _schema_key(route: Route, url: str) -> tuple:
    """Which endpoint and model a refusal of JSON-schema output is remembered for."""
    return (route.identity or redact_url(url), route.sent)


_shards = threading.local()
_next_shard = itertools.count()


def _thread_shard() -> int:
    """A number fixed per thread, handed out in turn, so threads spread evenly over connection pools."""
    n = getattr(_shards, "n", None)
    if n is None:
        n = _shards.n = next(_next_shard)
    return n


class _Transient(Exception):
    def __init__(self, msg: str, retry_after: float | None = None, status: int | None = None):
        super().__init__(msg)
        self.retry_after, self.status = retry_after, status


def _send(client, kwargs: dict, msgs: list[dict], on_token):
    """One request: (text, prompt tokens, completion tokens); streamed when on_token is given."""
    if on_token is None:
        # The body is plain JSON already. The SDK's typed `create` first walks every message
        # against its TypedDicts (~5 ms of pure Python per call on a long scene history, under
        # the GIL), which made many-worker runs CPU-bound; its documented low-level `post`
        # sends the same body with the same auth, timeout and error types. The reply is read as
        # plain JSON too: building the SDK's typed objects was a tenth of the client's CPU.
        import httpx2
        reply = json.loads(client.post("/chat/completions", body=kwargs, cast_to=httpx2.Response).content)
        choices = reply.get("choices") if isinstance(reply, dict) else None
        if not choices:
            raise _Transient("reply without choices")
        text = (choices[0].get("message") or {}).get("content") or ""
        if not isinstance(text, str):
            raise _Transient("reply content is not text")
        u = reply.get("usage") if isinstance(reply.get("usage"), dict) else {}
        p, c = u.get("prompt_tokens"), u.get("completion_tokens")
        return text, p if isinstance(p, int) else _estimate(msgs), c if isinstance(c, int) else count_tokens(text)
    text = _read_stream(client.chat.completions.create(stream=True, **kwargs), on_token)
    return text, _estimate(msgs), count_tokens(text)


def _overdue(total: float) -> str:
    return (f"no complete reply within {total:g} s (the timeout setting bounds the whole request: "
            "connect, send and every read)")


class _StreamCut(Exception):
    """A stream that ended before its finish_reason (the connection closed or stalled)."""


def _read_stream(stream, on_token) -> str:
    """The text of a streamed reply, each piece passed to on_token as it arrives.

    A stream that ends without a finish_reason closed before its end (issue 19): it is a transient
    failure (retried, never cached). on_token may have `discard()` (the pieces shown so far are
    abandoned) and `finish(reason)` (e.g. 'length': cut at max_tokens) -- chat.py uses both.
    """
    pieces, finish = [], None
    try:
        for chunk in stream:
            if not chunk.choices:
                continue
            choice = chunk.choices[0]
            if choice.delta and choice.delta.content:
                pieces.append(choice.delta.content)
                on_token(choice.delta.content)
            if getattr(choice, "finish_reason", None):
                finish = choice.finish_reason
    except Exception as e:  # the connection broke mid-stream (the HTTP library's own transport errors)
        if not type(e).__module__.split(".")[0].startswith(("httpx", "httpcore", "h11")):
            raise
        finish = None
    if finish is None:
        if pieces and hasattr(on_token, "discard"):
            on_token.discard()
        raise _StreamCut("stream closed before its end")
    if hasattr(on_token, "finish"):
        on_token.finish(finish)
    return "".join(pieces)


def _retry_after(e) -> float | None:
    try:
        value = e.response.headers.get("retry-after")
        return max(0.0, float(value)) if value is not None else None
    except (AttributeError, TypeError, ValueError):
        return None


def _error_detail(e) -> str:
    try:
        body = e.response.json()
        msg = body.get("error", {}).get("message") if isinstance(body.get("error"), dict) else body.get("error")
        return str(msg or body)[:300]
    except Exception:
        return str(getattr(e, "message", e))[:300]


def _estimate(msgs: list[dict]) -> int:
    return sum(count_tokens(m["content"]) + 4 for m in msgs)


# -- process-wide client --------------------------------------------------------------------
_current: LLM | None = None


def set_llm(llm: LLM) -> None:
    global _current
    _current = llm


def get_llm() -> LLM:
    """The client configured by coser.cli.setup (or a default one)."""
    global _current
    if _current is None:
        _current = LLM()
    return _current


def list_endpoints(settings: Settings) -> int:
    """Print each configured endpoint: URL (no credentials), key set or not (never the key), /models."""
    llm = LLM(settings, cache=None, use_cache=False)
    rows = [("(top level)", "")] + [(f'models["{name}"]', name) for name in (settings.models or {})]
    for label, name in rows:
        route = entry_route(settings, name or None, name or "(top level)")
        has_key = bool(route.api_key) and not route.api_key.startswith(PLACEHOLDER_PREFIXES)
        print(f"{label}: {route.shown}")
        print(f"  key: {'set' if has_key else 'none (sends EMPTY)' if route.own_endpoint else 'not set'}"
              + (f"; sends model name '{route.sent}'" if name and route.sent != route.name else "")
              + (f"; max_connections {route.max_connections}" if route.max_connections else ""))
        for url in route.base_urls:
            served = llm._served_models(route, url) if route.usable(PLACEHOLDER_PREFIXES) else None
            shown = redact_url(url) or "the default OpenAI endpoint"
            if served is None:
                print(f"  {shown}: /models does not answer" if route.usable(PLACEHOLDER_PREFIXES)
                      else f"  {shown}: not checked (no key)")
            else:
                print(f"  {shown}: /models serves {len(served)}: {', '.join(served[:30]) or '(none)'}")
    return 0


def main(argv=None) -> int:
    from . import cli

    p = argparse.ArgumentParser(prog="python -m coser.llm", description="Send one prompt to a model and print the "
                                "reply (streaming). Checks configuration, endpoint and cache.")
    p.add_argument("prompt", nargs="?", help="the user message")
    p.add_argument("--list", action="store_true", help="list the configured endpoints (config.json top level and "
                   "`models`): URL, whether a key is set, what /models serves; sends no prompt")
    p.add_argument("--model", default=LOCAL_MODEL, help="model name; 'local' = embedded SmolLM2 (default)")
    p.add_argument("--system", default=None, help="optional system prompt")
    p.add_argument("--max_tokens", type=int, default=256)
    p.add_argument("--nth_generation", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print one JSON object with the reply, usage and cache status")
    cli.add_common_args(p, workers=False)
    args = p.parse_args(argv)
    if args.list:
        return list_endpoints(load_settings(args.config))
    if args.prompt is None:
        p.error("the prompt is required (or give --list)")
    if args.max_tokens < 1:
        p.error("argument --max_tokens: should be at least 1")
    if args.nth_generation < 0:
        p.error("argument --nth_generation: should be 0 or more")
    llm = cli.setup(args)
    messages = ([{"role": "system", "content": args.system}] if args.system else []) + [
        {"role": "user", "content": args.prompt}]
    kw = dict(max_tokens=args.max_tokens, nth_generation=args.nth_generation, stage="diagnostic")
    if args.json:
        cached = (not args.no_cache) and llm.was_cached(args.model, messages, **kw)
        t0 = time.time()
        text = llm.chat(args.model, messages, **kw)
        print(json.dumps({"model": args.model, "endpoint": llm.endpoint_info(args.model)["endpoint"],
                          "content": text, "cached": cached, "seconds": round(time.time() - t0, 3),
                          "usage": llm.usage.totals()}, ensure_ascii=False, indent=2))
    else:
        llm.chat(args.model, messages, on_token=lambda t: (sys.stdout.write(t), sys.stdout.flush()), **kw)
        sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    from .cli import main as _run

    _run(main)

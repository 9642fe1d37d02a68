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
import json
import os
import random
import re
import sys
import threading
import time
from typing import Callable

from . import local as local_backend
from .cache import Cache, cache_key
from .config import LOCAL_MODEL, Settings, is_local, load_settings
from .errors import ConfigError, LLMPermanentError, LLMUnavailable
from .tokens import count_tokens
from .usage import Usage

_REASONING = re.compile(r"<(think|thinking|reasoning)>.*?</\1>\s*", re.DOTALL | re.IGNORECASE)
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


def _wants_schema(model: str, settings: Settings) -> bool:
    if settings.structured_output == "on":
        return True
    if settings.structured_output == "off":
        return False
    return model.lower().startswith(("gpt-4o", "gpt-4.1", "gpt-5", "o3", "o4"))


class LLM:
    """Policy wrapper around one transport. Thread-safe; share one instance per process."""

    def __init__(self, settings: Settings | None = None, cache: Cache | None = None, usage: Usage | None = None,
                 max_in_flight: int = 8, use_cache: bool = True):
        self.settings = settings or load_settings()
        self.use_cache = use_cache
        self.cache = cache if cache is not None or not use_cache else Cache(
            os.path.join(self.settings.cache_dir, "llm_cache.sqlite"))
        self.usage = usage or Usage(self.settings.prices)
        self._slots = threading.BoundedSemaphore(max(1, max_in_flight))
        self._client = None
        self._client_lock = threading.Lock()
        self._no_schema: set[str] = set()
        self._jitter = random.Random()

    # -- public API ---------------------------------------------------------------------------
    def chat(self, model: str, messages, max_tokens: int | None = None, nth_generation: int = 0,
             stage: str = "default", temperature: float | None = None, response_format: dict | None = None,
             schema: dict | None = None, on_token: Callable[[str], None] | None = None,
             cache_tag: str = "") -> str:
        """One chat completion; returns the content ("" possible) with reasoning blocks removed."""
        model = model or LOCAL_MODEL
        request = self._request(model, messages, max_tokens, nth_generation, temperature, schema, response_format,
                                cache_tag)
        msgs, max_tokens, temperature = request["messages"], request["max_tokens"], request["temperature"]
        key = cache_key(request)
        if self.use_cache and self.cache is not None:
            hit = self.cache.get(key)
            if hit is not None and isinstance(hit.get("content"), str) and hit["content"] != "":
                self.usage.record(model, stage, cached=True)
                if on_token is not None:
                    on_token(hit["content"])
                return hit["content"]
        self.usage.check_budget()
        text, p_tok, c_tok = self._call_with_retry(model, msgs, max_tokens, temperature, nth_generation, schema,
                                                   response_format, on_token, stage)
        text = strip_reasoning(text)
        self.usage.record(model, stage, p_tok, c_tok)
        # Empty replies are not stored (reference: a cached '' counts as a miss).
        if self.use_cache and self.cache is not None and text != "":
            self.cache.put(key, request, {"content": text, "prompt_tokens": p_tok, "completion_tokens": c_tok}, stage)
        return text

    def chat_retry(self, model: str, messages, max_retry: int = 5, **kw) -> str:
        """Re-ask with nth_generation 1..max_retry while the reply is empty (reference get_response_with_retry)."""
        for nth in range(max_retry + 1):
            text = self.chat(model, messages, nth_generation=nth, **kw)
            if text.strip():
                return text
        return ""

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
        request = {"model": model, "messages": prepare_messages(model, messages), "max_tokens": max_tokens,
                   "temperature": temperature, "nth_generation": nth_generation}
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
    def _endpoint(self) -> str:
        return self.settings.base_url or "the default OpenAI endpoint"

    def _remote_client(self):
        with self._client_lock:
            if self._client is None:
                if not self.settings.has_remote_key():
                    raise ConfigError(
                        "no API key for a remote model: set api_key in config.json or the OPENAI_API_KEY "
                        "environment variable (or use --model local for the embedded offline model)")
                import openai
                # The SDK's own retries are off: this class is the one retry layer.
                self._client = openai.OpenAI(api_key=self.settings.api_key, base_url=self.settings.base_url or None,
                                             timeout=self.settings.timeout, max_retries=0)
            return self._client

    def _call_with_retry(self, model, msgs, max_tokens, temperature, nth, schema, response_format, on_token, stage):
        s = self.settings
        attempts = max(1, int(s.max_attempts))
        last = ""
        for attempt in range(1, attempts + 1):
            try:
                with self._slots:
                    if is_local(model):
                        return local_backend.complete(msgs, min(max_tokens, s.local_max_tokens), temperature,
                                                      seed=nth, n_ctx=s.local_n_ctx, schema=schema, on_token=on_token,
                                                      repeat_penalty=s.local_repeat_penalty)
                    return self._remote(model, msgs, max_tokens, temperature, schema, response_format, on_token)
            except _Transient as e:
                last = str(e)
                self.usage.fault(model, stage, retried=attempt < attempts)
                if attempt == attempts:
                    break
                delay = e.retry_after if e.retry_after is not None else s.retry_base * 2 ** (attempt - 1)
                delay = min(s.retry_cap, delay) * (1.0 if e.retry_after is not None else 0.5 + self._jitter.random() / 2)
                time.sleep(delay)
        raise LLMUnavailable(f"model '{model}' at {self._endpoint()}: gave up after {attempts} attempts ({last})")

    def _remote(self, model, msgs, max_tokens, temperature, schema, response_format, on_token):
        import openai
        client = self._remote_client()
        kwargs = dict(model=model, messages=msgs, temperature=temperature)
        if model.lower().startswith(("o1", "o3", "o4", "gpt-5")):
            kwargs["max_completion_tokens"] = max_tokens
        else:
            kwargs["max_tokens"] = max_tokens
        if response_format is not None:
            kwargs["response_format"] = response_format
        elif schema is not None and model not in self._no_schema and _wants_schema(model, self.settings):
            kwargs["response_format"] = {"type": "json_schema",
                                         "json_schema": {"name": "output", "schema": schema, "strict": False}}
        try:
            if on_token is None:
                # The body is plain JSON already. The SDK's typed `create` first walks every message
                # against its TypedDicts (~5 ms of pure Python per call on a long scene history, under
                # the GIL), which made many-worker runs CPU-bound; its documented low-level `post`
                # sends the same body with the same auth, timeout and error types.
                from openai.types.chat import ChatCompletion
                resp = client.post("/chat/completions", body=kwargs, cast_to=ChatCompletion)
                if not getattr(resp, "choices", None):
                    raise _Transient("reply without choices")
                text = resp.choices[0].message.content or ""
                u = getattr(resp, "usage", None)
                p = getattr(u, "prompt_tokens", None) if u else None
                c = getattr(u, "completion_tokens", None) if u else None
                return text, p if p is not None else _estimate(msgs), c if c is not None else count_tokens(text)
            pieces = []
            for chunk in client.chat.completions.create(stream=True, **kwargs):
                if chunk.choices and chunk.choices[0].delta and chunk.choices[0].delta.content:
                    pieces.append(chunk.choices[0].delta.content)
                    on_token(chunk.choices[0].delta.content)
            text = "".join(pieces)
            return text, _estimate(msgs), count_tokens(text)
        except openai.APIStatusError as e:
            status = e.status_code
            if status == 429 or status >= 500 or status == 408:
                raise _Transient(f"HTTP {status}", _retry_after(e)) from None
            detail = self._scrub(_error_detail(e))
            if status == 400 and "response_format" in kwargs and ("response_format" in detail or "schema" in detail):
                self._no_schema.add(model)  # endpoint does not do structured output: ask again without it
                return self._remote(model, msgs, max_tokens, temperature, None, response_format, on_token)
            if status in (401, 403):
                raise LLMPermanentError(
                    f"model '{model}' at {self._endpoint()}: authentication failed (HTTP {status}); "
                    "check api_key in config.json or OPENAI_API_KEY") from None
            if status == 404:
                raise LLMPermanentError(
                    f"model '{model}' at {self._endpoint()}: not found (HTTP 404): check the model name and base_url"
                ) from None
            raise LLMPermanentError(f"model '{model}' at {self._endpoint()}: HTTP {status}: {detail}") from None
        except (openai.APITimeoutError, openai.APIConnectionError) as e:
            raise _Transient(type(e).__name__.replace("API", "")) from None
        except openai.APIResponseValidationError:
            raise _Transient("malformed reply body") from None
        except (json.JSONDecodeError, ValueError, KeyError, AttributeError, TypeError) as e:
            # A reply whose JSON body is cut or malformed: the server misbehaved, try again.
            raise _Transient(f"unreadable reply ({type(e).__name__})") from None

    def _scrub(self, text: str) -> str:
        for secret in (self.settings.api_key, self.settings.embedding_api_key):
            if secret and len(secret) >= 6:
                text = text.replace(secret, "***")
        return text


class _Transient(Exception):
    def __init__(self, msg: str, retry_after: float | None = None):
        super().__init__(msg)
        self.retry_after = retry_after


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


def main(argv=None) -> int:
    from . import cli

    p = argparse.ArgumentParser(prog="python -m coser.llm", description="Send one prompt to a model and print the "
                                "reply (streaming). Checks configuration, endpoint and cache.")
    p.add_argument("prompt", help="the user message")
    p.add_argument("--model", default=LOCAL_MODEL, help="model name; 'local' = embedded SmolLM2 (default)")
    p.add_argument("--system", default=None, help="optional system prompt")
    p.add_argument("--max_tokens", type=int, default=256)
    p.add_argument("--nth_generation", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print one JSON object with the reply, usage and cache status")
    cli.add_common_args(p, workers=False)
    args = p.parse_args(argv)
    llm = cli.setup(args)
    messages = ([{"role": "system", "content": args.system}] if args.system else []) + [
        {"role": "user", "content": args.prompt}]
    kw = dict(max_tokens=args.max_tokens, nth_generation=args.nth_generation, stage="diagnostic")
    if args.json:
        cached = (not args.no_cache) and llm.was_cached(args.model, messages, **kw)
        t0 = time.time()
        text = llm.chat(args.model, messages, **kw)
        print(json.dumps({"model": args.model, "endpoint": "embedded" if is_local(args.model) else llm._endpoint(),
                          "content": text, "cached": cached, "seconds": round(time.time() - t0, 3),
                          "usage": llm.usage.totals()}, ensure_ascii=False, indent=2))
    else:
        llm.chat(args.model, messages, on_token=lambda t: (sys.stdout.write(t), sys.stdout.flush()), **kw)
        sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    from .cli import main as _run

    _run(main)

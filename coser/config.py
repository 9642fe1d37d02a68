"""One source of settings: config.json, then environment variables, then --config.

Keys kept from the reference: api_key, base_url, embedding_model, embedding_api_key, embedding_base_url.
Extra keys: prices (USD per million input/output tokens per model), timeout, max_attempts,
retry_base, local_n_ctx, local_max_tokens, local_repeat_penalty, cache_dir, structured_output.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Any

from .errors import ConfigError

PLACEHOLDER_PREFIXES = ("YOUR_", "<", "sk-xxx", "sk-...")
LOCAL_MODEL = "local"


@dataclasses.dataclass
class Settings:
    api_key: str = ""
    base_url: str = ""
    embedding_model: str = ""
    embedding_api_key: str = ""
    embedding_base_url: str = ""
    prices: dict = dataclasses.field(default_factory=dict)
    timeout: float = 180.0
    max_attempts: int = 6          # transient-failure attempts per call (first try included)
    retry_base: float = 1.0        # backoff base in seconds (doubles each attempt, jittered, capped)
    retry_cap: float = 60.0
    local_n_ctx: int = 8192
    local_max_tokens: int = 1024   # the embedded model is tiny; long generations only ramble
    local_repeat_penalty: float = 1.2  # llama.cpp repetition penalty; 1.0 lets SmolLM2-135M loop a phrase
    cache_dir: str = ".cache"
    structured_output: str = "auto"  # auto | on | off: send JSON schemas to remote endpoints
    models: dict = dataclasses.field(default_factory=dict)  # model name/glob -> own endpoint (coser/endpoints.py)
    source: str = ""                 # which config file was read (for the run record)

    def has_remote_key(self) -> bool:
        return bool(self.api_key) and not self.api_key.startswith(PLACEHOLDER_PREFIXES)

    def public(self) -> dict:
        """The effective configuration without secrets, for run records."""
        d = dataclasses.asdict(self)
        for k in ("api_key", "embedding_api_key"):
            d[k] = "(set)" if d[k] and not str(d[k]).startswith(PLACEHOLDER_PREFIXES) else "(unset)"
        from .endpoints import public_models, redact_url
        for k in ("base_url", "embedding_base_url"):
            d[k] = redact_url(d[k])
        d["models"] = public_models(self.models)
        return d


_FIELDS = {f.name: f for f in dataclasses.fields(Settings)}


def load_settings(config_path: str | None = None) -> Settings:
    """Read config.json (or --config PATH), apply OPENAI_*/COSER_* environment overrides."""
    explicit = config_path is not None
    path = config_path or "config.json"
    data: dict[str, Any] = {}
    if os.path.exists(path):
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except IsADirectoryError:
            raise ConfigError(f"{path}: expected a config file, found a directory") from None
        except OSError as e:
            raise ConfigError(f"{path}: cannot read config file ({e.strerror or e})") from None
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path}: line {e.lineno}: not valid JSON ({e.msg})") from None
        except UnicodeDecodeError:
            raise ConfigError(f"{path}: not valid UTF-8") from None
        except (RecursionError, ValueError) as e:   # nesting too deep, a huge integer
            from .io import json_problem
            raise ConfigError(f"{path}: not usable JSON ({json_problem(e)})") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a JSON object of settings")
    elif explicit:
        raise ConfigError(f"{path}: config file not found")
    s = Settings(source=os.path.abspath(path) if os.path.exists(path) else "")
    for key, value in data.items():
        if key not in _FIELDS or key == "source":
            continue  # unknown keys are tolerated: config files are shared with other tools
        want = _FIELDS[key].type
        where = f"{path}: setting '{key}'"
        if want in ("float", "int"):
            value = number(value, where, integer=want == "int", **_RANGES.get(key, {}))
        elif want == "str" and not isinstance(value, str):
            raise ConfigError(f"{where} should be a string, got {_shown(value)}")
        elif want == "dict" and not isinstance(value, dict):
            raise ConfigError(f"{where} should be an object")
        setattr(s, key, value)
    if s.structured_output not in STRUCTURED_OUTPUT:
        raise ConfigError(f"{path}: setting 'structured_output' should be auto, on or off, got "
                          f"{_shown(s.structured_output)}")
    if not s.cache_dir:
        raise ConfigError(f"{path}: setting 'cache_dir' is empty")
    for key in ("base_url", "embedding_base_url"):
        check_url(getattr(s, key), f"{path}: setting '{key}'")
    env = os.environ
    if env.get("OPENAI_API_KEY"):
        s.api_key = env["OPENAI_API_KEY"]
    if env.get("OPENAI_BASE_URL"):
        s.base_url = env["OPENAI_BASE_URL"]
    if env.get("COSER_CACHE_DIR"):
        s.cache_dir = env["COSER_CACHE_DIR"]
    check_url(s.base_url, "environment variable OPENAI_BASE_URL")
    for var, key in (("COSER_RETRY_BASE", "retry_base"), ("COSER_TIMEOUT", "timeout")):
        if env.get(var):
            setattr(s, key, number(_env_number(var), f"environment variable {var}", **_RANGES[key]))
    _check_prices(s.prices, path)
    if s.models:
        from .endpoints import check_models
        check_models(s.models, os.path.basename(path))
        # An entry's prices count for the names it matches (usage looks globs up in order).
        s.prices = {**{name: e["prices"] for name, e in s.models.items() if "prices" in e}, **s.prices}
    return s


def _check_prices(prices: dict, path: str) -> None:
    for model, p in prices.items():
        if not is_price(p):
            raise ConfigError(f"{path}: prices['{model}'] needs numeric 'input' and 'output' (USD per 1M tokens, "
                              "finite, 0 or more)")
        for k in ("batch_input", "batch_output"):  # optional; the batch discount defaults to half price
            if k in p and not _usd(p[k]):
                raise ConfigError(f"{path}: prices['{model}'].{k} should be a number (USD per 1M tokens, finite, "
                                  "0 or more)")


def _usd(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= 0


def is_price(p) -> bool:
    """{"input": USD, "output": USD} per million tokens, both finite and not negative."""
    return isinstance(p, dict) and _usd(p.get("input")) and _usd(p.get("output"))


def _shown(value) -> str:
    try:
        return json.dumps(value)[:40]
    except (TypeError, ValueError):
        return repr(value)[:40]


def _env_number(var: str):
    raw = os.environ[var]
    try:
        return float(raw)
    except ValueError:
        raise ConfigError(f"environment variable {var}: should be a number of seconds, got {raw[:40]!r}") from None


def number(value, where: str, integer: bool = False, low: float | None = None, low_open: bool = False,
           high: float | None = None):
    """A setting that must be a finite number (a whole one if integer) within range, or a ConfigError
    naming it. JSON lets NaN, Infinity and 1e400 (which parses to infinity) through; none is a setting."""
    kind = "a whole number" if integer else "a number"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{where} should be {kind}, got {_shown(value)}")
    if not math.isfinite(value):
        raise ConfigError(f"{where} should be a finite number, got {value}")
    if integer and value != int(value):
        raise ConfigError(f"{where} should be {kind}, got {value}")
    if low is not None and (value <= low if low_open else value < low):
        raise ConfigError(f"{where} should be {'more than' if low_open else 'at least'} {low:g}, got {value:g}")
    if high is not None and value > high:
        raise ConfigError(f"{where} should be at most {high:g}, got {value:g}")
    return int(value) if integer else float(value)


def check_url(url: str, where: str) -> None:
    """An endpoint URL is empty (the default endpoint) or http(s)://host...; anything else is a typo."""
    if not url:
        return
    from urllib.parse import urlsplit
    from .endpoints import redact_url
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number or out of range
    except ValueError:
        parts = None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname or any(c.isspace() for c in url):
        raise ConfigError(f"{where} should be an http:// or https:// URL, got {redact_url(url)[:80]!r}")


STRUCTURED_OUTPUT = ("auto", "on", "off")
# Ranges of the numeric settings: a timeout of -1 or 0 attempts is a typo, never a wish; and a finite
# 1e300 seconds is no setting either (sockets and sleeps cannot even represent it).
DAY = 86400.0
_RANGES = {"timeout": {"low": 0, "low_open": True, "high": DAY}, "max_attempts": {"low": 1, "high": 1000},
           "retry_base": {"low": 0, "high": DAY}, "retry_cap": {"low": 0, "high": DAY},
           "local_n_ctx": {"low": 1, "high": 2 ** 24}, "local_max_tokens": {"low": 1, "high": 2 ** 24},
           "local_repeat_penalty": {"low": 0, "low_open": True, "high": 100}}


DEFAULT_REMOTE_MODEL = "gpt-4o"  # the reference's default for every role


def configured_default_model(settings: Settings) -> str:
    """The model a script uses when none is named: gpt-4o with a usable top-level key, else the first
    `models` entry (exact name, not a glob) that can be reached, else the embedded model."""
    if settings.has_remote_key():
        return DEFAULT_REMOTE_MODEL
    from .endpoints import resolve
    for name in settings.models or {}:
        if not any(c in name for c in "*?[") and resolve(settings, name).usable(PLACEHOLDER_PREFIXES):
            return name
    return LOCAL_MODEL


def is_local(model: str | None) -> bool:
    return (model or LOCAL_MODEL) == LOCAL_MODEL

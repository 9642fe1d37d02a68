"""Text utilities shared by construction, transform, evaluation and chat."""
from __future__ import annotations

import re

# Inner thoughts are single-line, non-greedy [...] spans (reference behaviour in both stages).
_THOUGHT = re.compile(r"\[.*?\]")
# Evaluation also drops <system_thinking>/<role_thinking>/<_thinking>-style blocks (DOTALL).
_THINK_BLOCKS = [
    re.compile(r"<(system|role)[_ ]think(?:ing)?>.*?</\1[_ ]think(?:ing)?>", re.DOTALL),
    re.compile(r"<[_ ]+think(?:ing)?>.*?</[_ ]+think(?:ing)?>", re.DOTALL),
]


def remove_inner_thoughts(text: str, eval_mode: bool = False) -> str:
    """Delete [thoughts]; strip each line; collapse newline runs to one; strip.

    eval_mode adds the evaluation version's removal of *_thinking blocks.
    """
    if eval_mode:
        for pat in _THINK_BLOCKS:
            text = pat.sub("", text)
    text = _THOUGHT.sub("", text)
    text = "\n".join(line.strip() for line in text.split("\n"))
    text = re.sub(r"\n+", "\n", text)
    return text.strip()


# ---- evaluation helpers (METHOD 4.4, 4.5) --------------------------------------------------

# "Next Speaker", possibly decorated with ** or #, then ':' / '-' / 'is', then the name up to the
# end of the line or the next '*'.
_NSP = re.compile(r"[*#]*\s*next\s+speaker\s*\**\s*(?::|-|\bis\b)\s*\**\s*([^\n*]*)", re.IGNORECASE)


def extract_nsp(text: str) -> str | None:
    """The name after the last 'Next Speaker:' in an NSP reply, or None."""
    matches = _NSP.findall(text or "")
    if not matches:
        return None
    name = matches[-1].strip().rstrip(".,!\"'").replace("*", "").strip()
    return name or None


def parse_nsp(text: str) -> str:
    """The predicted speaker: extract_nsp, else the part before the first ':', else the whole reply."""
    text = text or ""
    found = extract_nsp(text)
    if found:
        return found
    return text.split(":")[0].strip() if ":" in text else text


def add_speaker_name(text: str, speaker: str) -> str:
    """Prefix 'speaker: ' unless some line already starts with it (ASCII or full-width colon)."""
    for line in text.split("\n"):
        line = line.strip()
        if line.startswith(speaker + ":") or line.startswith(speaker + "："):
            return text
    return f"{speaker}: {text}"


def append_message(messages: list[dict], role: str, text: str) -> None:
    """Append a turn to a chat history; a turn from the same role as the last one is joined to it
    with a blank line (the GCA agents' history rule, also used by chat.py). Empty text is ignored."""
    if not text:
        return
    if messages and messages[-1]["role"] == role:
        messages[-1] = {"role": role, "content": messages[-1]["content"] + "\n\n" + text}
    else:
        messages.append({"role": role, "content": text})


def own_segment(text: str, name: str) -> str:
    """Keep only the part of a multi-speaker reply spoken by `name` (llama/step models, METHOD 4.5).

    A line containing ':' whose prefix differs from the current segment's speaker opens a new
    segment; the first segment whose speaker is `name` is returned. Unlike the reference (which
    returned '' then), a reply in which `name` never appears is kept whole: an unprefixed reply
    is the agent's own turn far more often than it is nobody's.
    """
    segments: list[tuple[str | None, list[str]]] = []
    for line in text.split("\n"):
        if ":" in line:
            who = line.split(":", 1)[0].strip()
            if not segments or segments[-1][0] != who:
                segments.append((who, [line]))
                continue
        if not segments:
            segments.append((None, []))
        segments[-1][1].append(line)
    for who, lines in segments:
        if who == name:
            return "\n".join(lines).strip("\n")
    return text


# ---- repetition repair (METHOD 4.5 step 4) -----------------------------------------------
_CJK = "\u4e00-\u9fff"
_KANA = "\u3040-\u309f\u30a0-\u30ff"
_LONG_LETTERS = re.compile(r"[A-Za-z]{100,}")
_CJK_CHAR = re.compile(f"[{_CJK}{_KANA}]")
_ENDS_ALNUM = re.compile(r"[A-Za-z0-9]$")
_ENDS_CJK = re.compile(f"[{_CJK}{_KANA}]$")
_ASCII_PUNCT = set("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~")
_token_re = None


def _tokenize(text: str) -> list[str]:
    global _token_re
    if _token_re is None:
        import regex  # \p{P}\p{S} classes need the regex module

        _token_re = regex.compile(rf"\b\w+\b|[{_CJK}]|[{_KANA}]|\d|[\p{{P}}\p{{S}}]")
    tokens: list[str] = []
    for tok in _token_re.findall(text):
        if _CJK_CHAR.search(tok):
            tokens.extend(tok)  # CJK and kana count one character per token
        else:
            tokens.append(tok)
    return tokens


def _is_word(tok: str) -> bool:
    return bool(re.fullmatch(r"\w+", tok)) and not _CJK_CHAR.search(tok)


def _detokenize(tokens: list[str]) -> str:
    out: list[str] = []
    prev = None
    for tok in tokens:
        if _is_word(tok) and prev is not None and (_is_word(prev) or prev in _ASCII_PUNCT):
            out.append(" ")
        out.append(tok)
        prev = tok
    text = "".join(out)
    if _ENDS_ALNUM.search(text):
        text += "."
    elif _ENDS_CJK.search(text):
        text += "。"
    return text


def _consecutive_cut(tokens: list[str]) -> int | None:
    n = len(tokens)
    for length in range(5, min(30, n) + 1):
        for i in range(0, n - 5 * length + 1):
            window = tokens[i:i + length]
            if all(tokens[i + k * length:i + (k + 1) * length] == window for k in range(1, 5)):
                return i + length
    return None


def _distant_cut(tokens: list[str]) -> int | None:
    n = len(tokens)
    best = None
    for length in range(15, min(30, n) + 1):
        first: dict[tuple, int] = {}
        for i in range(0, n - length + 1):
            gram = tuple(tokens[i:i + length])
            j = first.setdefault(gram, i)
            if j != i and i >= j + length:
                best = i if best is None else min(best, i)
                break  # later repeats of this length start further on
    return best


def fix_repetition(text: str) -> str | None:
    """Cut degenerate repetition (runs of letters, 5 back-to-back copies, long repeated n-grams).

    Returns the repaired text, or None when no rule fired (the caller keeps the original).
    """
    fired = False
    if _LONG_LETTERS.search(text):
        text = _LONG_LETTERS.sub(lambda m: m.group(0)[:20], text)
        fired = True
    tokens = _tokenize(text)
    cut = _consecutive_cut(tokens)
    if cut is None:
        cut = _distant_cut(tokens)
    if cut is not None:
        tokens = tokens[:cut]
        fired = True
    return _detokenize(tokens) if fired else None

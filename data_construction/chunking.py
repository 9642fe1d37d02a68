"""Books -> chunks, exactly as the reference cuts them (METHOD.md 1.1, 2.3, 2.4).

Chunk boundaries decide every later prompt and cache key, so each rule here keeps the
reference's constants and oddities (the merged A4 heading pattern, the 2000-character merge,
no separator between packed chapters). The few departures only turn reference crashes into
clear errors or sensible output: an empty book is an InputError, and a book holding a literal
special-token string is tokenized leniently instead of raising.
"""
from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

from coser import tokens
from coser.errors import InputError

# ---- title sanitization -------------------------------------------------------------
# Room for the longest suffix we add (".progress.json", "cache_" prefixes) under the
# usual 255-byte file-name limit.
MAX_TITLE_BYTES = 200


def sanitize_title(title: str) -> str:
    """Reference replacements (/ -> -, : -> _, . -> space, in that order), then made file-safe."""
    name = title.replace("/", "-").replace(":", "_").replace(".", " ")
    # Beyond the reference: backslash is a separator on Windows; control characters break
    # terminals and some file systems. ".." cannot survive the "." replacement above.
    name = name.replace("\\", "-")
    name = "".join(" " if unicodedata.category(ch) == "Cc" else ch for ch in name)
    if not name.strip():
        raise ValueError(f"title {title!r} is empty after sanitization")
    raw = name.encode("utf-8")
    if len(raw) > MAX_TITLE_BYTES:
        name = raw[:MAX_TITLE_BYTES].decode("utf-8", errors="ignore")
    return name


# ---- tab cleanup ----------------------------------------------------------------------
def clean_tabs(content: str) -> str:
    """Drop every tab when tabs exceed 5% of the characters (reference has_excessive_tabs)."""
    if not content:
        # The reference divides by zero here; callers reject empty books before this point.
        return content
    if content.count("\t") / len(content) > 0.05:
        return content.replace("\t", "")
    return content


# ---- chapter detection (2.3) ----------------------------------------------------------
KEYWORDS_A = ["Chapter", "CHAPTER", "Prologue", "Epilogue", "Afterword", "Preface", "Introduction",
              "Conclusion", "Appendix", "Interlude", "Part", "PART", "part", "Book"]
KEYWORDS_B = [k for k in KEYWORDS_A if k != "Book"]
NUMBER_WORDS = ["One", "Two", "Three", "Four", "Five", "Six", "Seven", "Eight", "Nine", "Ten",
                "Eleven", "Twelve", "Thirteen", "Fourteen", "Fifteen", "Sixteen", "Seventeen",
                "Eighteen", "Nineteen", "Twenty", "Thirty", "Forty", "Fifty", "Sixty", "Seventy",
                "Eighty", "Ninety", "Hundred"]
UNIT_WORDS = NUMBER_WORDS[:9]


def _roman(n: int) -> str:
    out = []
    for value, sym in ((100, "C"), (90, "XC"), (50, "L"), (40, "XL"), (10, "X"), (9, "IX"),
                       (5, "V"), (4, "IV"), (1, "I")):
        while n >= value:
            out.append(sym)
            n -= value
    return "".join(out)


ROMAN_1_100 = [_roman(i) for i in range(1, 101)]


def _one_of(words: list[str]) -> str:
    return "(?:" + "|".join(words) + ")"


def _lookahead(n: int) -> str:
    """L(n): the rest of this physical line is 1..n characters and ends with a newline."""
    return r"(?=[^\n]{1,%d}\n)" % n


_HASH_PREFIX = r"(?:#{1,5}\s+)?"
_A1 = (r"\n\s*" + _HASH_PREFIX + _lookahead(50) + r"(?:" + _one_of(KEYWORDS_A) + r"|#{1,6})\s+"
       r"(?:\d+|[IVXLCDM]+|" + _one_of(NUMBER_WORDS) + r")\.?\s*\n")
_A2 = r"\n\s*" + _HASH_PREFIX + _lookahead(40) + _one_of(KEYWORDS_B) + r"\s+.*\n"
_A3 = r"\n\s*" + _lookahead(50) + _one_of(NUMBER_WORDS) + r"(?:\s+" + _one_of(UNIT_WORDS) + r")?\s*\n"
# The reference meant a Roman-numeral-line pattern and a digits-line pattern; a missing comma
# glued them into this one. Kept, because it decides chunk boundaries.
_A4 = (r"\n\s*" + _HASH_PREFIX + _one_of(ROMAN_1_100) + r"\s*\n" + r"\n\s*" + _lookahead(50)
       + r"\d+\s*\n")
_A5 = r"\n\s*Chapter\s+\d+\.?\s*\n"
HEADING_RE = re.compile("|".join("(" + p + ")" for p in (_A1, _A2, _A3, _A4, _A5)), re.IGNORECASE)

MERGE_MIN_CHARS = 2000     # the reference comment says 1000; the code uses 2000
MIN_CHAPTERS = 6           # "more than 5" merged chapters, else fixed-size chunking


@dataclass
class Chapter:
    title: str | None
    content: str


def find_splits(text: str) -> list[Chapter]:
    """Raw splits: the text before the first heading, then one split per heading match."""
    matches = list(HEADING_RE.finditer(text))
    if not matches:
        return []
    splits = [Chapter(None, text[: matches[0].start()].strip())]
    for i, m in enumerate(matches):
        end = matches[i + 1].start() if i + 1 < len(matches) else len(text)
        splits.append(Chapter(m.group(0).strip(), text[m.start(): end].strip()))
    return splits


def merge_splits(splits: list[Chapter]) -> list[Chapter]:
    """Glue short splits with "\\n" until each merged chapter has >= 2000 characters."""
    merged: list[Chapter] = []
    title: str | None = ""
    content = ""
    for s in splits:
        if not title:
            title = s.title
        content = content + "\n" + s.content if content else s.content
        if len(content) >= MERGE_MIN_CHARS:
            merged.append(Chapter(title, content))
            title, content = "", ""
    if content:
        merged.append(Chapter(title, content))
    return merged


def split_book(text: str) -> list[Chapter] | None:
    """Merged chapters, or None when the book has no usable chapter structure."""
    merged = merge_splits(find_splits(text))
    return merged if len(merged) >= MIN_CHAPTERS else None


# ---- packing (2.4) --------------------------------------------------------------------
def encode(text: str) -> list[int]:
    """Reference encode; a literal special-token string (which makes it raise) falls back to
    plain-text tokenization, so normal books keep the reference's exact counts."""
    try:
        return tokens.encode(text)
    except ValueError:
        return tokens.encode_lenient(text)


def count_tokens(text: str) -> int:
    return len(encode(text))


def fixed_size_chunks(content: str, chunk_size: int) -> list[str]:
    toks = encode(content)
    out = []
    start = 0
    while start < len(toks):
        if len(toks) - start <= chunk_size:
            out.append(tokens.decode(toks[start:]))
            break
        out.append(tokens.decode(toks[start: start + chunk_size]))
        start += chunk_size
    return out


def pack_chapters(chapters: list[Chapter], chunk_size: int) -> list[str]:
    """Pack chapters into chunks of chunk_size//2 .. 2*chunk_size tokens (summed counts)."""
    out: list[str] = []
    buffer: list[str] = []
    n = 0
    for c in chapters:
        buffer.append(c.content)
        n += count_tokens(c.content)
        if n < chunk_size // 2:
            continue
        if n <= 2 * chunk_size:
            out.append("".join(buffer))
        else:
            t = encode("".join(buffer))   # slicing uses the re-encoding, not the summed count
            for i in range(0, len(t), chunk_size):
                if i + 2 * chunk_size >= len(t):
                    out.append(tokens.decode(t[i:]))
                    break
                out.append(tokens.decode(t[i: i + chunk_size]))
        buffer, n = [], 0
    if buffer:
        out.append("".join(buffer))
    return out


COPYRIGHT_WORDS = {"rights", "reserved", "reproduced", "copyright", "reproduce", "permission"}


def drop_copyright_lines(text: str) -> str:
    """Remove short lines (< 50 words) holding more than one exact copyright word."""
    kept = []
    for line in text.split("\n"):
        words = line.split()
        hits = sum(1 for w in words if w.lower() in COPYRIGHT_WORDS)
        if len(words) < 50 and hits > 1:
            continue
        kept.append(line)
    return "\n".join(kept)


@dataclass
class ChunkPlan:
    chunks: list[str]
    chapters: list[Chapter] | None   # None: fixed-size fallback was used


def chunk_book(content: str, chunk_size: int = 8192, where: str = "book") -> ChunkPlan:
    """The reference create_chunk_generator: tab cleanup, split, pack, copyright filter."""
    if chunk_size < 2:
        raise InputError(f"chunk_size must be at least 2, got {chunk_size}")
    if not content or not content.strip():
        raise InputError(f"{where}: field 'content' is empty or whitespace only")
    content = clean_tabs(content)
    chapters = split_book(content)
    chunks = fixed_size_chunks(content, chunk_size) if chapters is None else pack_chapters(chapters, chunk_size)
    if not chunks:
        raise InputError(f"{where}: field 'content' produced no text to chunk")
    chunks[0] = drop_copyright_lines(chunks[0])
    return ChunkPlan(chunks, chapters)

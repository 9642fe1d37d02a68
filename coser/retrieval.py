"""Retrieval for --retrieval modes (METHOD 4.6): per-character corpora, chunking, BM25 or embeddings.

The corpora are small (one character's plots and conversations), so an in-memory BM25 index
is enough offline; with `embedding_model` configured, an OpenAI-compatible embeddings
endpoint ranks chunks by cosine similarity instead (what the reference did through FAISS).
In the core so gca_evaluation/main.py and the web app's scenes retrieve alike (gca_evaluation/retrieval.py
re-exports it).
"""
from __future__ import annotations

import copy
import math
import os
import re
import threading
from collections import Counter

from coser.errors import InputError
from coser.io import read_json
from coser.text import remove_inner_thoughts

# mode -> [(corpus, k)]
MODES = {
    "raw_text": [("book", 1)],
    "expr1": [("experience", 1)],
    "expr3": [("experience", 3)],
    "conv1": [("conversation", 1)],
    "expr3_conv1": [("experience", 3), ("conversation", 1)],
    "expr10_conv1": [("experience", 10), ("conversation", 1)],
}
HEADERS = {"book": "====Book Content====\n\n", "experience": "====Historical Experience====\n\n",
           "conversation": "====Historical Conversation====\n\n"}
TITLES = {"book": "Content", "experience": "Historical Experience", "conversation": "Historical Conversation"}
CHUNK_SIZE, CHUNK_OVERLAP = 1000, 200
_SEPARATORS = ["\n\n", "\n", " ", ""]


# ---- chunking: recursive character splitting (the LangChain splitter's rule, 1000/200) ----
def _merge(pieces: list[str], sep: str, size: int, overlap: int) -> list[str]:
    out: list[str] = []
    current: list[str] = []
    total = 0
    for p in pieces:
        extra = len(sep) if current else 0
        if total + len(p) + extra > size and current:
            doc = sep.join(current).strip()
            if doc:
                out.append(doc)
            # Keep a tail of at most `overlap` characters as the start of the next chunk.
            while total > overlap or (total + len(p) + (len(sep) if current else 0) > size and total > 0):
                total -= len(current[0]) + (len(sep) if len(current) > 1 else 0)
                current.pop(0)
        current.append(p)
        total += len(p) + (len(sep) if len(current) > 1 else 0)
    doc = sep.join(current).strip()
    if doc:
        out.append(doc)
    return out


def split_text(text: str, size: int = CHUNK_SIZE, overlap: int = CHUNK_OVERLAP,
               separators: list[str] | None = None) -> list[str]:
    """Split on the coarsest separator present, recursing into pieces still longer than `size`."""
    separators = _SEPARATORS if separators is None else separators
    sep, rest = separators[-1], []
    for i, s in enumerate(separators):
        if s == "" or s in text:
            sep, rest = s, separators[i + 1:]
            break
    pieces = [p for p in (text.split(sep) if sep else list(text)) if p]
    out: list[str] = []
    small: list[str] = []
    for p in pieces:
        if len(p) < size:
            small.append(p)
            continue
        if small:
            out.extend(_merge(small, sep, size, overlap))
            small = []
        out.extend(split_text(p, size, overlap, rest) if rest else [p])
    if small:
        out.extend(_merge(small, sep, size, overlap))
    return out


# ---- corpora ----------------------------------------------------------------------------
def character_database(book_data: dict, character: str) -> dict | None:
    """The character's dataset entry plus `detailed_plots` (METHOD 4.3), or None if absent."""
    entry = (book_data.get("character_datasets") or {}).get(character)
    if not entry:
        return None
    plots = book_data.get("plots") or []
    ids = set()
    for key in ("plots", "conversations", "utterances"):
        for x in entry.get(key) or []:
            if isinstance(x, dict) and isinstance(x.get("i_p"), int):
                ids.add(x["i_p"])
    db = dict(entry)
    db["detailed_plots"] = [plots[i] for i in sorted(ids) if 0 <= i < len(plots)]
    return db


def _experience_of(plot: dict, character: str) -> str:
    for kc in plot.get("key_characters") or []:
        if isinstance(kc, dict) and kc.get("name") == character:
            return kc.get("experience") or ""
    return ""


def _conversation_text(plot: dict, conv: dict) -> str:
    conv = copy.deepcopy(conv)
    parts = [f"Plot Background:\n{plot.get('summary', '')}\n\n", f"Scenario:\n{conv.get('scenario', '')}\n\n",
             f"topic:\n{conv.get('topic', '')}\n\n", "Conversation:\n"]
    for u in conv.get("dialogues") or []:
        if not isinstance(u, dict):
            continue
        for k in ("i_p", "i_c", "i_u"):
            u.pop(k, None)
        name = u.get("character", "")
        text = remove_inner_thoughts(str(u.get("message", "")))
        if not text.startswith(name):
            text = f"{name}: {text}"
        parts.append(text + "\n\n")
    return "".join(parts)


def build_corpora(db: dict, character: str) -> dict[str, list[str]]:
    """book / experience / conversation documents of one character; `book` is empty without plot text."""
    plots = db.get("detailed_plots") or []
    book = [p["text"] for p in plots if isinstance(p.get("text"), str) and p["text"].strip()]
    experience = []
    for p in plots:
        doc = "PLOT: " + str(p.get("summary", "")) + "\n"
        exp = _experience_of(p, character)
        if exp:
            doc += f"{character}'s role: " + exp
        experience.append(doc)
    conversation = []
    for p in plots:
        for conv in p.get("conversation") or []:
            if isinstance(conv, dict):
                conversation.append(_conversation_text(p, conv))
    return {"book": book, "experience": experience, "conversation": conversation}


def chunk_corpus(docs: list[str]) -> list[str]:
    """All chunks of a corpus, in order; a chunk's position is its `idx`."""
    return [c for d in docs for c in split_text(d)]


# ---- retrievers -------------------------------------------------------------------------
_WORD = re.compile(r"\w+")


class BM25:
    """Okapi BM25 (k1=1.5, b=0.75) over lower-cased word tokens."""

    def __init__(self, chunks: list[str], k1: float = 1.5, b: float = 0.75):
        self.chunks, self.k1, self.b = chunks, k1, b
        self.tfs = [Counter(_WORD.findall(c.lower())) for c in chunks]
        self.lens = [sum(tf.values()) for tf in self.tfs]
        self.avg = (sum(self.lens) / len(self.lens)) if self.lens else 0.0
        df: Counter = Counter()
        for tf in self.tfs:
            df.update(tf.keys())
        n = len(chunks)
        self.idf = {w: math.log((n - d + 0.5) / (d + 0.5) + 1.0) for w, d in df.items()}

    def top(self, query: str, k: int) -> list[int]:
        q = _WORD.findall(query.lower())
        scores = []
        for i, tf in enumerate(self.tfs):
            s = 0.0
            norm = self.k1 * (1 - self.b + self.b * self.lens[i] / (self.avg or 1.0))
            for w in q:
                f = tf.get(w)
                if f:
                    s += self.idf[w] * f * (self.k1 + 1) / (f + norm)
            scores.append((-s, i))
        return [i for _, i in sorted(scores)[:k]]


class EmbeddingIndex:
    """Cosine similarity over vectors from an OpenAI-compatible /embeddings endpoint."""

    def __init__(self, chunks: list[str], embedder: "Embedder"):
        self.chunks, self.embedder = chunks, embedder
        self.vectors = embedder.embed(chunks)

    def top(self, query: str, k: int) -> list[int]:
        q = self.embedder.embed([query.replace("\n", " ")])[0]
        scores = [(-sum(a * b for a, b in zip(q, v)) / ((_norm(q) * _norm(v)) or 1.0), i)
                  for i, v in enumerate(self.vectors)]
        return [i for _, i in sorted(scores)[:k]]


def _norm(v) -> float:
    return math.sqrt(sum(x * x for x in v))


class Embedder:
    """Batches of 100 documents; vectors memoized per text so repeated corpora cost nothing."""

    def __init__(self, settings, llm=None):
        from coser import llm as core

        self.model = settings.embedding_model
        # Through the core layer (endpoint table, cache, retries, limits, usage): the process-wide
        # client when it holds these settings, else one of its own without a cache.
        if llm is None:
            current = core._current
            llm = current if current is not None and current.settings is settings else core.LLM(
                settings, cache=None, use_cache=False)
        self.llm = llm
        self._memo: dict[str, list[float]] = {}
        self._lock = threading.Lock()

    def embed(self, texts: list[str]) -> list[list[float]]:
        todo = [t for t in dict.fromkeys(texts) if t not in self._memo]
        if todo:
            vectors = self.llm.embed(self.model, todo, stage="retrieval-embedding")
            with self._lock:
                self._memo.update(zip(todo, vectors))
        return [self._memo[t] for t in texts]


class Retriever:
    """One corpus with its k; rag(query) returns the formatted block (METHOD 4.6)."""

    def __init__(self, corpus: str, chunks: list[str], k: int, embedder: Embedder | None = None):
        self.corpus, self.chunks, self.k = corpus, chunks, k
        self.index = None
        if embedder is not None:
            try:
                self.index = EmbeddingIndex(chunks, embedder)
            except Exception:
                # The reference retried document by document, then skipped the corpus; a failing
                # endpoint here falls back to the lexical index rather than losing retrieval.
                self.index = None
        if self.index is None:
            self.index = BM25(chunks)

    def rag(self, query: str) -> str:
        ids = sorted(self.index.top(query, self.k))
        docs = [self.chunks[i] for i in ids]
        if not docs:
            return ""
        if len(docs) == 1:
            return HEADERS[self.corpus] + docs[0]
        title = TITLES[self.corpus]
        return HEADERS[self.corpus] + "".join(f"{title} {i + 1}\n{d}\n\n" for i, d in enumerate(docs))


def build_retrievers(db: dict | None, character: str, mode: str, embedder: Embedder | None = None) -> list[Retriever]:
    """The retrievers of one character agent; empty when there is no database or no usable corpus."""
    if not db:
        return []
    corpora = build_corpora(db, character)
    out = []
    for corpus, k in MODES[mode]:
        chunks = chunk_corpus(corpora[corpus])
        if chunks:  # e.g. published final files have no plot text: raw_text has nothing to index
            out.append(Retriever(corpus, chunks, k, embedder))
    return out


class BookStore:
    """Loads `{book_data}/{book}.json` once per book, thread-safely; a missing file means no database."""

    def __init__(self, book_dir: str):
        self.book_dir = book_dir
        self._books: dict[str, dict | None] = {}
        self._lock = threading.Lock()

    def _path(self, book: str) -> str | None:
        """{book_dir}/{book}.json, or None when the name would leave book_dir ('../x', 'a/b', '/etc/x')."""
        if not isinstance(book, str) or not book or "\0" in book or book != os.path.basename(book) \
                or (os.altsep and os.altsep in book):
            return None
        path = os.path.join(self.book_dir, f"{book}.json")
        inside = os.path.dirname(os.path.abspath(path)) == os.path.abspath(self.book_dir)
        return path if inside else None

    def get(self, book: str) -> dict | None:
        with self._lock:
            if book not in self._books:
                path = self._path(book)
                data = read_json(path) if path and os.path.exists(path) else None
                if data is not None and not (isinstance(data, dict) and isinstance(data.get("plots"), list)):
                    raise InputError(f"{path}: expected a final book file with a 'plots' list")
                self._books[book] = data
            return self._books[book]


class Retrievers:
    """Per (book, character) retrievers, built once and shared by samples (read-only afterwards)."""

    def __init__(self, book_dir: str, mode: str, embedder: Embedder | None = None):
        self.books, self.mode, self.embedder = BookStore(book_dir), mode, embedder
        self._built: dict = {}
        self._lock = threading.Lock()

    def for_item(self, item: dict) -> dict:
        book = self.books.get(item["book"])
        out = {}
        for c in item["speaking_characters_w_env"]:
            key = (item["book"], c)
            with self._lock:
                if key not in self._built:
                    db = character_database(book, c) if book else None
                    self._built[key] = build_retrievers(db, c, self.mode, self.embedder)
            out[c] = self._built[key]
        return out

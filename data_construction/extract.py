"""Per-chunk extraction of plots and conversations (METHOD.md 2.5-2.9), resumable.

Chunks of one book are sequential: each request carries the unfinished text and the
truncated plots of the previous chunk. State is checkpointed after every chunk, so a killed
run resumes at the next chunk; the LLM cache makes any repeated request free.
"""
from __future__ import annotations

import copy
import difflib
import hashlib
import json
import os
import re
import sys

from coser.io import atomic_write_json
from coser.config import is_local
from coser.jsonio import JsonFailure, get_json

from . import chunking
from .prompts import EXTRACT_PROMPT

ANCHOR_THRESHOLD = 0.6
PASSAGE_THRESHOLD = 0.3
CARRY_DROP = 0.2        # the carry-over drops the first 20% of the unfinished remainder
PROGRESS_VERSION = 1

_SENTENCE_SPLIT = re.compile(r"(?<=[.!?。！？\n])\s*")


# ---- fuzzy matching -------------------------------------------------------------------
def split_sentences(text: str) -> list[str]:
    return _SENTENCE_SPLIT.split(text)


def find_best_match_sentence(chunk: str, target, threshold: float = ANCHOR_THRESHOLD,
                             sentences: list[str] | None = None) -> str | None:
    """The chunk sentence most similar to target (first of the highest), if ratio >= threshold."""
    if target is None or target == "None" or not isinstance(target, str):
        return None
    best, best_score = None, -1.0
    sm = difflib.SequenceMatcher(None)
    sm.set_seq2(target)   # SequenceMatcher caches details of seq2
    for s in sentences if sentences is not None else split_sentences(chunk):
        sm.set_seq1(s)
        # ratio() <= quick_ratio() <= real_quick_ratio(): skipping those that cannot beat the
        # best keeps the result identical while avoiding most full comparisons.
        if sm.real_quick_ratio() <= best_score or sm.quick_ratio() <= best_score:
            continue
        score = difflib.SequenceMatcher(None, target, s).ratio()
        if score > best_score:
            best, best_score = s, score
    return best if best_score >= threshold else None


def _trigrams(text: str) -> set:
    t = chunking.encode(text or "")
    return {tuple(t[i:i + 3]) for i in range(len(t) - 2)}


def find_best_match_passage(candidates: list[str], target: str, threshold: float = PASSAGE_THRESHOLD) -> int:
    """Index of the candidate with the highest token-3-gram Jaccard to target (ties: later), or -1."""
    tg = _trigrams(target)
    best, best_score = -1, -1.0
    for i, cand in enumerate(candidates):
        cg = _trigrams(cand)
        union = len(tg | cg)
        score = len(tg & cg) / union if union else 0.0
        if score >= best_score:
            best, best_score = i, score
    return best if best_score >= threshold else -1


# ---- parsing one response (2.8) ---------------------------------------------------------
def normalize_shape(value):
    """Accept a dict, a single plot dict, or a bare list of plots."""
    if isinstance(value, dict) and "first_sentence" in value:
        # The reference wrapped this in a list and then failed (if/elif); we finish the job.
        value = [value]
    if isinstance(value, list):
        if value and isinstance(value[0], dict) and "first_sentence" in value[0]:
            value = {"chapter_beginnings": [], "plots": value, "next_chunk_start": None}
        else:
            raise ValueError("reply is a list but not a list of plots")
    if not isinstance(value, dict) or not isinstance(value.get("plots"), list):
        raise ValueError("reply has no 'plots' list")
    return value


def carry_over(chunk: str, sentence: str) -> str:
    remaining = chunk[chunk.index(sentence):]
    remaining = remaining[int(len(remaining) * CARRY_DROP):]
    nl = remaining.find("\n")
    return remaining[nl + 1:] if nl != -1 else remaining


PLOT_FIELDS = ["chapter_title", "first_sentence", "last_sentence", "summary", "prominence", "key_characters",
               "conversation", "state"]


def structural_problem(value) -> str | None:
    """Why a parsed extraction reply is not a complete one, or None (issue 14 item 10, both protocols).

    A reply cut off by the token limit and closed by local JSON repair must not be kept as data: it
    lacks the trailing keys (next_chunk_start, a plot's state) or leaves a fragment where an object
    belongs. Required fields, types and the plot state are checked here; anchoring in parse_response."""
    if isinstance(value, list):
        value = {"chapter_beginnings": [], "plots": value, "next_chunk_start": None}
    if not isinstance(value, dict):
        return "reply is not an object"
    for key in ("plots", "next_chunk_start"):
        if key not in value:
            return f"missing {key!r}"
    if not isinstance(value["plots"], list):
        return "'plots' is not a list"
    if value["next_chunk_start"] is not None and not isinstance(value["next_chunk_start"], str):
        return "'next_chunk_start' is not a string or null"
    for k, p in enumerate(value["plots"]):
        if not isinstance(p, dict):
            return f"plot {k} is not an object"
        for key in PLOT_FIELDS:
            if key not in p:
                return f"plot {k}: missing {key!r}"
        if p["state"] is not None and not isinstance(p["state"], str):
            return f"plot {k}: state is not a string"
        for key in ("first_sentence", "last_sentence", "summary", "chapter_title"):
            if not isinstance(p[key], str):
                return f"plot {k}: {key} is not a string"
        if p["key_characters"] is not None and not isinstance(p["key_characters"], list) or not all(isinstance(c, dict) and isinstance(c.get("name"), str)
                                                                for c in p["key_characters"] or []):
            return f"plot {k}: key_characters must be a list of named objects"
        if p["conversation"] is not None and not isinstance(p["conversation"], list):
            return f"plot {k}: conversation is not a list"
        for j, conv in enumerate(p["conversation"] or []):
            if not isinstance(conv, dict) or not isinstance(conv.get("dialogues"), list):
                return f"plot {k} conversation {j}: no dialogues list"
            for u in conv["dialogues"]:
                if not (isinstance(u, dict) and isinstance(u.get("character"), str)
                        and isinstance(u.get("message"), str)):
                    return f"plot {k} conversation {j}: an utterance is not a character/message object"
    return None


def parse_response(value, chunk: str, notes: list | None = None):
    """(chapter_beginnings, plots, remaining_chunk) from a parsed reply; raises to reject it."""
    notes = notes if notes is not None else []
    if isinstance(value, dict) and "first_sentence" in value:
        value = [value]
    problem = structural_problem(value)
    if problem is not None:
        raise ValueError(problem)
    value = normalize_shape(value)
    sentences = split_sentences(chunk)
    remaining = ""
    ncs = value.get("next_chunk_start")
    if ncs and ncs != "None":
        anchored = find_best_match_sentence(chunk, ncs, sentences=sentences)
        if anchored is None:
            # Reference: chunk.index(None) failed the whole response. We keep the plots and
            # start the next chunk clean.
            notes.append({"kind": "next_chunk_start_unanchored", "detail": str(ncs)[:200]})
        else:
            remaining = carry_over(chunk, anchored)
    plots = []
    prev_end = 0
    for k, p in enumerate(value["plots"]):
        if not isinstance(p, dict):
            raise ValueError(f"plot {k} is not an object")
        first = find_best_match_sentence(chunk, p.get("first_sentence"), sentences=sentences)
        last = find_best_match_sentence(chunk, p.get("last_sentence"), sentences=sentences)
        start = chunk.find(first) if first is not None else -1
        if start == -1:
            start = prev_end    # best effort: the plot starts where the previous one ended
        if last is not None:
            end = chunk.find(last, start)   # a repeated last sentence: take the one after the start
            end = chunk.find(last) if end == -1 else end
            end = end + len(last)
        else:
            end = len(chunk)    # best effort: up to the end of the chunk
        if first is None or last is None:
            notes.append({"kind": "plot_sentence_unanchored", "plot": k,
                          "missing": [n for n, s in (("first_sentence", first), ("last_sentence", last)) if s is None]})
        text = chunk[start:end] if end > start else ""
        prev_end = max(prev_end, end)
        plots.append({
            "text": text,
            "summary": p.get("summary"),
            "prominence": p.get("prominence"),
            "key_characters": p.get("key_characters") or [],
            "chapter": p.get("chapter_title"),
            "conversation": p.get("conversation") or [],
            "state": p.get("state"),
        })
    chapter_beginnings = value.get("chapter_beginnings") or []
    if not isinstance(chapter_beginnings, list):
        chapter_beginnings = [chapter_beginnings]
    return chapter_beginnings, plots, remaining


# ---- grounding ------------------------------------------------------------------------
_THOUGHT = re.compile(r"\[[^\]]*\]")
_ACTION = re.compile(r"\([^)]*\)")
_WS = re.compile(r"\s+")
_SPEECH_SPLIT = re.compile(r"(?<=[.!?。！？;:])\s+")


def speech_of(message: str) -> str:
    """The spoken part of a message: thoughts [..] and actions (..) removed, whitespace collapsed."""
    return _WS.sub(" ", _ACTION.sub(" ", _THOUGHT.sub(" ", message or ""))).strip()


def grounded_ratio(conversation: dict, source: str) -> float | None:
    """Share of utterances whose speech is found in source (exactly, or per sentence with ratio >= 0.6)."""
    flat = _WS.sub(" ", source).strip()
    low = flat.lower()
    src_sentences = [s for s in _SPEECH_SPLIT.split(flat) if s]
    total = found = 0
    for u in conversation.get("dialogues") or []:
        if not isinstance(u, dict) or str(u.get("character", "")).lower() == "environment":
            continue
        speech = speech_of(str(u.get("message", "")))
        if not speech:
            continue
        total += 1
        if speech.lower() in low:
            found += 1
            continue
        parts = [s for s in _SPEECH_SPLIT.split(speech) if len(s) > 3] or [speech]
        hits = sum(1 for s in parts if s.lower() in low
                   or find_best_match_sentence("", s, sentences=src_sentences) is not None)
        if hits * 2 >= len(parts):
            found += 1
    return round(found / total, 4) if total else None


def add_grounding(plot: dict, source: str) -> None:
    for conv in plot.get("conversation") or []:
        if isinstance(conv, dict):
            conv["grounded_ratio"] = grounded_ratio(conv, source)


# ---- merging truncated plots (2.9 step 2) -----------------------------------------------
def merge_truncated(u_plots: list[dict], new_plots: list[dict], results: list[dict]) -> None:
    """Fold last chunk's truncated plots into this chunk's matching plots (by summary)."""
    for u in u_plots:
        idx = find_best_match_passage([str(p.get("summary") or "") for p in new_plots], str(u.get("summary") or ""))
        if idx == -1:
            u["state"] = "finished"
            results.append(u)
            continue
        new = new_plots[idx]
        new["text"] = (u.get("text") or "") + (new.get("text") or "")
        old_convs = [c for c in u.get("conversation") or [] if isinstance(c, dict)]
        new_convs = [c for c in new.get("conversation") or [] if isinstance(c, dict)]
        merged, taken = [], set()
        for oc in old_convs:
            j = find_best_match_passage([str(c.get("scenario") or "") for c in new_convs], str(oc.get("scenario") or ""))
            if j != -1:
                merged.append(new_convs[j])
                taken.add(j)
            else:
                merged.append(oc)
        merged.extend(c for j, c in enumerate(new_convs) if j not in taken)
        new["conversation"] = merged
        new["_merged_from_text"] = u.get("text") or ""


def reference_i_chunk(text: str, chunks: list[str], fallback: int) -> int:
    """First chunk holding the plot text's last 100 characters (reference rule); else where it ended."""
    tail = (text or "")[-100:]
    for i, c in enumerate(chunks):
        if tail in c:
            return i
    return fallback


# ---- the loop ---------------------------------------------------------------------------
EXTRACTION_SCHEMA = {
    "type": "object",
    "properties": {
        "chapter_beginnings": {"type": "array", "items": {
            "type": "object", "properties": {"beginning_sentence": {"type": "string"}},
            "required": ["beginning_sentence"]}},
        "plots": {"type": "array", "items": {
            "type": "object",
            "properties": {
                "chapter_title": {"type": ["string", "null"]},
                "first_sentence": {"type": "string"},
                "last_sentence": {"type": "string"},
                "prominence": {"type": "integer"},
                "summary": {"type": "string"},
                "key_characters": {"type": "array", "items": {
                    "type": "object", "properties": {"name": {"type": "string"}, "description": {"type": "string"},
                                                     "experience": {"type": "string"}},
                    "required": ["name", "description", "experience"]}},
                "conversation": {"type": "array", "items": {
                    "type": "object",
                    "properties": {
                        "scenario": {"type": "string"}, "topic": {"type": "string"},
                        "key_characters": {"type": "array", "items": {
                            "type": "object", "properties": {"name": {"type": "string"},
                                                             "motivation": {"type": "string"}},
                            "required": ["name", "motivation"]}},
                        "dialogues": {"type": "array", "items": {
                            "type": "object", "properties": {"character": {"type": "string"},
                                                             "message": {"type": "string"}},
                            "required": ["character", "message"]}}},
                    "required": ["scenario", "topic", "key_characters", "dialogues"]}},
                "state": {"type": "string", "enum": ["finished", "truncated"]}},
            "required": ["chapter_title", "first_sentence", "last_sentence", "prominence", "summary",
                         "key_characters", "conversation", "state"]}},
        "next_chunk_start": {"type": ["string", "null"]}},
    "required": ["chapter_beginnings", "plots", "next_chunk_start"],
}


def build_prompt(title: str, author: str, chunk_text: str, truncated: list[dict]) -> str:
    shown = []
    for p in truncated:
        q = copy.deepcopy(p)
        for k in ("text", "_merged_from_text", "_i_chunk"):
            q.pop(k, None)
        for conv in q.get("conversation") or []:
            if isinstance(conv, dict):
                conv.pop("grounded_ratio", None)   # our bookkeeping, not story data
        shown.append(q)
    return EXTRACT_PROMPT.substitute(
        title=title, author=author, chunk=chunk_text,
        truncated_plots=json.dumps(shown, ensure_ascii=False, indent=2) if shown else "None")


def _fingerprint(chunks: list[str], model: str, title: str, author: str) -> str:
    """What the checkpoint depends on: a change in any of these starts the book over."""
    h = hashlib.sha256(json.dumps([model, title, author]).encode())
    for c in chunks:
        h.update(hashlib.sha256(c.encode("utf-8", "surrogatepass")).digest())
    return h.hexdigest()


def progress_path(out_dir: str, title: str) -> str:
    return os.path.join(out_dir, "extracted", f".{title}.progress.json")


def extracted_path(out_dir: str, title: str) -> str:
    return os.path.join(out_dir, "extracted", f"{title}.json")


def _fresh_state(fp: str) -> dict:
    return {"version": PROGRESS_VERSION, "fingerprint": fp, "next_chunk": 0, "remaining_chunk": "",
            "truncated_plots": [], "chapter_beginnings": [], "plots": [], "fail_to_parse_responses": [],
            "extraction_notes": []}


_NAME = re.compile(r"(?<![.!?\"'\u201c]\s)(?<!^)\b([A-Z][a-z]+(?: [A-Z][a-z]+)?)\b")
_NOT_NAMES = {"The", "A", "An", "And", "But", "Or", "If", "He", "She", "It", "I", "We", "They", "You", "His", "Her",
              "Their", "Our", "My", "Your", "This", "That", "There", "Then", "When", "What", "Who", "Why", "How",
              "Chapter", "Mr", "Mrs", "Miss", "Sir", "Lord", "Lady", "Yes", "No", "Not", "So", "Oh", "Well"}


def candidate_names(text: str, limit: int = 8) -> list[str]:
    """Capitalized words seen at least twice away from a sentence start: likely character names."""
    counts: dict[str, int] = {}
    for m in _NAME.finditer(text):
        name = m.group(1)
        if name.split()[0] in _NOT_NAMES:
            continue
        counts[name] = counts.get(name, 0) + 1
    ranked = sorted((n for n, c in counts.items() if c >= 2), key=lambda n: (-counts[n], n))
    return ranked[:limit]


LOCAL_STRING_CAP = 160   # characters per string field: long enough for a line, too short to loop


def _cap_strings(node, cap: int) -> None:
    """Give every free-text string in a schema a maxLength (llama.cpp compiles it into the grammar)."""
    if isinstance(node, dict):
        types = node.get("type")
        if (types == "string" or (isinstance(types, list) and "string" in types)) and "enum" not in node:
            node.setdefault("maxLength", cap)
        for v in node.values():
            _cap_strings(v, cap)
    elif isinstance(node, list):
        for v in node:
            _cap_strings(v, cap)


def local_schema(chunk_text: str) -> dict:
    """A tighter extraction schema for the embedded model.

    SmolLM2-135M invents placeholder names and rambles past its token budget; bounded lists and
    names drawn from the chunk keep its grammar-constrained output short, complete and usable.
    Remote models get the open schema, as in the reference.
    """
    schema = copy.deepcopy(EXTRACTION_SCHEMA)
    names = candidate_names(chunk_text)
    plot = schema["properties"]["plots"]["items"]
    schema["properties"]["plots"].update(minItems=1, maxItems=1)
    schema["properties"]["chapter_beginnings"]["maxItems"] = 1
    plot["properties"]["key_characters"].update(minItems=1, maxItems=2)
    conv = plot["properties"]["conversation"]
    conv.update(minItems=1, maxItems=1)
    conv["items"]["properties"]["key_characters"].update(minItems=1, maxItems=3)
    conv["items"]["properties"]["dialogues"].update(minItems=4, maxItems=8)
    conv["items"]["properties"]["dialogues"]["maxItems"] = 6
    _cap_strings(schema, LOCAL_STRING_CAP)
    if names:
        plot["properties"]["key_characters"]["items"]["properties"]["name"] = {"enum": names}
        conv["items"]["properties"]["key_characters"]["items"]["properties"]["name"] = {"enum": names}
        conv["items"]["properties"]["dialogues"]["items"]["properties"]["character"] = {"enum": names + ["Environment"]}
    return schema


def _load_state(path: str, fp: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            state = json.load(f)
        if state.get("version") == PROGRESS_VERSION and state.get("fingerprint") == fp:
            return state
    except (OSError, ValueError, RecursionError):
        pass   # a missing or stale checkpoint means starting the book over (the cache still helps)
    return _fresh_state(fp)


def _chunk_bar(total: int, done: int, title: str):
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, initial=done, desc=f"{title[:20]}: chunks", unit="chunk", file=sys.stderr,
                leave=False, dynamic_ncols=True, disable=total <= 1)


def reference_extract_chunk(llm, model: str, prompt: str, chunk_text: str):
    """PROTOCOL 10.1-10.4: (chapter_beginnings, plots, remaining) or a JsonFailure.

    The reference's extraction (longest decodable JSON value, one cached repair request to the
    hard-wired repair model, the reference acceptance), plus item 10's structural check: a value that
    is not a complete reply is rejected and regenerated like any other unusable reply."""
    from coser import protocol as PR
    from coser.jsonio import COPYRIGHT_ACCEPT, COPYRIGHT_OFFER

    # The reference hard-wires its repair model; used when config.json routes it, else the extraction
    # model repairs (README, Compatibility / protocols).
    settings = getattr(llm, "settings", None)
    repair_model = PR.REPAIR_MODEL if PR.REPAIR_MODEL in (getattr(settings, "models", None) or {}) else model
    base = [{"role": "user", "content": prompt}]
    current, repaired, longest, reason = base, {}, None, "no reply"
    n, attempts = 0, 0
    while n < PR.ATTEMPTS:
        attempts += 1
        raw = llm.chat(model, current, max_tokens=PR.extraction_max_tokens(model), nth_generation=n, stage="extract")
        current_sent, current = current, base
        if len(raw.split(" ")) < 100 and "reproduce" in raw and "copyright" in raw:
            current = base + [{"role": "assistant", "content": COPYRIGHT_OFFER},
                              {"role": "user", "content": COPYRIGHT_ACCEPT}]
            n += 1
            continue
        value = PR.extract_json(raw)
        if value is None:
            fix = REPAIR_TRUNCATED_PROMPT + raw
            if raw not in repaired:
                repaired[raw] = PR.extract_json(llm.chat(repair_model, fix, max_tokens=8192, temperature=0,
                                                         stage="extract-repair"))
            value = repaired[raw]
        if value is None:
            reason = "reply is not JSON"
        else:
            if longest is None or len(raw) > len(longest):
                longest = raw
            accepted = PR.accept_extraction(value, chunk_text)
            shape = value if not isinstance(value, dict) or "first_sentence" not in value else [value]
            problem = structural_problem(shape) if accepted is not None else "rejected by the reference acceptance"
            if accepted is not None and problem is None:
                return accepted
            reason = f"invalid: {problem}"
        # Issue 19: a rejected reply is kept as evidence but never served again by the cache as good.
        # (Repair replies stay cached, as PROTOCOL 10 expects for an identical failing reply.)
        _reject(llm, model, current_sent, max_tokens=PR.extraction_max_tokens(model), nth_generation=n)
        n += 1
    return JsonFailure(raw=longest, reason=reason, attempts=attempts)


def _reject(llm, model, messages, **kw) -> None:
    reject = getattr(llm, "reject", None)
    if reject is not None:
        reject(model, messages, **kw)


REPAIR_TRUNCATED_PROMPT = ("The JSON text below was cut off before its end. Complete it as valid JSON, keeping "
                           "everything already written, and return only the JSON.\n\n")


def extract_book(llm, book: dict, chunks: list[str], out_dir: str, model: str, on_chunk=None,
                 protocol: str = "fixed", on_plots=None) -> dict:
    """Run (or resume) extraction for one book; writes extracted/{title}.json and returns it.

    on_plots(plots) is called with plots as they are finished (never changed again but for i_chunk),
    so their assembly calls can start early."""
    title, author = book["title"], book["author"]
    fp = _fingerprint(chunks, model + ("" if protocol == "fixed" else f"|protocol={protocol}"), title, author)
    ppath = progress_path(out_dir, title)
    state = _load_state(ppath, fp)
    bar = _chunk_bar(len(chunks), state["next_chunk"], title)
    if on_plots and state["plots"]:
        on_plots(state["plots"])
    for i in range(state["next_chunk"], len(chunks)):
        n_finished = len(state["plots"])
        chunk_text = state["remaining_chunk"] + chunks[i]
        truncated = state["truncated_plots"]
        prompt = build_prompt(title, author, chunk_text, truncated)
        notes: list = []

        def validate(value, _chunk=chunk_text, _notes=notes):
            del _notes[:]  # only the accepted attempt's notes count
            return parse_response(value, _chunk, _notes)

        if protocol == "reference":
            out = reference_extract_chunk(llm, model, prompt, chunk_text)
        else:
            out = get_json(llm, model, [{"role": "user", "content": prompt}], validate=validate,
                           schema=local_schema(chunk_text) if is_local(model) else EXTRACTION_SCHEMA,
                           repair="truncated", repair_model=model,
                           copyright_retry=True, stage="extract")
        if isinstance(out, JsonFailure):
            # Reference re-created this list per chunk and so kept only the last failure.
            state["fail_to_parse_responses"].append(out.raw)
            state["extraction_notes"].append({"i_chunk": i, "kind": "failed", "detail": out.reason,
                                              "attempts": out.attempts})
            beginnings, new_plots, remaining = [], [], ""
        else:
            beginnings, new_plots, remaining = out
            state["extraction_notes"].extend({"i_chunk": i, **n} for n in notes)
        for p in new_plots:
            p["_i_chunk"] = i
        merge_truncated(truncated, new_plots, state["plots"])
        for p in new_plots:
            add_grounding(p, p.pop("_merged_from_text", "") + chunk_text)
        state["chapter_beginnings"].extend(beginnings)
        carried = []
        for p in new_plots:
            st = p.get("state")
            if st == "truncated":
                carried.append(p)
                continue
            if st != "finished" and protocol == "reference":
                continue  # PROTOCOL 10.5: any other state is dropped
            if st != "finished":
                # Reference dropped these plots silently; we keep them as finished and say so.
                state["extraction_notes"].append({"i_chunk": i, "kind": "unknown_state", "detail": repr(st)[:80]})
                p["state"] = "finished"
            state["plots"].append(p)
        state["truncated_plots"] = carried
        state["remaining_chunk"] = remaining
        state["next_chunk"] = i + 1
        atomic_write_json(ppath, state, indent=None)
        if on_plots and len(state["plots"]) > n_finished:
            on_plots(state["plots"][n_finished:])
        if bar is not None:
            bar.update(1)
        if on_chunk:
            on_chunk(i)
    if bar is not None:
        bar.close()
    for p in state["truncated_plots"]:
        p["state"] = "finished"
        state["plots"].append(p)
    state["truncated_plots"] = []
    plots = []
    for p in state["plots"]:
        where = p.pop("_i_chunk", -1)
        p.pop("_merged_from_text", None)
        p["i_chunk"] = reference_i_chunk(p.get("text", ""), chunks, where)
        plots.append(p)
    plots.sort(key=lambda p: p["i_chunk"])   # stable, as the reference's restore step sorts
    result = {"protocol": protocol, "chapter_beginnings": state["chapter_beginnings"], "plots": plots,
              "fail_to_parse_responses": state["fail_to_parse_responses"],
              "extraction_notes": state["extraction_notes"], "n_chunks": len(chunks)}
    atomic_write_json(extracted_path(out_dir, title), result)
    try:
        os.unlink(ppath)
    except OSError:
        pass
    return result

"""Reference behaviours, one function per PROTOCOL.md rule."""
from __future__ import annotations

import collections
import difflib
import json
import re

PROTOCOLS = ("reference", "fixed")
DEFAULT_PROTOCOL = "reference"
DIMENSIONS = ["Storyline Consistency", "Anthropomorphism", "Character Fidelity", "Storyline Quality"]
END_CHAT = "<END CHAT>"
MIN_ROUND_TO_END = 5
ATTEMPTS = 6

# ---- 1. next-speaker parsing -----------------------------------------------------------------
# Optional pieces, each greedy, given back right to left by the regex engine's backtracking.
_NSP_LABEL = re.compile(r"next\s+speaker\s*(?:\*\*|#)?\s*(?::|-|\bis\b)?\s*\*?([^\n*]+)", re.IGNORECASE)


def extract_nsp(reply: str) -> str | None:
    """The cleaned name after the last 'Next Speaker' label, or None (1.1-1.2)."""
    names = _NSP_LABEL.findall(reply)
    if not names:
        return None
    name = names[-1].strip().rstrip(".,!\"'").replace("*", "")
    return name or None


def predict_nsp(reply: str) -> str:
    """The predicted string p (1.3)."""
    found = extract_nsp(reply)
    if found is not None:
        return found
    if ":" in reply:
        return reply.split(":")[0].strip()
    return reply


def fallback_candidates(majors: list, speaking: list, current: str) -> list:
    cands = [c for c in dict.fromkeys(list(majors) + ["Environment"]) if c != current]
    if not cands:
        cands = [c for c in dict.fromkeys(speaking) if c != current]
    return cands


def resolve_nsp(p: str, rnd: int, current: str, speaking: list, majors: list):
    """(outcome, candidates): outcome is END_CHAT, a valid name, or None (random fallback) (1.4)."""
    if p == END_CHAT and rnd >= MIN_ROUND_TO_END:
        return END_CHAT, None
    if p in speaking and p != current:
        return p, None
    return None, fallback_candidates(majors, speaking, current)


def nsp_history(reply: str, p: str, valid: bool, nsp_first_message: str) -> list[dict]:
    """Messages appended to the NSP agent's own history after its prediction (1.5)."""
    if valid:
        return [{"role": "assistant", "content": reply}]
    out = [{"role": "assistant", "content": p}] if p else []
    return out + [{"role": "user", "content": nsp_first_message}]


# ---- 2. judge reply JSON extraction ----------------------------------------------------------
_QUOTED = re.compile(r'"(?:[^"\\]|\\[^\n])*"')
_decoder = json.JSONDecoder()


def _rewrite_newlines(text: str) -> str:
    return _QUOTED.sub(lambda m: m.group(0).replace("\n", "\\\\n"), text)


def _dump_len(value) -> int:
    return len(json.dumps(value))


def extract_json(text: str):
    """Steps 1-5 of 2.2: the candidate value, or None when nothing truthy was found."""
    text = _rewrite_newlines(text or "")
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        best, best_len, i = None, -1, 0
        while i < len(text):
            try:
                v, end = _decoder.raw_decode(text, i)
            except (ValueError, RecursionError):
                i += 1
                continue
            n = _dump_len(v)
            if n > best_len:
                best, best_len = v, n
            i = end if end > i else i + 1
        value = best
    return value if value else None


def validate_judgment(value) -> bool:
    """2.3: accept an object of dimension -> {flaws: [objects]}; fills missing severities in place."""
    try:
        if not isinstance(value, dict):
            return False
        for key, v in value.items():
            if key not in DIMENSIONS:
                return False
            if "flaws" not in v:
                return False
            for flaw in v["flaws"]:
                if not isinstance(flaw, dict):
                    return False
                if flaw.get("severity") is None:
                    flaw["severity"] = 1
        return True
    except Exception:  # noqa: BLE001 - the reference rejects on any error
        return False


# ---- 3. scores -------------------------------------------------------------------------------
def severity_sum(flaws) -> int:
    return sum(f["severity"] for f in flaws if isinstance(f.get("severity"), int))


def dimension_score(flaws, actor_rounds: int):
    raw = 100 - (severity_sum(flaws) - 0.3 * actor_rounds) * 5
    return max(0, min(raw, 100))


def actor_rounds(sim: list[dict]) -> int:
    return sum(1 for m in sim if m.get("role") not in ("NSP", "Environment"))


# ---- 8. thinking tags ------------------------------------------------------------------------
_BRACKETS = re.compile(r"\[.*?\]")


_SYSTEM_BLOCK = re.compile(r"\s*<\s*system[_\s]+think(?:ing)?\s*>.*?</\s*system[_\s]+think(?:ing)?\s*>\s*", re.DOTALL)
_ROLE_BLOCK = re.compile(r"\s*<\s*role[_\s]+think(?:ing)?\s*>.*?</\s*role[_\s]+think(?:ing)?\s*>\s*", re.DOTALL)
_BARE_BLOCK = re.compile(r"\s*<\s*[_\s]+think(?:ing)?\s*>.*?</\s*[_\s]+think(?:ing)?\s*>\s*", re.DOTALL)


def construction_copy(text: str) -> str:
    """8.2: brackets, strip lines, collapse line feeds, strip."""
    text = _BRACKETS.sub("", text)
    text = "\n".join(line.strip() for line in text.split("\n"))
    text = re.sub(r"\n+", "\n", text)
    return text.strip()


def evaluation_copy(text: str) -> str:
    """8.1: what other agents and the judge see of a turn."""
    text = _BRACKETS.sub("", text)
    text = "\n".join(line.strip() for line in text.split("\n"))
    text = re.sub(r"\n+", "\n", text)
    for pat in (_SYSTEM_BLOCK, _ROLE_BLOCK, _BARE_BLOCK):
        text = pat.sub("", text).strip()
    return text.strip()


def add_speaker_name(text: str, speaker: str) -> str:
    for line in text.split("\n"):
        line = line.strip()
        if line.startswith(speaker + ":") or line.startswith(speaker + "："):
            return text
    return f"{speaker}: {text}"


def shown_to_others(text: str, speaker: str) -> str:
    return add_speaker_name(evaluation_copy(text), speaker)


def judge_view(sim: list[dict]) -> str:
    """2.1: the judge's user message."""
    parts = []
    for m in sim:
        if m.get("role") == "NSP":
            continue
        content = m.get("content") or ""
        if m.get("role") != "Environment":
            content = evaluation_copy(content)
        parts.append(content.strip("\n"))
    return "\n\n".join(parts)


# ---- 6. llama/step models --------------------------------------------------------------------
def prefix_family(model: str) -> bool:
    return model.startswith("llama") or model.startswith("step")


def system_as_user(model: str) -> bool:
    return model.startswith("claude") or model.startswith("o1")


def own_block(reply: str, name: str) -> str | None:
    """6.3: the first block labelled `name` (ending in a line feed), or None (the reference's error)."""
    blocks: list[list] = []
    for line in reply.split("\n"):
        label = line.split(":", 1)[0].strip() if ":" in line else None
        if label is not None and (not blocks or blocks[-1][0] != label):
            blocks.append([label, []])
        elif not blocks:
            blocks.append([None, []])
        blocks[-1][1].append(line)
    for label, lines in blocks:
        if label == name:
            return "".join(line + "\n" for line in lines)
    return None


def repair_gated(model: str, agent: str) -> bool:
    """7: repetition repair applies to every agent but NSP unless the model is gpt*/claude*."""
    low = model.lower()
    return agent != "NSP" and not (low.startswith("gpt") or low.startswith("claude"))


# ---- 10. construction acceptance -------------------------------------------------------------
def split_sentences(chunk: str) -> list[str]:
    pieces, start = [], 0
    for m in re.finditer(r"[.!?。！？\n]", chunk):
        pieces.append(chunk[start:m.end()])
        j = m.end()
        while j < len(chunk) and chunk[j].isspace():
            j += 1
        start = j
    pieces.append(chunk[start:])
    return pieces


def anchor(sentence, chunk: str):
    """10.3: the chunk's own sentence best matching `sentence`, or None."""
    if sentence is None or sentence == "None":
        return None
    # Same result as scoring every piece in order and keeping the first of the highest ratio (scoring
    # every piece took ~0.6 s per reply). ratio() never exceeds 2 x min(lengths) / (both lengths), nor
    # 2 x (characters in common) / (both lengths): pieces go from the highest length bound down, a
    # piece that cannot reach the best score is skipped, and the scan stops once none can.
    pieces = split_sentences(chunk)
    if sentence in pieces:   # a ratio of 1 only for the same text: the first such piece wins
        return sentence
    n = len(sentence)
    order = sorted(range(len(pieces)), key=lambda i: (-_bound(n, len(pieces[i]), min(n, len(pieces[i]))), i))
    have = collections.Counter(sentence)
    best_i, best_score = None, -1.0
    for i in order:
        piece = pieces[i]
        if _bound(n, len(piece), min(n, len(piece))) < best_score:
            break
        if _bound(n, len(piece), sum((have & collections.Counter(piece)).values())) < best_score:
            continue
        score = difflib.SequenceMatcher(None, sentence, piece).ratio()
        if score > best_score or (score == best_score and i < best_i):
            best_i, best_score = i, score
    return pieces[best_i] if best_i is not None and best_score >= 0.6 else None


def _bound(la: int, lb: int, matches: int) -> float:
    """difflib's ratio for this many matching characters (1.0 for two empty strings, as difflib)."""
    return 2.0 * matches / (la + lb) if la + lb else 1.0


PLOT_KEYS = ["chapter_title", "first_sentence", "last_sentence", "summary", "prominence", "key_characters",
             "conversation", "state"]


def accept_extraction(value, chunk: str):
    """10.2: (chapter_beginnings, plots, remaining) or None when rejected."""
    try:
        if not value:
            return None
        if isinstance(value, dict) and "first_sentence" in value:
            return None
        if isinstance(value, list):
            if value and isinstance(value[0], dict) and "first_sentence" in value[0]:
                value = {"chapter_beginnings": [], "plots": value, "next_chunk_start": None}
            else:
                return None
        if not isinstance(value, dict):
            return None
        for key in ("chapter_beginnings", "next_chunk_start", "plots"):
            if key not in value:
                return None
        ncs = value["next_chunk_start"]
        if not ncs:
            remaining = ""
        else:
            if not isinstance(ncs, str):
                return None
            sent = anchor(ncs, chunk)
            if sent is None:
                return None
            rest = chunk[chunk.find(sent):]
            rest = rest[int(0.2 * len(rest)):]
            nl = rest.find("\n")
            remaining = rest[nl + 1:] if nl >= 0 else rest
        plots = []
        for plot in value["plots"]:
            if not isinstance(plot, dict):
                return None
            for key in PLOT_KEYS:
                if key not in plot:
                    return None
            first = plot["first_sentence"]
            last = plot["last_sentence"]
            if not isinstance(first, str) or not isinstance(last, str):
                return None
            fa, la = anchor(first, chunk), anchor(last, chunk)
            if fa is None or la is None:
                return None
            s = chunk.find(fa)
            e = chunk.find(la) + len(la)
            text = chunk[s:e] if e >= s else ""
            plots.append({"text": text, "summary": plot["summary"], "prominence": plot["prominence"],
                          "key_characters": plot["key_characters"] or [], "chapter": plot["chapter_title"],
                          "conversation": plot["conversation"] or [], "state": plot["state"]})
        return value["chapter_beginnings"], plots, remaining
    except Exception:  # noqa: BLE001
        return None


def extraction_max_tokens(model: str) -> int:
    return 8192 if model.startswith("claude") else 16384


REPAIR_MODEL = "claude-3-5-sonnet-20240620"


def merge_states(chunks_plots: list[list[dict]]) -> list[dict]:
    """10.5: finished plots saved, truncated carried then saved as finished after the last chunk."""
    saved, carried = [], []
    for plots in chunks_plots:
        carried = []
        for p in plots:
            if p.get("state") == "finished":
                saved.append(p)
            elif p.get("state") == "truncated":
                carried.append(p)
    for p in carried:
        saved.append(dict(p, state="finished"))
    return saved


# ---- 6.2 agent system prompts ----------------------------------------------------------------
CONCISE = "Speak concisely as humans, instead of being verbose. Limit your response to 60 words."
NAME_PREFIX = 'Start your response with "{name}: ". Avoid speaking as other characters.'
CONVERSATION_START = "===Conversation Start===\n\n"
AGENT_MAX_TOKENS = 512
JUDGE_MAX_TOKENS = 8196
TIMEOUT = 180


def system_prompt_suffix(agent: str, model: str) -> str:
    """Text appended to the agent's base prompt (which is stripped of line feeds first)."""
    suffix = ""
    if agent not in ("NSP", "Environment"):
        suffix += "\n\n" + CONCISE + "\n\n"
    if prefix_family(model):
        suffix += NAME_PREFIX.format(name=agent) + "\n\n"
    return suffix


def agent_system_prompt(base: str, agent: str, model: str) -> str:
    return base.strip("\n") + system_prompt_suffix(agent, model)


def append_message(messages: list[dict], role: str, text: str) -> None:
    """9.3: same role as the last message -> joined after a blank line; empty text ignored."""
    if not text:
        return
    if messages and messages[-1]["role"] == role:
        messages[-1] = {"role": role, "content": messages[-1]["content"] + "\n\n" + text}
    else:
        messages.append({"role": role, "content": text})


def new_agent_history(system_prompt: str, model: str) -> list[dict]:
    role = "user" if system_as_user(model) else "system"
    return [{"role": role, "content": system_prompt}]


def finish_turn(reply: str, agent: str, model: str) -> str:
    """6.3 then 7: the turn recorded for a (non-NSP) agent's reply after the empty-retry loop."""
    text = reply
    if prefix_family(model):
        block = own_block(text, agent)
        text = block if block is not None else ""
    if text and repair_gated(model, agent):
        from .repetition import repair_repetition
        fixed = repair_repetition(text)
        if fixed is not False:
            text = fixed
    return text


# ---- 11. aliases that normalize to one name --------------------------------------------------
def alias_entry(entries: list, name: str, stage: str):
    """The key_characters entry a stage uses when several entries carry `name` (positional).

    stage 'assemble' takes the last match; 'transform' and 'simulation' take the first."""
    matches = [e for e in entries if isinstance(e, dict) and e.get("name") == name]
    if not matches:
        return None
    return matches[-1] if stage == "assemble" else matches[0]


def map_official_names(entries: list, to_official: dict, plot_index: int) -> None:
    """Assembly's in-place mapping: no merge, no dedup; each entry tagged with its plot index."""
    for e in entries:
        e["name"] = to_official.get(e["name"], e["name"])
        e["i_p"] = plot_index

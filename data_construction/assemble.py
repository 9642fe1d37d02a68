"""Extracted plots -> the final character dataset of one book (METHOD.md 2.11), resumable.

Every LLM result (enhancement, name normalization, profile) is checkpointed as it arrives,
so a killed run resumes without repeating work and ends with the same final file. The
independent calls (one per conversation, one per character) run in parallel.
"""
from __future__ import annotations

import concurrent.futures as cf
import copy
import hashlib
import json
import os
import threading

from coser import batch
from coser.config import is_local
from coser.io import atomic_write_json
from coser.jsonio import JsonFailure, get_json
from coser.pool import LeafPool

from .extract import find_best_match_passage
from .prompts import ENHANCE_PROMPT, NAMES_PROMPT, PROFILE_MARKER, PROFILE_PROMPT

SPLIT_RATIO = 0.9
PROFILE_MAX_RETRY = 5
NOT_A_CHARACTER = ("impersonal", "environment")
_INTERNAL_KEYS = ("grounded_ratio",)

ENHANCE_SCHEMA = {
    "type": "object",
    "properties": {"scenario": {"type": "string"},
                   "key_characters": {"type": "array", "items": {
                       "type": "object", "properties": {"name": {"type": "string"}, "motivation": {"type": "string"}},
                       "required": ["name", "motivation"]}}},
    "required": ["scenario", "key_characters"],
}
NAMES_SCHEMA = {
    "type": "object",
    "properties": {"named_characters": {"type": "array", "items": {"type": "string"}},
                   "to_official_name": {"type": "object", "additionalProperties": {"type": "string"}}},
    "required": ["named_characters", "to_official_name"],
}


def detect_language(plots: list[dict]) -> str:
    """Chinese when CJK ideographs are more than 5% of the first plot's first 100 characters."""
    if not plots:
        return "English"
    head = (plots[0].get("text") or "")[:100]
    cjk = sum(1 for ch in head if "\u4e00" <= ch <= "\u9fff")
    return "Chinese" if head and cjk > 0.05 * len(head) else "English"


def _public(obj):
    """A copy without our bookkeeping fields, for prompts."""
    obj = copy.deepcopy(obj)
    if isinstance(obj, dict):
        for k in _INTERNAL_KEYS:
            obj.pop(k, None)
    return obj


def _kc_name(kc) -> str | None:
    if not isinstance(kc, dict):
        return None
    return kc.get("name", kc.get("character"))


class Checkpoint:
    """A JSON file of finished LLM results, rewritten atomically after each one (thread-safe)."""

    def __init__(self, path: str, fingerprint: str):
        self.path = path
        self.lock = threading.Lock()
        self.data = {"fingerprint": fingerprint, "enhance": {}, "names": None, "profiles": {}}
        try:
            with open(path, encoding="utf-8") as f:
                old = json.load(f)
            if old.get("fingerprint") == fingerprint:
                self.data = old
        except (OSError, ValueError, RecursionError):
            pass

    def put(self, section: str, key, value) -> None:
        with self.lock:
            if key is None:
                self.data[section] = value
            else:
                self.data[section][key] = value
            atomic_write_json(self.path, self.data, indent=None)

    def remove(self) -> None:
        try:
            os.unlink(self.path)
        except OSError:
            pass


# ---- step 2: scenario / motivation enhancement -----------------------------------------
def enhance_request(title: str, plot: dict, conv: dict) -> tuple[str, list[str]]:
    """(prompt, the conversation's key character names) of one enhancement call."""
    names = [n for n in (_kc_name(kc) for kc in conv.get("key_characters") or []) if n is not None]
    obj = {"plot_summary": plot.get("summary"), "character_information": plot.get("key_characters"),
           **_public(conv)}
    return ENHANCE_PROMPT.substitute(title=title, names=repr(names),
                                     input=json.dumps(obj, ensure_ascii=False, indent=2)), names


def enhance_conversation(llm, model: str, title: str, plot: dict, conv: dict, request=None):
    prompt, names = request or enhance_request(title, plot, conv)

    def validate(v):
        if not isinstance(v, dict) or "scenario" not in v or not isinstance(v.get("key_characters"), list):
            return None
        got = {kc.get("name") for kc in v["key_characters"] if isinstance(kc, dict)}
        return v if all(n in got for n in names) else None

    out = get_json(llm, model, [{"role": "user", "content": prompt}], validate=validate, schema=ENHANCE_SCHEMA,
                   stage="enhance")
    return None if isinstance(out, JsonFailure) else {"scenario": out["scenario"],
                                                      "key_characters": out["key_characters"]}


def apply_enhancement(conv: dict, result: dict) -> None:
    conv["scenario"] = result["scenario"]
    motivations = {}
    for kc in result["key_characters"]:
        if isinstance(kc, dict) and kc.get("name") not in motivations:
            motivations[kc.get("name")] = kc.get("motivation")
    for kc in conv.get("key_characters") or []:
        if not isinstance(kc, dict):
            continue
        if "name" not in kc and "character" in kc:
            kc["name"] = kc.pop("character")
        if kc.get("name") in motivations:
            kc["motivation"] = motivations[kc["name"]]


# ---- step 5: name normalization --------------------------------------------------------
def collect_names(plots: list[dict]) -> list[str]:
    names = set()
    for plot in plots:
        for kc in plot.get("key_characters") or []:
            if isinstance(kc, dict) and "name" not in kc and "character" in kc:
                kc["name"] = kc.pop("character")
            if isinstance(kc, dict) and isinstance(kc.get("name"), str):
                names.add(kc["name"])
        for conv in plot.get("conversation") or []:
            for kc in conv.get("key_characters") or []:
                if isinstance(kc, dict) and "name" not in kc and "character" in kc:
                    kc["name"] = kc.pop("character")   # the reference forgot to collect these
                if isinstance(kc, dict) and isinstance(kc.get("name"), str):
                    names.add(kc["name"])
            for u in conv.get("dialogues") or []:
                if isinstance(u, dict) and "character" not in u and "name" in u:
                    u["character"] = u.pop("name")
                if isinstance(u, dict) and isinstance(u.get("character"), str):
                    names.add(u["character"])
    return sorted(names)


def local_names_schema(names: list[str]) -> dict:
    """For the embedded model: every given name mapped to one of the given names (or 'impersonal').

    Left open, SmolLM2-135M writes names of its own until its token budget runs out.
    """
    choice = {"enum": list(names) + ["impersonal"]}
    return {
        "type": "object",
        "properties": {
            "named_characters": {"type": "array", "items": {"enum": list(names)}, "maxItems": len(names)},
            "to_official_name": {"type": "object", "properties": {n: choice for n in names},
                                 "required": list(names), "additionalProperties": False},
        },
        "required": ["named_characters", "to_official_name"],
    }


def ask_names(llm, model: str, candidate_model: str, names: list[str], language: str):
    prompt = NAMES_PROMPT.substitute(language=language, names=repr(names))

    def validate(v):
        return v if isinstance(v, dict) and "named_characters" in v else None

    for m in (model, candidate_model):
        schema = local_names_schema(names) if is_local(m) and names else NAMES_SCHEMA
        out = get_json(llm, m, [{"role": "user", "content": prompt}], validate=validate, schema=schema,
                       stage="names")
        if not isinstance(out, JsonFailure):
            return {"named_characters": out.get("named_characters"), "to_official_name": out.get("to_official_name")}
    return None


def build_name_map(names: list[str], reply: dict | None) -> tuple[list[str], dict[str, str]]:
    """(official names in order, given name -> official name or 'impersonal')."""
    if reply is None:
        # Both models failed: every name stands for itself (recorded as a failure by the caller).
        kept = [n for n in names if n.lower() not in NOT_A_CHARACTER]
        reply = {"named_characters": kept, "to_official_name": {n: n for n in kept}}
    official: list[str] = []
    for n in reply.get("named_characters") or []:
        if isinstance(n, str) and n.lower() not in NOT_A_CHARACTER and n not in official:
            official.append(n)
    raw_map = reply.get("to_official_name")
    raw_map = raw_map if isinstance(raw_map, dict) else {}
    mapping: dict[str, str] = {}
    for given, value in raw_map.items():
        if isinstance(value, list):
            value = value[0] if value else "impersonal"
        if not isinstance(value, str) or value.lower() in NOT_A_CHARACTER:
            # Any casing of Impersonal/Environment: the reference crashed on these.
            mapping[given] = "impersonal"
            continue
        if value not in official:
            official.append(value)
        mapping[given] = value
    for n in names:
        if n.lower() == "environment":
            mapping[n] = "impersonal"
        elif n not in mapping:
            idx = find_best_match_passage(official, n)
            mapping[n] = official[idx] if idx != -1 else "impersonal"
    return official, mapping


# ---- step 7: profiles ------------------------------------------------------------------
def profile_input(name: str, plots: list[dict], involved: list[int], protocol: str = "fixed") -> list[dict]:
    """Plot infos of a character's profile prompt. Two entries of one name in a plot: `reference`
    uses the last (PROTOCOL 11), `fixed` the first."""
    infos = []
    for i_p in involved:
        plot = plots[i_p]
        info = {"plot": plot.get("summary")}
        same = [kc for kc in plot.get("key_characters") or [] if _kc_name(kc) == name]
        exp = (same[-1] if protocol == "reference" else same[0]) if same else None
        if exp is not None:
            info["character_experience"] = _public({k: v for k, v in exp.items() if k != "i_p"})
        # The reference compared the name with a list of dicts (always False); we include
        # conversations where the character is a key character as well as where it speaks.
        info["conversation"] = [
            _public(c) for c in plot.get("conversation") or []
            if any(isinstance(u, dict) and u.get("character") == name for u in c.get("dialogues") or [])
            or any(_kc_name(kc) == name for kc in c.get("key_characters") or [])]
        infos.append(info)
    return infos


def write_profile(llm, model: str, title: str, name: str, language: str, infos: list[dict]) -> str:
    prompt = PROFILE_PROMPT.substitute(name=name, title=title, language=language,
                                       plots=json.dumps(infos, ensure_ascii=False, indent=2))
    for nth in range(PROFILE_MAX_RETRY + 1):
        reply = llm.chat(model, prompt, nth_generation=nth, stage="profile")
        if reply and PROFILE_MARKER in reply:
            text = reply.split(PROFILE_MARKER, 1)[1].strip()
            return "" if text.startswith("I apologize") else text
        if is_local(model) and reply and reply.strip():
            # SmolLM2-135M never writes the marker; re-asking five times only burns minutes.
            return reply.strip()
        if reply and hasattr(llm, "reject"):  # no marker: a rerun asks again (issue 19)
            llm.reject(model, prompt, nth_generation=nth)
    return ""


# ---- the whole step --------------------------------------------------------------------
def final_path(out_dir: str, title: str) -> str:
    return os.path.join(out_dir, "final", f"{title}.json")


def assemble_book(llm, title: str, extracted: dict, out_dir: str, model: str, candidate_model: str,
                  num_workers: int = 1, protocol: str = "fixed", pool: LeafPool | None = None,
                  early: "EarlyEnhance | None" = None) -> tuple[dict, dict]:
    """Build final/{title}.json from the extracted data; returns (final, stats).

    pool: the run's shared pool for independent calls (default: one of num_workers threads);
    early: enhancement calls already started during extraction."""
    pool = pool or LeafPool(num_workers)
    data = copy.deepcopy(extracted)
    fp = hashlib.sha256(json.dumps([data, model, candidate_model], sort_keys=True,
                                   ensure_ascii=False).encode()).hexdigest()
    ck = Checkpoint(os.path.join(out_dir, "final", f".{title}.progress.json"), fp)
    stats = {"enhance_failed": 0, "names_failed": 0, "empty_profiles": 0}
    plots = data.get("plots") or []
    language = detect_language(plots)
    # The reference enhanced every plot and filtered afterwards; the filter looks only at plot
    # key characters, which enhancement never touches, so filtering first gives the same file
    # and skips calls for plots that would be dropped.
    plots = [p for p in plots if _names_ok(p)]

    jobs = []
    for i_p, plot in enumerate(plots):
        for i_c, conv in enumerate(conversations(plot)):
            jobs.append((f"{i_p}:{i_c}", plot, conv))
    requests = {key: enhance_request(title, plot, conv) for key, plot, conv in jobs if key not in ck.data["enhance"]}
    names = collect_names(plots)  # after the prompts are built: it renames key characters in place

    # Every enhancement and the name normalization are independent calls: all go out together (through
    # the shared pool), each checkpointed as it arrives; some may have started during extraction.
    def enhance(key, plot, conv):
        ck.put("enhance", key, enhance_conversation(llm, model, title, plot, conv, requests[key]))

    def normalize_names():
        # No names at all (every plot filtered out): nothing to normalize, so no call.
        reply = ask_names(llm, model, candidate_model, names, language) if names else \
            {"named_characters": [], "to_official_name": {}}
        ck.put("names", None, {"reply": reply})

    # Batch mode: a call waiting in a batch leaves its job pending; the book goes on once all are answered.
    started, pending = [], []   # started: during extraction (EarlyEnhance)
    for key, plot, conv in jobs:
        if key in requests:
            fut = early.take(requests[key][0]) if early is not None else None
            if fut is not None:
                started.append((key, fut))
            else:
                pending.append(pool.submit(lambda k=key, p=plot, c=conv: batch.deferrable(
                    lambda _: enhance(k, p, c))(None)))
    if ck.data["names"] is None:
        pending.append(pool.submit(lambda: batch.deferrable(lambda _: normalize_names())(None)))
    by_future = {fut: key for key, fut in started}
    for fut in cf.as_completed(by_future):
        ck.put("enhance", by_future[fut], fut.result())
    cf.wait(pending)   # every call of this pass has been made (or deferred) before anything is raised
    batch.check([fut.result() for fut in pending])

    for key, _, conv in jobs:
        result = ck.data["enhance"][key]
        if result is None:
            stats["enhance_failed"] += 1
        else:
            apply_enhancement(conv, result)

    split_index = int(len(plots) * SPLIT_RATIO)
    reply = ck.data["names"]["reply"]
    if reply is None:
        stats["names_failed"] = 1
    official, mapping = build_name_map(names, reply)

    datasets = {n: {"plots": [], "conversations": [], "utterances": []} for n in official}

    def resolve(name):
        o = mapping.get(name, "impersonal") if isinstance(name, str) else None
        return o if o in datasets else None

    for i_p, plot in enumerate(plots):
        for kc in plot.get("key_characters") or []:
            o = resolve(kc.get("name"))
            if o:
                kc["name"] = o
                datasets[o]["plots"].append((i_p, kc))
        for i_c, conv in enumerate(plot["conversation"]):
            for kc in conv.get("key_characters") or []:
                o = resolve(kc.get("name")) if isinstance(kc, dict) else None
                if o:
                    kc["name"] = o
                    datasets[o]["conversations"].append((i_p, i_c, kc))
            for i_u, u in enumerate(conv.get("dialogues") or []):
                o = resolve(u.get("character")) if isinstance(u, dict) else None
                if o:
                    u["character"] = o
                    datasets[o]["utterances"].append((i_p, i_c, i_u, u))

    def profile(name):
        if name not in ck.data["profiles"]:
            d = datasets[name]
            involved = sorted({e[0] for lst in d.values() for e in lst if e[0] < split_index})
            text = write_profile(llm, model, title, name, language, profile_input(name, plots, involved, protocol))
            ck.put("profiles", name, text)
        return ck.data["profiles"][name]

    profiles = batch.check(pool.map(batch.deferrable(profile), official))
    for name, text in zip(official, profiles):
        d = datasets[name]
        for i_p, obj in d["plots"]:
            obj["i_p"] = i_p
        for i_p, i_c, obj in d["conversations"]:
            obj.update(i_p=i_p, i_c=i_c)
        for i_p, i_c, i_u, obj in d["utterances"]:
            obj.update(i_p=i_p, i_c=i_c, i_u=i_u)
        d["plots"] = [e[-1] for e in d["plots"]]
        d["conversations"] = [e[-1] for e in d["conversations"]]
        d["utterances"] = [e[-1] for e in d["utterances"]]
        d["profile"] = text
        stats["empty_profiles"] += text == ""

    # The reference saved the unfiltered plots, misaligning split_plot_index and i_p.
    final = {"plots": plots, "character_datasets": datasets, "split_plot_index": split_index}
    atomic_write_json(final_path(out_dir, title), final)
    ck.remove()
    return final, stats


def _names_ok(plot: dict) -> bool:
    kcs = plot.get("key_characters") or []
    if not all(isinstance(kc, dict) and "name" in kc for kc in kcs):
        return False
    names = [kc["name"] for kc in kcs]
    return len(names) == len(set(map(str, names)))


def conversations(plot: dict) -> list[dict]:
    """The plot's conversations as a list of objects (in place): the reference skipped a missing list,
    then crashed iterating it; a single object becomes a list of one."""
    if isinstance(plot.get("conversation"), dict):
        plot["conversation"] = [plot["conversation"]]
    if plot.get("conversation") is None:
        plot["conversation"] = []
    plot["conversation"] = [c for c in plot["conversation"] if isinstance(c, dict)]
    return plot["conversation"]


class EarlyEnhance:
    """Enhancement calls started while the book is still being extracted.

    The chunk-by-chunk extraction is a book's critical path. A plot that extraction has finished is
    never changed again in anything its enhancement prompt shows, so its conversations are enhanced
    while later chunks are extracted; assemble_book takes each result by its prompt (a prompt that
    came out different is simply asked again). The replies are kept across a kill by the response
    cache, so this runs only with the cache on.
    """

    def __init__(self, llm, model: str, title: str, pool: LeafPool):
        self.llm, self.model, self.title, self.pool = llm, model, title, pool
        self._futures: dict[str, cf.Future] = {}
        self._lock = threading.Lock()

    def plots_finished(self, plots: list[dict]) -> None:
        """Start the enhancement of these finished plots' conversations (extraction calls this)."""
        for plot in copy.deepcopy(plots):
            if not _names_ok(plot):
                continue   # assembly drops this plot: no call
            for conv in conversations(plot):
                request = enhance_request(self.title, plot, conv)
                with self._lock:
                    if request[0] in self._futures:
                        continue
                    self._futures[request[0]] = self.pool.submit(
                        lambda p=plot, c=conv, r=request: enhance_conversation(self.llm, self.model, self.title,
                                                                              p, c, r))

    def take(self, prompt: str) -> cf.Future | None:
        with self._lock:
            return self._futures.pop(prompt, None)

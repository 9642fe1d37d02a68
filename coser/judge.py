"""Judging one simulated scene (METHOD 4.7): a critic call per dimension, flaw severities -> scores.

In the core so gca_evaluation/main.py and the web app's judge-vs-human agreement judge through one
implementation (gca_evaluation/judge.py re-exports it and adds the end-of-run summary).

A dimension whose judgment never parses or validates marks the whole case as failed: the case
keeps the raw reply and the reason, and is left out of every average (never a guessed score).
"""
from __future__ import annotations

import re

from coser import gca_prompts as P
from coser import protocol as PR
from coser.batch import Deferred
from coser.errors import InputError, LLMUnavailable
from coser.jsonio import JsonFailure, get_json
from coser.pool import fan_out
from coser.prompts import ENVIRONMENT, NSP
from coser.text import remove_inner_thoughts

DIMENSIONS = P.DIMENSIONS


def case_messages(record: dict, protocol: str = "fixed") -> tuple[list[dict], list[dict]]:
    """(simulation without NSP turns, reference dialogue), thoughts removed except for Environment."""
    strip = PR.evaluation_copy if protocol == "reference" else (lambda t: remove_inner_thoughts(t, eval_mode=True))
    sim = [{"role": m["role"], "content": m["content"] if m["role"] == ENVIRONMENT
            else strip(m["content"])}
           for m in record["simulation"] if m["role"] != NSP]
    ref = [{"character": u["character"], "message": u["message"] if u["character"] == ENVIRONMENT
            else strip(u["message"])}
           for u in record["circumstance"]["dialogues"]]
    return sim, ref


def simulation_str(sim: list[dict]) -> str:
    from coser.metrics import simulation_string

    return simulation_string(sim)


def reference_str(ref: list[dict]) -> str:
    from coser.metrics import reference_string

    return reference_string(ref)


def make_validator(dimension: str):
    """Accept {dim: {"flaws": [...]}} with keys among the four dimensions and the asked one present."""
    def validate(value):
        if not isinstance(value, dict) or not value:
            return None
        for key, res in value.items():
            if key not in DIMENSIONS or not isinstance(res, dict) or "flaws" not in res:
                return None
        res = value.get(dimension)
        # The reference accepted a reply keyed by another dimension, then crashed on the lookup.
        if res is None or not isinstance(res["flaws"], list):
            return None
        for flaw in res["flaws"]:
            if isinstance(flaw, dict) and flaw.get("severity") is None:
                flaw["severity"] = 1
        return value
    return validate


class _SeeOutage:
    """Passes calls through, remembering an endpoint outage that get_json would turn into a parse failure."""

    def __init__(self, llm):
        self.llm, self.outage = llm, None

    def chat(self, *args, **kw):
        try:
            return self.llm.chat(*args, **kw)
        except LLMUnavailable as e:
            self.outage = e
            raise

    def __getattr__(self, name):  # reject() etc. pass through (get_json marks failed replies)
        return getattr(self.llm, name)


def reference_judge_prompt(dimension: str, book: str, plot_summary: str, scenario: str, character_profiles: str,
                           original_conversation: str, major_characters: list, additional_instructions: str) -> str:
    """PROTOCOL 4: chained replace-all substitutions, criteria last, so the Character Fidelity
    criteria's main-characters placeholder reaches the judge unfilled ("{major_characters}")."""
    def braces(template_text: str) -> str:
        return re.sub(r"\$(\w+)", r"{\1}", template_text)
    text = braces(P.JUDGE_PROMPT.template)
    steps = [("book", book), ("plot_summary", plot_summary), ("scenario", scenario),
             ("character_profiles", character_profiles), ("original_conversation", original_conversation),
             ("major_characters", ", ".join(major_characters)), ("additional_instructions", additional_instructions),
             ("dimension_name", dimension), ("dimension_brief", P.DIMENSION_BRIEFS[dimension]),
             ("dimension_criteria", braces(P.DIMENSION_CRITERIA[dimension].template))]
    for name, value in steps:
        text = text.replace("{" + name + "}", value)
    return text


def reference_judgment(llm, judge_model: str, messages: list[dict], dimension: str, stage: str):
    """PROTOCOL 2.2-2.5: up to 6 attempts (temperature 0 then 1), no schema, max_tokens 8196, one
    cached repair request per unusable reply. Returns (accepted object or None after 6 rejections,
    longest raw reply)."""
    from coser.scene import _accepts_keep_reasoning

    kw = {"keep_reasoning": True} if _accepts_keep_reasoning(llm) else {}
    repaired: dict = {}
    longest = None
    for nth in range(PR.ATTEMPTS):
        reply = llm.chat(judge_model, messages, max_tokens=PR.JUDGE_MAX_TOKENS, nth_generation=nth, stage=stage, **kw)
        if reply and (longest is None or len(reply) > len(longest)):
            longest = reply
        value = PR.extract_json(reply)
        if value is None:
            if reply not in repaired:
                fix = [{"role": "user", "content": JSON_FIX_PROMPT + reply}]
                repaired[reply] = PR.extract_json(llm.chat(judge_model, fix, max_tokens=PR.JUDGE_MAX_TOKENS,
                                                           temperature=0, stage=stage + "_fixjson", **kw))
            value = repaired[reply]
        if PR.validate_judgment(value):
            return value, longest
        if hasattr(llm, "reject"):  # issue 19: a rerun asks again instead of serving this reply as good
            # (The repair reply stays cached: PROTOCOL 2.2.6 has an identical failing reply answered by
            # the cache, never a second repair request; a healthy judge's new reply needs no repair.)
            llm.reject(judge_model, messages, max_tokens=PR.JUDGE_MAX_TOKENS, nth_generation=nth, **kw)
    return None, longest


JSON_FIX_PROMPT = ("The text below was meant to be a JSON object but could not be parsed. Return only the "
                   "corrected JSON object, with nothing else.\n\n")


def judge_dimension(llm, judge_model: str, messages: list[dict], dim: str, stage: str, protocol: str,
                    actor_rounds: int) -> tuple[dict, dict | None]:
    """({flaws, score} of one dimension, the failure record or None)."""
    from coser import metrics

    if protocol == "reference":
        got, raw = reference_judgment(llm, judge_model, messages, dim, stage)
        if got is None or dim not in got:
            # The reference aborted the whole run here (PROTOCOL 2.5); the case is marked failed.
            reason = "no valid judgment after 6 attempts" if got is None else f"reply lacks {dim!r}"
            return {"flaws": None, "score": None}, {"dimension": dim, "fail_to_parse_response": raw,
                                                    "reason": reason, "attempts": PR.ATTEMPTS}
        flaws = got[dim]["flaws"]
        return {"flaws": flaws, "score": PR.dimension_score(flaws, actor_rounds)}, None
    guard = _SeeOutage(llm)
    got = get_json(guard, judge_model, messages, validate=make_validator(dim), schema=P.judge_schema(dim),
                   stage=stage, repair="quotes")
    if guard.outage is not None:
        # A dead endpoint is not a verdict on the sample: stop the run (finished samples are
        # checkpointed) instead of recording failures that a rerun would reuse.
        raise guard.outage
    if isinstance(got, JsonFailure):
        return {"flaws": None, "score": None}, {"dimension": dim, **got.to_record()}
    flaws = got[dim]["flaws"]
    return {"flaws": flaws, "score": metrics.dimension_score(flaws, actor_rounds)}, None


def judge_case(llm, record: dict, judge_model: str, continue_from: int = 0, stage: str = "judge",
               protocol: str = "fixed", parallel: bool = False) -> dict:
    """Evaluate one simulation record; returns the case entry of the evaluation file.

    protocol 'reference' (PROTOCOL 2-4): no schema, the reference's extraction, regeneration and repair,
    the placeholder left unfilled, severity true counting 1; a reply that never validates or lacks the
    asked dimension (where the reference aborted the run) marks the case failed."""
    from coser import metrics

    circ = record["circumstance"]
    key = f"{record['book_title']}-{record['i_p']}-{record['i_c']}"
    if record["i_p"] != circ["plot"].get("i_p", record["i_p"]) or record["i_c"] != circ.get("i_c"):
        raise InputError(f"simulation record {key}: i_p/i_c do not match its circumstance")
    sim, ref = case_messages(record, protocol)
    sim_str, ref_str = simulation_str(sim), reference_str(ref)
    if record.get("failed"):
        # The scene itself failed (e.g. an agent's retries all came back empty): nothing to judge, and
        # no score: the case is left out of the averages and counted as failed.
        failures = [{"stage": "simulation", **f} for f in record.get("failures") or [] if isinstance(f, dict)]
        return {"simulation": sim, "simulation_str": sim_str, "score": None, "critique": {}, "failed": True,
                "failures": failures or [{"stage": "simulation", "reason": "simulation marked failed"}]}
    profiles = "\n\n".join(f"### {name}\n\n{profile}"
                           for name, profile in record["involved_character_profiles"].items())
    extra = P.CONTINUE_FROM_NOTE.substitute(n=continue_from) if continue_from > 0 else ""
    actor_rounds = sum(1 for m in sim if m["role"] != ENVIRONMENT)

    def attempt(dim: str):
        """judge_dimension's (entry, failure), or the Deferred of a call waiting in a batch."""
        build = reference_judge_prompt if protocol == "reference" else P.judge_prompt
        system = build(dim, book=record["book_title"], plot_summary=circ["plot"].get("summary", ""),
                       scenario=circ.get("scenario", ""), character_profiles=profiles,
                       original_conversation=ref_str, major_characters=circ.get("major_characters", []),
                       additional_instructions=extra)
        messages = [{"role": "system", "content": system}, {"role": "user", "content": sim_str}]
        try:
            return judge_dimension(llm, judge_model, messages, dim, stage, protocol, actor_rounds)
        except Deferred as e:
            return e  # batch mode: the other dimensions' requests join the same batch

    # In parallel the four dimensions go out together (the case is recorded the same way: up to its
    # first failed dimension); one at a time, a failed dimension stops the case and saves the rest.
    outcomes = (iter(fan_out([lambda d=d: attempt(d) for d in DIMENSIONS])) if parallel
                else (attempt(d) for d in DIMENSIONS))
    critique: dict = {}
    failures = []
    deferred = None
    for dim, out in zip(DIMENSIONS, outcomes):
        if isinstance(out, Deferred):
            deferred = out
            continue
        entry, failure = out
        critique[dim] = entry
        if failure is not None:
            failures.append(failure)
            break  # the case is excluded anyway: judging the other dimensions would only cost calls
    if deferred is not None:  # even after a later failure: the earlier dimension decides the case
        raise deferred

    scores = metrics.bleu_rouge(reference_str(ref[continue_from:]), simulation_str(sim[continue_from:]))
    critique.update(scores)
    case = {"simulation": sim, "simulation_str": sim_str, "critique": critique}
    if failures:
        case["score"] = None
        case["failed"] = True
        case["failures"] = failures
    else:
        case["score"] = sum(critique[d]["score"] for d in DIMENSIONS) / len(DIMENSIONS)
    # Keep the reference's key order: simulation, simulation_str, score, critique.
    order = ["simulation", "simulation_str", "score", "critique", "failed", "failures"]
    return {k: case[k] for k in order if k in case}


def aggregate(cases: dict) -> tuple[dict, int, int]:
    """(scores over the judged cases, number judged, number failed); failed cases are excluded."""
    from coser import metrics

    scores = metrics.aggregate(cases)
    return scores, scores["n"], scores["failed"]


def per_sample(evaluation: dict, column: str) -> dict:
    """Case key -> value of one column, over judged cases only."""
    out = {}
    for key, case in evaluation["cases"].items():
        if case.get("failed"):
            continue
        crit = case.get("critique") or {}
        if column == "avg":
            out[key] = case.get("score")
        elif column in DIMENSIONS:
            out[key] = (crit.get(column) or {}).get("score")
        else:
            out[key] = crit.get(column)
    return {k: v for k, v in out.items() if isinstance(v, (int, float))}

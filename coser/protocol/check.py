"""Run protocol vector files (PROTOCOL.md section 0) through the reference implementation."""
from __future__ import annotations

import copy
import json
import math
from pathlib import Path

from . import core as C
from .repetition import repair_repetition

JUDGE_TEMPLATE = """\
Materials:
   * The book {book}; the plot summary {plot_summary}.
   * Profiles of the main characters, including {major_characters}.
Scenario:
{scenario}
{character_profiles}
{original_conversation}
{additional_instructions}
Dimension: {dimension_name}
{dimension_brief}
{dimension_criteria}
"""
CF_CRITERIA_LINE = "   (Only apply to the main characters: {major_characters})"


def reference_judge_prompt(dimension: str, book: str, plot_summary: str, scenario: str, profiles: str,
                           original: str, majors: list, additional: str = "", brief: str = "",
                           criteria: str = "") -> str:
    """4: chained replace-all substitutions, criteria last (the CF placeholder stays literal)."""
    if dimension == "Character Fidelity":
        criteria = (criteria + "\n" if criteria else "") + CF_CRITERIA_LINE
    text = JUDGE_TEMPLATE
    for key, value in (("{book}", book), ("{plot_summary}", plot_summary), ("{scenario}", scenario),
                       ("{character_profiles}", profiles), ("{original_conversation}", original),
                       ("{major_characters}", ", ".join(majors)), ("{additional_instructions}", additional),
                       ("{dimension_name}", dimension), ("{dimension_brief}", brief),
                       ("{dimension_criteria}", criteria)):
        text = text.replace(key, value)
    return text


def _same(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if type(a) is not type(b) and not ({type(a), type(b)} <= {int, float} and not isinstance(a, bool)):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b and type(a) is type(b)


def run_nsp(inp):
    reply, rnd, cur = inp["reply"], inp["round"], inp["current_speaker"]
    speaking, majors = inp["speaking_characters_w_env"], inp["major_characters"]
    if "Environment" not in speaking:
        speaking = list(speaking) + ["Environment"]
    p = C.predict_nsp(reply)
    outcome, cands = C.resolve_nsp(p, rnd, cur, speaking, majors)
    ended = outcome == C.END_CHAT
    valid = outcome is not None
    out = {"extract_nsp": C.extract_nsp(reply), "logged_nsp_entry": p, "accepted": valid,
           "next_round_speaker": outcome if valid else "<random>",
           "fallback_candidates": sorted(cands) if cands is not None else None}
    if ended:
        out["nsp_history_assistant_message"] = None
        out["nsp_system_prompt_reinput"] = None
    else:
        out["nsp_history_assistant_message"] = (reply if valid else p) or None
        out["nsp_system_prompt_reinput"] = not valid
    out["nsp_requests_for_this_turn"] = C.ATTEMPTS if reply == "" else 1
    return out


def run_judge_reply(inp):
    dim, reply = inp["dimension"], inp["reply"]
    value = C.extract_json(reply)
    snapshot = copy.deepcopy(value)
    repair = value is None
    accepted = C.validate_judgment(value)
    out = {"extract_json": snapshot, "repair_call_made": repair, "accepted": accepted, "kept_flaws": None,
           "score": None, "crash": None}
    if accepted:
        if dim not in value:
            out["crash"] = f"KeyError: {dim!r}"
        else:
            flaws = value[dim]["flaws"]
            out["kept_flaws"] = flaws
            out["score"] = C.dimension_score(flaws, inp["actor_rounds"])
    return out


def run_judge_scores(inp):
    scores = {d: C.dimension_score([{"severity": s} for s in sev], inp["actor_rounds"])
              for d, sev in inp["severities_by_dimension"].items()}
    return {"dimension_scores": scores, "case_score": sum(scores.values()) / len(scores)}


def run_judge_view(inp):
    return {"judge_user_message": C.judge_view(inp), "actor_rounds": C.actor_rounds(inp)}


def run_thinking(text):
    return {"evaluation_copy": C.evaluation_copy(text), "shown_to_others_as_Iago": C.shown_to_others(text, "Iago"),
            "construction_copy": C.construction_copy(text)}


def run_judge_prompt(inp):
    dim, majors, scen = inp["dimension"], inp["major_characters"], inp["scenario"]
    text = reference_judge_prompt(dim, "BOOK", "SUMMARY", scen, "PROFILES", "ORIGINAL", majors)
    lines = text.split("\n")
    scen_idx = lines.index("Scenario:") + 1
    return {"line_naming_main_characters_in_materials": next(x for x in lines if "Profiles of the main" in x),
            "criteria_lines_with_main_characters": [x for x in lines if "Only apply to the main characters" in x],
            "literal_placeholder_present": "{major_characters}" in text,
            "scenario_line_as_seen": lines[scen_idx]}


def run_judge_protocol(inp, model="gpt-4o"):
    replies = list(inp["replies_in_request_order"])
    requests, cache = [], {}
    req = lambda agent, temp, roles: {"agent": agent, "model": model, "temperature": temp,  # noqa: E731
                                      "max_tokens": 8196, "timeout": 180, "roles": roles, "extra_keys": []}
    dim = C.DIMENSIONS[0]
    for n in range(C.ATTEMPTS):
        requests.append(req("JUDGE", 0 if n == 0 else 1, ["system", "user"]))
        reply = replies.pop(0)
        value = C.extract_json(reply)
        if value is None:
            if reply in cache:
                fixed = cache[reply]
            else:
                requests.append(req("FIXJSON", 0, ["user"]))
                fixed = cache[reply] = replies.pop(0)
            value = C.extract_json(fixed)
        if C.validate_judgment(value):
            if dim not in value:
                return {"requests": requests, "result_for_dimension": None, "crash": f"KeyError: {dim!r}"}
            res = value[dim]
            res["score"] = C.dimension_score(res["flaws"], 4)
            return {"requests": requests, "result_for_dimension": res, "crash": None}
    return {"requests": requests, "result_for_dimension": None,
            "crash": "TypeError: 'bool' object is not subscriptable"}


def run_extraction(inp):
    chunk, reply = inp["chunk"], inp["reply"]
    model = inp.get("model", "gpt-4o")
    value = C.extract_json(reply)
    gen, rep, fail = [], [], None
    repaired = {}
    result = None
    for n in range(C.ATTEMPTS):
        gen.append({"model": model, "temperature": 0 if n == 0 else 1, "max_tokens": C.extraction_max_tokens(model)})
        v = C.extract_json(reply)
        if v is None:
            if reply not in repaired:
                rep.append({"model": C.REPAIR_MODEL, "temperature": 0, "max_tokens": 8192})
                repaired[reply] = None
            v = None
        if v is None:
            continue
        acc = C.accept_extraction(v, chunk)
        if acc is not None:
            result = {"chapter_beginnings": acc[0], "plots": acc[1], "remaining_chunk": acc[2]}
            break
        if fail is None or len(reply) > len(fail):
            fail = reply
    if result is None:
        result = {"fail_to_parse_response": fail}
    return {"extract_json": value, "accepted": C.accept_extraction(value, chunk) is not None if value else False,
            "result": result, "generation_requests": gen, "repair_requests": rep, "crash": None}


def run_extract_states(inp):
    return {"saved_plots_in_order": C.merge_states([inp["reply_plots"]])}


SCRIPT_ORDER = ["Othello", "Iago", "Desdemona", "Environment"]


def run_agent_setup(inp):
    agent, model = inp["agent"], inp["model"]
    base = "BASE PROMPT"
    history = C.new_agent_history(C.agent_system_prompt(base, agent, model), model)
    # the scripted scene: each agent before this one in SCRIPT_ORDER has spoken once
    C.append_message(history, "user", C.CONVERSATION_START)
    for other in SCRIPT_ORDER[:SCRIPT_ORDER.index(agent)] if agent in SCRIPT_ORDER else SCRIPT_ORDER[:3]:
        C.append_message(history, "user", C.add_speaker_name(f"(nods) Turn 0 of {other}.", other))
    from coser.llm import prepare_messages  # noqa: F401 - 9.2 applies at request time
    return {"first_message_role": history[0]["role"], "system_prompt_suffix": history[0]["content"][len(base):],
            "n_messages_first_request": len(history), "max_tokens": C.AGENT_MAX_TOKENS, "temperature": 0,
            "timeout": C.TIMEOUT, "extra_request_keys": []}


def run_turn(inp, want):
    """Only the parts fixed by the turn itself are checked: requests, record, others' view, and the
    speaker's own assistant message (the scripted turns of others around it are not modelled)."""
    speaker = inp["speaker"]
    model = inp["env_model"] if speaker == "Environment" else inp["actor_model"]
    requests, reply = [], ""
    for n, r in enumerate(inp["replies_by_attempt"][:C.ATTEMPTS]):
        requests.append({"temperature": 0 if n == 0 else 1, "max_tokens": C.AGENT_MAX_TOKENS, "timeout": C.TIMEOUT})
        reply = r
        if r != "":
            break
    turn = C.finish_turn(reply, speaker, model)
    own = [m for m in want["speaker_own_history_after_turn"] if m["role"] == "assistant"]
    got_own = [{"role": "assistant", "content": turn}] if turn else []
    return {"requests_for_turn": requests, "logged_turn_content": turn,
            "appended_to_other_agents_user_message": C.shown_to_others(turn, speaker),
            "own_assistant_messages": got_own}, {
            "requests_for_turn": want["requests_for_turn"], "logged_turn_content": want["logged_turn_content"],
            "appended_to_other_agents_user_message": want["appended_to_other_agents_user_message"],
            "own_assistant_messages": own}


def run_alias(inp, want):
    """Alias vectors: the stage's choice of entry (11). Fixture texts ("PROFILE OF X.", "Summary 0")
    are the vector generator's; transform samples are compared on the description they start with."""
    cat = inp.get("category")
    if "test_item_plot_key_characters" in inp:
        ents, convs = inp["test_item_plot_key_characters"], inp["test_item_key_characters"]
        names = list(dict.fromkeys(e["name"] for e in ents))
        profiles = {n: C.alias_entry(ents, n, "simulation")["description"] + f"\n\nPROFILE OF {n}." for n in names}
        mot = C.alias_entry(convs, "Iago", "simulation")
        return {"involved_character_profiles": profiles,
                "iago_system_prompt_descriptions": [C.alias_entry(ents, n, "simulation")["description"] for n in names],
                "iago_system_prompt_motivations": [mot["motivation"]] if mot else []}, want
    ents = copy.deepcopy(inp["plot0_key_characters_before"])
    if "to_official_name" in inp:
        C.map_official_names(ents, inp["to_official_name"], 0)
        chosen = {k: v for k, v in C.alias_entry(ents, "Iago", "assemble").items() if k != "i_p"}
        return {"profile_prompt_plot_infos_for_Iago": [{"plot": "Summary 0", "character_experience": chosen,
                                                        "n_conversations": 1}],
                "final_plot0_key_characters": ents}, want
    official = {"Signior Iago": "Iago"}
    for e in ents:
        e["name"] = official.get(e["name"], e["name"])
    got = {n: C.alias_entry(ents, n, "transform")["description"] for n in ("Iago", "Roderigo")}
    seen = {"Iago": {s["descriptions_in_system_prompt"][0] for s in want["iago_sft_samples"]},
            "Roderigo": {s["descriptions_in_system_prompt"][0] for s in want["roderigo_sft_samples"]}}
    return {k: [v] for k, v in got.items()}, {k: sorted(v) for k, v in seen.items()}


RUNNERS = {
    "alias.json": run_alias,
    "agent_setup.json": run_agent_setup,
    "nsp.json": run_nsp,
    "judge_replies.json": run_judge_reply,
    "judge_scores.json": run_judge_scores,
    "judge_view.json": run_judge_view,
    "thinking.json": run_thinking,
    "repetition.json": repair_repetition,
    "judge_prompt.json": run_judge_prompt,
    "judge_protocol.json": run_judge_protocol,
    "extraction.json": run_extraction,
    "extract_states.json": run_extract_states,
    "turns.json": run_turn,
}


def check_file(path: Path, verbose: bool = False) -> tuple[int, int]:
    runner = RUNNERS.get(path.name)
    cases = json.loads(path.read_text(encoding="utf-8"))
    passed = failed = 0
    for i, case in enumerate(cases):
        try:
            want = case["output"]
            if runner in (run_turn, run_alias):
                got, want = runner(case["input"], want)
            else:
                got = runner(case["input"]) if runner else NotImplemented
            ok = got is not NotImplemented and _same(got, want)
        except Exception as exc:  # noqa: BLE001 - a crash is a failed vector
            got, ok = f"{type(exc).__name__}: {exc}", False
        if ok:
            passed += 1
        else:
            failed += 1
            if verbose:
                print(f"  FAIL {path.name}[{i}] {case.get('category')}: got {json.dumps(got, default=str)[:600]}")
                print(f"       want {json.dumps(want)[:600]}")
    return passed, failed


def main(argv: list[str]) -> int:
    verbose = "-v" in argv
    argv = [a for a in argv if a != "-v"]
    if len(argv) != 2 or argv[0] != "check":
        print("usage: python -m coser.protocol check DIR [-v]")
        return 2
    folder = Path(argv[1])
    files = sorted(folder.glob("*.json"))
    if not files:
        print(f"{folder}: no vector files")
        return 2
    tp = tf = 0
    for f in files:
        p, fl = check_file(f, verbose)
        tp, tf = tp + p, tf + fl
        print(f"{f.name}: {p} passed, {fl} failed")
    print(f"{tp} passed, {tf} failed")   # the total, alone on the last line
    return 0 if tf == 0 else 1

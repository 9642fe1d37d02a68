"""Protocol fidelity (issue 14): reference vectors, reference requests, cut-off extraction replies."""
import json
import os
import re
import subprocess
import sys
import types

import pytest

from coser import protocol as PR
from coser.prompts import END_CHAT, ENVIRONMENT, NSP
from coser.scene import sample_rng, simulate
from data_construction import extract as X
from gca_evaluation import judge as J
from tests import construction_script as S
from tests.conftest import REPO, shared_path
from tests.gca_fakes import _no_nagle, actor_name, kind, responder  # noqa: F401 (autouse fixture)
from tests.test_gca_units import ITEM

VECTORS = os.path.join(REPO, "..", "shared", "protocol-vectors")


def opts(**kw):
    base = dict(actor_model="gpt-4o", env_model="gpt-4o", nsp_model="gpt-4o-mini", continue_from=0,
                wo_thought=False, retrieval=None, use_motivation=False, protocol="reference")
    base.update(kw)
    return types.SimpleNamespace(**base)


# ---- vectors ---------------------------------------------------------------------------------
def test_shared_protocol_vectors_all_pass():
    if not os.path.isdir(VECTORS):
        pytest.skip("shared protocol vectors not present")
    out = subprocess.run([sys.executable, "-m", "coser.protocol", "check", VECTORS], cwd=REPO,
                         capture_output=True, text=True, timeout=600)
    lines = out.stdout.strip().splitlines()
    assert re.fullmatch(r"\d+ passed, 0 failed", lines[-1]), out.stdout + out.stderr
    per_file = [ln for ln in lines[:-1] if ln.endswith(" failed")]
    assert len(per_file) == len([f for f in os.listdir(VECTORS) if f.endswith(".json")])
    assert sum(int(ln.split(": ")[1].split()[0]) for ln in per_file) == int(lines[-1].split()[0])
    assert int(lines[-1].split()[0]) > 200   # every file ran
    assert out.returncode == 0


def test_check_reports_failures_and_exit_code(tmp_path):
    (tmp_path / "nsp.json").write_text(json.dumps([
        {"category": "x", "input": {"reply": "**Next Speaker:** Iago", "round": 0, "current_speaker": "Othello",
                                    "speaking_characters_w_env": ["Othello", "Iago", "Environment"],
                                    "major_characters": ["Othello", "Iago"]},
         "output": {"extract_nsp": "Iago"}}]))   # a wrong expectation: must be reported as a failure
    out = subprocess.run([sys.executable, "-m", "coser.protocol", "check", str(tmp_path)], cwd=REPO,
                         capture_output=True, text=True, timeout=120)
    assert "nsp.json: 0 passed, 1 failed" in out.stdout and out.stdout.strip().splitlines()[-1] == "0 passed, 1 failed"
    assert out.returncode == 1


def test_reference_rules_spot_checks():
    assert PR.predict_nsp("**Next Speaker:** Iago") == ":"
    assert PR.predict_nsp("### Next Speaker\nIago") == "Iago"
    assert PR.predict_nsp("Next Speaker: **Iago**") == "Next Speaker"      # invalid: random fallback
    assert PR.extract_nsp("Next Speaker: **Iago**") is None
    assert PR.predict_nsp("NSP: Iago") == "NSP" and PR.predict_nsp("Iago: he must answer") == "Iago"
    assert PR.dimension_score([{"severity": True}], 0) == 95
    assert PR.dimension_score([{"severity": 3}], 10) == 100.0 and isinstance(PR.dimension_score([{"severity": 3}], 10), float)
    assert PR.extract_json('{"a": "x\ny"}') == {"a": "x\\ny"}
    assert PR.extract_json("{}") is None
    assert PR.evaluation_copy("Hello\n<role_thinking>x</role_thinking>\nWorld") == "HelloWorld"
    assert PR.evaluation_copy("<think>plan</think> hi") == "<think>plan</think> hi"


# ---- a GCA scene and its judging under --protocol reference ---------------------------------------
def test_reference_scene_requests(make_llm, fake_server):
    def nsp(body):
        return "**Next Speaker:** Tom"      # reads ':' in the reference: invalid, random fallback
    replies = iter(["", "   "] + ["Mara: (nods) fine."] * 100)

    def actor(body):
        return next(replies)
    fake_server.set_responder(responder(nsp=nsp, actor=actor))
    llm = make_llm(use_cache=False)
    rec = simulate(llm, ITEM, opts(actor_model="llama-3-8b", env_model="gpt-4o"), sample_rng(42, ITEM))
    reqs = fake_server.chat_requests()
    assert all("response_format" not in r for r in reqs)
    assert all(r["max_tokens"] == 512 for r in reqs)
    nsp_entries = [m["content"] for m in rec["simulation"] if m["role"] == NSP]
    assert nsp_entries and set(nsp_entries) == {":"}            # logged as parsed, never the drawn speaker
    assert len(rec["simulation"]) == 2 * 20                      # ':' never ends the chat: 20 rounds
    # the first actor reply was '' (re-asked at temperature 1), the second '   ' (accepted as is:
    # a llama model's reply without its name prefix becomes an empty turn)
    actor_reqs = [r for r in reqs if kind(r) == "actor"]
    assert [r["temperature"] for r in actor_reqs[:3]] == [0, 1, 0]
    first_actor_turn = next(m for m in rec["simulation"] if m["role"] not in (NSP, ENVIRONMENT))
    assert first_actor_turn["content"] == ""
    # llama models: the name-prefix instruction goes to every agent of that model (only actors here)
    assert 'Start your response with "Mara: "' in actor_reqs[0]["messages"][0]["content"] or \
        'Start your response with "Tom: "' in actor_reqs[0]["messages"][0]["content"]


def test_reference_judge_requests(make_llm, fake_server):
    record = {"book_title": ITEM["book"], "i_p": 3, "i_c": 0, "circumstance": ITEM,
              "involved_character_profiles": {"Mara": "p"},
              "simulation": [{"role": "Mara", "content": "[hm] Who?"}, {"role": NSP, "content": "Tom"},
                             {"role": "Tom", "content": "<think>x</think> Me."}]}
    calls = {"n": 0}

    def judge(body):
        calls["n"] += 1
        dim = next(d for d in PR.DIMENSIONS if d in body["messages"][0]["content"].split("\n")[0] or
                   f"{d}" in body["messages"][0]["content"])
        if calls["n"] == 1:
            return "no JSON here"                                   # -> one repair request, then regenerate
        return json.dumps({"Storyline Consistency": {"flaws": [{"instance": "x", "type": "t", "severity": True}]},
                           **({} if True else {dim: None})})
    fake_server.set_responder(lambda body: "still none" if len(body["messages"]) == 1 else judge(body))
    case = J.judge_case(make_llm(use_cache=False), record, "gpt-4o", protocol="reference")
    reqs = fake_server.chat_requests()
    assert all("response_format" not in r for r in reqs)
    assert all(r["max_tokens"] == 8196 for r in reqs)
    roles = [[m["role"] for m in r["messages"]] for r in reqs]
    assert roles[:3] == [["system", "user"], ["user"], ["system", "user"]]
    assert [r["temperature"] for r in reqs[:3]] == [0, 0, 1]
    # the judge sees <think> kept, thoughts removed, no names
    assert reqs[0]["messages"][1]["content"] == "Who?\n\n<think>x</think> Me."
    # severity true counts 1: 100 - (1 - 0.3*2)*5 = 98
    assert case["critique"]["Storyline Consistency"]["score"] == 98.0
    # the others lack their own dimension: the case is failed (the reference aborted the run)
    assert case.get("failed") is True


def test_reference_character_fidelity_placeholder_unfilled():
    text = J.reference_judge_prompt("Character Fidelity", "B", "S", "scene", "P", "O", ["Mara", "Tom"], "")
    assert "{major_characters}" in text and "Mara, Tom" in text
    fixed = J.P.judge_prompt("Character Fidelity", "B", "S", "scene", "P", "O", ["Mara", "Tom"], "")
    assert "{major_characters}" not in fixed and "$major_characters" not in fixed


# ---- item 10: a cut-off extraction reply is regenerated, never kept ----------------------------------
@pytest.mark.parametrize("protocol", ["reference", "fixed"])
def test_truncated_extraction_reply_is_regenerated(fake_server, make_llm, tmp_path, protocol):
    from tests.test_construction_llm import othello_text
    text = othello_text()[5000:9000]
    full = {}

    def responder_(body):
        reply = S.respond(body)
        if len(body["messages"]) == 1 and "==Chunk" in S.user_text(body) and body["temperature"] == 0:
            full["reply"] = reply
            cut = reply.rfind('"message": "') + len('"message": "') + 5
            return reply[:cut]                          # cut off mid-utterance
        return reply
    fake_server.set_responder(responder_)
    book = {"title": "Othello", "author": "W. S.", "content": text}
    result = X.extract_book(make_llm(use_cache=False), book, [text], str(tmp_path), "gpt-4o", protocol=protocol)
    reqs = [r for r in fake_server.chat_requests() if "==Chunk" in S.user_text(r)]
    assert [r["temperature"] for r in reqs][:2] == [0, 1]     # the cut reply was re-asked
    want = json.loads(full["reply"])
    kept = [p for p in want["plots"] if p["state"] in ("finished", "truncated")]
    assert len(result["plots"]) == len(kept)
    for got, exp in zip(result["plots"], kept):
        assert [len(c["dialogues"]) for c in got["conversation"]] == [len(c["dialogues"]) for c in exp["conversation"]]
    assert result["protocol"] == protocol


def test_structural_check_rejects_fragments():
    plot = {"chapter_title": "I", "first_sentence": "a", "last_sentence": "b", "summary": "s", "prominence": 5,
            "key_characters": [], "conversation": [{"dialogues": ["p"]}], "state": "finished"}
    assert "utterance" in X.structural_problem({"plots": [plot], "next_chunk_start": None})
    plot["conversation"] = [{"dialogues": [{"character": "Iago", "message": "x"}]}]
    assert X.structural_problem({"plots": [plot], "next_chunk_start": None}) is None
    assert X.structural_problem({"plots": [plot]}) == "missing 'next_chunk_start'"
    del plot["state"]
    assert "state" in X.structural_problem({"plots": [plot], "next_chunk_start": None})


# ---- item 11: two key-character entries that normalize to one name ----------------------------------
def test_alias_choice_assembly_and_transform():
    from data_construction import assemble as A
    from data_construction import transform as T
    entries = [{"name": "Iago", "description": "DESC-A", "experience": "EXP-A"},
               {"name": "Iago", "description": "DESC-B", "experience": "EXP-B"}]
    plots = [{"summary": "s", "key_characters": entries, "conversation": []}]
    ref = A.profile_input("Iago", plots, [0], protocol="reference")[0]["character_experience"]
    fix = A.profile_input("Iago", plots, [0], protocol="fixed")[0]["character_experience"]
    assert ref["description"] == "DESC-B" and fix["description"] == "DESC-A"

    import random
    conv = {"speaking_characters_w_env": ["Iago", "Environment"], "major_characters": ["Iago"],
            "scenario": "x", "key_characters": [{"name": "Iago", "motivation": "M"}],
            "dialogues": [{"character": "Iago", "message": "Hm."}, {"character": "Environment", "message": "Wind."}]}
    plot = {"summary": "s", "key_characters": entries}

    def system_of(protocol):
        out = T.character_samples("B", plot, conv, {"Iago": "P"}, False, False, random.Random(0), protocol)
        return next(chat for kind, who, chat in out if who == "Iago")
    assert "DESC-A" in json.dumps(system_of("reference")) and "DESC-B" not in json.dumps(system_of("reference"))
    assert "DESC-B" in json.dumps(system_of("fixed"))


# ---- <think> kept under reference: LLM.chat(keep_reasoning=True), one cache row for both protocols ------
def test_keep_reasoning_shares_cache_rows(make_llm, fake_server):
    fake_server.set_responder(lambda body: "<think>plan</think>Mara: hi")
    llm = make_llm()
    msgs = [{"role": "user", "content": "hello"}]
    assert llm.chat("gpt-4o", msgs, max_tokens=512, keep_reasoning=True) == "<think>plan</think>Mara: hi"
    assert llm.chat("gpt-4o", msgs, max_tokens=512) == "Mara: hi"          # same row, stripped on the way out
    assert llm.chat("gpt-4o", msgs, max_tokens=512, keep_reasoning=True) == "<think>plan</think>Mara: hi"
    assert len(fake_server.chat_requests()) == 1


def test_reference_scene_others_see_think_blocks(make_llm, fake_server):
    def actor(body):
        return "<think>plan</think>" + actor_name(body) + ": (nods) fine."
    fake_server.set_responder(responder(nsp=lambda body: "Tom", actor=actor))
    rec = simulate(make_llm(use_cache=False), ITEM, opts(), sample_rng(42, ITEM))
    turns = [m["content"] for m in rec["simulation"] if m["role"] not in (NSP, ENVIRONMENT)]
    assert turns and all(t.startswith("<think>plan</think>") for t in turns)
    later = [r for r in fake_server.chat_requests() if kind(r) == "actor"][1:]
    assert any("<think>plan</think>" in m["content"] for r in later for m in r["messages"])


# ---- gca_evaluation/main.py --protocol, end to end ------------------------------------------------
def test_gca_cli_protocols_end_to_end(fake_server, llm_env, tmp_path):
    from tests.conftest import run_script
    from tests.test_gca_run import published_layout, read
    published_layout(tmp_path)          # skips cleanly without ../shared/coser-data
    fake_server.set_responder(responder())
    r = run_script(["gca_evaluation/main.py"], env=llm_env, cwd=tmp_path)     # default: reference
    assert r.returncode == 0, r.stderr
    judge_reqs = [b for b in fake_server.chat_requests() if kind(b) == "judge"]
    assert judge_reqs and all("response_format" not in b and b["max_tokens"] == 8196 for b in judge_reqs)
    ev = read(tmp_path / "exp" / "evaluation" / "test_set_gpt-4o.json")
    assert ev["protocol"] == "reference" and "protocol: reference" in r.stdout
    fake_server.reset()
    r = run_script(["gca_evaluation/main.py", "--protocol", "fixed"], env=llm_env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    judge_reqs = [b for b in fake_server.chat_requests() if kind(b) == "judge"]
    assert judge_reqs and all("response_format" in b for b in judge_reqs)   # the fixed protocol's schema
    assert read(tmp_path / "exp" / "evaluation" / "test_set_gpt-4o.json") == ev  # never overwritten
    other = [n for n in os.listdir(tmp_path / "exp" / "evaluation") if n != "test_set_gpt-4o.json"]
    assert len(other) == 1
    fixed = read(tmp_path / "exp" / "evaluation" / other[0])
    assert fixed["protocol"] == "fixed" and fixed["spec"]["protocol"] == "fixed" and "protocol: fixed" in r.stdout


# ---- the shared scene engine: streaming events and a human speaker -----------------------------------
def test_scene_streams_turns_and_takes_human_lines(make_llm, fake_server):
    fake_server.set_responder(responder())
    events = []
    asked = []

    def human(character, state):
        asked.append((character, state["round"]))
        return "(by hand) Who goes there?" if character == "Mara" else None
    rec = simulate(make_llm(), ITEM, opts(protocol="fixed"), sample_rng(1, ITEM),
                   on_event=lambda kind, payload: events.append((kind, payload)), human_turn=human)
    turns = [p for k, p in events if k == "turn"]
    assert [(t["role"], t["content"]) for t in turns] == [(m["role"], m["content"]) for m in rec["simulation"]]
    assert events[-1][0] == "end"
    mara = [m["content"] for m in rec["simulation"] if m["role"] == "Mara"]
    assert mara and all(c == "(by hand) Who goes there?" for c in mara)
    # no actor request was made for Mara
    assert not any(actor_name(r) == "Mara" for r in fake_server.chat_requests() if kind(r) == "actor")
    assert {c for c, _ in asked} >= {"Mara"} and NSP not in {c for c, _ in asked}

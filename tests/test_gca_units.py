"""GCA simulation, judging and retrieval, in process, with LLM calls over the fake HTTP server."""
import json
import os
import types

import pytest

from coser.prompts import END_CHAT, ENVIRONMENT, NSP
from gca_evaluation import judge as J
from gca_evaluation import prompts as P
from gca_evaluation import retrieval as R
from gca_evaluation.simulation import sample_rng, simulate
from tests.conftest import shared_path
from tests.gca_fakes import _no_nagle, actor_name, kind, responder  # noqa: F401 (autouse fixture)

ITEM = {
    "scenario": "Night, storm, the lamp room of the lighthouse.",
    "topic": "The stranger's identity",
    "key_characters": [{"name": "Mara", "motivation": "MOTIVE-OF-MARA"}, {"name": "Tom", "thought": "THOUGHT-OF-TOM"}],
    "dialogues": [
        {"character": "Mara", "message": "[Stay calm.] (raises the lamp) Who is there?"},
        {"character": "Tom", "message": "[She must not know.] A traveller, lost."},
        {"character": "Environment", "message": "Rain lashes the glass."},
        {"character": "Mara", "message": "[Liar.] Travellers do not come by sea."},
        {"character": "Tom", "message": "This one did."},
    ],
    "speaking_characters_w_env": ["Mara", "Tom", "Environment"],
    "major_characters": ["Mara", "Tom"],
    "weight": 1.0,
    "plot": {"summary": "Mara finds a stranger.", "i_p": 3,
             "key_characters": [{"name": "Mara", "description": "A young keeper.", "experience": "x"}]},
    "character_profiles": {"Mara": "Mara keeps the lamp.", "Tom": "Tom is a smuggler."},
    "book": "The Salt Lamp", "i_p": 3, "i_c": 0, "tag": "id",
}


def opts(**kw):
    base = dict(actor_model="gpt-4o", env_model="gpt-4o", nsp_model="gpt-4o-mini", continue_from=0,
                wo_thought=False, retrieval=None, use_motivation=False, protocol="fixed")  # reference: test_protocol.py
    base.update(kw)
    return types.SimpleNamespace(**base)


def run(make_llm, fake_server, item=ITEM, seed=42, databases=None, **kw):
    llm = make_llm()
    return simulate(llm, item, opts(**kw), sample_rng(seed, item), databases)


def actor_turns(rec):
    return [m for m in rec["simulation"] if m["role"] != NSP]


# ---- simulation -------------------------------------------------------------------------------
def test_routing_hides_thoughts_and_prefixes_names(make_llm, fake_server):
    fake_server.set_responder(responder())
    rec = run(make_llm, fake_server)
    sim = rec["simulation"]
    assert len(sim) == 40 and [m["role"] for m in sim[1::2]] == [NSP] * 20  # 20 rounds, no end requested
    assert sim[0]["role"] == "Mara"  # most frequent speaker first
    assert rec["circumstance"]["speaking_characters_w_env"] == ["Mara", "Tom", "Environment"]
    assert set(rec["involved_character_profiles"]) == {"Mara", "Tom"}
    assert rec["involved_character_profiles"]["Mara"] == "A young keeper.\n\nMara keeps the lamp."
    reqs = fake_server.chat_requests()
    tom = [r for r in reqs if kind(r) == "actor" and actor_name(r) == "Tom"]
    assert tom and all(r["max_tokens"] == 512 for r in reqs)
    last = tom[-1]["messages"]
    assert last[1]["content"].startswith("===Conversation Start===\n\n")
    others = [m["content"] for m in last if m["role"] == "user"]
    own = [m["content"] for m in last if m["role"] == "assistant"]
    assert any("Mara: (steps forward)" in c for c in others)
    assert not any("[secret of Mara" in c for c in others)  # other characters' thoughts are hidden
    assert all("[secret of Tom" in c for c in own)          # one's own thoughts stay
    system = last[0]["content"]
    assert "within 60 words" in system and "THOUGHT-OF-TOM" not in system and "{retrieved_knowledge}" not in system
    mara_sys = next(r for r in tom[:0] + reqs if kind(r) == "actor" and actor_name(r) == "Mara")["messages"][0]
    assert "MOTIVE-OF-MARA" in mara_sys["content"] and "Tom is a smuggler." in mara_sys["content"]
    env = next(r for r in reqs if kind(r) == "env")
    assert "within 60 words" not in env["messages"][0]["content"]


def test_use_motivation_feeds_thought(make_llm, fake_server):
    fake_server.set_responder(responder(nsp=lambda b: "Next Speaker: <END CHAT>"))
    run(make_llm, fake_server, use_motivation=True)
    systems = {actor_name(r): r["messages"][0]["content"] for r in fake_server.chat_requests() if kind(r) == "actor"}
    assert "THOUGHT-OF-TOM" in systems.get("Tom", "THOUGHT-OF-TOM") and "MOTIVE-OF-MARA" in systems["Mara"]


def test_end_chat_only_from_round_5_with_seeded_fallback(make_llm, fake_server):
    fake_server.set_responder(responder(nsp=lambda b: "Reasoning: done.\nNext Speaker: <END CHAT>"))
    rec = run(make_llm, fake_server)
    turns = actor_turns(rec)
    assert len(turns) == 6  # rounds 0..5; the end is honoured at round index 5
    assert rec["simulation"][-1] == {"role": NSP, "content": END_CHAT}
    speakers = [m["role"] for m in turns]
    assert all(a != b for a, b in zip(speakers, speakers[1:]))  # fallback never repeats the current speaker
    assert set(speakers) <= {"Mara", "Tom", ENVIRONMENT}
    # The invalid prediction is fed back, followed by the NSP system prompt again.
    nsp_req = [r for r in fake_server.chat_requests() if kind(r) == "nsp"][-1]["messages"]
    assert any(m["role"] == "user" and m["content"].startswith(nsp_req[0]["content"]) for m in nsp_req[1:])
    again = run(make_llm, fake_server)
    assert [m["role"] for m in actor_turns(again)] == speakers  # same seed, same fallback draws


def test_unparseable_nsp_falls_back_from_sorted_candidates(make_llm, fake_server):
    fake_server.set_responder(responder(nsp=lambda b: "I am not sure who."))
    recs = {}
    for seed in (1, 2, 3):
        fake_server.reset()
        recs[seed] = [m["role"] for m in actor_turns(run(make_llm, fake_server, seed=seed))]
        assert len(recs[seed]) == 20
    assert len({tuple(v) for v in recs.values()}) > 1  # the seed matters


def test_continue_from_replays_reference(make_llm, fake_server):
    fake_server.set_responder(responder(nsp=lambda b: "Next Speaker: Mara"))
    rec = run(make_llm, fake_server, continue_from=3)
    turns = actor_turns(rec)
    assert [(m["role"], m["content"]) for m in turns[:3]] == [
        (u["character"], u["message"]) for u in ITEM["dialogues"][:3]]
    assert [m["content"] for m in rec["simulation"][1:6:2]] == ["Tom", "Environment", "Mara"]
    actor_calls = [r for r in fake_server.chat_requests() if kind(r) != "nsp"]
    assert len(actor_calls) == len(turns) - 3
    # The replayed lines reach the next agents with thoughts removed.
    first = actor_calls[0]["messages"]
    assert any("Tom: A traveller, lost." in m["content"] for m in first)
    assert not any("She must not know" in m["content"] for m in first if m["role"] == "user")


def test_llama_prefix_segment_and_repetition_repair(make_llm, fake_server):
    def actor(body):
        name = actor_name(body)
        other = "Tom" if name == "Mara" else "Mara"
        return f"{name}: (nods) " + "yes and no " * 12 + f"\n{other}: I answer for you."
    fake_server.set_responder(responder(actor=actor, nsp=lambda b: "Next Speaker: <END CHAT>"))
    rec = run(make_llm, fake_server, actor_model="llama-3-8b-instruct")
    for m in actor_turns(rec):
        if m["role"] != ENVIRONMENT:
            assert m["content"].startswith(m["role"] + ":") and "I answer for you" not in m["content"]
            assert m["content"].count("yes and no") < 12  # repetition cut
    reqs = fake_server.chat_requests()
    actor_sys = next(r for r in reqs if kind(r) == "actor")["messages"][0]["content"]
    assert 'Begin your reply with "' in actor_sys
    assert all('Begin your reply with' not in r["messages"][0]["content"] for r in reqs if kind(r) != "actor")


# ---- judging ----------------------------------------------------------------------------------
def _record(make_llm, fake_server):
    fake_server.set_responder(responder(nsp=lambda b: "Next Speaker: <END CHAT>"))
    return run(make_llm, fake_server)


def test_judge_scoring_and_validation(make_llm, fake_server):
    rec = _record(make_llm, fake_server)
    fake_server.reset()

    def judge(body):
        dim = [d for d in P.DIMENSIONS if f"on {d}," in body["messages"][0]["content"]][0]
        flaws = [{"instance": "a", "type": dim, "severity": 2}, {"instance": "b", "type": dim, "severity": "3"},
                 {"instance": "c", "type": dim}]
        if dim == "Storyline Quality":
            flaws = [{"instance": "d", "type": dim, "severity": 5}] * 6
        return "```json\n" + json.dumps({dim: {"flaws": flaws}}) + "\n```"
    fake_server.set_responder(responder(judge=judge))
    case = J.judge_case(make_llm(), rec, "gpt-4o")
    rounds = sum(1 for m in rec["simulation"] if m["role"] not in (NSP, ENVIRONMENT))
    # missing severity -> 1, "3" ignored: S = 3
    assert case["critique"]["Anthropomorphism"]["score"] == pytest.approx(min(100, 100 - 5 * (3 - 0.3 * rounds)))
    assert case["critique"]["Storyline Quality"]["score"] == pytest.approx(max(0, 100 - 5 * (30 - 0.3 * rounds)))
    assert case["score"] == pytest.approx(sum(case["critique"][d]["score"] for d in P.DIMENSIONS) / 4)
    assert list(case) == ["simulation", "simulation_str", "score", "critique"]
    assert all(m["role"] != NSP and "[secret" not in m["content"] for m in case["simulation"])
    reqs = fake_server.chat_requests()
    assert len(reqs) == 4 and all(r["model"] == "gpt-4o" for r in reqs)
    sys0 = reqs[0]["messages"][0]["content"]
    assert "The Salt Lamp" in sys0 and "Mara, Tom" in sys0 and "$" not in sys0
    assert "### Mara\n\nA young keeper." in sys0 and reqs[0]["messages"][1]["content"] == case["simulation_str"]
    fidelity = next(r for r in reqs if "on Character Fidelity," in r["messages"][0]["content"])
    assert "(Judge only the main characters: Mara, Tom.)" in fidelity["messages"][0]["content"]


def test_judge_failure_is_recorded_not_raised(make_llm, fake_server):
    rec = _record(make_llm, fake_server)
    fake_server.reset()
    # Keyed by another dimension: valid JSON, still rejected (the reference crashed on it).
    fake_server.set_responder(responder(judge=lambda b: json.dumps({"Anthropomorphism": {"flaws": []}})
                                        if "on Storyline Consistency," in b["messages"][0]["content"]
                                        else "I cannot judge this."))
    case = J.judge_case(make_llm(), rec, "gpt-4o")
    assert case["failed"] is True and case["score"] is None
    assert case["failures"][0]["dimension"] == "Storyline Consistency"
    assert "Anthropomorphism" in case["failures"][0]["fail_to_parse_response"]
    # 6 generations of the first dimension, then the case stops: the rest would be wasted calls.
    assert len(fake_server.chat_requests()) == 6
    scores, n_ok, n_failed = J.aggregate({"a": case})
    assert (n_ok, n_failed) == (0, 1)


def test_validator_rules():
    v = J.make_validator("Anthropomorphism")
    assert v({"Anthropomorphism": {"flaws": [{"severity": None}]}})["Anthropomorphism"]["flaws"][0]["severity"] == 1
    assert not v({"Anthropomorphism": {"flaws": []}, "Bogus": {"flaws": []}})
    assert not v({"Anthropomorphism": {"no_flaws": []}})
    assert not v([{"Anthropomorphism": {"flaws": []}}])
    assert v({"Anthropomorphism": {"flaws": []}, "Storyline Quality": {"flaws": []}})


# ---- retrieval --------------------------------------------------------------------------------
def test_split_text_sizes_and_overlap():
    text = "\n\n".join(f"Paragraph {i}. " + " ".join(f"w{i}_{j}" for j in range(12)) for i in range(40))
    chunks = R.split_text(text)
    assert len(chunks) > 3 and all(len(c) <= 1000 for c in chunks)
    assert any(chunks[i].split("\n\n")[-1] in chunks[i + 1] for i in range(len(chunks) - 1))  # 200-char overlap
    long_word = "x" * 2500
    assert [len(c) for c in R.split_text(long_word)] == [1000, 1000, 900]


def test_bm25_and_rag_format():
    docs = ["PLOT: the storm at sea\n", "PLOT: a quiet dinner at home\n", "PLOT: the lamp breaks in the storm\n"]
    r = R.Retriever("experience", docs, 2)
    out = r.rag("what happened in the storm?")
    assert out.startswith("====Historical Experience====\n\n")
    assert "Historical Experience 1\nPLOT: the storm at sea" in out and "Historical Experience 2\nPLOT: the lamp" in out
    one = R.Retriever("conversation", docs, 1).rag("dinner")
    assert one == "====Historical Conversation====\n\nPLOT: a quiet dinner at home\n"


def test_corpora_both_layouts():
    code = json.load(open(shared_path("final", "King Lear.json"), encoding="utf-8"))
    name = "King Lear"
    db = R.character_database(code, name)
    corp = R.build_corpora(db, name)
    assert corp["book"] and corp["experience"][0].startswith("PLOT: ") and corp["conversation"]
    assert any(f"{name}'s role: " in d for d in corp["experience"])
    assert corp["conversation"][0].startswith("Plot Background:\n")
    assert len(R.build_retrievers(db, name, "raw_text")) == 1
    hp = [f for f in os.listdir(os.path.dirname(shared_path("final", "King Lear.json"))) if f.startswith("Harry")][0]
    pub = json.load(open(shared_path("final", hp), encoding="utf-8"))
    name = max(pub["character_datasets"], key=lambda c: len(pub["character_datasets"][c]["plots"]))
    db = R.character_database(pub, name)
    assert db["detailed_plots"] and R.build_corpora(db, name)["book"] == []
    assert R.build_retrievers(db, name, "raw_text") == []  # no plot text: skipped, not a crash
    assert [r.corpus for r in R.build_retrievers(db, name, "expr3_conv1")] == ["experience", "conversation"]
    assert R.character_database(pub, "Nobody At All") is None


def test_simulation_with_retrieval_fills_placeholder(make_llm, fake_server, tmp_path):
    book = {"plots": [{"summary": "Mara saw a ship in the storm.", "text": "The storm came. Mara saw a ship.",
                       "key_characters": [{"name": "Mara", "experience": "She watched the ship sink."}],
                       "conversation": []}],
            "character_datasets": {"Mara": {"plots": [{"name": "Mara", "i_p": 0}], "conversations": [],
                                            "utterances": [], "profile": "p"}}}
    db = R.character_database(book, "Mara")
    fake_server.set_responder(responder(nsp=lambda b: "Next Speaker: <END CHAT>"))
    llm = make_llm(embedding_model="fake-embed")
    emb = R.Embedder(llm.settings)
    dbs = {"Mara": R.build_retrievers(db, "Mara", "expr1", emb), "Tom": []}
    simulate(llm, ITEM, opts(retrieval="expr1"), sample_rng(42, ITEM), dbs)
    reqs = fake_server.requests
    assert any(r["_path"].endswith("/embeddings") for r in reqs)
    actors = [r for r in fake_server.chat_requests() if kind(r) == "actor"]
    mara = [r["messages"][0]["content"] for r in actors if actor_name(r) == "Mara"]
    tom = [r["messages"][0]["content"] for r in actors if actor_name(r) == "Tom"]
    assert mara and all("<begin of background information>\n\n====Historical Experience====\n\nPLOT: Mara saw" in s
                        for s in mara)
    assert all("{retrieved_knowledge}" not in r["messages"][0]["content"] for r in fake_server.chat_requests())
    assert all("Relevant Background Information" not in s for s in tom)


def test_judge_endpoint_outage_stops_instead_of_failing_cases(make_llm, fake_server):
    from coser.errors import LLMUnavailable
    from tests.fakeserver import Fault

    rec = _record(make_llm, fake_server)
    fake_server.set_responder(lambda b: Fault.http(503))
    with pytest.raises(LLMUnavailable, match="503"):
        J.judge_case(make_llm(max_attempts=2), rec, "gpt-4o")


def test_prompt_options_wo_thought_and_coser_models(make_llm, fake_server):
    from coser.prompts import OUTPUT_FORMAT_THOUGHTLESS, OUTPUT_FORMAT_WITH_EXAMPLE

    fake_server.set_responder(responder(nsp=lambda b: "Next Speaker: <END CHAT>"))
    run(make_llm, fake_server, wo_thought=True)
    systems = [r["messages"][0]["content"] for r in fake_server.chat_requests() if kind(r) == "actor"]
    assert systems and all(OUTPUT_FORMAT_THOUGHTLESS in s for s in systems)
    fake_server.reset()
    run(make_llm, fake_server, actor_model="CoSER-Llama-3.1-8B")
    systems = [r["messages"][0]["content"] for r in fake_server.chat_requests() if kind(r) == "actor"]
    assert systems and not any(OUTPUT_FORMAT_WITH_EXAMPLE in s for s in systems)
    fake_server.reset()
    run(make_llm, fake_server, actor_model="claude-3-5-sonnet")
    first = next(r for r in fake_server.chat_requests() if kind(r) == "actor")["messages"]
    # Claude takes the system prompt as a user turn, joined to the conversation start by a blank line.
    assert first[0]["role"] == "user" and "\n\n===Conversation Start===" in first[0]["content"]
    assert OUTPUT_FORMAT_WITH_EXAMPLE in first[0]["content"]

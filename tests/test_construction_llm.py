"""Extraction and assembly through the real client against the fake server (in process)."""
import json

from data_construction import assemble as A
from data_construction import extract as X
from tests import construction_script as S
from tests.conftest import shared_path


def othello_text():
    with open(shared_path("src", "books_example.jsonl"), encoding="utf-8") as f:
        for line in f:
            b = json.loads(line)
            if b["title"] == "Othello":
                return b["content"]


def test_failed_chunks_are_recorded_with_raw_reply_and_the_run_continues(fake_server, make_llm, tmp_path):
    text = othello_text()
    chunks = [text[5000:9000], "XYZZY one " * 50 + "\n", text[9000:13000], "XYZZY two " * 50 + "\n"]

    def responder(body):
        if "XYZZY" in S.user_text(body) and "==Chunk" in S.user_text(body):
            return "Sorry, I cannot do that for this passage."
        if "json.loads" in S.user_text(body):      # the repair request
            return "still not json"
        return S.respond(body)

    fake_server.set_responder(responder)
    book = {"title": "Othello", "author": "W. S.", "content": text}
    result = X.extract_book(make_llm(), book, chunks, str(tmp_path), "gpt-4o")
    # Both failures kept (the reference kept only the last chunk's).
    assert result["fail_to_parse_responses"] == ["Sorry, I cannot do that for this passage."] * 2
    failed = [n for n in result["extraction_notes"] if n["kind"] == "failed"]
    assert [n["i_chunk"] for n in failed] == [1, 3] and all(n["attempts"] == 6 for n in failed)
    assert {p["i_chunk"] for p in result["plots"]} >= {0, 2}
    # 6 generations per failed chunk (0..5), never more.
    reqs = fake_server.chat_requests()
    assert sum("XYZZY" in S.user_text(b) for b in reqs) == 2 * 6
    temps = [b["temperature"] for b in reqs if "XYZZY one" in S.user_text(b) and "==Chunk" in S.user_text(b)]
    assert temps == [0, 1, 1, 1, 1, 1]
    with open(X.extracted_path(str(tmp_path), "Othello"), encoding="utf-8") as f:
        assert json.load(f) == result


def test_copyright_refusal_gets_the_two_message_workaround(fake_server, make_llm, tmp_path):
    text = othello_text()[5000:9000]
    fake_server.queue("I can't reproduce copyright material from this book, sorry.")
    fake_server.set_responder(S.respond)
    book = {"title": "Othello", "author": "W. S.", "content": text}
    result = X.extract_book(make_llm(), book, [text], str(tmp_path), "gpt-4o")
    assert result["plots"] and result["fail_to_parse_responses"] == []
    second = fake_server.chat_requests()[1]
    assert [m["role"] for m in second["messages"]] == ["user", "assistant", "user"]
    assert second["temperature"] == 1


def test_unknown_state_is_kept_as_finished_and_recorded(fake_server, make_llm, tmp_path):
    text = othello_text()[5000:9000]

    def responder(body):
        reply = json.loads(S.respond(body))
        for p in reply["plots"]:
            p["state"] = "complete"
        reply["next_chunk_start"] = None
        return json.dumps(reply)

    fake_server.set_responder(responder)
    result = X.extract_book(make_llm(), {"title": "T", "author": "A", "content": text}, [text], str(tmp_path),
                            "gpt-4o")
    assert result["plots"] and all(p["state"] == "finished" for p in result["plots"])
    assert any(n["kind"] == "unknown_state" for n in result["extraction_notes"])


def _extracted_for_assembly():
    conv = {"scenario": "s", "topic": "t",
            "key_characters": [{"name": "Iago", "motivation": "m"}, {"character": "Roderigo", "motivation": "m"}],
            "dialogues": [{"character": "Iago", "message": "[x] Hello there."},
                          {"name": "Roderigo", "message": "[y] Hi."},
                          {"character": "Environment", "message": "Wind."}]}

    def plot(i, kcs):
        return {"text": f"text {i}", "summary": f"summary {i}", "prominence": 5,
                "key_characters": kcs, "chapter": "I", "conversation": [json.loads(json.dumps(conv))],
                "state": "finished", "i_chunk": 0}

    good = [{"name": "Iago", "description": "d", "experience": "e"},
            {"name": "Roderigo", "description": "d", "experience": "e"}]
    plots = [plot(i, json.loads(json.dumps(good))) for i in range(11)]
    plots[3]["key_characters"].append({"name": "Iago", "description": "dup"})      # filtered: duplicate name
    plots[5]["conversation"] = None
    plots[6]["conversation"] = plots[6]["conversation"][0]                          # a dict, not a list
    return {"chapter_beginnings": [], "plots": plots, "fail_to_parse_responses": ["x"]}


def test_assembly_filters_aligns_indices_and_parses_profiles(fake_server, make_llm, tmp_path):
    profile_calls = {}

    def responder(body):
        k = S.kind(body)
        if k == "names":
            return json.dumps({"named_characters": ["Iago", "Roderigo"],
                               "to_official_name": {"Iago": "Iago", "Roderigo": "Roderigo",
                                                    "Environment": "Impersonal"}})
        if k == "profile":
            name = S.user_text(body).split("profile of ", 1)[1].split(" from", 1)[0]
            n = profile_calls[name] = profile_calls.get(name, 0) + 1
            if name == "Roderigo":
                return "I apologize" if n == 1 else "===Profile===\nI apologize, I cannot."
            return "no marker yet" if n == 1 else "===Profile===\n  Iago is cunning.  "
        return S.respond(body)

    fake_server.set_responder(responder)
    final, stats = A.assemble_book(make_llm(), "Othello", _extracted_for_assembly(), str(tmp_path), "gpt-4o",
                                   "gpt-4o-mini", num_workers=4)
    plots = final["plots"]
    assert len(plots) == 10 and all(p["summary"] != "summary 3" for p in plots)    # the filtered list is saved
    assert final["split_plot_index"] == 9
    assert plots[5 - 1]["conversation"] == [] and len(plots[6 - 1]["conversation"]) == 1
    assert set(final["character_datasets"]) == {"Iago", "Roderigo"}
    iago = final["character_datasets"]["Iago"]
    assert iago["profile"] == "Iago is cunning." and final["character_datasets"]["Roderigo"]["profile"] == ""
    assert [e["i_p"] for e in iago["plots"]] == list(range(10))
    for e in iago["plots"]:
        assert plots[e["i_p"]]["key_characters"][0] is e     # the same object, back-reference added in place
    rod_utts = final["character_datasets"]["Roderigo"]["utterances"]
    assert rod_utts and all(u["character"] == "Roderigo" for u in rod_utts)     # 'name' was renamed
    assert all(c["scenario"].startswith("An enriched") for p in plots for c in p["conversation"])
    assert stats == {"enhance_failed": 0, "names_failed": 0, "empty_profiles": 1}
    # Profiles see only the training split (i_p < 9).
    iago_prompt = next(S.user_text(b) for b in fake_server.chat_requests()
                       if S.kind(b) == "profile" and "profile of Iago" in S.user_text(b))
    assert "summary 10" not in iago_prompt and "summary 9" in iago_prompt
    assert "{{" not in iago_prompt


def test_assembly_resumes_from_its_checkpoint(fake_server, make_llm, tmp_path):
    fake_server.set_responder(S.respond)
    extracted = _extracted_for_assembly()
    first, _ = A.assemble_book(make_llm(use_cache=False), "B", extracted, str(tmp_path / "a"), "gpt-4o", "gpt-4o")
    n_calls = len(fake_server.chat_requests())
    # Simulate a kill after half the enhancement calls: keep a checkpoint with only those.
    fake_server.reset()
    llm = make_llm(use_cache=False)
    orig = A.enhance_conversation
    done = []

    def flaky(*a, **k):
        if len(done) == 4:
            raise KeyboardInterrupt
        done.append(1)
        return orig(*a, **k)

    A.enhance_conversation = flaky
    try:
        try:
            A.assemble_book(llm, "B", extracted, str(tmp_path / "b"), "gpt-4o", "gpt-4o")
        except KeyboardInterrupt:
            pass
    finally:
        A.enhance_conversation = orig
    assert len(fake_server.chat_requests()) == 4
    second, _ = A.assemble_book(llm, "B", extracted, str(tmp_path / "b"), "gpt-4o", "gpt-4o")
    assert len(fake_server.chat_requests()) == n_calls       # 4 before the kill + the rest, none twice
    assert second == first


def test_assembly_of_the_published_extracted_file_matches_the_published_layout(fake_server, make_llm, tmp_path):
    with open(shared_path("extracted", "Othello.json"), encoding="utf-8") as f:
        extracted = json.load(f)
    with open(shared_path("final", "Othello.json"), encoding="utf-8") as f:
        published = json.load(f)
    fake_server.set_responder(S.respond)
    final, stats = A.assemble_book(make_llm(), "Othello", extracted, str(tmp_path), "gpt-4o", "gpt-4o",
                                   num_workers=8)
    assert list(final) == list(published)
    assert final["split_plot_index"] == published["split_plot_index"]
    assert len(final["plots"]) == len(published["plots"])
    for mine, theirs in zip(final["plots"], published["plots"]):
        assert set(theirs) <= set(mine) and mine["text"] == theirs["text"]
        for c_mine, c_theirs in zip(mine["conversation"], theirs["conversation"]):
            assert [u.get("i_u") for u in c_mine["dialogues"]] == [u.get("i_u") for u in c_theirs["dialogues"]] \
                or len(c_mine["dialogues"]) == len(c_theirs["dialogues"])
    for d in final["character_datasets"].values():
        assert list(d) == list(next(iter(published["character_datasets"].values())))
    assert stats["enhance_failed"] == 0

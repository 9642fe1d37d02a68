"""chat.py building blocks: personas from both book layouts, test items and cards; thought hiding; the session."""
import io
import json
import random

import pytest

from coser.chatsession import ChatSession, ReplyPrinter, ThoughtFilter, prefix_speaker, run
from coser.errors import InputError
from coser.persona import (CONCISE_RULE, build_book_persona, build_test_persona, card_persona, find_character,
                           raw_persona, read_card, to_card)
from coser.prompts import CONVERSATION_START
from coser.text import remove_inner_thoughts
from tests.conftest import shared_path


def final_dir():
    return shared_path("final")


# ---- personas -----------------------------------------------------------------------------------
def test_book_persona_code_layout_is_the_gca_actor_prompt():
    p = build_book_persona(final_dir(), "Iago", model="local")
    book = json.load(open(shared_path("final", "Othello.json"), encoding="utf-8"))
    entry = book["character_datasets"]["Iago"]
    first = entry["conversations"][0]
    scene = book["plots"][first["i_p"]]["conversation"][first["i_c"]]
    assert p.book == "Othello" and p.source == "book"
    assert p.prompt.startswith("You are playing Iago, a character from Othello.\n\n===Iago's Profile===\n")
    # description (from the scene's plot entry) first, then the profile, as GCA's involved profile
    desc = next(x["description"] for x in entry["plots"] if x["i_p"] == first["i_p"])
    assert f"===Iago's Profile===\n{desc}\n\n{entry['profile'].strip()}" in p.prompt
    assert f"===Current Scenario===\n{scene['scenario']}\n\n" in p.prompt
    assert f"===Your Inner Thoughts===\n{first['motivation']}\n\n" in p.prompt
    assert "===Requirements===" in p.prompt and "[" in p.prompt.split("===Requirements===")[1]
    sent = p.system_prompt("local")
    assert sent == p.prompt.strip("\n") + "\n\n" + CONCISE_RULE + "\n\n"
    assert "Begin your reply with \"Iago: \"" in p.system_prompt("llama-3.1-8b")
    # the worked example is left out for CoSER models (GCA: 'coser' not in the actor name)
    assert len(build_book_persona(final_dir(), "Iago", model="CoSER-Llama-3.1-8B").prompt) < len(p.prompt)


def test_book_persona_published_layout_reads_thought_and_summary():
    p = build_book_persona(final_dir(), "dumbledore", book="Harry Potter and the Chamber of Secrets (Harry Potter, #2)")
    assert p.name == "Albus Dumbledore"
    assert "===Your Inner Thoughts===\nI must navigate this delicate situation carefully." in p.prompt
    assert p.prompt.count("The Headmaster of Hogwarts.") == 1


def test_scenario_override_drops_book_motivation_and_user_role_profile_is_included():
    p = build_book_persona(final_dir(), "Iago", scenario="A tavern in Cyprus at noon.", user_role="Cassio")
    assert "===Current Scenario===\nA tavern in Cyprus at noon.\n\n" in p.prompt
    assert "===Your Inner Thoughts===" not in p.prompt
    assert "===Information about the other Characters===" in p.prompt and "Cassio: " in p.prompt
    # an unknown user role is simply a stranger: no profile block
    q = build_book_persona(final_dir(), "Iago", scenario="x", user_role="A Traveller")
    assert "===Information about the other Characters===" not in q.prompt


def test_unknown_character_lists_close_matches():
    with pytest.raises(InputError) as e:
        find_character(final_dir(), "Iagoo")
    assert "'Iagoo' not found" in str(e.value) and "Iago" in str(e.value).split("close matches:")[1]
    assert "\n" not in str(e.value)


def test_name_in_several_books_asks_for_book_and_book_is_matched():
    with pytest.raises(InputError) as e:
        find_character(final_dir(), "Harry Potter")
    assert "--book" in str(e.value) and "Chamber of Secrets" in str(e.value)
    book, _, name = find_character(final_dir(), "Harry Potter", book="Goblet of Fire")
    assert book.startswith("Harry Potter and the Goblet of Fire") and name == "Harry Potter"
    with pytest.raises(InputError, match="--book 'Gobblet' not found"):
        find_character(final_dir(), "Harry Potter", book="Gobblet")


def test_missing_book_data_is_named(tmp_path):
    missing = str(tmp_path / "nope")
    with pytest.raises(InputError, match="nope: --book_data not found"):
        find_character(missing, "Iago")
    bad = tmp_path / "b.json"
    bad.write_text(json.dumps({"plots": []}))
    with pytest.raises(InputError, match="b.json: field 'character_datasets' missing"):
        find_character(str(bad), "Iago")


def test_test_persona_code_and_published_sets():
    p = build_test_persona(shared_path("test", "example_test_set.json"), 2, "iago")
    item = json.load(open(shared_path("test", "example_test_set.json"), encoding="utf-8"))[2]
    assert p.name == "Iago" and p.scenario == item["scenario"]
    assert "===Information about the other Characters===" in p.prompt and "Othello: " in p.prompt
    q = build_test_persona(shared_path("test", "test_set.json"), 0, "Elizabeth Bennet")
    assert q.book == "Pride and Prejudice" and "===Your Inner Thoughts===" in q.prompt  # published 'thought'
    with pytest.raises(InputError, match="choose from: Mr Bennet, Elizabeth Bennet"):
        build_test_persona(shared_path("test", "test_set.json"), 0, None)
    with pytest.raises(InputError, match=r"--sample 999 out of range"):
        build_test_persona(shared_path("test", "test_set.json"), 999, "x")


def test_legacy_card_plays_profile_once_with_checked_greeting(tmp_path):
    p = build_book_persona(final_dir(), "Iago")
    card = to_card(p)
    assert card["spec"] == "chara_card_v2" and card["spec_version"] == "2.0"
    d = card["data"]
    # the book's first "Iago" line ("That thou, Iago, ...") belongs to Roderigo in the play: not a greeting
    assert not d["first_mes"].startswith("Tush, never tell me") and "[" not in d["first_mes"]
    assert d["mes_example"].startswith("<START>\n") and "{{char}}: [" in d["mes_example"]
    path = tmp_path / "iago.json"
    path.write_text(json.dumps(card), encoding="utf-8")
    back = card_persona(str(path))
    assert back.name == "Iago" and back.greet and back.first_mes == d["first_mes"]
    prompt = back.system_prompt("local")
    assert prompt.count(p.profile.split("\n")[-1][:200]) == 1 and "===Current Scenario===" in prompt


def test_card_without_system_prompt_and_macros(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"spec": "chara_card_v2", "spec_version": "2.0", "data": {
        "name": "Mara", "description": "{{char}} keeps the lamp.", "personality": "wary",
        "scenario": "{{user}} knocks at night.", "first_mes": "Who is there?", "mes_example": "",
        "system_prompt": ""}}))
    p = card_persona(str(path), user_role="Tom")
    assert p.prompt.startswith("You are playing Mara.\n\n===Mara's Profile===\nMara keeps the lamp.\n\nwary")
    assert "===Current Scenario===\nTom knocks at night." in p.prompt and "===Requirements===" in p.prompt


def test_png_card_and_card_errors(tmp_path):
    import base64
    import struct
    import zlib

    payload = base64.b64encode(json.dumps({"spec": "chara_card_v2", "data": {"name": "Pip"}}).encode())
    body = b"chara\0" + payload
    chunk = struct.pack(">I4s", len(body), b"tEXt") + body + struct.pack(">I", zlib.crc32(b"tEXt" + body))
    png = tmp_path / "pip.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk + struct.pack(">I4sI", 0, b"IEND", 0))
    assert read_card(str(png))["name"] == "Pip"
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"spec": "something_else", "data": {"name": "x"}}))
    with pytest.raises(InputError, match="bad.json: field 'spec'"):
        read_card(str(bad))
    bad.write_text(json.dumps({"spec": "chara_card_v2", "data": {"description": "x"}}))
    with pytest.raises(InputError, match="bad.json: field 'data.name' missing"):
        read_card(str(bad))
    with pytest.raises(InputError, match="gone.json: --card file not found"):
        read_card(str(tmp_path / "gone.json"))


# ---- thought hiding and the reply printer -----------------------------------------------------
REPLIES = [
    "[He is lying.] (steps closer) Who goes there? [Careful now.] Speak!",
    "Iago: [Patience.] I am your friend, sir.",
    "A [multi\nline] bracket is not a thought, [but this one is] gone.",
    "  Iago：(bows) At your service.",
    "Plain words only.",
]


def _stream(text, hide, name="Iago", seed=0):
    out = []
    printer = ReplyPrinter(name, out.append, hide)
    rng = random.Random(seed)
    i = 0
    while i < len(text):
        n = rng.randint(1, 5)
        printer.feed(text[i:i + n])
        i += n
    printer.close()
    return "".join(out)


@pytest.mark.parametrize("text", REPLIES)
def test_streamed_hiding_matches_batch_removal(text):
    for seed in range(5):
        shown = _stream(text, hide=True, seed=seed)
        expected = remove_inner_thoughts(text)
        for label in ("Iago:", "Iago："):
            if expected.startswith(label):
                expected = expected[len(label):].strip()
        assert " ".join(shown.split()) == " ".join(expected.split())


def test_printer_keeps_thoughts_unless_hidden_and_drops_duplicate_label():
    assert _stream("Iago: [Patience.] I am your friend.", hide=False) == "[Patience.] I am your friend."
    assert _stream("Iagonia is a place.", hide=False) == "Iagonia is a place."
    assert _stream("Ia", hide=False) == "Ia"
    f = ThoughtFilter()
    assert f.feed("a [b") == "a " and f.flush() == "[b"


def test_prefix_speaker_as_gca():
    assert prefix_speaker("Hello", "Cassio") == "Cassio: Hello"
    assert prefix_speaker("Cassio: Hello", "Cassio") == "Cassio: Hello"
    assert prefix_speaker("(bows)\nCassio：Hi", "Cassio") == "(bows)\nCassio：Hi"


# ---- the session over HTTP --------------------------------------------------------------------
def test_session_history_and_requests(fake_server, make_llm):
    fake_server.queue("[Hm.] Who asks?", "Iago: (smiles) A friend.")
    llm = make_llm()
    p = build_book_persona(final_dir(), "Iago", user_role="Roderigo")
    s = ChatSession(llm, "gpt-4o-mini", p, user_role="Roderigo")
    assert s.ask("Who goes there?") == "[Hm.] Who asks?"
    s.ask("Roderigo: It is I.")
    reqs = fake_server.chat_requests()
    assert [r["temperature"] for r in reqs] == [0.7, 0.7] and reqs[0]["max_tokens"] == 128
    msgs = reqs[1]["messages"]
    assert msgs[0] == {"role": "system", "content": p.system_prompt("gpt-4o-mini")}
    assert msgs[1] == {"role": "user", "content": CONVERSATION_START + "\n\nRoderigo: Who goes there?"}
    assert msgs[2] == {"role": "assistant", "content": "[Hm.] Who asks?"}  # raw, thoughts kept (GCA)
    assert msgs[3] == {"role": "user", "content": "Roderigo: It is I."}
    assert s.turns[-1]["reply"] == "Iago: (smiles) A friend."
    # the same history again is answered from the cache: no new request
    s.reset()
    assert s.ask("Who goes there?") == "[Hm.] Who asks?" and len(fake_server.chat_requests()) == 2


def test_empty_reply_is_reasked_and_failed_turn_leaves_no_history(fake_server, make_llm):
    from tests.fakeserver import Fault

    fake_server.queue("", "Speak up.")
    s = ChatSession(make_llm(), "gpt-4o-mini", raw_persona("You are a guard.", "system_prompt", "Guard"))
    assert s.ask("Hello") == "Speak up."
    assert [r["messages"] for r in fake_server.chat_requests()][0] == [
        {"role": "system", "content": "You are a guard."}, {"role": "user", "content": "Hello"}]
    fake_server.set_responder(lambda body: Fault.http(401))
    before = list(s.messages)
    with pytest.raises(Exception, match="authentication failed"):
        s.ask("Again")
    assert s.messages == before


def test_run_commands(fake_server, make_llm, tmp_path):
    fake_server.set_responder(lambda body: f"Reply {len(body['messages'])}")
    s = ChatSession(make_llm(), "gpt-4o-mini", raw_persona("You are a guard.", "system_prompt", "Guard"))
    lines = iter(["Hi", "", "/bogus", "/save mine", "/save ../escape.json", "/reset", "Again", "/exit", "never"])
    out, err = io.StringIO(), io.StringIO()
    code = run(s, lambda prompt: next(lines), out=out, err=err, interactive=False, out_dir=str(tmp_path / "chat"))
    assert code == 0
    assert out.getvalue() == "Guard: Reply 2\nGuard: Reply 2\n"
    assert "unknown command /bogus" in err.getvalue() and "(conversation reset" in err.getvalue()
    assert "error: /save ../escape.json: outside the transcript folder" in err.getvalue()
    assert not (tmp_path / "escape.json").exists()
    copy = json.loads((tmp_path / "chat" / "mine.json").read_text(encoding="utf-8"))
    assert [t["user"] for t in copy["turns"]] == ["Hi"] and copy["model"] == "gpt-4o-mini"
    # the final save does not follow /save: its own file, with the whole session, the reset included
    final = [f for f in (tmp_path / "chat").glob("*_Guard.json")]
    assert len(final) == 1
    saved = json.loads(final[0].read_text(encoding="utf-8"))
    assert [t["user"] for t in saved["turns"]] == ["Again"] and [t["user"] for t in saved["earlier"][0]] == ["Hi"]
    assert saved["settings"]["temperature"] == 0.7 and saved["usage"]["totals"]["calls"] == 2
    assert [e["event"] for e in saved["events"]] == ["reset"]


def test_run_max_turns_eof_and_ctrl_c(fake_server, make_llm, tmp_path):
    fake_server.set_responder(lambda body: "ok")
    s = ChatSession(make_llm(), "gpt-4o-mini", raw_persona("You are a guard.", "typed"))
    lines = iter(["a", "b", "c"])
    run(s, lambda p: next(lines), out=io.StringIO(), err=io.StringIO(), interactive=False, max_turns=2,
        out_dir=str(tmp_path))
    assert len(s.turns) == 2 and next(lines) == "c"
    files = list(tmp_path.glob("*_Character.json"))
    assert len(files) == 1

    def interrupt(prompt):
        raise KeyboardInterrupt

    s2 = ChatSession(make_llm(), "gpt-4o-mini", raw_persona("You are a guard.", "typed"))
    assert run(s2, interrupt, out=io.StringIO(), err=io.StringIO(), out_dir=str(tmp_path / "x")) == 0
    assert not (tmp_path / "x").exists()  # nothing said, nothing saved


def test_stale_back_reference_is_skipped_and_no_scene_falls_back(tmp_path):
    conv = lambda who, scen: {"scenario": scen, "topic": "t", "key_characters": [{"name": who, "motivation": "m"}],  # noqa: E731
                              "dialogues": [{"character": who, "message": "[x] Hello."}]}
    book = {"plots": [{"summary": "s0", "conversation": [conv("Tom", "Tom alone.")]},
                      {"summary": "s1", "conversation": [conv("Mara", "Lamp room.")]}],
            "character_datasets": {
                "Mara": {"plots": [{"name": "Mara", "description": "A keeper.", "experience": "e", "i_p": 1}],
                         "conversations": [{"name": "Mara", "motivation": "stale", "i_p": 0, "i_c": 0},
                                           {"name": "Mara", "motivation": "Afraid.", "i_p": 1, "i_c": 0}],
                         "utterances": [], "profile": "Mara keeps the lamp."},
                "Tom": {"plots": [], "conversations": [], "utterances": [], "profile": "Tom."}},
            "split_plot_index": 1}
    path = tmp_path / "The Salt Lamp.json"
    path.write_text(json.dumps(book), encoding="utf-8")
    p = build_book_persona(str(path), "Mara")
    assert p.scenario == "Lamp room." and "===Your Inner Thoughts===\nAfraid." in p.prompt
    q = build_book_persona(str(tmp_path), "tom", user_role="Mara")
    assert q.scenario == "Tom is approached by Mara, who wants to talk." and "Mara: A keeper." in q.prompt


def test_session_stop_from_another_thread_keeps_the_partial_reply(fake_server, make_llm):
    """The terminal-free API (the web app's): stop() ends a streaming reply; /retry asks the next generation."""
    from tests.fakeserver import Fault

    fake_server.queue(Fault.slow_stream("one two three four five six", 30))
    fake_server.set_responder(lambda body: "A fresh reply.")
    s = ChatSession(make_llm(), "gpt-4o-mini", raw_persona("You are a guard.", "system_prompt", "Guard"))
    seen = []

    def on_token(piece):
        seen.append(piece)
        s.stop()  # e.g. a Stop button pressed while the first pieces show

    turn = s.send("Hello", on_token=on_token)
    assert turn["status"] == "stopped" and turn["reply"] == "".join(seen) and turn["reply"].startswith("one")
    turn = s.retry(on_token=lambda piece: None)
    assert [r["status"] for r in turn["replies"]] == ["stopped", "stop"] and turn["reply"] == "A fresh reply."
    assert [r["nth"] for r in turn["replies"]] == [0, 1]
    assert s.alt(1)["reply"].startswith("one") and s.messages[-1]["content"].startswith("one")
    assert s.undo()["user"] == "Hello" and len(s.messages) == 1 and s.dropped[0]["user"] == "Hello"
    with pytest.raises(InputError, match="nothing to retry"):
        s.retry()
    rec = s.record()
    back = ChatSession.from_transcript(make_llm(), json.loads(json.dumps(rec)), "t.json")
    assert back.dropped == s.dropped and back.messages == s.messages and back.resumed_from == ["t.json"]

"""coser.text: inner-thought removal, NSP parsing, speaker prefixes, segments, repetition repair."""
from coser.text import (add_speaker_name, append_message, extract_nsp, fix_repetition, own_segment, parse_nsp,
                        remove_inner_thoughts)


def test_remove_inner_thoughts_construction_and_eval():
    text = "[I must stay calm.] (raises the lamp) Who is there?\n\n\n  [Fear.] Answer me!  "
    assert remove_inner_thoughts(text) == "(raises the lamp) Who is there?\nAnswer me!"
    # Multi-line brackets are not thoughts (single-line, non-greedy rule).
    assert remove_inner_thoughts("[a\nb] c") == "[a\nb] c"
    think = "<role_thinking>plan\nmore</role_thinking>Hello [x] there"
    assert remove_inner_thoughts(think, eval_mode=True) == "Hello  there"
    assert "<role_thinking>" in remove_inner_thoughts(think)
    assert remove_inner_thoughts("<system thinking>a</system thinking>ok", eval_mode=True) == "ok"


def test_extract_nsp_forms():
    assert extract_nsp("1. Reasoning: he was asked.\n2. Next Speaker: King Lear") == "King Lear"
    assert extract_nsp("**Next Speaker:** Fool.") == "Fool"
    assert extract_nsp("## Next Speaker - Environment\nmore") == "Environment"
    assert extract_nsp("The next speaker is *Iago*!") == "Iago"
    assert extract_nsp("Next speaker: Iago\n...\nNEXT SPEAKER: Othello.\"") == "Othello"  # last one wins
    assert extract_nsp("Next Speaker: <END CHAT>") == "<END CHAT>"
    assert extract_nsp("Next Speaker: \n") is None
    assert extract_nsp("no prediction here") is None


def test_parse_nsp_fallbacks():
    assert parse_nsp("Reasoning: x\nNext Speaker: Tom") == "Tom"
    assert parse_nsp("Tom: because he was asked") == "Tom"
    assert parse_nsp("Environment") == "Environment"
    assert parse_nsp("") == ""


def test_add_speaker_name():
    assert add_speaker_name("(bows) Sire.", "Kent") == "Kent: (bows) Sire."
    assert add_speaker_name("Kent: Sire.", "Kent") == "Kent: Sire."
    assert add_speaker_name("(bows)\n  Kent：Sire.", "Kent") == "(bows)\n  Kent：Sire."
    assert add_speaker_name("Kenton: hi", "Kent") == "Kent: Kenton: hi"


def test_own_segment():
    reply = "Lear: Speak.\nstill Lear\nFool: Nuncle!\nmore fool\nLear: Again."
    assert own_segment(reply, "Fool") == "Fool: Nuncle!\nmore fool"
    assert own_segment(reply, "Lear") == "Lear: Speak.\nstill Lear"
    # Own name never found: the whole reply is kept (the reference returned '').
    assert own_segment("(nods) Yes.", "Kent") == "(nods) Yes."


def test_fix_repetition_rules():
    assert fix_repetition("A perfectly ordinary reply, nothing repeated.") is None
    assert fix_repetition("a" * 150 + " ok") == "a" * 20 + " ok."
    looped = "I love you. " * 10
    fixed = fix_repetition(looped)
    assert fixed is not None and fixed.count("love") < 10 and fixed.endswith(".")
    cjk = fix_repetition("我爱你" * 12)
    assert cjk is not None and cjk.endswith("。") and len(cjk) < 36
    # A long n-gram repeated later (not back to back) is cut at its second occurrence.
    phrase = "the king walked slowly into the great hall and looked at every face there with open suspicion"
    text = f"{phrase}. Then something else happened entirely. {phrase}."
    out = fix_repetition(text)
    assert out is not None and out.count("suspicion") == 1 and "something else" in out


def test_append_message_joins_same_role_and_ignores_empty():
    history = [{"role": "system", "content": "sys"}]
    append_message(history, "user", "first")
    append_message(history, "user", "second")
    append_message(history, "assistant", "")
    append_message(history, "assistant", "reply")
    assert history == [{"role": "system", "content": "sys"},
                       {"role": "user", "content": "first\n\nsecond"},
                       {"role": "assistant", "content": "reply"}]
    fresh = []
    append_message(fresh, "user", "hi")
    assert fresh == [{"role": "user", "content": "hi"}]

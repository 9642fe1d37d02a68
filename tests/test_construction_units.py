"""Construction logic without a network: anchoring, carry-over, parsing, merging, names, grounding."""
import pytest

from data_construction import assemble as A
from data_construction import extract as X

CHUNK = ("IAGO. Awake! what ho, Brabantio! thieves! thieves!\n"
         "Look to your house, your daughter, and your bags!\n"
         "BRABANTIO. What is the reason of this terrible summons?\n"
         "What is the matter there?\n"
         "RODERIGO. Signior, is all your family within?\n"
         "IAGO. Are your doors lock'd?\n"
         "BRABANTIO. Why, wherefore ask you this?\n"
         "Look to your house, your daughter, and your bags!\n"
         "IAGO. Zounds, sir, you're robb'd.\n")


# ---- anchoring ---------------------------------------------------------------------------
def test_sentence_anchor_threshold_and_first_best():
    assert X.find_best_match_sentence(CHUNK, "What is the reason of this terrible summons?") is not None
    got = X.find_best_match_sentence(CHUNK, "What is the reason of this terrible summons")
    assert got == "What is the reason of this terrible summons?"
    assert X.find_best_match_sentence(CHUNK, "Completely unrelated words about the sea") is None
    assert X.find_best_match_sentence(CHUNK, None) is None
    assert X.find_best_match_sentence(CHUNK, "None") is None
    # Two identical sentences: the first one wins (ties keep the earlier).
    s = X.find_best_match_sentence(CHUNK, "Look to your house, your daughter, and your bags!")
    assert s == "Look to your house, your daughter, and your bags!"


def test_sentence_splitting_consumes_following_whitespace():
    assert X.split_sentences("A b. C d!  E f?\nG") == ["A b.", "C d!", "E f?", "", "G"]  # reference re.split with \\s* leaves an empty piece after a newline


def test_passage_match_threshold_and_ties_go_later():
    target = "Iago persuades Roderigo to wake Brabantio with news of the marriage"
    cands = ["A storm wrecks the Turkish fleet near Cyprus", target, target]
    assert X.find_best_match_passage(cands, target) == 2
    assert X.find_best_match_passage(cands[:1], target) == -1
    assert X.find_best_match_passage(["", ""], "") == -1     # empty unions score 0


def test_carry_over_drops_twenty_percent_then_the_partial_line():
    chunk = "intro line\n0123456789\nabcdefghij\nklmnopqrst"
    start = "0123456789"
    remainder = chunk[chunk.index(start):]
    cut = remainder[int(len(remainder) * 0.2):]
    assert X.carry_over(chunk, start) == cut[cut.index("\n") + 1:] == "abcdefghij\nklmnopqrst"
    assert X.carry_over("no newline here at all", "no newline") == "no newline here at all"[4:]


# ---- parse_response ------------------------------------------------------------------------
def plot(first, last, state="finished", summary="s"):
    return {"chapter_title": "Act I", "first_sentence": first, "last_sentence": last, "prominence": 50,
            "summary": summary, "key_characters": None, "conversation": None, "state": state}


def test_parse_full_reply_with_carry_over():
    reply = {"chapter_beginnings": [{"beginning_sentence": "ACT I"}],
             "plots": [plot("Look to your house, your daughter, and your bags", "What is the matter there?")],
             "next_chunk_start": "Signior, is all your family within?"}
    beginnings, plots, remaining = X.parse_response(reply, CHUNK)
    assert beginnings == [{"beginning_sentence": "ACT I"}]
    assert plots[0]["text"] == CHUNK[CHUNK.index("Look to"): CHUNK.index("there?") + len("there?")]
    assert plots[0]["key_characters"] == [] and plots[0]["conversation"] == []     # None -> []
    assert set(plots[0]) == {"text", "summary", "prominence", "key_characters", "chapter", "conversation", "state"}
    assert remaining and CHUNK.endswith(remaining)


def test_single_plot_dict_and_bare_list_are_accepted():
    one = plot("Awake! what ho, Brabantio! thieves! thieves!", "Are your doors lock'd?")
    for reply in (one, [one]):
        _, plots, remaining = X.parse_response(reply, CHUNK)
        assert len(plots) == 1 and remaining == ""
    with pytest.raises(ValueError):
        X.parse_response({"no": "plots"}, CHUNK)


def test_repeated_last_sentence_is_searched_after_the_first():
    reply = plot("Why, wherefore ask you this?", "Look to your house, your daughter, and your bags!")
    _, plots, _ = X.parse_response(reply, CHUNK)
    text = plots[0]["text"]
    assert text.startswith("Why, wherefore ask you this?")
    assert text.endswith("Look to your house, your daughter, and your bags!")


def test_unanchorable_sentences_keep_the_plot_with_best_effort_text():
    notes = []
    reply = {"plots": [plot("Look to your house, your daughter, and your bags!", "What is the matter there?"),
                       plot("Nothing like this exists in the text at all", "Neither does this one, truly")],
             "next_chunk_start": "A sentence that is nowhere to be found in it"}
    _, plots, remaining = X.parse_response(reply, CHUNK, notes)
    assert len(plots) == 2
    assert plots[1]["text"] == CHUNK[CHUNK.index("there?") + len("there?"):]   # from the previous end
    assert remaining == ""
    kinds = [n["kind"] for n in notes]
    assert kinds == ["next_chunk_start_unanchored", "plot_sentence_unanchored"]


# ---- merging truncated plots ---------------------------------------------------------------
def test_merge_truncated_plot_joins_text_and_conversations():
    summary = "Iago and Roderigo wake Brabantio at night to tell him his daughter has fled"
    old = {"text": "OLD TEXT ", "summary": summary, "state": "truncated",
           "conversation": [{"scenario": "Night street outside Brabantio's house in Venice", "dialogues": ["old"]},
                            {"scenario": "A different moment on a ship at sea far away", "dialogues": ["kept"]}]}
    new = {"text": "NEW TEXT", "summary": summary + " and he believes them", "state": "finished",
           "conversation": [{"scenario": "Night street outside Brabantio's house in Venice, later",
                             "dialogues": ["new"]},
                            {"scenario": "The senate chamber at midnight with the Duke", "dialogues": ["extra"]}]}
    unrelated = {"text": "x", "summary": "Cassio drinks too much in Cyprus", "state": "truncated", "conversation": []}
    results = []
    X.merge_truncated([old, unrelated], [new], results)
    assert new["text"] == "OLD TEXT NEW TEXT"
    assert [c["dialogues"] for c in new["conversation"]] == [["new"], ["kept"], ["extra"]]
    assert results == [unrelated] and unrelated["state"] == "finished"


# ---- grounding ---------------------------------------------------------------------------
def test_grounded_ratio_counts_speech_found_in_source():
    conv = {"dialogues": [
        {"character": "Iago", "message": "[He sleeps.] (shouting) Awake! what ho, Brabantio! thieves! thieves!"},
        {"character": "Brabantio", "message": "[Who dares?] What is the reason of this terrible summons?"},
        {"character": "Roderigo", "message": "[Invented.] I have a ship full of oranges for the Duke tomorrow."},
        {"character": "Environment", "message": "A bell rings somewhere."},
        {"character": "Iago", "message": "[Only a thought.] (waves)"},
    ]}
    assert X.grounded_ratio(conv, CHUNK) == round(2 / 3, 4)
    assert X.grounded_ratio({"dialogues": []}, CHUNK) is None
    assert X.speech_of("[a] (b) c  d [e]") == "c d"


# ---- names ---------------------------------------------------------------------------------
def test_name_map_fixes_reference_crashes():
    names = ["Brabantio", "Environment", "IAGO", "Iago", "Messenger", "Michael Cassio", "Othello the Moor"]
    reply = {"named_characters": ["Iago", "Brabantio", "Environment"],
             "to_official_name": {"IAGO": ["Iago", "Ancient"], "Iago": "Iago", "Brabantio": "Brabantio",
                                  "Environment": "Environment", "Messenger": "Impersonal",
                                  "Michael Cassio": "Cassio"}}
    official, mapping = A.build_name_map(names, reply)
    assert official == ["Iago", "Brabantio", "Cassio"]          # Cassio added from the mapping
    assert mapping["IAGO"] == "Iago"                            # list value -> first element
    assert mapping["Environment"] == "impersonal" and mapping["Messenger"] == "impersonal"
    # Not in the mapping: 3-gram match against official names, else impersonal.
    assert mapping["Othello the Moor"] == "impersonal"


def test_name_map_without_reply_keeps_every_name():
    official, mapping = A.build_name_map(["Iago", "Environment"], None)
    assert official == ["Iago"] and mapping == {"Iago": "Iago", "Environment": "impersonal"}


def test_collect_names_renames_and_collects_every_form():
    plots = [{"key_characters": [{"character": "Iago"}],
              "conversation": [{"key_characters": [{"character": "Roderigo"}],
                                "dialogues": [{"name": "Brabantio", "message": "m"}]}]}]
    assert A.collect_names(plots) == ["Brabantio", "Iago", "Roderigo"]
    assert plots[0]["conversation"][0]["dialogues"][0] == {"character": "Brabantio", "message": "m"}


def test_language_detection():
    assert A.detect_language([]) == "English"
    assert A.detect_language([{"text": "Hello there"}]) == "English"
    assert A.detect_language([{"text": "他说道：你好，我们走吧。"}]) == "Chinese"


def test_pruned_anchor_search_equals_the_plain_reference_loop():
    import difflib
    import random

    text = " ".join(["Look to your house, your daughter, and your bags!", CHUNK] * 3) + \
        "\nRODERIGO. Most reverend signior, do you know my voice?\nBRABANTIO. Not I, what are you?\n"
    sentences = X.split_sentences(text)
    rng = random.Random(7)
    targets = [s[: max(1, len(s) - rng.randint(0, 8))] + rng.choice(["", "x", " sir"]) for s in sentences if s]
    targets += ["Not I, what are you", "entirely unrelated", "Look to your house"]

    def plain(target):
        best, best_score = None, 0
        for s in sentences:
            score = difflib.SequenceMatcher(None, target, s).ratio()
            if score > best_score:
                best, best_score = s, score
        return best if best_score >= 0.6 else None

    for t in targets:
        assert X.find_best_match_sentence(text, t) == plain(t), t


# ---- the embedded model's tighter schema ------------------------------------------------
def _strings(node, path=""):
    """(path, schema) of every free-text (string-typed, not enum) node in a JSON schema."""
    if isinstance(node, dict):
        t = node.get("type")
        if (t == "string" or (isinstance(t, list) and "string" in t)) and "enum" not in node:
            yield path, node
        for k, v in node.items():
            yield from _strings(v, f"{path}/{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _strings(v, f"{path}/{i}")


def test_local_schema_bounds_every_free_text_field_and_limits_names():
    prose = ('"Hold on," said Wren to Tobias. Then Tobias laughed at Wren, and stopped. '
             'Old Fenn watched them. "Enough," said Fenn.')
    schema = X.local_schema(prose)
    names = X.candidate_names(prose)
    assert set(names) == {"Wren", "Tobias", "Fenn"}, names
    for path, node in _strings(schema):
        assert node.get("maxLength") == X.LOCAL_STRING_CAP, path
    plots = schema["properties"]["plots"]
    assert plots["maxItems"] == 1
    conv = plots["items"]["properties"]["conversation"]
    dialogues = conv["items"]["properties"]["dialogues"]
    assert (dialogues["minItems"], dialogues["maxItems"]) == (4, 6)
    speaker = dialogues["items"]["properties"]["character"]
    assert speaker["enum"] == names + ["Environment"]
    # The open schema used for remote models is left untouched.
    assert not any("maxLength" in node for _, node in _strings(X.EXTRACTION_SCHEMA))


def test_local_names_schema_maps_every_name_to_a_given_one():
    names = ["IAGO", "Iago", "Othello"]
    schema = A.local_names_schema(names)
    mapping = schema["properties"]["to_official_name"]
    assert mapping["required"] == names and mapping["additionalProperties"] is False
    assert all(mapping["properties"][n]["enum"] == names + ["impersonal"] for n in names)
    assert schema["properties"]["named_characters"]["items"]["enum"] == names
    # The embedded model's grammar accepts a reply in the published shape, which build_name_map reads.
    official, to_official = A.build_name_map(names, {"named_characters": ["Iago", "Othello"],
                                                     "to_official_name": {"IAGO": "Iago", "Iago": "Iago",
                                                                          "Othello": "Othello"}})
    assert official == ["Iago", "Othello"] and to_official["IAGO"] == "Iago"

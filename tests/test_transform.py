"""Transform (METHOD.md 3) on hand-made books: modes, masking, weights, sampling, bad input."""
import json
import math
import os
from collections import Counter

import numpy as np
import pytest

from coser import prompts as P
from data_construction import transform as T
from tests.conftest import run_script

SCRIPT = "data_construction/transform.py"


def utt(who, msg):
    return {"character": who, "message": msg}


def make_book(n_plots=10, split=None, convs_per_plot=1, tag=""):
    """A small code-produced-layout book: Ann and Bob are named characters, Guard is not."""
    plots = []
    for i in range(n_plots):
        convs = []
        for j in range(convs_per_plot):
            convs.append({
                "scenario": f"{tag}Scene {i}.{j}", "topic": "t",
                "key_characters": [{"name": "Ann", "motivation": f"ANN-MOTIVE-{i}"},
                                   {"character": "Bob", "motivation": f"BOB-MOTIVE-{i}"}],
                "dialogues": [utt("Ann", f"[ann thinks {i}] (waves) Hello {i}"),
                              utt("Environment", "[bracketed env] Rain falls."),
                              utt("Bob", f"[bob thinks {i}] Hi."),
                              utt("Guard", "Halt!"),
                              utt("Bob", "(nods) Fine."),
                              utt("Ann", "[only a thought]")],
            })
        plots.append({"summary": f"PLOT-SUMMARY-{i}", "prominence": 50, "chapter": "c",
                      "key_characters": [{"name": "Ann", "description": "ANN-DESC", "experience": f"ANN-EXP-{i}"},
                                         {"name": "Bob", "description": "BOB-DESC", "experience": f"BOB-EXP-{i}"}],
                      "conversation": convs, "state": "finished"})
    book = {"plots": plots, "character_datasets": {
        "Ann": {"plots": [{"i_p": k} for k in range(9)], "conversations": [], "utterances": [],
                "profile": "ANN-PROFILE"},
        "Bob": {"plots": [{"i_p": 0}], "conversations": [], "utterances": [], "profile": "BOB-PROFILE"}}}
    if split is not None:
        book["split_plot_index"] = split
    return book


def write_books(root, books):
    final = root / "final"
    final.mkdir(parents=True, exist_ok=True)
    for name, data in books.items():
        (final / f"{name}.json").write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    return root


def load(root, *parts):
    return json.loads((root.joinpath(*parts)).read_text(encoding="utf-8"))


# ---- pure pieces ---------------------------------------------------------------------------
def test_stable_hash_is_java_string_hash():
    assert T.stable_hash("hello") == 99162322            # Java "hello".hashCode()
    assert T.stable_hash("") == 0
    assert T.stable_hash("a" * 40) < 2 ** 32
    assert T.stable_order(["b.json", "a.json", "ab.json"]) == sorted(
        ["b.json", "a.json", "ab.json"], key=T.stable_hash)


def test_speakers_by_count_ties_keep_first_appearance():
    d = [utt("B", ""), utt("A", ""), utt("Environment", ""), utt("A", ""), utt("C", ""), utt("B", "")]
    assert T.speakers_by_count(d) == ["B", "A", "Environment", "C"]


def test_normalize_utterance_fallbacks():
    u = {"character": "A", "thought": "t"}
    assert T.normalize_utterance(u) is None and u["message"] == "t"
    u = {"name": "A", "description": "d"}
    assert T.normalize_utterance(u) is None and (u["character"], u["message"]) == ("A", "d")
    u = {"character": "A", "[inner]": " said"}
    assert T.normalize_utterance(u) is None and u["message"] == "[inner] said" and "[inner]" not in u
    assert T.normalize_utterance({"character": "A"}) == "utterance without message"
    assert T.normalize_utterance({"message": "m"}) == "utterance without character"
    kcs = T.normalize_key_characters([{"character": "A"}, {"motivation": "x"}, {"name": "B"}])
    assert [k["name"] for k in kcs] == ["A", "B"]


DIALOGUE = [utt("Ann", "[a1] (waves) Hello"), utt("Environment", "[env] Rain."),
            utt("Bob", "[b1] Hi."), utt("Ann", "[only a thought]"), utt("Ann", "Again")]


def test_conversation_to_chat_with_thoughts():
    chat = T.conversation_to_chat("SYS", DIALOGUE, "Ann", thoughtless=False)
    assert chat == [
        {"from": "system", "value": "SYS"},
        {"from": "human", "value": "===Conversation Start===\n\n"},
        {"from": "assistant", "value": "Ann: [a1] (waves) Hello\n\n"},
        # Environment text is shown raw (brackets kept); other characters lose their thoughts.
        {"from": "human", "value": "Environment: [env] Rain.\n\nBob: Hi.\n\n"},
        # Consecutive own turns merge without a second name prefix.
        {"from": "assistant", "value": "Ann: [only a thought]\n\nAgain\n\n"},
    ]


def test_conversation_to_chat_thoughtless_and_environment():
    chat = T.conversation_to_chat("SYS", DIALOGUE, "Ann", thoughtless=True)
    assert [t["value"] for t in chat[2:]] == [
        "Ann: (waves) Hello\n\n", "Environment: [env] Rain.\n\nBob: Hi.\n\n", "Ann: Again\n\n"]
    env = T.conversation_to_chat("SYS", DIALOGUE, "Environment", thoughtless=True)
    assert env[1]["value"] == "===Conversation Start===\n\nAnn: (waves) Hello\n\n"
    assert env[2] == {"from": "assistant", "value": "Environment: [env] Rain.\n\n"}
    only_thoughts = [utt("Bob", "hi"), utt("Ann", "[just thinking]")]
    assert T.conversation_to_chat("SYS", only_thoughts, "Ann", thoughtless=True) is None
    assert T.conversation_to_chat("SYS", only_thoughts, "Cy", thoughtless=False) is None


class FixedRng:
    def __init__(self, value):
        self.value = value

    def random(self):
        return self.value


def test_nsp_chat_masking():
    d = [utt("Ann", "[t] hi"), utt("Guard", "Halt"), utt("Environment", "wind")]
    chat = T.nsp_chat("NSP-SYS", d, ["Ann"], FixedRng(0.0))      # every draw < 0.25
    assert [t["value"] for t in chat if t["from"] == "assistant"] == ["Ann", "random", "Environment", "<END CHAT>"]
    # Context keeps the speakers' thoughts (reference behaviour).
    assert chat[3] == {"from": "human", "value": "Ann: [t] hi\n\n"}
    chat = T.nsp_chat("NSP-SYS", d, ["Ann"], FixedRng(0.3))
    assert [t["value"] for t in chat if t["from"] == "assistant"] == ["Ann", "Guard", "Environment", "<END CHAT>"]
    assert [t["from"] for t in chat[1:]] == ["human"] + ["assistant", "human"] * 3 + ["assistant"]


def test_weights():
    w = T.character_weights({"A": {"plots": [1] * 9}, "B": {"plots": []}, "C": {"plots": [1, 2]}})
    assert w == {"A": 3.0, "B": 1, "C": math.sqrt(2)}
    conv = {"speaking_characters_w_env": ["A", "Environment", "X"]}
    assert T.conversation_weight(conv, w) == (3.0 + 1) / 2
    assert T.conversation_weight({}, w) == 1
    assert T.conversation_weight({"speaking_characters_w_env": ["Environment"]}, w) == 1


# ---- test sampling -------------------------------------------------------------------------
def reference_picks(weights, n, seed=42, broken=()):
    """The reference loop, spelled out: global np.random.seed + np.random.choice with rejection.

    broken: candidates the fixed version rejects when drawn (the reference would crash there)."""
    top = sorted(range(len(weights)), key=lambda k: -weights[k])[:max(n, len(weights) // 2)]
    w = [weights[k] for k in top]
    probs = [x / sum(w) for x in w]
    np.random.seed(seed)
    picks = []
    while len(picks) < n:
        k = np.random.choice(len(w), p=probs)
        if top[k] not in picks and top[k] not in broken:
            picks.append(top[k])
    return picks


def held_out(weights, broken=()):
    convs = []
    for k, w in enumerate(weights):
        c = {"scenario": f"s{k}", "topic": "t", "key_characters": [{"name": "A", "motivation": "m", "i_p": 5, "i_c": k}],
             "dialogues": [{"character": "A", "message": "x", "i_p": 5, "i_c": k, "i_u": 0}]}
        if k not in broken:
            c.update(speaking_characters_w_env=["A"], major_characters=["A"])
        c["weight"] = w
        convs.append(c)
    plot = {"summary": "s", "key_characters": [{"name": "A", "description": "d", "i_p": 5}],
            "conversation": convs, "i_p": 5}
    return {"Book": {"character_profiles": {"A": "PA"}, "plots": [plot]}}


def test_sampling_matches_reference_loop_pick_for_pick():
    weights = [1.0, 3.0, 2.0, 2.0, 1.5, 4.0, 1.0, 2.5, 1.2, 3.3]
    for n in (1, 3, 5, 7, 10):
        items = T.to_test_items(held_out(weights), n, "id")
        assert [it["i_c"] for it in items] == reference_picks(weights, n)
    # Hand check of the top-half rule: n=3 keeps max(3, 10//2)=5 candidates, so the picks are
    # among the five heaviest conversations.
    assert set(it["i_c"] for it in T.to_test_items(held_out(weights), 3, "id")) <= {5, 9, 1, 7, 2}


def test_sampling_item_shape():
    item = T.to_test_items(held_out([1.0, 2.0]), 1, "ood")[0]
    assert list(item) == ["scenario", "topic", "key_characters", "dialogues", "speaking_characters_w_env",
                          "major_characters", "weight", "plot", "character_profiles", "book", "i_p", "i_c", "tag"]
    assert item["key_characters"] == [{"name": "A", "motivation": "m"}]
    assert item["dialogues"] == [{"character": "A", "message": "x"}]
    assert item["plot"] == {"summary": "s", "key_characters": [{"name": "A", "description": "d"}], "i_p": 5}
    assert (item["book"], item["i_p"], item["tag"], item["character_profiles"]) == ("Book", 5, "ood", {"A": "PA"})


def test_sampling_rejects_broken_conversations_instead_of_crashing(capsys):
    weights = [5.0, 1.0, 1.0, 1.0, 1.0, 1.0]
    # The weight-5 conversation is broken: the reference would most likely draw it and raise KeyError.
    items = T.to_test_items(held_out(weights, broken={0}), 2, "id")
    assert len(items) == 2 and 0 not in [it["i_c"] for it in items]
    # Otherwise the draws are the reference's stream: same top half, same probabilities.
    assert [it["i_c"] for it in items] == reference_picks(weights, 2, broken={0})
    # Not enough usable conversations: fewer items and a warning, never an endless loop.
    items = T.to_test_items(held_out([1.0, 1.0], broken={0, 1}), 2, "id")
    assert items == [] and "usable" in capsys.readouterr().err


def test_sampling_fewer_candidates_than_requested(capsys):
    items = T.to_test_items(held_out([1.0, 2.0, 3.0]), 100, "ood")
    assert sorted(it["i_c"] for it in items) == [0, 1, 2]
    assert "fewer than 100" in capsys.readouterr().err


# ---- whole transform on synthetic books ----------------------------------------------------
def test_modes_masking_and_held_out(tmp_path):
    write_books(tmp_path, {"Book A": make_book(10, split=8)})
    report = T.transform(str(tmp_path), seed=3, test_per_split=5)
    sft = load(tmp_path, "train", "sft_sharegpt.json")
    assert report["n_train"] == len(sft)
    modes = Counter()
    for (mode, kind), n in report["modes"].items():
        modes[mode] += n
        if kind != "nsp":
            # 8 train plots x 1 conversation: Ann, Bob, Guard, Environment each give one sample.
            assert n == {"character": 8 * 3, "environment": 8}[kind], (mode, kind)
    assert set(modes) == {"thoughtless+others", "thoughtless", "thought+others", "thought"}
    samples = [s["conversations"] for s in sft]
    assert all(s[0]["from"] == "system" and s[1]["value"].startswith(P.CONVERSATION_START) for s in samples)
    # No held-out plot (8, 9) leaks into training.
    assert not any("Scene 8." in s[0]["value"] or "Scene 9." in s[0]["value"] for s in samples)
    ann = [s for s in samples if s[2]["value"].startswith("Ann: ")]
    thoughtless = [s for s in ann if not any("[" in t["value"] for t in s if t["from"] == "assistant")]
    assert len(thoughtless) == 16 and len(ann) == 32
    # Thoughtless: the only-a-thought utterance is skipped, so Ann answers once per chat.
    assert all(sum(t["from"] == "assistant" for t in s) == 1 for s in thoughtless)
    # Other characters' profiles only in the +others modes, never the speaker's own entry twice.
    with_bob = [s for s in ann if "BOB-DESC" in s[0]["value"]]
    assert len(with_bob) == 16
    # Motivation dropped about half the time; experience appended about half the time.
    mot = sum("ANN-MOTIVE" in s[0]["value"] for s in ann)
    exp = sum("ANN-EXP" in s[0]["value"] for s in ann)
    assert 4 <= mot <= 28 and 4 <= exp <= 28
    nsp = [s for s in samples if s[-1]["value"] == P.END_CHAT]
    assert len(nsp) == sum(n for (m, k), n in report["modes"].items() if k == "nsp")
    for s in nsp:
        labels = [t["value"] for t in s if t["from"] == "assistant"]
        assert labels[3] in ("Guard", "random") and labels[:3] == ["Ann", "Environment", "Bob"]

    held = load(tmp_path, "test", "held_out_plots.json")
    assert list(held) == ["id", "ood"] and list(held["id"]) == ["Book A"]
    plots = held["id"]["Book A"]["plots"]
    assert [p["i_p"] for p in plots] == [8, 9]
    conv = plots[0]["conversation"][0]
    assert conv["speaking_characters_w_env"] == ["Ann", "Bob", "Environment", "Guard"]
    assert conv["major_characters"] == ["Ann", "Bob"]
    assert conv["weight"] == pytest.approx((3 + 1 + 1) / 3)   # Ann sqrt(9), Bob 1, Guard 1
    assert held["id"]["Book A"]["character_profiles"] == {"Ann": "ANN-PROFILE", "Bob": "BOB-PROFILE"}


def test_nsp_keep_rate_and_random_label_rate(tmp_path):
    write_books(tmp_path, {"Big": make_book(60, split=60, convs_per_plot=5)})
    report = T.transform(str(tmp_path), seed=11, test_per_split=0)
    nsp = sum(n for (m, k), n in report["modes"].items() if k == "nsp")
    expected = 60 * 5 * 4 * T.NSP_KEEP_PROB                  # 1200 chances at 0.1
    assert abs(nsp - expected) < 4 * math.sqrt(expected)
    sft = load(tmp_path, "train", "sft_sharegpt.json")
    guard = [s["conversations"][8]["value"] for s in sft if s["conversations"][-1]["value"] == P.END_CHAT]
    share = guard.count("random") / len(guard)
    assert 0.1 < share < 0.4


def test_book_split_and_shuffle_determinism(tmp_path):
    books = {f"Book {k}": make_book(5, tag=f"BOOK{k}-") for k in range(10)}
    write_books(tmp_path, books)
    T.transform(str(tmp_path), seed=1, test_per_split=3)
    held = load(tmp_path, "test", "held_out_plots.json")
    order = [os.path.splitext(n)[0] for n in T.stable_order([f"{b}.json" for b in books])]
    assert list(held["id"]) == order[:9] and list(held["ood"]) == order[9:]
    sft1 = (tmp_path / "train" / "sft_sharegpt.json").read_bytes()
    # OOD books give no training samples at all; ID books do.
    assert f"BOOK{order[9][-1]}-Scene".encode() not in sft1
    assert all(f"BOOK{b[-1]}-Scene".encode() in sft1 for b in order[:9])
    T.transform(str(tmp_path), seed=2, test_per_split=3)
    assert (tmp_path / "train" / "sft_sharegpt.json").read_bytes() != sft1
    T.transform(str(tmp_path), seed=1, test_per_split=3)
    assert (tmp_path / "train" / "sft_sharegpt.json").read_bytes() == sft1
    test = load(tmp_path, "test", "test_set.json")
    # One held-out plot per book (5 plots, split int(4.5)=4): the single OOD book has one.
    assert [t["tag"] for t in test] == ["id"] * 3 + ["ood"]


def test_drop_trailing_human(tmp_path):
    write_books(tmp_path, {"Book A": make_book(4, split=4)})
    T.transform(str(tmp_path), seed=1, test_per_split=0, drop_trailing_human=True)
    sft = load(tmp_path, "train", "sft_sharegpt.json")
    assert all(s["conversations"][-1]["from"] == "assistant" for s in sft)
    assert all(len(s["conversations"]) % 2 == 1 for s in sft)    # system + even turns
    info = load(tmp_path, "train", "dataset_info.json")
    assert info["coser_sft"]["file_name"] == "sft_sharegpt.json"
    assert info["coser_sft"]["formatting"] == "sharegpt"
    assert info["coser_sft"]["tags"]["system_tag"] == "system"


# ---- bad input, as a user runs it -----------------------------------------------------------
def test_not_json_is_one_line_error(tmp_path):
    write_books(tmp_path, {"Good": make_book(3)})
    (tmp_path / "final" / "Bad.json").write_text('{"plots": [\n  oops\n', encoding="utf-8")
    r = run_script([SCRIPT, "--dir", tmp_path], timeout=120)
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("error: ")
    assert "Bad.json" in r.stderr and "line 2" in r.stderr and "Traceback" not in r.stderr


def test_missing_dir_is_one_line_error(tmp_path):
    r = run_script([SCRIPT, "--dir", tmp_path / "nope"], timeout=120)
    assert r.returncode == 2 and r.stderr.startswith("error: ") and "final" in r.stderr


def test_broken_books_and_conversations_are_skipped_with_warnings(tmp_path):
    book = make_book(4, split=2, convs_per_plot=3)
    del book["plots"][0]["conversation"][1]["dialogues"][2]["message"]      # train plot
    del book["plots"][3]["conversation"][0]["dialogues"][0]["message"]      # held-out, heaviest
    book["plots"][3]["conversation"][1]["dialogues"] = [utt("Environment", "only wind")]
    book["plots"][2]["conversation"][2]["dialogues"][1].pop("character")
    write_books(tmp_path, {"Fine": book, "NoPlots": {"character_datasets": {}},
                           "NoDatasets": {"plots": []}})
    r = run_script([SCRIPT, "--dir", tmp_path, "--test_per_split", "10"], timeout=120)
    assert r.returncode == 0, r.stderr
    err = r.stderr
    assert "Fine: plot 0 conversation 1: utterance without message; skipped" in err
    assert "Fine: plot 3 conversation 0: utterance without message; skipped" in err
    assert "Fine: plot 3 conversation 1: no speaker other than Environment; skipped" in err
    assert "Fine: plot 2 conversation 2: utterance without character; skipped" in err
    assert err.count("plot 0 conversation 1") == 1                 # once, not once per mode pass
    assert "NoPlots.json: missing or malformed plots" in err
    assert "NoDatasets.json: missing or malformed character_datasets" in err
    assert "2 skipped" in r.stdout and "conversations skipped: 4" in r.stdout
    test = load(tmp_path, "test", "test_set.json")
    picked = {(t["i_p"], t["i_c"]) for t in test}
    assert (3, 0) not in picked and (3, 1) not in picked and (2, 2) not in picked
    held = load(tmp_path, "test", "held_out_plots.json")
    broken = held[test[0]["tag"]]["Fine"]["plots"][1]["conversation"][0]
    assert "major_characters" not in broken and broken["weight"] == 1


def test_help_and_no_llm_imports(tmp_path):
    r = run_script([SCRIPT, "--help"], timeout=60)
    assert r.returncode == 0 and "--test_per_split" in r.stdout and "--seed" in r.stdout
    code = ("import sys, data_construction.transform; "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('openai', 'llama_cpp', 'tiktoken', 'coser.llm')]; "
            "bad += [m for m in sys.modules if m in ('coser.llm', 'coser.cli')]; print(bad); sys.exit(1 if bad else 0)")
    r = run_script(["-c", code], timeout=60, cwd=str(tmp_path))
    assert r.returncode == 0, r.stdout + r.stderr


def test_published_layout_keys_thought_and_summary(tmp_path):
    """Published finals may name the motivation 'thought' and the experience 'summary'."""
    book = make_book(10, split=10)
    for i, plot in enumerate(book["plots"]):
        for kc in plot["key_characters"]:
            kc["summary"] = kc.pop("experience")
        for conv in plot["conversation"]:
            for kc in conv["key_characters"]:
                kc["thought"] = kc.pop("motivation")
    write_books(tmp_path, {"Pub": book})
    T.transform(str(tmp_path), seed=5, test_per_split=0)
    sft = load(tmp_path, "train", "sft_sharegpt.json")
    ann = [s["conversations"][0]["value"] for s in sft if s["conversations"][2]["value"].startswith("Ann: ")]
    assert len(ann) == 40
    assert 5 < sum("ANN-MOTIVE" in p for p in ann) < 35
    assert 5 < sum("ANN-EXP" in p for p in ann) < 35
    # The description is always folded into the profile.
    assert all("ANN-DESC\n\nANN-PROFILE" in p for p in ann)

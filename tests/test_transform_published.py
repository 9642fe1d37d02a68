"""Transform on the published CoSER final files: reference picks, byte-identical reruns, published shapes."""
import filecmp
import json
import os
import shutil

import pytest

from tests.conftest import run_script

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(REPO_ROOT, "..", "shared", "coser-data")
SCRIPT = "data_construction/transform.py"
TEST_ITEM_KEYS = ["scenario", "topic", "key_characters", "dialogues", "speaking_characters_w_env",
                  "major_characters", "weight", "plot", "character_profiles", "book", "i_p", "i_c", "tag"]
OUTPUTS = [("train", "sft_sharegpt.json"), ("train", "dataset_info.json"),
           ("test", "held_out_plots.json"), ("test", "test_set.json")]


def shared(*parts):
    path = os.path.join(SHARED, *parts)
    if not os.path.exists(path):
        pytest.skip(f"shared CoSER data not present: {os.path.normpath(path)}")
    return path


def copy_finals(dest, names=None):
    src = shared("final")
    os.makedirs(dest / "final")
    for name in sorted(os.listdir(src)):
        if names is None or name in names:
            shutil.copyfile(os.path.join(src, name), dest / "final" / name)
    return dest


def load(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def test_reproduces_published_example_test_set(tmp_path):
    """Othello + King Lear are the code-produced finals behind example_test_set.json: same picks,
    same order, same content and field order."""
    expected = load(shared("test", "example_test_set.json"))
    copy_finals(tmp_path, {"Othello.json", "King Lear.json"})
    r = run_script([SCRIPT, "--dir", tmp_path], timeout=300)
    assert r.returncode == 0, r.stderr
    got = load(tmp_path / "test" / "test_set.json")
    assert [(t["book"], t["i_p"], t["i_c"]) for t in got] == [("King Lear", 17, 0), ("King Lear", 16, 0),
                                                              ("Othello", 9, 0)]
    assert got == expected
    for g, e in zip(got, expected):
        assert list(g) == list(e) == TEST_ITEM_KEYS
        assert list(g["plot"]) == list(e["plot"])


@pytest.fixture(scope="module")
def full_runs(tmp_path_factory):
    """Two independent subprocess runs over all 14 published final files."""
    runs = []
    for k in range(2):
        root = copy_finals(tmp_path_factory.mktemp(f"run{k}"))
        r = run_script([SCRIPT, "--dir", root], timeout=600)
        assert r.returncode == 0, r.stderr
        runs.append((root, r))
    return runs


def test_full_run_is_byte_identical(full_runs):
    (a, ra), (b, rb) = full_runs
    for parts in OUTPUTS:
        assert filecmp.cmp(a.joinpath(*parts), b.joinpath(*parts), shallow=False), parts
    assert ra.stdout.replace(str(a), "") == rb.stdout.replace(str(b), "")
    assert "books: 14 (13 id, 1 ood), 0 skipped" in ra.stdout


def test_full_run_test_set_has_published_structure(full_runs):
    root, _ = full_runs[0]
    got = load(root / "test" / "test_set.json")
    published = load(shared("test", "test_set.json"))
    # 14 books: 13 ID books hold fewer than 100 held-out conversations, so every one is used.
    held = load(root / "test" / "held_out_plots.json")
    n_held = {tag: sum(len(p["conversation"]) for e in held[tag].values() for p in e["plots"]) for tag in held}
    assert [t["tag"] for t in got] == ["id"] * n_held["id"] + ["ood"] * n_held["ood"]
    assert len({(t["book"], t["i_p"], t["i_c"]) for t in got}) == len(got)
    pub_plot_keys = set(published[0]["plot"])
    for item in got:
        assert list(item) == list(published[0]) == TEST_ITEM_KEYS
        assert set(item["plot"]) - {"text"} == pub_plot_keys
        assert "conversation" not in item["plot"]
        assert all("i_p" not in kc for kc in item["plot"]["key_characters"])
        assert all(set(kc) <= {"name", "motivation", "thought", "description"} for kc in item["key_characters"])
        assert all(set(u) == {"character", "message"} for u in item["dialogues"])
        assert item["major_characters"] == [c for c in item["speaking_characters_w_env"]
                                            if c in item["character_profiles"]]
        assert list(item["character_profiles"]) == item["major_characters"]
        assert isinstance(item["weight"], (int, float)) and item["weight"] >= 1
        assert item["i_p"] == item["plot"]["i_p"]
    # Sorted by draw, not by weight, yet heavy conversations come early on average.
    ids = [t for t in got if t["tag"] == "id"]
    half = len(ids) // 2
    assert sum(t["weight"] for t in ids[:half]) > sum(t["weight"] for t in ids[half:2 * half])


def test_full_run_held_out_and_sft_structure(full_runs):
    root, _ = full_runs[0]
    held = load(root / "test" / "held_out_plots.json")
    assert list(held) == ["id", "ood"]
    for tag in held:
        for book, entry in held[tag].items():
            assert list(entry) == ["character_profiles", "plots"]
            final = load(root / "final" / f"{book}.json")
            split = final["split_plot_index"]
            assert [p["i_p"] for p in entry["plots"]] == list(range(split, len(final["plots"])))
            for p in entry["plots"]:
                for c in p["conversation"]:
                    assert list(c)[-3:] == ["speaking_characters_w_env", "major_characters", "weight"]

    sample = load(shared("train", "sft_sharegpt.sample.json"))
    sft = load(root / "train" / "sft_sharegpt.json")
    assert len(sft) > 5000
    for s in sample[:1] + sft:
        assert list(s) == ["conversations"]
        turns = s["conversations"]
        assert all(list(t) == ["from", "value"] for t in turns)
        assert turns[0]["from"] == "system" and turns[1]["from"] == "human"
        assert turns[1]["value"].startswith("===Conversation Start===\n\n")
        assert all(t["from"] == ("human" if i % 2 == 0 else "assistant") for i, t in enumerate(turns[1:]))
        if turns[-1]["value"] != "<END CHAT>":
            # Character/Environment samples: the first reply carries the speaker's name.
            reply = next(t["value"] for t in turns if t["from"] == "assistant")
            assert ": " in reply.split("\n")[0]
    info = load(root / "train" / "dataset_info.json")
    assert info == {"coser_sft": {"file_name": "sft_sharegpt.json", "formatting": "sharegpt",
                                  "columns": {"messages": "conversations"},
                                  "tags": {"role_tag": "from", "content_tag": "value", "user_tag": "human",
                                           "assistant_tag": "assistant", "system_tag": "system"}}}

"""coser.metrics: the published BLEU/ROUGE-L recipe, judge score formula, aggregation, intervals."""
import json
import math
import os
import warnings

import pytest

from coser import metrics
from coser.errors import ConfigError
from coser.text import remove_inner_thoughts

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(REPO_ROOT, "..", "shared", "coser-data")

# Per-case values of the CoSER project's exp/evaluation/test_set_gpt-4o.json.
PUBLISHED = {
    "King Lear-17-0": (0.021624838733610124, 0.07246376532209046),
    "King Lear-16-0": (0.023715767261473588, 0.1059001475702016),
    "Othello-9-0": (0.030483934319011176, 0.0732700110099804),
}


def _strip(text, role):
    return text if role == "Environment" else remove_inner_thoughts(text, eval_mode=True)


def _published_strings():
    path = os.path.join(SHARED, "exp", "simulation", "test_set_gpt-4o.json")
    if not os.path.exists(path):
        pytest.skip(f"shared CoSER data not present: {os.path.normpath(path)}")
    with open(path, encoding="utf-8") as f:
        records = json.load(f)
    out = {}
    for r in records:
        sim = [{"role": m["role"], "content": _strip(m["content"], m["role"])}
               for m in r["simulation"] if m["role"] != "NSP"]
        ref = [{"character": d["character"], "message": _strip(d["message"], d["character"])}
               for d in r["circumstance"]["dialogues"]]
        out[f"{r['book_title']}-{r['i_p']}-{r['i_c']}"] = (
            metrics.reference_string(ref), metrics.simulation_string(sim))
    return out


def test_published_bleu_and_rouge_reproduced_exactly():
    strings = _published_strings()
    assert set(PUBLISHED) <= set(strings)
    for key, (bleu, rouge) in PUBLISHED.items():
        ref, sim = strings[key]
        got = metrics.bleu_rouge(ref, sim)
        assert got["bleu"] == pytest.approx(bleu, abs=1e-12), key
        assert got["rouge_l"] == pytest.approx(rouge, abs=1e-12), key
        # The extra columns are the conventional libraries' numbers and differ from the published ones.
        assert 0 < got["rouge_l_rougescore"] < 1 and got["rouge_l_rougescore"] != got["rouge_l"]
        assert 0 < got["sacrebleu"] < 1


def test_conversation_strings_keep_names_and_strip_outer_newlines():
    sim = metrics.simulation_string([{"role": "A", "content": "\nA: hi\n"}, {"role": "B", "content": "B: yo"}])
    assert sim == "A: hi\n\nB: yo"
    ref = metrics.reference_string([{"character": "A", "message": "hi\n"}, {"character": "B", "message": "yo"}])
    assert ref == "A: hi\n\nB: yo"


def test_bleu_lowercases_and_rouge_is_case_sensitive():
    text = "The king rides out at dawn with all his knights beside him."
    assert metrics.bleu(text, text.upper()) == pytest.approx(1.0)
    assert metrics.rouge_l(text, text.upper()) < 0.01
    assert metrics.rouge_l(text, text) == pytest.approx(1.0, abs=1e-6)


def test_bleu_without_smoothing_is_tiny_not_zero_and_silent():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any leaked NLTK warning fails the test
        tiny = metrics.bleu("the cat sat on the mat", "cat dog bird fish")
        zero = metrics.bleu("the cat sat on the mat", "xyz qqq")
    assert 0 < tiny < 1e-50
    assert zero == 0.0


def test_empty_sides_score_zero_instead_of_raising():
    assert metrics.rouge_l("some reference text here", "") == 0.0
    assert metrics.rouge_l("", "some hypothesis") == 0.0
    assert metrics.rouge_l("a b c", "  \n ") == 0.0
    got = metrics.bleu_rouge("a reference sentence.", "")
    assert got["bleu"] == 0.0 and got["rouge_l"] == 0.0


def test_missing_punkt_tables_is_a_config_error(tmp_path, monkeypatch):
    import nltk

    monkeypatch.setattr(metrics, "_nltk_ready", False)
    monkeypatch.setattr(metrics, "NLTK_DATA_DIR", str(tmp_path / "nothing"))
    monkeypatch.setattr(nltk.data, "path", [str(tmp_path / "nothing")])
    with pytest.raises(ConfigError, match="punkt_tab"):
        metrics.bleu("a b c d", "a b c d")


def test_shipped_tables_and_notice_present():
    base = os.path.join(REPO_ROOT, "coser", "data", "nltk_data")
    for name in ("abbrev_types.txt", "collocations.tab", "ortho_context.tab", "sent_starters.txt"):
        assert os.path.getsize(os.path.join(base, "tokenizers", "punkt_tab", "english", name)) > 0
    with open(os.path.join(base, "NOTICE"), encoding="utf-8") as f:
        assert "Apache License" in f.read()


def test_dimension_score_published_fact():
    flaws = [{"severity": s} for s in (2, 3, 2, 3)]
    assert metrics.dimension_score(flaws, 11) == pytest.approx(66.5)
    dims = dict(zip(metrics.DIMENSIONS, (66.5, 61.5, 41.5, 66.5)))
    assert metrics.case_score(dims) == pytest.approx(59.0)


def test_dimension_score_ignores_non_int_severities_and_clamps():
    flaws = [{"severity": 2}, {"severity": True}, {"severity": "5"}, {"severity": 2.0}, {"type": "x"}, "junk"]
    assert metrics.dimension_score(flaws, 0) == 90
    assert metrics.dimension_score([], 40) == 100
    assert metrics.dimension_score([{"severity": 5}] * 30, 2) == 0


def _case(scores, bleu=0.1, rouge=0.2, failed=False):
    if failed:
        return {"failed": True, "critique": {"raw": "not json"}}
    crit = {d: {"flaws": [], "score": s} for d, s in zip(metrics.DIMENSIONS, scores)}
    crit.update(bleu=bleu, rouge_l=rouge)
    return {"score": sum(scores) / 4, "critique": crit}


def test_aggregate_means_and_failures():
    cases = {"a": _case((100, 80, 60, 40), 0.1, 0.3), "b": _case((50, 60, 70, 80), 0.3, 0.1),
             "c": _case(None, failed=True)}
    s = metrics.aggregate(cases)
    assert s["Storyline Consistency"] == 75 and s["Storyline Quality"] == 60
    assert s["avg"] == pytest.approx((75 + 70 + 65 + 60) / 4)
    assert s["bleu"] == pytest.approx(0.2) and s["rouge_l"] == pytest.approx(0.2)
    assert s["n"] == 2 and s["failed"] == 1
    empty = metrics.aggregate({})
    assert empty["avg"] == 0 and empty["n"] == 0


def test_mean_std_and_bootstrap():
    m, sd = metrics.mean_std([1, 2, 3, 4])
    assert m == 2.5 and sd == pytest.approx(1.2909944487)
    assert metrics.mean_std([5]) == (5.0, 0.0)
    assert all(math.isnan(x) for x in metrics.mean_std([]))
    vals = [float(i % 7) for i in range(50)]
    lo, hi = metrics.bootstrap_ci(vals, n_boot=500, seed=1)
    assert lo < sum(vals) / len(vals) < hi
    assert metrics.bootstrap_ci(vals, n_boot=500, seed=1) == (lo, hi)  # seeded, stable
    assert metrics.bootstrap_ci([3.0, 3.0, 3.0]) == (3.0, 3.0)


def test_paired_bootstrap_detects_a_clear_difference():
    a = [60 + (i % 5) for i in range(40)]
    b = [x - 10 for x in a]
    diff, lo, hi = metrics.paired_bootstrap(a, b)
    assert (diff, lo, hi) == (10.0, 10.0, 10.0)
    noisy_b = [x - (3 if i % 2 else -3) for i, x in enumerate(a)]
    diff, lo, hi = metrics.paired_bootstrap(a, noisy_b, seed=3)
    assert lo <= diff <= hi and lo < 0 < hi + 1e-9
    with pytest.raises(ValueError):
        metrics.paired_bootstrap([1, 2], [1])

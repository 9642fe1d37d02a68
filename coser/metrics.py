"""Metrics of the GCA evaluation: BLEU, ROUGE-L, judge scores, aggregation, intervals.

Pure functions over plain data. The BLEU and ROUGE-L recipes are the ones that reproduce the
published CoSER numbers to the last bit (METHOD 4.7): NLTK word_tokenize + sentence_bleu on the
lower-cased strings, and rouge-chinese's ROUGE-L F on the original-case strings, hypothesis first.
Two conventional numbers ride along as clearly named extra columns (rouge-score ROUGE-L F1 and
sacreBLEU sentence BLEU) for readers who expect them; they are never used in published averages.
"""
from __future__ import annotations

import math
import os
import random
import statistics
import threading
import warnings
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Sequence

from coser.errors import ConfigError

DIMENSIONS = ("Storyline Consistency", "Anthropomorphism", "Character Fidelity", "Storyline Quality")

NLTK_DATA_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "nltk_data")

_lock = threading.Lock()
_nltk_ready = False
_rouge_chinese = None
_rouge_score = None


# ---- conversation strings (METHOD 4.7 step 3) -------------------------------------------------

def simulation_string(messages: Iterable[Mapping]) -> str:
    """The simulated side: each message's content with outer newlines stripped, blank-line joined."""
    return "\n\n".join(m["content"].strip("\n") for m in messages)


def reference_string(dialogues: Iterable[Mapping]) -> str:
    """The book side: 'character: message' per turn (names kept, as published), blank-line joined."""
    return "\n\n".join(f"{d['character']}: {d['message']}".strip("\n") for d in dialogues)


# ---- tokenizer / scorer setup -------------------------------------------------------------------

def _ensure_nltk():
    """Point NLTK at the shipped Punkt tables; refuse to run without them (no silent fallback)."""
    global _nltk_ready
    if _nltk_ready:
        return
    with _lock:
        if _nltk_ready:
            return
        import nltk

        if NLTK_DATA_DIR not in nltk.data.path:
            nltk.data.path.insert(0, NLTK_DATA_DIR)
        try:
            nltk.data.find("tokenizers/punkt_tab/english/")
        except LookupError as exc:
            raise ConfigError(
                "NLTK Punkt tables (punkt_tab/english) not found; BLEU needs them and a different "
                f"tokenizer would change the numbers. Expected under {NLTK_DATA_DIR} "
                "(restore coser/data/nltk_data from the repository)") from exc
        _nltk_ready = True


def tokenize(text: str) -> list[str]:
    """The published BLEU tokenization: nltk.word_tokenize of the lower-cased text."""
    _ensure_nltk()
    import nltk

    try:
        return nltk.word_tokenize(text.lower())
    except LookupError as exc:  # tables vanished after the first check
        raise ConfigError(f"NLTK tokenizer data unavailable: {str(exc).strip().splitlines()[0]}") from exc


def bleu(reference_str: str, simulation_str: str) -> float:
    """NLTK sentence BLEU, default 4-gram uniform weights, no smoothing (as published)."""
    from nltk.translate.bleu_score import sentence_bleu

    ref, hyp = tokenize(reference_str), tokenize(simulation_str)
    with warnings.catch_warnings():
        # Without smoothing NLTK warns on every zero n-gram order; the tiny value it returns is
        # the published behaviour, so the warning is noise here.
        warnings.simplefilter("ignore", UserWarning)
        return float(sentence_bleu([ref], hyp))


def rouge_l(reference_str: str, simulation_str: str) -> float:
    """rouge-chinese ROUGE-L F (hypothesis first, case kept); 0.0 where the published code raised."""
    global _rouge_chinese
    if not simulation_str.strip() or not reference_str.strip():
        # The reference crashed on an empty hypothesis; an empty side has no overlap, so 0 is exact.
        return 0.0
    if _rouge_chinese is None:
        from rouge_chinese import Rouge

        _rouge_chinese = Rouge()
    try:
        return float(_rouge_chinese.get_scores(simulation_str, reference_str)[0]["rouge-l"]["f"])
    except ValueError:
        # rouge-chinese raises when a side is only sentence separators after its own cleaning.
        return 0.0


def rouge_l_rougescore(reference_str: str, simulation_str: str) -> float:
    """Google rouge-score ROUGE-L F1 (no stemming): the conventional number, an extra column."""
    global _rouge_score
    if _rouge_score is None:
        from rouge_score import rouge_scorer

        _rouge_score = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    return float(_rouge_score.score(reference_str, simulation_str)["rougeL"].fmeasure)


def sacrebleu_sentence(reference_str: str, simulation_str: str) -> float:
    """sacreBLEU sentence BLEU on a 0-1 scale (its default exp smoothing): an extra column."""
    import sacrebleu

    return float(sacrebleu.sentence_bleu(simulation_str, [reference_str]).score) / 100.0


def bleu_rouge(reference_str: str, simulation_str: str) -> dict:
    """All text-overlap numbers for one case: published bleu/rouge_l plus the two extra columns."""
    return {
        "bleu": bleu(reference_str, simulation_str),
        "rouge_l": rouge_l(reference_str, simulation_str),
        "rouge_l_rougescore": rouge_l_rougescore(reference_str, simulation_str),
        "sacrebleu": sacrebleu_sentence(reference_str, simulation_str),
    }


# ---- judge scores (METHOD 4.7) --------------------------------------------------------------------

def severity_sum(flaws: Iterable[Mapping]) -> int:
    """Sum of integer severities; bools and non-integers are ignored, as the reference did."""
    total = 0
    for f in flaws:
        sev = f.get("severity") if isinstance(f, Mapping) else None
        if isinstance(sev, int) and not isinstance(sev, bool):
            total += sev
    return total


def dimension_score(flaws: Iterable[Mapping], actor_rounds: int) -> float:
    """clamp(100 - 5 * (sum severity - 0.3 * actor_rounds), 0, 100)."""
    return max(0, min(100 - (severity_sum(flaws) - 0.3 * actor_rounds) * 5, 100))


def case_score(dim_scores: Mapping[str, float]) -> float:
    """Mean of the four dimension scores."""
    return sum(dim_scores[d] for d in DIMENSIONS) / len(DIMENSIONS)


@dataclass
class CaseResult:
    """What aggregation needs from one judged case."""

    key: str
    dims: dict = field(default_factory=dict)
    bleu: float = 0.0
    rouge_l: float = 0.0
    failed: bool = False


def _case_from_any(key: str, case) -> CaseResult:
    if isinstance(case, CaseResult):
        return case
    critique = case.get("critique") or {}
    failed = bool(case.get("failed")) or any(
        not isinstance(critique.get(d), Mapping) or "score" not in critique[d] for d in DIMENSIONS)
    dims = {} if failed else {d: critique[d]["score"] for d in DIMENSIONS}
    return CaseResult(key, dims, float(critique.get("bleu", 0.0) or 0.0),
                      float(critique.get("rouge_l", 0.0) or 0.0), failed)


def aggregate(cases) -> dict:
    """The evaluation file's `scores`: per-dimension means, avg of those, bleu/rouge_l means.

    `cases` is a mapping key -> published case dict (or CaseResult), or a list of CaseResult.
    Failed cases are excluded and counted under `failed`; `n` counts the scored ones.
    """
    items = list(cases.items()) if isinstance(cases, Mapping) else [(c.key, c) for c in cases]
    results = [_case_from_any(k, c) for k, c in items]
    ok = [r for r in results if not r.failed]
    denom = max(1, len(ok))
    scores = {d: sum(r.dims[d] for r in ok) / denom for d in DIMENSIONS}
    scores["avg"] = sum(scores[d] for d in DIMENSIONS) / len(DIMENSIONS)
    scores["bleu"] = sum(r.bleu for r in ok) / denom
    scores["rouge_l"] = sum(r.rouge_l for r in ok) / denom
    scores["n"] = len(ok)
    scores["failed"] = len(results) - len(ok)
    return scores


# ---- spread and intervals -------------------------------------------------------------------------

def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for fewer than two values)."""
    vals = [float(v) for v in values]
    if not vals:
        return (math.nan, math.nan)
    return (statistics.fmean(vals), statistics.stdev(vals) if len(vals) > 1 else 0.0)


def _percentile(sorted_vals: list[float], q: float) -> float:
    """Linear-interpolated percentile of pre-sorted values (numpy's default method)."""
    pos = (len(sorted_vals) - 1) * q
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_vals) - 1)
    return sorted_vals[lo] + (sorted_vals[hi] - sorted_vals[lo]) * (pos - lo)


def bootstrap_ci(values: Sequence[float], n_boot: int = 1000, seed: int = 0,
                 alpha: float = 0.05) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean over samples (seeded, so reports are stable)."""
    vals = [float(v) for v in values]
    if not vals:
        return (math.nan, math.nan)
    rng = random.Random(seed)
    n = len(vals)
    means = sorted(sum(vals[rng.randrange(n)] for _ in range(n)) / n for _ in range(n_boot))
    return (_percentile(means, alpha / 2), _percentile(means, 1 - alpha / 2))


def paired_bootstrap(a: Sequence[float], b: Sequence[float], n_boot: int = 1000, seed: int = 0,
                     alpha: float = 0.05) -> tuple[float, float, float]:
    """Mean of a - b over paired samples and its percentile bootstrap interval."""
    if len(a) != len(b):
        raise ValueError(f"paired_bootstrap needs equal lengths, got {len(a)} and {len(b)}")
    diffs = [float(x) - float(y) for x, y in zip(a, b)]
    if not diffs:
        return (math.nan, math.nan, math.nan)
    lo, hi = bootstrap_ci(diffs, n_boot=n_boot, seed=seed, alpha=alpha)
    return (statistics.fmean(diffs), lo, hi)

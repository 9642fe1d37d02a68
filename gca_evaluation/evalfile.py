"""Checks an evaluation file before the report reads it: a field of the wrong type is a one-line
InputError naming the file, the case and the field, never a traceback deep inside a plot or a sum.

What is checked is what the report computes with: numbers that are averaged or formatted, the
containers it walks. Extra fields and missing optional ones are fine (published files lack several).
"""
from __future__ import annotations

import math
import os

from coser.errors import InputError

DIMS = ["Storyline Consistency", "Anthropomorphism", "Character Fidelity", "Storyline Quality"]
_SCALAR = (str, int, float, bool, type(None))


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def safe_name(path: str) -> str:
    """The file name, refused when it is not valid UTF-8 (it could not be shown in a page or a plot)."""
    name = os.path.basename(path)
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        shown = name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        folder = os.path.dirname(path).encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        raise InputError(f"{os.path.join(folder, shown)}: file name is not valid UTF-8 (rename it, or move it out "
                         "of the evaluation folder)") from None
    return name


def check_evaluation(path: str, data) -> None:
    if not isinstance(data, dict) or not isinstance(data.get("cases"), dict):
        raise InputError(f"{path}: not an evaluation file (needs an object with 'cases')")
    scores = data.get("scores")
    if scores is not None:
        if not isinstance(scores, dict):
            raise InputError(f"{path}: field 'scores' should be an object of numbers")
        for k, v in scores.items():
            if v is not None and not _is_number(v):
                raise InputError(f"{path}: field 'scores.{k}' should be a finite number, got {v!r:.40}")
    for key in ("spec",):
        if data.get(key) is not None and not isinstance(data[key], dict):
            raise InputError(f"{path}: field '{key}' should be an object")
    for key in ("judge_model", "protocol"):
        if data.get(key) is not None and not isinstance(data[key], str):
            raise InputError(f"{path}: field '{key}' should be a string")
    for case_key, case in data["cases"].items():
        _check_case(f"{path}: case {case_key!r}", case)


def _check_case(where: str, case) -> None:
    if not isinstance(case, dict):
        raise InputError(f"{where}: should be an object")
    if case.get("score") is not None and not _is_number(case["score"]):
        raise InputError(f"{where}: field 'score' should be a finite number")
    sim = case.get("simulation")
    if sim is not None and not (isinstance(sim, list) and all(isinstance(m, dict) for m in sim)):
        raise InputError(f"{where}: field 'simulation' should be a list of messages")
    crit = case.get("critique")
    if crit is None:
        return
    if not isinstance(crit, dict):
        raise InputError(f"{where}: field 'critique' should be an object")
    for col in ("bleu", "rouge_l"):
        if crit.get(col) is not None and not _is_number(crit[col]):
            raise InputError(f"{where}: field 'critique.{col}' should be a finite number")
    for dim in DIMS:
        d = crit.get(dim)
        if d is None:
            continue
        if not isinstance(d, dict):
            raise InputError(f"{where}: field 'critique.{dim}' should be an object")
        if d.get("score") is not None and not _is_number(d["score"]):
            raise InputError(f"{where}: field 'critique.{dim}.score' should be a finite number")
        flaws = d.get("flaws")
        if flaws is not None and not isinstance(flaws, list):
            raise InputError(f"{where}: field 'critique.{dim}.flaws' should be a list")
        for i, flaw in enumerate(flaws or []):
            if not isinstance(flaw, dict) or not isinstance(flaw.get("severity"), _SCALAR):
                raise InputError(f"{where}: field 'critique.{dim}.flaws[{i}]' should be an object with a plain "
                                 "severity")

"""The GCA judge (re-exported from coser/judge.py, shared with the web app) and the end-of-run summary."""
from __future__ import annotations

import os

from coser import gca_prompts as P  # noqa: F401  (J.P: the judge's prompts)
from coser.judge import (DIMENSIONS, JSON_FIX_PROMPT, aggregate, case_messages, judge_case,  # noqa: F401
                         make_validator, per_sample, reference_judge_prompt, reference_judgment, reference_str,
                         simulation_str)


# ---- end-of-run summary -------------------------------------------------------------------
_COLUMNS = DIMENSIONS + ["avg", "bleu", "rouge_l"]


def _fmt(x) -> str:
    if x is None:
        return "-"
    return f"{x:.4f}" if abs(x) < 1 else f"{x:.2f}"


def summary(results: list[tuple[str, dict]], judge_model: str, usage=None) -> str:
    """Scores per run; with several runs also mean +- std over runs and a bootstrap 95% CI over samples."""
    from coser import metrics

    protocols = sorted({str(ev.get("protocol", "reference")) for _, ev in results}) or ["reference"]
    lines = [f"GCA evaluation (judge: {judge_model}; protocol: {', '.join(protocols)}; judges and protocols are "
             "never mixed: scores are only comparable under the same judge and protocol)"]
    head = ["run"] + _COLUMNS + ["n", "failed"]
    rows = []
    for path, ev in results:
        judged = [c for c in ev["cases"].values() if not c.get("failed")]
        rows.append([os.path.basename(path)] + [_fmt(ev["scores"].get(c) if judged else None) for c in _COLUMNS]
                    + [str(len(judged)), str(len(ev["cases"]) - len(judged))])
    if len(results) > 1:
        ms, ci = ["mean +- std"], ["95% CI (bootstrap)"]
        for col in _COLUMNS:
            vals = [ev["scores"].get(col) for _, ev in results if ev["scores"].get(col) is not None]
            if vals:
                mean = sum(vals) / len(vals)
                std = (sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)) ** 0.5 if len(vals) > 1 else 0.0
                ms.append(f"{_fmt(mean)} +- {_fmt(std)}")
            else:
                ms.append("-")
            # Per-sample values averaged over the runs, resampled over samples.
            runs = [per_sample(ev, col) for _, ev in results]
            keys = sorted(set.intersection(*(set(r) for r in runs))) if runs else []
            pooled = [sum(r[k] for r in runs) / len(runs) for k in keys]
            if len(pooled) > 1:
                lo, hi = metrics.bootstrap_ci(pooled, n_boot=1000, seed=0)
                ci.append(f"[{_fmt(lo)}, {_fmt(hi)}]")
            else:
                ci.append("-")
        rows += [ms + ["", ""], ci + ["", ""]]
    table = [head] + rows
    widths = [max(len(r[i]) for r in table) for i in range(len(head))]
    for i, r in enumerate(table):
        lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths)))
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    if usage is not None:
        t = usage.totals()
        lines.append(f"LLM calls: {t['calls']}, cache hits: {t['cache_hits']}, tokens: {t['prompt_tokens']} prompt + "
                     f"{t['completion_tokens']} completion (per model and stage below)")
    return "\n".join(lines)

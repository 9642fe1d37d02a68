"""Render every GCA evaluation into a static report: leaderboard, plot, per-case pages, comparisons.

Usage:  python gca_evaluation/report.py [--exp_dir exp] [--out exp]

Reads exp/evaluation/*.json (the published {scores, cases} shape; repeats carry a `-repeat=N`
suffix) and, where present, the matching exp/simulation/*.json for the reference conversations.
Writes {out}/report.html, {out}/report.md and {out}/report/ (plots and one HTML page per case).
Scores from different judge models are never ranked together: published reruns of one model
differ by ~30 points between judges, so every table and plot is per judge.
"""
from __future__ import annotations

import argparse
import difflib
import glob
import html
import os
import re
import shutil
import sys
from dataclasses import dataclass, field
from string import Template
from urllib.parse import quote

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from coser import cli, metrics  # noqa: E402
from coser.errors import InputError  # noqa: E402
from coser.io import atomic_write_text, read_json  # noqa: E402
from coser.text import remove_inner_thoughts  # noqa: E402

DIMS = metrics.DIMENSIONS
SHORT = {"Storyline Consistency": "SC", "Anthropomorphism": "AN", "Character Fidelity": "CF",
         "Storyline Quality": "SQ"}
KNOWN_TEST_STEMS = ("example_test_set", "test_set")  # longest first: one is a suffix of the other
UNKNOWN_JUDGE = "unknown"
MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*"]


# ---- loading -----------------------------------------------------------------------------------

@dataclass
class Run:
    """One evaluation file: a setting judged once (one repeat)."""

    path: str
    stem: str
    setting: str
    repeat: int
    judge: str
    scores: dict
    cases: dict
    reference: dict = field(default_factory=dict)  # case key -> simulation record, when available

    def case_score(self, key):
        case = self.cases.get(key) or {}
        if is_failed(case):
            return None
        score = case.get("score")
        if isinstance(score, (int, float)) and not isinstance(score, bool):
            return float(score)
        return metrics.case_score({d: case["critique"][d]["score"] for d in DIMS})


def is_failed(case) -> bool:
    crit = case.get("critique") if isinstance(case, dict) else None
    return (not isinstance(case, dict) or bool(case.get("failed")) or not isinstance(crit, dict)
            or any(not isinstance(crit.get(d), dict) or "score" not in crit[d] for d in DIMS))


def split_stem(stem: str) -> tuple[str, int]:
    m = re.fullmatch(r"(.*?)-repeat=(\d+)", stem)
    return (m.group(1), int(m.group(2))) if m else (stem, 0)


def _judge_from_record(rec, setting: str, repeat: int, filename: str = ""):
    """A run record names the judge only if it lists this file or its flags would have written it."""
    if not isinstance(rec, dict):
        return None
    if rec.get("judge_model"):
        return rec["judge_model"]
    flags = rec.get("flags") if isinstance(rec.get("flags"), dict) else {}
    if not flags.get("judge_model"):
        return None
    outputs = rec.get("outputs") if isinstance(rec.get("outputs"), list) else []
    if filename and any(isinstance(o, str) and os.path.basename(o) == filename for o in outputs):
        return flags["judge_model"]
    if not flags.get("actor_model"):
        return None
    test_stem = os.path.splitext(os.path.basename(flags.get("test_file") or "test_set.json"))[0]
    name = f"{test_stem}_{flags['actor_model']}" + (f"_rag={flags['retrieval']}" if flags.get("retrieval") else "")
    nth = flags.get("nth_exp", 0)
    if name == setting and (nth == repeat or nth == -1):
        return flags["judge_model"]
    return None


def find_judge(data: dict, path: str, setting: str, repeat: int) -> str:
    """Top-level judge_model, else a sidecar <stem>.run.json / .meta.json, else a matching run record."""
    if isinstance(data.get("judge_model"), str) and data["judge_model"]:
        return data["judge_model"]
    base = os.path.splitext(path)[0]
    for side in (base + ".run.json", base + ".meta.json"):
        if os.path.exists(side):
            rec = read_json(side, "run record")
            flags = rec.get("flags") if isinstance(rec, dict) and isinstance(rec.get("flags"), dict) else {}
            judge = rec.get("judge_model") if isinstance(rec, dict) else None
            judge = judge or flags.get("judge_model")  # a sidecar belongs to this one file
            if judge:
                return judge
    # cli.finish leaves run_<stage>.json in the exp folder (the evaluation folder's parent).
    eval_dir = os.path.dirname(path)
    records = sorted(glob.glob(os.path.join(eval_dir, "run_*.json")))
    records += sorted(glob.glob(os.path.join(os.path.dirname(eval_dir), "run_*.json")))
    for rec_path in records:
        try:
            judge = _judge_from_record(read_json(rec_path, "run record"), setting, repeat, os.path.basename(path))
        except InputError:
            continue  # a broken run record must not hide the scores
        if judge:
            return judge
    return UNKNOWN_JUDGE


def load_runs(exp_dir: str) -> list[Run]:
    runs = []
    for path in sorted(glob.glob(os.path.join(exp_dir, "evaluation", "*.json"))):
        name = os.path.basename(path)
        if name.startswith("run_") or name.endswith((".run.json", ".meta.json")):
            continue
        data = read_json(path, "evaluation file")
        if not isinstance(data, dict) or not isinstance(data.get("cases"), dict):
            raise InputError(f"{path}: not an evaluation file (needs an object with 'cases')")
        stem = name[:-len(".json")]
        setting, repeat = split_stem(stem)
        scores = data.get("scores") if isinstance(data.get("scores"), dict) else {}
        run = Run(path, stem, setting, repeat, find_judge(data, path, setting, repeat), scores, data["cases"])
        agg = metrics.aggregate(run.cases)
        # Published files carry their own means; recompute only what is missing.
        run.scores = {**agg, **{k: v for k, v in scores.items() if k not in ("n", "failed")}}
        run.scores["n"], run.scores["failed"] = agg["n"], agg["failed"]
        # The reference dialogues come from the test item, identical across repeats, so a repeat
        # without its own simulation file can borrow the base setting's.
        sim_path = next((p for p in (os.path.join(exp_dir, "simulation", name),
                                     os.path.join(exp_dir, "simulation", setting + ".json")) if os.path.exists(p)), None)
        if sim_path:
            sims = read_json(sim_path, "simulation file")
            for rec in sims if isinstance(sims, list) else []:
                if isinstance(rec, dict) and "book_title" in rec:
                    run.reference[f"{rec['book_title']}-{rec.get('i_p')}-{rec.get('i_c')}"] = rec
        runs.append(run)
    return runs


def describe(setting: str, all_settings: list[str]) -> tuple[str, str]:
    """(model, retrieval) from `{test stem}_{actor model}[_rag=mode]`."""
    actor, _, rag = setting.partition("_rag=")
    for stem in KNOWN_TEST_STEMS:
        if actor.startswith(stem + "_"):
            return actor[len(stem) + 1:], rag or "none"
    prefix = os.path.commonprefix(all_settings) if len(all_settings) > 1 else ""
    prefix = prefix[:prefix.rfind("_") + 1] if "_" in prefix else ""
    return (actor[len(prefix):] or actor), rag or "none"


# ---- statistics ----------------------------------------------------------------------------------

@dataclass
class Row:
    """One leaderboard line: a setting under one judge, over its repeats."""

    setting: str
    model: str
    retrieval: str
    judge: str
    runs: list
    cols: dict = field(default_factory=dict)  # column -> (mean, std or None)
    ci: tuple = (float("nan"), float("nan"))
    per_case: dict = field(default_factory=dict)  # key -> case score averaged over repeats


COLUMNS = list(DIMS) + ["avg", "bleu", "rouge_l"]
EXTRA = ["rouge_l_rougescore", "sacrebleu"]
EXTRA_NAMES = {"rouge_l_rougescore": "ROUGE-L (rouge-score)", "sacrebleu": "sacreBLEU (sentence)"}


def build_rows(runs: list[Run]) -> dict[str, list[Row]]:
    settings = sorted({r.setting for r in runs})
    groups: dict[str, dict[str, list[Run]]] = {}
    for r in runs:
        groups.setdefault(r.judge, {}).setdefault(r.setting, []).append(r)
    out = {}
    for judge, by_setting in sorted(groups.items()):
        rows = []
        for setting, reps in by_setting.items():
            reps.sort(key=lambda r: r.repeat)
            model, rag = describe(setting, settings)
            row = Row(setting, model, rag, judge, reps)
            for col in COLUMNS:
                vals = [r.scores.get(col) for r in reps if isinstance(r.scores.get(col), (int, float))]
                if vals:
                    row.cols[col] = metrics.mean_std(vals) if len(reps) > 1 else (float(vals[0]), None)
            for col in EXTRA:
                vals = [c["critique"][col] for r in reps for c in r.cases.values()
                        if not is_failed(c) and isinstance(c["critique"].get(col), (int, float))]
                if vals:
                    row.cols[col] = (sum(vals) / len(vals), None)
            per_key: dict[str, list] = {}
            for r in reps:
                for key in r.cases:
                    s = r.case_score(key)
                    if isinstance(s, (int, float)):
                        per_key.setdefault(key, []).append(float(s))
            row.per_case = {k: sum(v) / len(v) for k, v in per_key.items()}
            if len(row.per_case) > 1:
                row.ci = metrics.bootstrap_ci(list(row.per_case.values()))
            rows.append(row)
        rows.sort(key=lambda x: -x.cols.get("avg", (float("-inf"),))[0])
        out[judge] = rows
    return out


def comparisons(rows: list[Row]) -> list[tuple]:
    """Paired bootstrap of case scores for each pair of settings that share case keys."""
    found = []
    for i, a in enumerate(rows):
        for b in rows[i + 1:]:
            keys = sorted(set(a.per_case) & set(b.per_case))
            if len(keys) >= 2:
                diff, lo, hi = metrics.paired_bootstrap([a.per_case[k] for k in keys], [b.per_case[k] for k in keys])
                found.append((a, b, len(keys), diff, lo, hi))
    return found


# ---- plot ------------------------------------------------------------------------------------------

def plot(rows: list[Row], judge: str, path: str) -> None:
    """Score per model, one marker per retrieval setting, like the paper's model comparison."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = []
    for r in rows:
        if r.model not in models:
            models.append(r.model)
    rags = sorted({r.retrieval for r in rows}, key=lambda x: (x != "none", x))
    fig, ax = plt.subplots(figsize=(max(5.0, 1.1 * len(models) + 2.5), 4.0), dpi=120)
    for j, rag in enumerate(rags):
        pts = [(models.index(r.model), r.cols["avg"]) for r in rows if r.retrieval == rag and "avg" in r.cols]
        if not pts:
            continue
        xs = [x + (j - (len(rags) - 1) / 2) * 0.12 for x, _ in pts]
        ys = [m for _, (m, _) in pts]
        errs = [s or 0.0 for _, (_, s) in pts]
        ax.errorbar(xs, ys, yerr=errs if any(errs) else None, fmt=MARKERS[j % len(MARKERS)],
                    markersize=8, capsize=3, label=f"retrieval: {rag}")
    ax.set_xlim(-0.6, len(models) - 0.4)
    ax.margins(y=0.15)
    ax.set_xticks(range(len(models)))
    ax.set_xticklabels(models, rotation=20, ha="right")
    ax.set_ylabel("GCA average score")
    ax.set_title(f"Model comparison (judge: {judge})")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)


# ---- flaw placement -------------------------------------------------------------------------------

_WORD = re.compile(r"[\w']+", re.UNICODE)
_QUOTED = re.compile(r"[\"“”‘’]([^\"“”‘’]{6,})[\"“”‘’]|'([^']{12,})'")
_STOP = set("the a an and or of to in on at is are was were be it its this that with for as by his her "
            "their they he she i you we not but from which who when than then".split())


def _norm(text: str) -> str:
    return " ".join(_WORD.findall(text.lower()))


def place_flaw(instance: str, lines: list[str]) -> int | None:
    """Index of the line the flaw's `instance` text best matches, or None if nothing fits.

    A quoted fragment found verbatim wins; otherwise the share of the instance's content words
    that the line contains, tie-broken by difflib similarity.
    """
    if not instance or not lines:
        return None
    normed = [_norm(ln) for ln in lines]
    for m in _QUOTED.finditer(instance):
        frag = _norm(m.group(1) or m.group(2))
        hits = [i for i, ln in enumerate(normed) if frag and frag in ln]
        if hits:
            return hits[0]
    words = {w for w in _norm(instance).split() if w not in _STOP and len(w) > 2}
    if not words:
        return None
    best, best_key = None, (0.0, 0.0)
    for i, ln in enumerate(normed):
        lw = set(ln.split())
        if not lw:
            continue
        share = len(words & lw) / len(words)
        key = (share, difflib.SequenceMatcher(None, _norm(instance), ln).ratio())
        if key > best_key:
            best, best_key = i, key
    return best if best_key[0] >= 0.2 else None


# ---- rendering ---------------------------------------------------------------------------------------

CSS = """body{font-family:system-ui,sans-serif;margin:2em;color:#222;max-width:1400px}
table{border-collapse:collapse;margin:1em 0;font-size:14px}th,td{border:1px solid #ccc;padding:4px 8px;text-align:right}
th{background:#f3f3f3}td.l,th.l{text-align:left}.judge{color:#555;font-size:90%}
.cols{display:flex;gap:2em}.cols>div{flex:1;min-width:0}.msg{margin:.4em 0;padding:.3em .5em;border-left:3px solid #ddd}
.env{background:#f6f6f6;font-style:italic}.line{white-space:pre-wrap;margin:0}.flawed{background:#fff1b8}
.tag{display:inline-block;font-size:11px;background:#d9534f;color:#fff;border-radius:3px;padding:0 4px;margin-left:4px}
.who{font-weight:bold}"""

PAGE = Template("""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>$title</title><style>$css</style></head>
<body>
$body
</body></html>
""")

# onload stamps the decoded width into the DOM so a headless browser test can tell it really loaded.
IMG = Template('<img class="plot" src="$src" alt="$alt" onload="this.dataset.loaded=this.naturalWidth">')


def esc(x) -> str:
    return html.escape(str(x))


def fmt(cell, digits=2) -> str:
    if cell is None:
        return "-"
    mean, std = cell
    if not isinstance(mean, (int, float)) or isinstance(mean, bool) or mean != mean:  # None, junk, NaN
        return "-"
    return f"{mean:.{digits}f}" + (f" ± {std:.{digits}f}" if std is not None else "")


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._=-]+", "_", text).strip("_") or "x"


def case_href(judge: str, run: Run, key: str) -> str:
    return "/".join(["report", "cases", slug(judge), slug(run.stem), slug(key) + ".html"])


def table_rows(rows: list[Row], extra: list[str]) -> tuple[list[str], list[list[str]]]:
    """Header and formatted cells shared by the HTML and Markdown leaderboards."""
    head = ["#", "setting", "model", "retrieval"] + list(DIMS) + ["avg", "avg 95% CI", "BLEU", "ROUGE-L"]
    head += [EXTRA_NAMES[e] for e in extra]
    head += ["n", "failed", "repeats", "judge"]
    body = []
    for i, r in enumerate(rows, 1):
        ci = "-" if r.ci[0] != r.ci[0] else f"[{r.ci[0]:.2f}, {r.ci[1]:.2f}]"
        cells = [str(i), r.setting, r.model, r.retrieval] + [fmt(r.cols.get(d)) for d in DIMS]
        cells += [fmt(r.cols.get("avg")), ci, fmt(r.cols.get("bleu"), 4), fmt(r.cols.get("rouge_l"), 4)]
        cells += [fmt(r.cols.get(e), 4) for e in extra]
        # n counts distinct samples (not sample x repeat); failed counts failed judgings over repeats.
        failed = sum(int(x.scores.get("failed", 0)) for x in r.runs)
        cells += [str(len(r.per_case)), str(failed), str(len(r.runs)), r.judge]
        body.append(cells)
    return head, body


def html_table(head, body, cls="", left=(1, 2, 3)) -> str:
    th = "".join(f'<th class="{"l" if i in left else ""}">{esc(h)}</th>' for i, h in enumerate(head))
    trs = "".join("<tr>" + "".join(f'<td class="{"l" if i in left else ""}">{c}</td>' for i, c in enumerate(row))
                  + "</tr>\n" for row in body)
    return f'<table class="{cls}"><thead><tr>{th}</tr></thead><tbody>\n{trs}</tbody></table>'


def md_table(head, body) -> str:
    def clean(c):
        return re.sub(r"<[^>]+>", "", str(c)).replace("|", "\\|")
    lines = ["| " + " | ".join(clean(h) for h in head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(clean(c) for c in row) + " |" for row in body]
    return "\n".join(lines)


def render_case(run: Run, key: str, case: dict, judge: str) -> str:
    """Simulated conversation beside the reference, flaws highlighted on the line they cite."""
    sim = case.get("simulation") or [{"role": "", "content": ln} for ln in
                                      (case.get("simulation_str") or "").split("\n\n")]
    lines, owners = [], []
    for mi, m in enumerate(sim):
        for ln in str(m.get("content", "")).split("\n"):
            lines.append(ln)
            owners.append(mi)
    crit = case.get("critique") or {}
    flaws = []
    for d in DIMS:
        for f in ((crit.get(d) or {}).get("flaws") or []) if isinstance(crit.get(d), dict) else []:
            if isinstance(f, dict):
                flaws.append((d, f, place_flaw(str(f.get("instance", "")), lines)))
    at: dict[int, list[int]] = {}
    for fi, (_, _, li) in enumerate(flaws):
        if li is not None:
            at.setdefault(li, []).append(fi)

    left, li = [], 0
    for mi, m in enumerate(sim):
        parts = []
        for ln in str(m.get("content", "")).split("\n"):
            tags = "".join(f'<a class="tag" href="#flaw-{fi + 1}">F{fi + 1} {SHORT[flaws[fi][0]]}'
                           f'/{esc(flaws[fi][1].get("severity"))}</a>' for fi in at.get(li, []))
            cls = "line flawed" if li in at else "line"
            parts.append(f'<p class="{cls}" id="line-{li}">{esc(ln)}{tags}</p>')
            li += 1
        env = " env" if m.get("role") == "Environment" else ""
        left.append(f'<div class="msg{env}"><div class="who">{esc(m.get("role", ""))}</div>{"".join(parts)}</div>')

    rec = run.reference.get(key)
    right = []
    if rec:
        for d in (rec.get("circumstance") or {}).get("dialogues") or []:
            who, msg = d.get("character", ""), str(d.get("message", ""))
            msg = msg if who == "Environment" else remove_inner_thoughts(msg, eval_mode=True)
            env = " env" if who == "Environment" else ""
            right.append(f'<div class="msg{env}"><div class="who">{esc(who)}</div><p class="line">{esc(msg)}</p></div>')
    else:
        right.append("<p>Reference conversation not available (no matching file in exp/simulation/).</p>")

    head = ["#", "dimension", "type", "severity", "instance", "line"]
    body = [[f'<span id="flaw-{i}">F{i}</span>', esc(d), esc(f.get("type", "")), esc(f.get("severity")),
             esc(f.get("instance", "")), "-" if li is None else f'<a href="#line-{li}">{li + 1}</a>']
            for i, (d, f, li) in enumerate(flaws, 1)]
    dim_head = list(DIMS) + ["case score", "BLEU", "ROUGE-L", "judge"]
    dim_body = [[fmt((crit[d]["score"], None)) if isinstance(crit.get(d), dict) and "score" in crit[d] else "-"
                 for d in DIMS] + [fmt((case.get("score"), None)), fmt((crit.get("bleu", float("nan")), None), 4),
                                   fmt((crit.get("rouge_l", float("nan")), None), 4), esc(judge)]]
    scenario = ((rec or {}).get("circumstance") or {}).get("scenario", "")
    status = ""
    if is_failed(case):
        # Failures are data: show why and what the judge actually said.
        status = "<p><b>Judging failed</b>: excluded from averages.</p>" + "".join(
            f"<p>{esc(f.get('dimension', ''))}: {esc(f.get('reason', ''))}</p><pre>{esc(str(f.get('fail_to_parse_response', f.get('raw', '')))[:4000])}</pre>"
            for f in case.get("failures") or [] if isinstance(f, dict))
    up = "../" * 4
    body_html = (f'<p><a href="{up}report.html">back to the report</a></p>'
                 f'<h1>{esc(key)}</h1><p class="judge">setting {esc(run.stem)} · judge {esc(judge)}</p>{status}'
                 + (f"<p>{esc(scenario)}</p>" if scenario else "")
                 + html_table(dim_head, dim_body, "scores", left=())
                 + f"<h2>Flaws ({len(flaws)})</h2>" + html_table(head, body, "flaws", left=(1, 2, 4))
                 + '<div class="cols"><div><h2>Simulation</h2>' + "".join(left)
                 + '</div><div><h2>Reference (book)</h2>' + "".join(right) + "</div></div>")
    return PAGE.substitute(title=esc(f"{key} · {run.stem}"), css=CSS, body=body_html)


def render(runs: list[Run], out_dir: str) -> tuple[str, str]:
    groups = build_rows(runs)
    report_dir = os.path.join(out_dir, "report")
    # Pages and plots of evaluations or judges that no longer exist must not linger.
    if os.path.isdir(os.path.join(report_dir, "cases")):
        shutil.rmtree(os.path.join(report_dir, "cases"))
    for old in glob.glob(os.path.join(report_dir, "plot_*.png")):
        os.remove(old)
    os.makedirs(report_dir, exist_ok=True)
    html_parts = ["<h1>GCA evaluation report</h1>",
                  f"<p>{len(runs)} evaluation file(s). Scores of different judge models are not comparable, "
                  "so each judge has its own leaderboard. BLEU and ROUGE-L are the published recipes "
                  "(NLTK sentence BLEU; rouge-chinese ROUGE-L F); intervals are 95% bootstrap over samples; "
                  "± is the standard deviation over repeats.</p>"]
    md = ["# GCA evaluation report", "",
          f"{len(runs)} evaluation file(s). One leaderboard per judge model (scores of different judges are "
          "not comparable). 95% CI: bootstrap over samples; ±: std over repeats.", ""]
    if not runs:
        html_parts.append("<p>No evaluations found under evaluation/.</p>")
        md.append("No evaluations found.")
    for judge, rows in groups.items():
        js = slug(judge)
        extra = [e for e in EXTRA if any(e in r.cols for r in rows)]
        head, body = table_rows(rows, extra)
        png = f"plot_{js}.png"
        plot(rows, judge, os.path.join(report_dir, png))
        html_parts += [f'<h2 id="judge-{esc(js)}">Judge: {esc(judge)}</h2>',
                       html_table(head, [[esc(c) for c in row] for row in body], "leaderboard"),
                       IMG.substitute(src=f"report/{quote(png)}", alt=esc(f"model comparison, judge {judge}"))]
        md += [f"## Judge: {judge}", "", md_table(head, body), "", f"![model comparison, judge {judge}](report/{quote(png)})", ""]
        comps = comparisons(rows)
        if comps:
            ch = ["A", "B", "shared cases", "mean case-score difference (A − B)", "95% CI", "judge"]
            cb = [[a.setting, b.setting, str(n), f"{d:+.2f}", f"[{lo:+.2f}, {hi:+.2f}]", judge]
                  for a, b, n, d, lo, hi in comps]
            html_parts += ["<h3>Paired comparisons</h3>", html_table(ch, [[esc(c) for c in r] for r in cb], "paired", (0, 1))]
            md += ["### Paired comparisons", "", md_table(ch, cb), ""]
        html_parts.append("<h3>Cases</h3>")
        md += ["### Cases", ""]
        for r in rows:
            for run in r.runs:
                links = []
                for key, case in sorted(run.cases.items()):
                    href = case_href(judge, run, key)
                    page = render_case(run, key, case if isinstance(case, dict) else {}, judge)
                    atomic_write_text(os.path.join(out_dir, *href.split("/")), page)
                    score = "failed" if is_failed(case) else fmt((metrics.case_score(
                        {d: case["critique"][d]["score"] for d in DIMS}), None), 1)
                    links.append((key, href, score))
                html_parts.append(f"<p><b>{esc(run.stem)}</b> (judge {esc(judge)}): " + ", ".join(
                    f'<a href="{quote(h)}">{esc(k)}</a> ({esc(s)})' for k, h, s in links) + "</p>")
                md.append(f"- **{run.stem}** (judge {judge}): " + ", ".join(
                    f"[{k}]({quote(h)}) ({s})" for k, h, s in links))
        md.append("")
    html_path, md_path = os.path.join(out_dir, "report.html"), os.path.join(out_dir, "report.md")
    atomic_write_text(html_path, PAGE.substitute(title="GCA evaluation report", css=CSS, body="\n".join(html_parts)))
    atomic_write_text(md_path, "\n".join(md) + "\n")
    return html_path, md_path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Render exp/evaluation/*.json into exp/report.html and "
                                                 "exp/report.md (leaderboards per judge, plot, case pages).")
    parser.add_argument("--exp_dir", default="exp", help="folder holding evaluation/ and simulation/ (default: exp)")
    parser.add_argument("--out", default=None, help="where report.html, report.md and report/ go (default: --exp_dir)")
    args = parser.parse_args(argv)
    if not os.path.isdir(os.path.join(args.exp_dir, "evaluation")):
        raise InputError(f"{os.path.join(args.exp_dir, 'evaluation')}: no such folder (run gca_evaluation/main.py first)")
    runs = load_runs(args.exp_dir)
    html_path, md_path = render(runs, args.out or args.exp_dir)
    judges = sorted({r.judge for r in runs})
    print(f"report: {html_path} and {md_path} ({len(runs)} evaluation(s); judges: {', '.join(judges) or '-'})")
    return 0


if __name__ == "__main__":
    cli.main(lambda: main())

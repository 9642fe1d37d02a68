"""Render every GCA evaluation into a static report viewer: leaderboards, case tables, case pages.

Usage:  python gca_evaluation/report.py [--exp_dir exp] [--out exp] [--cache_dir DIR]

Reads exp/evaluation/*.json (the published {scores, cases} shape; repeats carry a `-repeat=N`
suffix, files written by this toolkit also carry a `spec`) and, where present, the matching
exp/simulation/*.json. Writes {out}/report.html, {out}/report.md and {out}/report/ (plots, one page
per case, one side-by-side page per case key, static CSS/JS). The pages are plain files: open
report.html from disk; nothing is fetched from a server or the internet.

Results are grouped by (judge, protocol, test-set hash) and never ranked across groups; inside a
group only settings judged on the same samples are ranked. The HTML comes from the Jinja2
templates in gca_evaluation/templates/ (autoescaped: every text from a file is escaped).
"""
from __future__ import annotations

import argparse
import difflib
import glob
import hashlib
import json
import os
import re
import shutil
import sqlite3
import sys
from dataclasses import dataclass, field
from urllib.parse import quote

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from coser import cli, metrics, stats  # noqa: E402
from coser.errors import InputError  # noqa: E402
from coser.io import atomic_write_text, read_json  # noqa: E402
from gca_evaluation.evalfile import check_evaluation, safe_name  # noqa: E402
from coser.text import remove_inner_thoughts  # noqa: E402

DIMS = metrics.DIMENSIONS
SHORT = {"Storyline Consistency": "SC", "Anthropomorphism": "AN", "Character Fidelity": "CF",
         "Storyline Quality": "SQ"}
LEGEND = {  # what each dimension measures (METHOD 4.7), in a line each
    "Storyline Consistency": "do the characters' reactions agree with the book's conversation?",
    "Anthropomorphism": "do the characters behave like believable people (self-identity, emotion, persona)?",
    "Character Fidelity": "do language, knowledge, personality and relations match the book's character?",
    "Storyline Quality": "does the conversation flow and stay logically consistent as a story?",
}
KNOWN_TEST_STEMS = ("example_test_set", "test_set")  # longest first: one is a suffix of the other
UNKNOWN_JUDGE = "unknown"
MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*"]
TEMPLATES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "templates")
STATIC_FILES = ("report.css", "report.js")


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
    spec: dict = field(default_factory=dict)
    protocol: str = "reference"
    test_hash: str = ""
    model: str = ""
    model_source: str = "spec"

    def case_score(self, key):
        case = self.cases.get(key) or {}
        if is_failed(case):
            return None
        score = case.get("score")
        if isinstance(score, (int, float)) and not isinstance(score, bool):
            return float(score)
        return metrics.case_score({d: case["critique"][d]["score"] for d in DIMS})

    @property
    def group(self) -> tuple:
        return (self.judge, self.protocol, self.test_hash)


def is_failed(case) -> bool:
    crit = case.get("critique") if isinstance(case, dict) else None
    return (not isinstance(case, dict) or bool(case.get("failed")) or not isinstance(crit, dict)
            or any(not isinstance(crit.get(d), dict) or "score" not in crit[d] for d in DIMS))


def split_stem(stem: str) -> tuple[str, int]:
    m = re.fullmatch(r"(.*?)-repeat=(\d+)", stem)
    return (m.group(1), int(m.group(2))) if m else (stem, 0)


def _get(d, *path):
    for p in path:
        if not isinstance(d, dict):
            return None
        d = d.get(p)
    return d


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
    test_file = flags.get("test_file") if isinstance(flags.get("test_file"), str) else None
    test_stem = os.path.splitext(os.path.basename(test_file or "test_set.json"))[0]
    name = f"{test_stem}_{flags['actor_model']}" + (f"_rag={flags['retrieval']}" if flags.get("retrieval") else "")
    nth = flags.get("nth_exp", 0)
    if name == setting and (nth == repeat or nth == -1):
        return flags["judge_model"]
    return None


def find_judge(data: dict, path: str, setting: str, repeat: int) -> str:
    """spec judge, top-level judge_model, a sidecar <stem>.run.json / .meta.json, else a matching run record.
    Only a non-empty string names a judge: anything else in a hand-edited record is ignored."""
    judge = _find_judge(data, path, setting, repeat)
    return judge if isinstance(judge, str) and judge else UNKNOWN_JUDGE


def _find_judge(data: dict, path: str, setting: str, repeat: int):
    judge = _get(data, "spec", "roles", "judge", "model")
    if isinstance(judge, str) and judge:
        return judge
    if isinstance(data.get("judge_model"), str) and data["judge_model"]:
        return data["judge_model"]
    base = os.path.splitext(path)[0]
    for side in (base + ".run.json", base + ".meta.json"):
        if os.path.exists(side):
            rec = read_json(side, "run record")
            flags = rec.get("flags") if isinstance(rec, dict) and isinstance(rec.get("flags"), dict) else {}
            judge = rec.get("judge_model") if isinstance(rec, dict) else None
            judge = judge or flags.get("judge_model")  # a sidecar belongs to this one file
            if isinstance(judge, str) and judge:
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
        if isinstance(judge, str) and judge:
            return judge
    return UNKNOWN_JUDGE


def keys_hash(keys) -> str:
    """Identity of a sample set for files without a spec: a hash of the sorted case keys."""
    return "keys:" + hashlib.sha256("\n".join(sorted(keys)).encode("utf-8")).hexdigest()[:12]


def load_runs(exp_dir: str) -> list[Run]:
    runs = []
    for path in sorted(glob.glob(os.path.join(exp_dir, "evaluation", "*.json"))):
        name = safe_name(path)
        if name.startswith("run_") or name.endswith((".run.json", ".meta.json")):
            continue
        data = read_json(path, "evaluation file")
        check_evaluation(path, data)
        stem = name[:-len(".json")]
        setting, repeat = split_stem(stem)
        scores = data.get("scores") if isinstance(data.get("scores"), dict) else {}
        run = Run(path, stem, setting, repeat, find_judge(data, path, setting, repeat), scores, data["cases"])
        agg = metrics.aggregate(run.cases)
        # Published files carry their own means; recompute only what is missing.
        run.scores = {**agg, **{k: v for k, v in scores.items() if k not in ("n", "failed")}}
        run.scores["n"], run.scores["failed"] = agg["n"], agg["failed"]
        run.spec = data.get("spec") if isinstance(data.get("spec"), dict) else {}
        run.protocol = str(run.spec.get("protocol") or data.get("protocol") or "reference")
        th = _get(run.spec, "test_set", "hash")
        run.test_hash = str(th) if th else keys_hash(run.cases)
        actor = _get(run.spec, "roles", "actor", "model")
        if isinstance(actor, str) and actor:
            run.model = actor
        else:
            run.model_source = "reference file, no spec"
        # The reference dialogues come from the test item, identical across repeats, so a repeat
        # without its own simulation file can borrow the base setting's.
        recorded = run.spec.get("simulation_file") if isinstance(run.spec.get("simulation_file"), str) else None
        sim_path = next((p for p in ((os.path.join(exp_dir, recorded) if recorded else ""),
                                     os.path.join(exp_dir, "simulation", name),
                                     os.path.join(exp_dir, "simulation", setting + ".json")) if os.path.exists(p)), None)
        if sim_path:
            sims = read_json(sim_path, "simulation file")
            if isinstance(sims, dict):  # a spec'd simulation file may wrap its records
                sims = sims.get("records") or sims.get("simulations") or sims.get("items") or []
            for rec in sims if isinstance(sims, list) else []:
                if isinstance(rec, dict) and "book_title" in rec:
                    run.reference[f"{rec['book_title']}-{rec.get('i_p')}-{rec.get('i_c')}"] = rec
        runs.append(run)
    settings = sorted({r.setting for r in runs})
    for run in runs:
        if not run.model:
            run.model = describe(run.setting, settings)[0]
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


def retrieval_of(run: Run) -> str:
    rag = run.spec.get("retrieval") if run.spec else None
    if rag is None:
        rag = _get(run.spec, "settings", "retrieval")
    if rag is None:
        return describe(run.setting, [run.setting])[1]
    return str(rag) if rag else "none"


# ---- statistics ----------------------------------------------------------------------------------

@dataclass
class Row:
    """One leaderboard line: a setting under one group (judge, protocol, test set), over its repeats."""

    setting: str
    model: str
    retrieval: str
    judge: str
    runs: list
    model_source: str = "spec"
    cols: dict = field(default_factory=dict)  # column -> (mean, std or None)
    ci: tuple = (float("nan"), float("nan"))
    per_case: dict = field(default_factory=dict)  # key -> case score averaged over repeats


@dataclass
class Group:
    judge: str
    protocol: str
    test_hash: str
    ranked: list  # rows sharing the group's main sample set, best first
    others: list  # rows on another sample set: listed with their n, never ranked

    @property
    def rows(self):
        return self.ranked + self.others

    @property
    def gid(self) -> str:
        return slug(f"{self.judge}__{self.protocol}__{self.test_hash}")

    @property
    def title(self) -> str:
        return f"judge {self.judge} · protocol {self.protocol} · test set {self.test_hash}"


COLUMNS = list(DIMS) + ["avg", "bleu", "rouge_l"]
EXTRA = ["rouge_l_rougescore", "sacrebleu"]
EXTRA_NAMES = {"rouge_l_rougescore": "ROUGE-L (rouge-score)", "sacrebleu": "sacreBLEU (sentence)"}


def make_row(setting: str, reps: list[Run]) -> Row:
    reps.sort(key=lambda r: r.repeat)
    row = Row(setting, reps[0].model, retrieval_of(reps[0]), reps[0].judge, reps, reps[0].model_source)
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
    return row


def build_groups(runs: list[Run]) -> list[Group]:
    by_group: dict[tuple, dict[str, list[Run]]] = {}
    for r in runs:
        by_group.setdefault(r.group, {}).setdefault(r.setting, []).append(r)
    out = []
    for (judge, protocol, th), by_setting in sorted(by_group.items()):
        rows = [make_row(s, reps) for s, reps in sorted(by_setting.items())]
        # The samples a row covers: its case keys (failed ones included: they were asked).
        sets = [frozenset(k for r in row.runs for k in r.cases) for row in rows]
        counts: dict[frozenset, int] = {}
        for s in sets:
            counts[s] = counts.get(s, 0) + 1
        main = max(counts, key=lambda s: (counts[s], len(s), sorted(s)))
        ranked = [row for row, s in zip(rows, sets) if s == main]
        others = [row for row, s in zip(rows, sets) if s != main]
        ranked.sort(key=lambda x: -x.cols.get("avg", (float("-inf"),))[0])
        out.append(Group(judge, protocol, th, ranked, others))
    return out


def build_rows(runs: list[Run]) -> dict[str, list[Row]]:
    """Rows per judge (all groups of that judge, ranked rows first); kept for callers of the old API."""
    out: dict[str, list[Row]] = {}
    for g in build_groups(runs):
        out.setdefault(g.judge, []).extend(g.rows)
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


_NOT_IDENTITY = {"judge", "judge_model", "toolkit", "version", "git", "created", "time", "repeat", "repeat_id",
                 "outputs", "usage", "duration", "evaluation_file"}


def sim_identity(row: Row) -> str:
    """What a row's simulations are, judge aside: its spec without judge/run details, else its setting name."""
    spec = row.runs[0].spec
    if not spec:
        return "setting:" + row.setting

    def strip(d):
        if isinstance(d, dict):
            return {k: strip(v) for k, v in d.items() if k not in _NOT_IDENTITY}
        return d
    return "spec:" + json.dumps(strip(spec), sort_keys=True, ensure_ascii=False)


def agreement(groups: list[Group]) -> list[dict]:
    """Judges that scored the same simulations: rank agreement over settings, case-level correlation, means.

    Per (protocol, test set), for each pair of judges: the settings both judged (ranked rows only,
    matched by their spec without the judge, or by name for files without a spec), Kendall's tau-b
    and Spearman's rho between the two judges' setting averages, Pearson between their per-case
    averages over (setting, case) pairs both judged, and each judge's mean there.
    """
    by_set: dict[tuple, list[Group]] = {}
    for g in groups:
        by_set.setdefault((g.protocol, g.test_hash), []).append(g)
    out = []
    for (protocol, th), gs in sorted(by_set.items()):
        if len(gs) < 2:
            continue
        rows_of = {}
        for g in gs:
            rows = [r for r in g.ranked if "avg" in r.cols]
            idents = [sim_identity(r) for r in rows]
            if len(set(idents)) < len(idents):  # specs that do not tell settings apart: fall back to names
                idents = [i + "|" + r.setting for i, r in zip(idents, rows)]
            rows_of[g.judge] = dict(zip(idents, rows))
        pairs, panel = [], []
        for i, a in enumerate(gs):
            for b in gs[i + 1:]:
                ra, rb = rows_of[a.judge], rows_of[b.judge]
                common = sorted(set(ra) & set(rb))
                xa = [ra[s].cols["avg"][0] for s in common]
                xb = [rb[s].cols["avg"][0] for s in common]
                ca, cb = [], []
                for s in common:
                    for k in sorted(set(ra[s].per_case) & set(rb[s].per_case)):
                        ca.append(ra[s].per_case[k])
                        cb.append(rb[s].per_case[k])
                pairs.append({"a": a.judge, "b": b.judge, "settings": len(common), "cases": len(ca),
                              "tau": stats.kendall_tau(xa, xb), "rho": stats.spearman_rho(xa, xb),
                              "pearson": stats.pearson(ca, cb),
                              "mean_a": sum(ca) / len(ca) if ca else float("nan"),
                              "mean_b": sum(cb) / len(cb) if cb else float("nan")})
        judges = [g.judge for g in gs]
        shared = set.intersection(*(set(rows_of[j]) for j in judges))
        for ident in shared:
            vals = {j: rows_of[j][ident].cols["avg"][0] for j in judges}
            first = rows_of[judges[0]][ident]
            panel.append((f"{first.model} · {first.setting}",
                          {"per_judge": vals, "mean": sum(vals.values()) / len(vals)}))
        means = {j: (sum(r.cols["avg"][0] for r in rows_of[j].values()) / len(rows_of[j]) if rows_of[j]
                     else float("nan")) for j in judges}
        out.append({"protocol": protocol, "test_hash": th, "judges": judges, "pairs": pairs,
                    "panel": sorted(panel, key=lambda kv: -kv[1]["mean"]), "judge_means": means})
    return out


# ---- plot ------------------------------------------------------------------------------------------

def plot(rows: list[Row], title: str, path: str) -> None:
    """Average score per setting with its 95% bootstrap interval over samples, n under each label."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def plain(text):  # matplotlib reads $...$ as math: names from files are plain text
        return str(text).replace("$", r"\$")

    rags = sorted({r.retrieval for r in rows}, key=lambda x: (x != "none", x))
    fig, ax = plt.subplots(figsize=(max(5.0, 1.2 * len(rows) + 2.5), 4.2), dpi=110)
    labels = []
    for i, r in enumerate(rows):
        labels.append(plain(f"{r.model}\nretrieval {r.retrieval}\nn={len(r.per_case)}"))
        if "avg" not in r.cols:
            continue
        m = r.cols["avg"][0]
        lo, hi = r.ci
        yerr = None if lo != lo else [[max(0.0, m - lo)], [max(0.0, hi - m)]]
        j = rags.index(r.retrieval)
        ax.errorbar([i], [m], yerr=yerr, fmt=MARKERS[j % len(MARKERS)], markersize=8, capsize=4,
                    color=f"C{j}", label=plain(f"retrieval: {r.retrieval}"))
    handles, names = ax.get_legend_handles_labels()
    uniq = dict(zip(names, handles))
    ax.set_xlim(-0.6, len(rows) - 0.4)
    ax.margins(y=0.15)
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels(labels, fontsize=8)
    ax.set_ylabel("GCA average score (0-100)")
    ax.set_title(plain(title) + "\nerror bars: 95% bootstrap interval over samples", fontsize=9)
    ax.grid(axis="y", alpha=0.3)
    if uniq:
        ax.legend(uniq.values(), uniq.keys(), fontsize=8)
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)


# ---- flaw placement -------------------------------------------------------------------------------

_WORD = re.compile(r"[\w']+", re.UNICODE)
_QUOTED = re.compile(r"[\"“”‘’]([^\"“”‘’]{6,})[\"“”‘’]|'([^']{12,})'")
# Words too common to place a flaw by: function words and the vocabulary judges use about any line.
_STOP = set("""the a an and or of to in on at is are was were be been being it its this that these those with for as
by his her their they he she i you we not but from which who whom when than then there here have has had do does did
so such too very can could would should will shall may might must just like also into onto about over more most
some any all each other own same only out up down off again further once what where why how own our your them him
me my mine says said say speaks speak speaking line lines character characters scene conversation response responses
reply dialogue tone style does doesn't isn't lacks lack seems seem feel feels rather quite overall whole shows show
being""".split())
GUESS_MIN_WORDS = 3     # distinct content words shared with the line
GUESS_MIN_SHARE = 0.5   # ... and at least half of the flaw's content words


def _norm(text: str) -> str:
    return " ".join(_WORD.findall(text.lower()))


def _content_words(text: str) -> set:
    return {w for w in _norm(text).split() if w not in _STOP and len(w) > 2}


def locate_flaw(instance: str, lines: list[str]) -> tuple[int | None, str]:
    """(index of the line the flaw's `instance` refers to, how): how is "quoted", "guess" or "unplaced".

    A quoted fragment found verbatim in a line is "quoted". Otherwise a line that shares at least
    GUESS_MIN_WORDS distinct content words (common words never count) and GUESS_MIN_SHARE of the
    instance's content words is a "guess", when exactly one line is best. Anything else stays unplaced.
    """
    if not instance or not lines:
        return None, "unplaced"
    normed = [_norm(ln) for ln in lines]
    for m in _QUOTED.finditer(instance):
        frag = _norm(m.group(1) or m.group(2))
        hits = [i for i, ln in enumerate(normed) if frag and frag in ln]
        if hits:
            return hits[0], "quoted"
    words = _content_words(instance)
    if len(words) < GUESS_MIN_WORDS:
        return None, "unplaced"
    scored = []
    for i, ln in enumerate(normed):
        common = words & set(ln.split())
        if len(common) >= GUESS_MIN_WORDS and len(common) / len(words) >= GUESS_MIN_SHARE:
            scored.append((len(common), difflib.SequenceMatcher(None, _norm(instance), ln).ratio(), i))
    if not scored:
        return None, "unplaced"
    scored.sort(reverse=True)
    if len(scored) > 1 and scored[0][:2] == scored[1][:2]:
        return None, "unplaced"  # two lines fit equally well: no honest guess
    return scored[0][2], "guess"


def place_flaw(instance: str, lines: list[str]) -> int | None:
    return locate_flaw(instance, lines)[0]


# ---- judge calls and agent prompts ---------------------------------------------------------------

class JudgeCache:
    """Raw judge replies from the LLM response cache (read-only), keyed by model and exact messages."""

    def __init__(self, cache_dir: str | None):
        self.index: dict[str, str] = {}
        path = os.path.join(cache_dir, "llm_cache.sqlite") if cache_dir else ""
        if not path or not os.path.exists(path):
            return
        try:
            conn = sqlite3.connect(f"file:{quote(os.path.abspath(path))}?mode=ro", uri=True)
            rows = conn.execute("SELECT request, response FROM responses WHERE stage LIKE 'judge%' "
                                "ORDER BY created").fetchall()
            conn.close()
        except sqlite3.Error:
            return  # a cache we cannot read only means no raw replies
        for req, resp in rows:
            try:
                req, resp = json.loads(req), json.loads(resp)
                self.index.setdefault(self.key(req["model"], req["messages"]), resp.get("content", ""))
            except (ValueError, KeyError, TypeError, AttributeError):
                continue

    @staticmethod
    def key(model, messages) -> str:
        msgs = [(m.get("role"), m.get("content")) for m in messages if isinstance(m, dict)]
        return hashlib.sha256(json.dumps([model, msgs], ensure_ascii=False).encode("utf-8")).hexdigest()

    def reply(self, model: str, messages: list[dict]) -> str | None:
        return self.index.get(self.key(model, messages))


def judge_calls(run: Run, key: str, case: dict, cache: JudgeCache) -> dict:
    """Per dimension: {"prompt": system prompt, "user": simulation string, "reply": raw text, "source": ...}."""
    from gca_evaluation import judge as J
    from gca_evaluation import prompts as P

    rec = run.reference.get(key)
    out = {}
    crit = case.get("critique") or {}
    failures = {f.get("dimension"): f for f in case.get("failures") or [] if isinstance(f, dict)}
    system_of = {}
    if rec:
        try:
            circ = rec["circumstance"]
            protocol = "reference" if run.protocol == "reference" else "fixed"
            sim, ref = J.case_messages(rec, protocol)
            build = J.reference_judge_prompt if protocol == "reference" else P.judge_prompt
            profiles = "\n\n".join(f"### {n}\n\n{p}" for n, p in (rec.get("involved_character_profiles") or {}).items())
            cont = int(run.spec.get("continue_from") or _get(run.spec, "settings", "continue_from") or 0)
            extra = P.CONTINUE_FROM_NOTE.substitute(n=cont) if cont > 0 else ""
            for dim in DIMS:
                system_of[dim] = build(
                    dim, book=rec["book_title"], plot_summary=circ["plot"].get("summary", ""),
                    scenario=circ.get("scenario", ""), character_profiles=profiles,
                    original_conversation=J.reference_str(ref), major_characters=circ.get("major_characters", []),
                    additional_instructions=extra)
        except (KeyError, TypeError, AttributeError, ValueError):
            system_of = {}
    user = case.get("simulation_str") or ""
    for dim in DIMS:
        c = crit.get(dim) if isinstance(crit.get(dim), dict) else {}
        recorded = next((c.get(k) for k in ("raw", "raw_reply", "raw_response", "response") if c.get(k)), None)
        prompt = c.get("prompt") or system_of.get(dim)
        reply, source = None, ""
        if recorded:
            reply, source = str(recorded), "recorded in the evaluation file"
        elif dim in failures:
            f = failures[dim]
            reply, source = str(f.get("fail_to_parse_response", f.get("raw", ""))), "the reply that failed to parse"
        elif prompt:
            got = cache.reply(run.judge, [{"role": "system", "content": prompt}, {"role": "user", "content": user}])
            if got is not None:
                reply, source = got, "from the LLM response cache (exact prompt match)"
        if reply is None and c.get("flaws") is not None:
            reply = json.dumps({dim: {"flaws": c["flaws"]}}, ensure_ascii=False, indent=2)
            source = "raw text not recorded: the judgment as parsed and stored in the evaluation file"
        out[dim] = {"prompt": prompt, "prompt_source": ("recorded" if c.get("prompt") else
                                                        "rebuilt from the simulation record with the judge's template"),
                    "user": user, "reply": reply, "reply_source": source}
    return out


def agent_prompts(run: Run, key: str) -> tuple[list[tuple[str, str]], str]:
    """Each agent's system prompt: recorded ones if the simulation record has them, else rebuilt."""
    rec = run.reference.get(key)
    if not rec:
        return [], "no simulation record for this case"
    recorded = rec.get("system_prompts") or rec.get("agent_prompts")
    if isinstance(recorded, dict) and recorded:
        return [(str(k), str(v)) for k, v in recorded.items()], "recorded in the simulation file"
    try:
        from coser.prompts import ENVIRONMENT, NSP, get_character_prompt, get_environment_prompt, get_nsp_prompt
        from gca_evaluation import simulation as S

        item = rec["circumstance"]
        spec = run.spec or {}

        def opt(name, default):
            v = spec.get(name, _get(spec, "settings", name))
            return default if v is None else v
        speaking = list(item["speaking_characters_w_env"])
        if ENVIRONMENT not in speaking:
            speaking.append(ENVIRONMENT)
        rng = S.sample_rng(int(opt("seed", 42)), item)
        profiles = S.involved_profiles(item)
        retrieval = opt("retrieval", None)
        if retrieval is None:
            retrieval = "" if retrieval_of(run) == "none" else retrieval_of(run)
        out = []
        for name in speaking + [NSP]:  # the order simulate() draws its random choices in
            if name == NSP:
                out.append((name, get_nsp_prompt(speaking, item["scenario"], eval_version=True)))
            elif name == ENVIRONMENT:
                out.append((name, get_environment_prompt(item["major_characters"], item["scenario"], rng=rng)))
            else:
                out.append((name, get_character_prompt(
                    item["book"], name, profiles.get(name, ""), item["plot"].get("summary", ""), item["scenario"],
                    S.motivation_of(item, name, bool(opt("use_motivation", False))),
                    thoughtless=bool(opt("wo_thought", False)), other_character_profiles=profiles,
                    exclude_plot_summary=True, fixed_template=True,
                    add_output_example="coser" not in run.model.lower(), add_rag=bool(retrieval), rng=rng)))
    except (KeyError, TypeError, AttributeError, ValueError) as e:
        return [], f"could not rebuild the prompts: {e}"
    note = ("not recorded in the simulation file: rebuilt from the test item with this toolkit's prompt builders "
            "and the run's seed" + ("" if run.spec else " (reference file, no spec: default settings assumed; "
                                                          "the random separators may differ from the original run)"))
    return out, note


def derivation(case: dict) -> list[dict]:
    """Per dimension: flaws, the severity sum, actor turns, the formula and the clamped result."""
    sim = case.get("simulation") or []
    turns = sum(1 for m in sim if isinstance(m, dict) and m.get("role") != "Environment")
    crit = case.get("critique") or {}
    out = []
    for d in DIMS:
        c = crit.get(d) if isinstance(crit.get(d), dict) else {}
        flaws = c.get("flaws")
        if not isinstance(flaws, list):
            out.append({"dim": d, "missing": True, "score": c.get("score")})
            continue
        s = metrics.severity_sum(flaws)
        raw = 100 - 5 * (s - 0.3 * turns)
        clamped = max(0, min(raw, 100))
        rec = c.get("score")
        out.append({"dim": d, "missing": False, "sum": s, "turns": turns, "raw": raw, "clamped": clamped,
                    "recorded": rec, "matches": isinstance(rec, (int, float)) and abs(float(rec) - clamped) < 1e-6,
                    "sevs": [f.get("severity") for f in flaws if isinstance(f, dict)]})
    return out


# ---- rendering ---------------------------------------------------------------------------------------

def fmt(cell, digits=2) -> str:
    if cell is None:
        return "-"
    mean, std = cell
    if not isinstance(mean, (int, float)) or isinstance(mean, bool) or mean != mean:  # None, junk, NaN
        return "-"
    return f"{mean:.{digits}f}" + (f" ± {std:.{digits}f}" if std is not None else "")


def num(x, digits=2) -> str:
    if not isinstance(x, (int, float)) or isinstance(x, bool) or x != x:
        return "-"
    return f"{x:.{digits}f}"


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._=-]+", "_", text).strip("_") or "x"


def case_href(judge: str, run: Run, key: str) -> str:
    return "/".join(["report", "cases", slug(judge), slug(run.stem), slug(key) + ".html"])


def compare_href(key: str) -> str:
    return "/".join(["report", "compare", slug(key) + ".html"])


_MARK = re.compile(r"(\[[^\[\]]*\]|\([^()]*\))")


def styled(text) -> "Markup":
    """Escape, then mark [inner thoughts] and (actions) so they read apart from speech."""
    from markupsafe import Markup, escape

    parts = []
    for piece in _MARK.split(str(text)):
        if not piece:
            continue
        if piece.startswith("[") and piece.endswith("]"):
            parts.append(Markup('<span class="thought" title="inner thought">{}</span>').format(piece))
        elif piece.startswith("(") and piece.endswith(")"):
            parts.append(Markup('<span class="action" title="action">{}</span>').format(piece))
        else:
            parts.append(escape(piece))
    return Markup("").join(parts)


def environment():
    import jinja2

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters.update(fmt=fmt, num=num, styled=styled, url=lambda s: quote(str(s)))
    env.globals.update(DIMS=DIMS, SHORT=SHORT, LEGEND=LEGEND)
    return env


def table_rows(rows: list[Row], extra: list[str], ranked: bool = True) -> tuple[list[str], list[list[str]]]:
    """Header and formatted cells shared by the HTML and Markdown leaderboards."""
    head = ["#", "setting", "model", "retrieval"] + list(DIMS) + ["avg", "avg 95% CI", "BLEU", "ROUGE-L"]
    head += [EXTRA_NAMES[e] for e in extra]
    head += ["n", "failed", "repeats", "judge"]
    body = []
    for i, r in enumerate(rows, 1):
        ci = "-" if r.ci[0] != r.ci[0] else f"[{r.ci[0]:.2f}, {r.ci[1]:.2f}]"
        model = r.model + (" (reference file, no spec)" if r.model_source != "spec" else "")
        cells = [str(i) if ranked else "–", r.setting, model, r.retrieval] + [fmt(r.cols.get(d)) for d in DIMS]
        cells += [fmt(r.cols.get("avg")), ci, fmt(r.cols.get("bleu"), 4), fmt(r.cols.get("rouge_l"), 4)]
        cells += [fmt(r.cols.get(e), 4) for e in extra]
        # n counts distinct samples (not sample x repeat); failed counts failed judgings over repeats.
        failed = sum(int(x.scores.get("failed", 0)) for x in r.runs)
        cells += [str(len(r.per_case)), str(failed), str(len(r.runs)), r.judge]
        body.append(cells)
    return head, body


def md_table(head, body) -> str:
    def clean(c):
        return str(c).replace("|", "\\|").replace("\n", " ")
    lines = ["| " + " | ".join(clean(h) for h in head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(clean(c) for c in row) + " |" for row in body]
    return "\n".join(lines)


def case_cells(run_list: list[Run], key: str) -> dict:
    """One setting's cells in the case table: scores averaged over repeats that judged the case."""
    vals = {c: [] for c in COLUMNS}
    failed, turns = 0, None
    for r in run_list:
        case = r.cases.get(key)
        if not isinstance(case, dict):
            continue
        sim = case.get("simulation") or []
        turns = sum(1 for m in sim if isinstance(m, dict) and m.get("role") != "Environment")
        if is_failed(case):
            failed += 1
            continue
        crit = case["critique"]
        for d in DIMS:
            vals[d].append(float(crit[d]["score"]))
        vals["avg"].append(r.case_score(key))
        for m in ("bleu", "rouge_l"):
            if isinstance(crit.get(m), (int, float)):
                vals[m].append(float(crit[m]))
    present = any(isinstance(r.cases.get(key), dict) for r in run_list)
    out = {c: (sum(v) / len(v) if v else None) for c, v in vals.items()}
    out.update(turns=turns, failed=failed, present=present)
    return out


def render(runs: list[Run], out_dir: str, cache_dir: str | None = None) -> tuple[str, str]:
    env = environment()
    groups = build_groups(runs)
    agree = agreement(groups)
    cache = JudgeCache(cache_dir)
    report_dir = os.path.join(out_dir, "report")
    # Pages and plots of evaluations or judges that no longer exist must not linger.
    for sub in ("cases", "compare"):
        if os.path.isdir(os.path.join(report_dir, sub)):
            shutil.rmtree(os.path.join(report_dir, sub))
    for old in glob.glob(os.path.join(report_dir, "plot_*.png")):
        os.remove(old)
    os.makedirs(os.path.join(report_dir, "static"), exist_ok=True)
    for name in STATIC_FILES:
        with open(os.path.join(TEMPLATES, name), encoding="utf-8") as f:
            atomic_write_text(os.path.join(report_dir, "static", name), f.read())

    by_key: dict[str, list[tuple[Group, Row, Run]]] = {}
    for g in groups:
        for row in g.rows:
            for run in row.runs:
                for key in run.cases:
                    by_key.setdefault(key, []).append((g, row, run))

    md = ["# GCA evaluation report", "",
          f"{len(runs)} evaluation file(s). Results are grouped by (judge, protocol, test set) and never ranked "
          "across groups; within a group only settings on the same samples are ranked. 95% CI: bootstrap over "
          "samples; ±: std over repeats.", ""]
    if not runs:
        md.append("No evaluations found.")
    gviews = []
    for g in groups:
        extra = [e for e in EXTRA if any(e in r.cols for r in g.rows)]
        head, body = table_rows(g.ranked, extra)
        _, obody = table_rows(g.others, extra, ranked=False)
        png = f"plot_{g.gid}.png"
        plot(g.ranked, g.title, os.path.join(report_dir, png))
        md += [f"## Judge: {g.judge}", "", f"protocol {g.protocol} · test set {g.test_hash}", "",
               md_table(head, body), ""]
        if g.others:
            md += ["Not ranked (other samples than the ranked settings):", "", md_table(head, obody), ""]
        md += [f"![model comparison]({quote('report/' + png)})", ""]
        comps = comparisons(g.ranked)
        if comps:
            ch = ["A", "B", "shared cases", "mean case-score difference (A − B)", "95% CI", "judge"]
            cb = [[a.setting, b.setting, str(n), f"{d:+.2f}", f"[{lo:+.2f}, {hi:+.2f}]", g.judge]
                  for a, b, n, d, lo, hi in comps]
            md += ["### Paired comparisons", "", md_table(ch, cb), ""]
        else:
            ch, cb = [], []
        # Case table: one row per case, each setting's cells side by side.
        settings = g.rows
        keys = sorted({k for row in settings for run in row.runs for k in run.cases})
        case_rows = []
        md += ["### Cases", ""]
        for key in keys:
            book = key.rpartition("-")[0]
            book = book.rpartition("-")[0] or key
            first = next((run for row in settings for run in row.runs if key in run.cases), None)
            rec = next((run.reference.get(key) for row in settings for run in row.runs if run.reference.get(key)), None)
            chars = ", ".join(str(c) for c in _get(rec, "circumstance", "speaking_characters_w_env") or [])
            cells = []
            for row in settings:
                c = case_cells(row.runs, key)
                run0 = next((r for r in row.runs if key in r.cases), None)
                c["href"] = case_href(g.judge, run0, key) if run0 else None
                cells.append(c)
            book = book.replace("_", " ") if rec is None else rec.get("book_title", book)
            case_rows.append({"key": key, "book": book,
                              "characters": chars, "cells": cells, "compare": compare_href(key),
                              "href": case_href(g.judge, first, key) if first else None})
        for row in settings:
            for run in row.runs:
                md.append(f"- **{run.stem}** (judge {g.judge}): " + ", ".join(
                    f"[{k}]({quote(case_href(g.judge, run, k))})" for k in sorted(run.cases)))
        md.append("")
        gviews.append({"g": g, "head": head, "body": body, "obody": obody, "png": "report/" + png,
                       "comp_head": ch, "comp_body": cb, "settings": settings, "case_rows": case_rows})
        # Case pages.
        for row in settings:
            for run in row.runs:
                for key, case in sorted(run.cases.items()):
                    write_case(env, out_dir, g, row, run, key, case if isinstance(case, dict) else {}, cache, by_key)
    for key, entries in by_key.items():
        write_compare(env, out_dir, key, entries)
    if agree:
        md += ["## Judge agreement", ""]
        for a in agree:
            md += [f"protocol {a['protocol']} · test set {a['test_hash']}", "",
                   md_table(["judge A", "judge B", "settings", "Kendall tau", "Spearman rho", "cases",
                             "Pearson (case averages)", "mean A", "mean B"],
                            [[p["a"], p["b"], p["settings"], num(p["tau"], 3), num(p["rho"], 3), p["cases"],
                              num(p["pearson"], 3), num(p["mean_a"]), num(p["mean_b"])] for p in a["pairs"]]), ""]
    html = env.get_template("report.html").render(
        n_runs=len(runs), groups=gviews, agreement=agree, extra_names=EXTRA_NAMES, up="", static="report/static/")
    html_path, md_path = os.path.join(out_dir, "report.html"), os.path.join(out_dir, "report.md")
    atomic_write_text(html_path, html)
    atomic_write_text(md_path, "\n".join(md) + "\n")
    return html_path, md_path


def _messages(rec_or_case_msgs, key_role="role", key_text="content"):
    return [{"role": str(m.get(key_role, "")), "content": str(m.get(key_text, ""))}
            for m in rec_or_case_msgs or [] if isinstance(m, dict)]


def write_case(env, out_dir, g: Group, row: Row, run: Run, key: str, case: dict, cache: JudgeCache, by_key) -> None:
    sim = case.get("simulation") or [{"role": "", "content": ln} for ln in
                                     (case.get("simulation_str") or "").split("\n\n") if ln]
    sim = _messages(sim)
    judged = [m["content"] for m in sim]  # what the judge saw, one entry per message
    crit = case.get("critique") or {}
    flaws = []
    for d in DIMS:
        for f in ((crit.get(d) or {}).get("flaws") or []) if isinstance(crit.get(d), dict) else []:
            if isinstance(f, dict):
                at, how = locate_flaw(str(f.get("instance", "")), judged)
                flaws.append({"n": len(flaws) + 1, "dim": d, "short": SHORT[d], "type": f.get("type", ""),
                              "severity": f.get("severity"), "instance": f.get("instance", ""), "at": at, "how": how})
    rec = run.reference.get(key)
    # Show the full messages (inner thoughts included) when the simulation record has them.
    full = [m for m in _messages((rec or {}).get("simulation")) if m["role"] != "NSP"] if rec else []
    # ... but only when they are the very messages the judge saw (thoughts aside).
    same = len(full) == len(sim) and all(
        f["role"] == m["role"] and (f["content"] if f["role"] == "Environment"
                                    else remove_inner_thoughts(f["content"], eval_mode=True)) == m["content"]
        for f, m in zip(full, sim))
    shown = full if same else sim
    messages = [{"i": i, "role": m["role"], "content": m["content"],
                 "flaws": [f for f in flaws if f["at"] == i]} for i, m in enumerate(shown)]
    book = [{"role": str(d.get("character", "")), "content": str(d.get("message", ""))}
            for d in ((rec or {}).get("circumstance") or {}).get("dialogues") or [] if isinstance(d, dict)]
    prompts, prompt_note = agent_prompts(run, key)
    href = case_href(g.judge, run, key)
    up = "../" * 4
    others = [{"label": f"{og.judge} · {orow.setting}" + (f" · repeat {orun.repeat}" if orun.repeat else ""),
               "href": up + case_href(og.judge, orun, key), "current": orun is run}
              for og, orow, orun in by_key.get(key, [])]
    page = env.get_template("case.html").render(
        key=key, run=run, row=row, g=g, case=case, failed=is_failed(case), crit=crit, flaws=flaws,
        messages=messages, book=book, full_shown=shown is full and bool(full),
        scenario=((rec or {}).get("circumstance") or {}).get("scenario", ""),
        calls=judge_calls(run, key, case, cache), deriv=derivation(case), prompts=prompts, prompt_note=prompt_note,
        others=others, compare=up + compare_href(key), up=up, static=up + "report/static/",
        failures=[f for f in case.get("failures") or [] if isinstance(f, dict)])
    atomic_write_text(os.path.join(out_dir, *href.split("/")), page)


def write_compare(env, out_dir, key: str, entries) -> None:
    up = "../" * 2
    cols = []
    for g, row, run in entries:
        case = run.cases.get(key) if isinstance(run.cases.get(key), dict) else {}
        c = case_cells([run], key)
        cols.append({"judge": g.judge, "protocol": g.protocol, "test_hash": g.test_hash, "setting": row.setting,
                     "model": row.model, "repeat": run.repeat, "cells": c, "failed": is_failed(case),
                     "href": up + case_href(g.judge, run, key), "messages": _messages(case.get("simulation"))})
    page = env.get_template("compare.html").render(key=key, cols=cols, up=up, static=up + "report/static/")
    atomic_write_text(os.path.join(out_dir, *compare_href(key).split("/")), page)


def default_cache_dir() -> str | None:
    try:
        from coser.config import load_settings

        return load_settings().cache_dir
    except Exception:  # noqa: BLE001 - a missing or odd config only means no raw judge replies
        return os.environ.get("COSER_CACHE_DIR") or ".cache"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Render exp/evaluation/*.json into exp/report.html and "
                                                 "exp/report.md (leaderboards per judge, protocol and test set; "
                                                 "case table; case pages; judge agreement).")
    parser.add_argument("--exp_dir", default="exp", help="folder holding evaluation/ and simulation/ (default: exp)")
    parser.add_argument("--out", default=None, help="where report.html, report.md and report/ go (default: --exp_dir)")
    parser.add_argument("--cache_dir", default=None,
                        help="LLM response cache to read the judges' raw replies from, read-only "
                             "(default: the toolkit's cache_dir setting, .cache)")
    args = parser.parse_args(argv)
    if not os.path.isdir(os.path.join(args.exp_dir, "evaluation")):
        raise InputError(f"{os.path.join(args.exp_dir, 'evaluation')}: no such folder (run gca_evaluation/main.py first)")
    runs = load_runs(args.exp_dir)
    html_path, md_path = render(runs, args.out or args.exp_dir, args.cache_dir or default_cache_dir())
    judges = sorted({r.judge for r in runs})
    print(f"report: {html_path} and {md_path} ({len(runs)} evaluation(s); judges: {', '.join(judges) or '-'})")
    return 0


if __name__ == "__main__":
    cli.main(lambda: main())

"""gca_evaluation/report.py: leaderboards per judge, plot, case pages, paired comparisons."""
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys

import pytest

from tests.conftest import run_script
from tests.report_fixture import SETTINGS, SHARED_SIM, build_exp

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _need_shared():
    if not os.path.isdir(SHARED_SIM):
        pytest.skip(f"shared CoSER data not present: {os.path.normpath(SHARED_SIM)}")


def _report_module():
    spec = importlib.util.spec_from_file_location("gca_report", os.path.join(REPO_ROOT, "gca_evaluation", "report.py"))
    mod = importlib.util.module_from_spec(spec)
    sys.modules["gca_report"] = mod  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(mod)
    return mod


def _run(exp, env=None):
    res = run_script(["gca_evaluation/report.py", "--exp_dir", str(exp)], env=env, timeout=120)
    assert res.returncode == 0, res.stderr
    return res


def test_help_works():
    res = run_script(["gca_evaluation/report.py", "--help"], timeout=60)
    assert res.returncode == 0 and "--exp_dir" in res.stdout


def test_report_on_published_shape(tmp_path):
    _need_shared()
    exp = build_exp(str(tmp_path / "exp"), repeats=2, fail_one=True)
    # A run record written by cli.finish sits beside the evaluations and must be ignored as data.
    with open(os.path.join(exp, "evaluation", "run_gca_judging.json"), "w") as f:
        json.dump({"stage": "gca_judging", "flags": {}}, f)
    res = _run(exp)
    assert "judges: gpt-4o" in res.stdout
    html = (tmp_path / "exp" / "report.html").read_text(encoding="utf-8")
    md = (tmp_path / "exp" / "report.md").read_text(encoding="utf-8")
    pngs = list((tmp_path / "exp" / "report").glob("plot_gpt-4o__reference__keys_*.png"))
    assert len(pngs) == 1 and pngs[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert html.count('class="leaderboard') == 1
    # No spec in these (published-shape) files: model names come from the file name, and say so.
    assert "gpt-4o-mini (reference file, no spec)" in html
    for setting in SETTINGS:
        assert setting in html and setting in md
    # Repeats: mean ± std over the two repeats, and the failed case counted, not averaged.
    row = next(ln for ln in md.splitlines() if ln.startswith("| ") and "| test_set_gpt-4o |" in ln)
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert "±" in cells[4] and cells[-4:] == ["3", "1", "2", "gpt-4o"]
    assert "Paired comparisons" in md and md.count("| 3 |") >= 3
    # Every case has a page; the failed one says so; flaws are placed on simulation lines.
    pages = list((tmp_path / "exp" / "report" / "cases").rglob("*.html"))
    assert len(pages) == 3 * 3 * 2
    failed = (tmp_path / "exp" / "report" / "cases" / "gpt-4o" / "test_set_gpt-4o" / "Othello-9-0.html").read_text()
    assert "Judging failed" in failed and "I cannot produce JSON for this." in failed
    page = (tmp_path / "exp" / "report" / "cases" / "gpt-4o" / "test_set_gpt-4o-repeat=1" / "King_Lear-17-0.html").read_text()
    assert "Reference (book)" in page and "Why to keep so many brains in one head" in page
    assert 'class="msg flawed"' in page and re.search(r'href="#msg-\d+"', page)
    assert "how-quoted" in page  # the fixture's flaws quote real lines
    assert "Storyline Consistency" in page and "judge gpt-4o" in page


def test_judges_never_share_a_table(tmp_path):
    _need_shared()
    judges = {SETTINGS[0]: "gpt-4o", SETTINGS[1]: "claude-3-5-sonnet", SETTINGS[2]: None}
    exp = build_exp(str(tmp_path / "exp"), judge_of=judges.get)
    # The third evaluation has no judge_model; a run record whose flags wrote exactly that file names it.
    with open(os.path.join(exp, "evaluation", "run_gca_judging.json"), "w") as f:
        json.dump({"stage": "gca_judging", "flags": {"test_file": "data/test/test_set.json",
                   "actor_model": "gpt-4o-mini", "retrieval": "expr3_conv1", "judge_model": "qwen-judge",
                   "nth_exp": 0}}, f)
    _run(exp)
    md = (tmp_path / "exp" / "report.md").read_text(encoding="utf-8")
    html = (tmp_path / "exp" / "report.html").read_text(encoding="utf-8")
    assert html.count('class="leaderboard') == 3
    sections = re.split(r"^## Judge: ", md, flags=re.M)[1:]
    by_judge = {s.splitlines()[0]: s for s in sections}
    assert set(by_judge) == {"gpt-4o", "claude-3-5-sonnet", "qwen-judge"}
    for judge, text in by_judge.items():
        rows = [ln for ln in text.splitlines() if ln.startswith("| 1 |") or ln.startswith("| 2 |")]
        assert len(rows) == 1 and rows[0].rstrip(" |").endswith(judge)
        assert "Paired comparisons" not in text  # one setting per judge: nothing comparable
    for judge in by_judge:
        assert list((tmp_path / "exp" / "report").glob(f"plot_{judge}__*.png"))

    os.remove(os.path.join(exp, "evaluation", "run_gca_judging.json"))
    _run(exp)
    md = (tmp_path / "exp" / "report.md").read_text(encoding="utf-8")
    assert "## Judge: unknown" in md and "## Judge: qwen-judge" not in md
    assert not list((tmp_path / "exp" / "report").glob("plot_qwen-judge__*.png"))  # stale plot removed

    # The record cli.finish writes in the exp folder lists its outputs.
    with open(os.path.join(exp, "run_gca_evaluation.json"), "w") as f:
        json.dump({"stage": "gca_evaluation", "flags": {"judge_model": "judge-from-record"},
                   "outputs": [os.path.join("exp", "evaluation", SETTINGS[2] + ".json")]}, f)
    _run(exp)
    md = (tmp_path / "exp" / "report.md").read_text(encoding="utf-8")
    assert "## Judge: judge-from-record" in md and "## Judge: unknown" not in md


def test_bad_and_empty_inputs(tmp_path):
    res = run_script(["gca_evaluation/report.py", "--exp_dir", str(tmp_path / "nowhere")], timeout=60)
    assert res.returncode == 2 and res.stderr.startswith("error:") and "Traceback" not in res.stderr
    (tmp_path / "exp" / "evaluation").mkdir(parents=True)
    _run(tmp_path / "exp")
    assert "No evaluations found" in (tmp_path / "exp" / "report.md").read_text()
    (tmp_path / "exp" / "evaluation" / "broken.json").write_text('{"scores": {},\n "cases": [1,')
    res = run_script(["gca_evaluation/report.py", "--exp_dir", str(tmp_path / "exp")], timeout=60)
    assert res.returncode == 2 and "broken.json" in res.stderr and "Traceback" not in res.stderr


def test_flaw_placement_says_how_it_was_made():
    locate = _report_module().locate_flaw
    lines = ["Fool: Why keep so many brains in one head?", "Lear: (rises) I will have vengeance on them all!",
             "Environment: The storm grows louder, like a beast howling over the heath."]
    assert locate('Lear says "vengeance on them all" too calmly', lines) == (1, "quoted")
    # A single shared word, common or not, never places a flaw (issue 16: "like" on an Environment line).
    assert locate("speaks like an assistant", lines) == (None, "unplaced")
    assert locate("The storm description repeats what was said", lines) == (None, "unplaced")
    # Enough distinct content words: a guess, marked as such.
    assert locate("storm grows louder without any beast or heath detail", lines) == (2, "guess")
    assert locate("Overall the scene lacks tension.", lines) == (None, "unplaced")
    assert locate("", lines) == (None, "unplaced")
    # Two lines that fit equally well: no honest guess.
    assert locate("brave storm heath beast", ["storm heath beast here", "storm heath beast here"]) == (None, "unplaced")


def test_agreement_statistics():
    from coser import stats

    assert stats.pearson([1, 2, 3], [2, 4, 6]) == pytest.approx(1.0)
    assert stats.pearson([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert stats.kendall_tau([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(4 / 6)
    assert stats.spearman_rho([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8)
    assert stats.kendall_tau([1, 1, 2], [1, 2, 3]) == pytest.approx(2 / 6 ** 0.5)  # tau-b with a tie
    assert stats.ranks([10, 20, 20, 5]) == [2, 3.5, 3.5, 1]
    assert stats.pearson([1, 1, 1], [1, 2, 3]) != stats.pearson([1, 1, 1], [1, 2, 3])  # undefined: NaN
    assert stats.kendall_tau([1], [2]) != stats.kendall_tau([1], [2])
    with pytest.raises(ValueError):
        stats.pearson([1, 2], [1])


def test_groups_by_judge_protocol_and_test_set(tmp_path):
    """Honest leaderboards: never ranked across test sets; fewer samples listed apart; names from the spec."""
    _need_shared()
    from tests.report_fixture import add_spec

    exp = build_exp(str(tmp_path / "exp"))
    add_spec(exp, SETTINGS[0], "judge-a", "hash-published", "Neph0s/CoSER-Llama-3.1-8B")
    add_spec(exp, SETTINGS[1], "judge-a", "hash-published", "gpt-4o")
    add_spec(exp, SETTINGS[2], "judge-a", "hash-homemade", "gpt-4o-mini")  # another test set
    _run(exp)
    md = (tmp_path / "exp" / "report.md").read_text(encoding="utf-8")
    sections = re.split(r"^## Judge: ", md, flags=re.M)[1:]
    assert len(sections) == 2
    published = next(s for s in sections if "test set hash-published" in s)
    homemade = next(s for s in sections if "test set hash-homemade" in s)
    assert "| Neph0s/CoSER-Llama-3.1-8B |" in published and "gpt-4o-mini" not in published
    assert "| 1 |" in homemade and "Neph0s" not in homemade
    assert "no spec" not in md

    # Same test set hash but one setting judged on fewer samples: listed with its n, not ranked.
    add_spec(exp, SETTINGS[2], "judge-a", "hash-published", "gpt-4o-mini", drop_keys=1)
    _run(exp)
    md = (tmp_path / "exp" / "report.md").read_text(encoding="utf-8")
    assert md.count("## Judge: judge-a") == 1
    ranked, _, unranked = md.partition("Not ranked")
    ranks = [ln.split("|")[1].strip() for ln in ranked.splitlines() if ln.startswith("| ") and "judge-a |" in ln]
    assert ranks == ["1", "2"]
    row = next(ln for ln in unranked.splitlines() if "| gpt-4o-mini |" in ln)
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[0] == "–" and cells[-4] == "2"  # n = 2 samples

    # A protocol is part of the group too.
    add_spec(exp, SETTINGS[2], "judge-a", "hash-published", "gpt-4o-mini", protocol="fixed")
    _run(exp)
    md = (tmp_path / "exp" / "report.md").read_text(encoding="utf-8")
    assert md.count("## Judge: judge-a") == 2 and "protocol fixed · test set hash-published" in md


def test_two_judges_agreement_and_panel(tmp_path):
    _need_shared()
    from tests.report_fixture import add_spec

    exp = str(tmp_path / "exp")
    build_exp(exp)
    # The same three simulations judged again by a second judge: their files sit beside the first judge's.
    build_exp(str(tmp_path / "exp2"), judge_of=lambda s: "judge-b")
    for s in SETTINGS:
        shutil.copy(os.path.join(tmp_path, "exp2", "evaluation", s + ".json"),
                    os.path.join(exp, "evaluation", s + "_judge-b.json"))
        rag = s.partition("_rag=")[2] or None
        add_spec(exp, s + "_judge-b", "judge-b", "h1", s.split("_")[2], retrieval=rag)
        add_spec(exp, s, "gpt-4o", "h1", s.split("_")[2], retrieval=rag)
    _run(exp)
    md = (tmp_path / "exp" / "report.md").read_text(encoding="utf-8")
    html = (tmp_path / "exp" / "report.html").read_text(encoding="utf-8")
    assert "## Judge agreement" in md and 'id="agreement"' in html
    row = next(ln for ln in md.split("## Judge agreement")[1].splitlines() if ln.startswith("| gpt-4o |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1] == "judge-b" and cells[2] == "3" and cells[5] == "9"
    # The statistics are the ones coser.stats computes from the two leaderboards.
    report = _report_module()
    runs = report.load_runs(exp)
    groups = {g.judge: g for g in report.build_groups(runs)}

    def key(r):
        return r.setting.replace("_judge-b", "")
    a = {key(r): r.cols["avg"][0] for r in groups["gpt-4o"].ranked}
    b = {key(r): r.cols["avg"][0] for r in groups["judge-b"].ranked}
    names = sorted(a)
    from coser import stats
    assert cells[3] == f"{stats.kendall_tau([a[n] for n in names], [b[n] for n in names]):.3f}"
    assert "Panel view" in html and html.count('class="leaderboard') == 2  # the panel never replaces them


def _chromium():
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    pytest.skip("chromium not installed (CI: apt-get install -y chromium); headless-browser check skipped")


def test_report_renders_in_headless_browser(tmp_path):
    _need_shared()
    browser = _chromium()
    exp = build_exp(str(tmp_path / "exp"))
    _run(exp)
    url = "file://" + os.path.join(exp, "report.html")
    cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run",
           f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=5000", "--dump-dom", url]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    dom = res.stdout
    assert res.returncode == 0 and "<table" in dom, res.stderr[-2000:]
    assert re.search(r'<table class="leaderboard sortable">.*?Storyline Consistency.*?test_set_gpt-4o', dom, re.S)
    # The onload hook stamps the decoded width: the PNG really loaded and decoded in the browser.
    img = re.search(r'<img class="plot"[^>]*>', dom)
    assert img and re.search(r'data-loaded="[1-9]\d+"', img.group(0)), img and img.group(0)


def test_report_on_a_real_evaluation_run(fake_server, llm_env, tmp_path):
    """Drive gca_evaluation/main.py over the fake server, then render what it wrote."""
    from tests.gca_fakes import DIMS, responder

    test_file = os.path.join(REPO_ROOT, "..", "shared", "coser-data", "test", "example_test_set.json")
    if not os.path.exists(test_file):
        pytest.skip(f"shared CoSER data not present: {os.path.normpath(test_file)}")

    def judge(body):
        # Cite a real line of the simulation so the case page can place the flaw.
        sim = body["messages"][-1]["content"]
        line = next(ln for ln in sim.split("\n") if "I speak as" in ln)
        dim = next(d for d in DIMS if f"simulated conversation on {d}," in body["messages"][0]["content"])
        return json.dumps({dim: {"flaws": [{"instance": f'"{line.split(": ", 1)[-1][:40]}" is bland',
                                            "type": dim, "severity": 3}]}})

    fake_server.set_responder(responder(judge=judge))
    exp = tmp_path / "exp"
    for model in ("gpt-4o", "gpt-4o-mini"):
        res = run_script(["gca_evaluation/main.py", "--test_file", test_file, "--actor_model", model,
                          "--judge_model", "judge-x", "--env_model", "env-x", "--nsp_model", "nsp-x",
                          "--limit", "2", "--exp_dir", str(exp)], env=llm_env, timeout=300)
        assert res.returncode == 0, res.stderr[-2000:]
    res = _run(exp, env=llm_env)  # the same cache dir: the raw judge replies are read from it
    assert "judges: judge-x" in res.stdout
    md = (exp / "report.md").read_text(encoding="utf-8")
    assert "## Judge: judge-x" in md and md.count("| judge-x |") >= 2
    # (judge/env/nsp other than the reference's defaults: the file names carry a _spec=HASH suffix)
    assert re.search(r"\| example_test_set_gpt-4o-mini(_spec=[0-9a-f]+)? \| gpt-4o-mini( \(reference file, no spec\))? \| none \|", md)
    assert "Paired comparisons" in md
    pages = list((exp / "report" / "cases" / "judge-x").rglob("*.html"))
    assert len(pages) == 4
    page = pages[0].read_text(encoding="utf-8")
    assert 'class="msg flawed"' in page and "Reference (book)" in page and "how-quoted" in page
    # The judge's raw reply comes from the response cache, matched by the exact rebuilt prompt.
    assert page.count("from the LLM response cache (exact prompt match)") == 4
    assert "is bland" in page and "simulated conversation on Storyline Consistency," in page


def test_hostile_text_is_escaped_everywhere(tmp_path):
    _need_shared()
    from tests.report_fixture import HOSTILE, make_hostile

    exp = build_exp(str(tmp_path / "exp"))
    key = make_hostile(exp)
    # A judge name is data too: markup stays text, and $...$ does not trip the plot's math parser.
    path = os.path.join(exp, "evaluation", SETTINGS[1] + ".json")
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    data["judge_model"] = '<i class="inj2">j</i> $\\alpha$ {{ 7*7 }}'
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f)
    _run(exp)
    html = (tmp_path / "exp" / "report.html").read_text(encoding="utf-8")
    assert 'class="inj2"' not in html and "&lt;i class=&#34;inj2&#34;&gt;j&lt;/i&gt; $\\alpha$ {{ 7*7 }}" in html
    pages = [tmp_path / "exp" / "report.html"] + list((tmp_path / "exp" / "report").rglob("*.html"))
    hits = 0
    for p in pages:
        text = p.read_text(encoding="utf-8")
        assert "<script>window.pwned" not in text and 'onerror="' not in text and '<b class="inj">' not in text, p
        hits += text.count("&lt;script&gt;window.pwned = 1&lt;/script&gt;")
    # Shown (escaped) on the case page, in the simulation, the flaw's instance and type, and on the compare page.
    assert hits >= 4
    case_dir = tmp_path / "exp" / "report" / "cases" / "gpt-4o" / SETTINGS[0]
    case = (case_dir / f"{key.replace(' ', '_')}.html").read_text()
    assert case.count("&lt;img src=&#34;x&#34; onerror=&#34;window.pwned2 = 1&#34;&gt;") >= 3
    assert HOSTILE not in case

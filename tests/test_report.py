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


def _run(exp):
    res = run_script(["gca_evaluation/report.py", "--exp_dir", str(exp)], timeout=120)
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
    png = tmp_path / "exp" / "report" / "plot_gpt-4o.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert html.count('class="leaderboard"') == 1
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
    assert 'class="line flawed"' in page and re.search(r'href="#line-\d+"', page)
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
    assert html.count('class="leaderboard"') == 3
    sections = re.split(r"^## Judge: ", md, flags=re.M)[1:]
    by_judge = {s.splitlines()[0]: s for s in sections}
    assert set(by_judge) == {"gpt-4o", "claude-3-5-sonnet", "qwen-judge"}
    for judge, text in by_judge.items():
        rows = [ln for ln in text.splitlines() if ln.startswith("| 1 |") or ln.startswith("| 2 |")]
        assert len(rows) == 1 and rows[0].rstrip(" |").endswith(judge)
        assert "Paired comparisons" not in text  # one setting per judge: nothing comparable
    for judge in by_judge:
        assert (tmp_path / "exp" / "report" / f"plot_{judge}.png").exists()

    os.remove(os.path.join(exp, "evaluation", "run_gca_judging.json"))
    _run(exp)
    md = (tmp_path / "exp" / "report.md").read_text(encoding="utf-8")
    assert "## Judge: unknown" in md and "## Judge: qwen-judge" not in md
    assert not (tmp_path / "exp" / "report" / "plot_qwen-judge.png").exists()  # stale plot removed

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


def test_place_flaw_prefers_quotes_then_word_overlap():
    place = _report_module().place_flaw
    lines = ["Fool: Why keep so many brains in one head?", "Lear: (rises) I will have vengeance on them all!",
             "Environment: The storm grows louder."]
    assert place('Lear says "vengeance on them all" too calmly', lines) == 1
    assert place("The storm description repeats what was said", lines) == 2
    assert place("Overall the scene lacks tension.", lines) is None
    assert place("", lines) is None


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
    assert re.search(r'<table class="leaderboard">.*?Storyline Consistency.*?test_set_gpt-4o', dom, re.S)
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
    res = _run(exp)
    assert "judges: judge-x" in res.stdout
    md = (exp / "report.md").read_text(encoding="utf-8")
    assert "## Judge: judge-x" in md and md.count("| judge-x |") >= 2
    assert "| example_test_set_gpt-4o-mini | gpt-4o-mini | none |" in md
    assert "Paired comparisons" in md
    pages = list((exp / "report" / "cases" / "judge-x").rglob("*.html"))
    assert len(pages) == 4
    page = pages[0].read_text(encoding="utf-8")
    assert 'class="line flawed"' in page and "Reference (book)" in page

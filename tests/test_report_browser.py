"""The report viewer driven in a real headless browser (Debian's chromium through chromedriver).

Clicks and types in the pages as a person would: the case table sorts and filters, a case page shows
the judge's prompt, raw reply and each score's derivation, and a hostile simulation stays inert.
"""
import os
import shutil

import pytest

from tests.conftest import run_script
from tests.report_fixture import SETTINGS, SHARED_SIM, add_spec, build_exp, make_hostile

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    if not os.path.isdir(SHARED_SIM):
        pytest.skip(f"shared CoSER data not present: {os.path.normpath(SHARED_SIM)}")
    root = tmp_path_factory.mktemp("browser")
    exp = build_exp(str(root / "exp"), repeats=2, fail_one=True)
    key = make_hostile(exp)
    # A second judge of the same simulations, so the agreement table and the cross-judge links exist.
    build_exp(str(root / "exp2"), judge_of=lambda s: "judge-b")
    for s in SETTINGS:
        shutil.copy(os.path.join(root, "exp2", "evaluation", s + ".json"),
                    os.path.join(exp, "evaluation", s + "_judge-b.json"))
    res = run_script(["gca_evaluation/report.py", "--exp_dir", exp], timeout=180)
    assert res.returncode == 0, res.stderr
    return {"exp": exp, "key": key}


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    if not CHROMIUM or not DRIVER:
        pytest.skip("chromium or chromedriver not installed (apt-get install -y chromium chromium-driver)")
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium not installed (see requirements.txt)")
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run", "--window-size=1400,1000",
                f"--user-data-dir={tmp_path_factory.mktemp('profile')}"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(DRIVER), options=opts)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def _url(path):
    return "file://" + os.path.abspath(path).replace(" ", "%20")


def _no_console_errors(driver):
    errors = [e for e in driver.get_log("browser") if e.get("level") == "SEVERE"]
    assert not errors, errors


def _case_table(driver):
    from selenium.webdriver.common.by import By

    return driver.find_element(By.CSS_SELECTOR, "table.cases")


def _column(table, header_text):
    from selenium.webdriver.common.by import By

    heads = [h.text.strip().rstrip(" ▲▼") for h in table.find_elements(By.CSS_SELECTOR, "thead th")]
    idx = heads.index(header_text)
    return idx, table.find_elements(By.CSS_SELECTOR, "thead th")[idx]


def _values(driver, table, idx):
    # Read the visible rows' cells in their current DOM order, as the page shows them.
    return driver.execute_script(
        "return Array.from(arguments[0].tBodies[0].rows).filter(r => !r.hidden)"
        ".map(r => r.cells[arguments[1]].textContent.trim());", table, idx)


def test_report_renders_sorts_and_filters(report, browser):
    from selenium.webdriver.common.by import By

    browser.get(_url(os.path.join(report["exp"], "report.html")))
    _no_console_errors(browser)
    assert len(browser.find_elements(By.CSS_SELECTOR, "table.leaderboard")) == 2  # one per judge
    assert browser.find_element(By.ID, "agreement").is_displayed()
    img = browser.find_element(By.CSS_SELECTOR, "img.plot")
    assert int(img.get_attribute("data-loaded") or 0) > 100  # the PNG decoded
    # Fits a 1400-px window: the page itself does not scroll sideways, wide tables scroll inside their box.
    assert browser.execute_script("return document.documentElement.scrollWidth <= window.innerWidth")

    table = _case_table(browser)
    idx, th = _column(table, "S1 avg")
    before = _values(browser, table, idx)
    th.click()
    asc = _values(browser, table, idx)
    nums = [float(v) for v in asc if v != "-"]
    assert nums == sorted(nums) and sorted(asc) == sorted(before)
    assert th.get_attribute("aria-sort") == "ascending"
    th.click()
    desc = [float(v) for v in _values(browser, table, idx) if v != "-"]
    assert desc == sorted(desc, reverse=True) and th.get_attribute("aria-sort") == "descending"
    # A text column sorts too.
    kidx, kth = _column(table, "case")
    kth.click()
    keys = _values(browser, table, kidx)
    assert keys == sorted(keys, key=str.lower)

    box = browser.find_element(By.CSS_SELECTOR, "input.filter")
    total = len(_values(browser, table, kidx))
    box.send_keys("othello")
    shown = _values(browser, table, kidx)
    assert 0 < len(shown) < total and all("Othello" in k for k in shown)
    count = browser.find_element(By.CSS_SELECTOR, f'[data-count-for="{table.get_attribute("id")}"]').text
    assert count.startswith(f"{len(shown)} of {total}")
    box.clear()
    box.send_keys("Edgar")  # a character name: matched through the characters column
    shown = _values(browser, table, kidx)
    assert shown and all("King Lear" in k for k in shown)
    _no_console_errors(browser)


def test_case_page_explains_scores_and_stays_inert(report, browser):
    from selenium.webdriver.common.by import By

    browser.get(_url(os.path.join(report["exp"], "report.html")))
    table = _case_table(browser)
    link = next(a for a in table.find_elements(By.CSS_SELECTOR, "tbody td:first-child a")
                if a.text == report["key"])
    link.click()
    assert report["key"] in browser.find_element(By.TAG_NAME, "h1").text
    _no_console_errors(browser)
    # Across settings: the same case under the setting whose simulation carries the hostile text.
    browser.find_element(By.LINK_TEXT, f"gpt-4o · {SETTINGS[0]}").click()
    assert f"setting {SETTINGS[0]} ·" in browser.find_element(By.CSS_SELECTOR, "p.judge").text
    _no_console_errors(browser)
    # The hostile text is shown as text and nothing in it ran.
    assert browser.execute_script("return window.pwned === undefined && window.pwned2 === undefined")
    assert not browser.find_elements(By.CSS_SELECTOR, "b.inj")
    assert "<script>window.pwned = 1</script>" in browser.find_element(By.TAG_NAME, "body").text

    # Each dimension: the derivation, written out.
    for d in ("SC", "AN", "CF", "SQ"):
        sec = browser.find_element(By.ID, f"dim-{d}")
        text = sec.find_element(By.CSS_SELECTOR, ".derivation").text
        assert "100 − 5 × (" in text and "clamped to [0, 100]" in text and "actor turns" in text
        assert "= recorded score" in text
    # The judge's prompt and reply are collapsed until opened.
    sec = browser.find_element(By.ID, "dim-SC")
    prompt_box, reply_box = sec.find_elements(By.CSS_SELECTOR, "details.call")
    pre = prompt_box.find_element(By.CSS_SELECTOR, "pre.prompt")
    assert not pre.is_displayed()
    prompt_box.find_element(By.TAG_NAME, "summary").click()
    assert pre.is_displayed() and "Storyline Consistency" in pre.text and "King Lear" in pre.text
    reply_box.find_element(By.TAG_NAME, "summary").click()
    assert '"flaws"' in reply_box.find_element(By.CSS_SELECTOR, "pre.reply").text
    # Agents' system prompts, collapsed.
    agents = browser.find_elements(By.CSS_SELECTOR, "details.agent")
    assert len(agents) >= 3 and not any(a.get_attribute("open") for a in agents)
    # Inner thoughts read apart from speech.
    assert browser.find_elements(By.CSS_SELECTOR, ".msg .thought")
    # Flaw placement says how: every placed flaw is quoted or a guess.
    marks = {e.text for e in browser.find_elements(By.CSS_SELECTOR, "table.flaws .how")}
    assert marks <= {"quoted", "guess", "unplaced"} and "quoted" in marks

    # One click to the same case under every setting and judge.
    browser.find_element(By.CSS_SELECTOR, "a.compare-link").click()
    _no_console_errors(browser)
    cols = browser.find_elements(By.CSS_SELECTOR, ".side .col")
    judges = {c.find_element(By.CSS_SELECTOR, ".judge").text.split("judge ")[1].split(" ·")[0] for c in cols}
    assert len(cols) >= 6 and judges == {"gpt-4o", "judge-b"}
    assert browser.execute_script("return window.pwned === undefined && window.pwned2 === undefined")


def test_spec_groups_in_browser(report, browser, tmp_path):
    """A file on another test set gets its own table; the model name comes from the spec."""
    from selenium.webdriver.common.by import By

    exp = build_exp(str(tmp_path / "exp"))
    add_spec(exp, SETTINGS[0], "judge-a", "h-published", "Neph0s/CoSER-Llama-3.1-8B")
    add_spec(exp, SETTINGS[1], "judge-a", "h-other", "gpt-4o", retrieval="expr3_conv1")
    res = run_script(["gca_evaluation/report.py", "--exp_dir", exp], timeout=180)
    assert res.returncode == 0, res.stderr
    browser.get(_url(os.path.join(exp, "report.html")))
    _no_console_errors(browser)
    boards = browser.find_elements(By.CSS_SELECTOR, "table.leaderboard")
    assert len(boards) == 3  # judge-a x 2 test sets, gpt-4o (no spec)
    assert any("Neph0s/CoSER-Llama-3.1-8B" in b.text for b in boards)

"""The web app's live GCA scene, scene replay compare and judge-vs-human agreement (issue 18):
over real HTTP against the fake OpenAI server, and in a real headless browser."""
import glob
import json
import os
import time

import pytest

from tests.conftest import run_script, shared_path
from tests.fakeserver import Fault
from tests.gca_fakes import DIMS, actor_name, kind, responder
from tests.test_web import _browser, web_app  # noqa: F401  (fixture)

ITEM = 2  # the example test set's Othello scene: Iago, Othello, Environment
MODELS = {"actor_model": "fake-model", "env_model": "fake-model", "nsp_model": "fake-model"}


def slow_first_actor_stream(inner, seconds=1.0):
    """The GCA fakes' replies; the first streamed actor reply pauses mid-way (same text), so a test
    can see the turn arrive in pieces. Non-streamed requests (the script's) get the plain text."""
    slowed = []

    def reply(body):
        text = inner(body)
        if body.get("stream") and kind(body) == "actor" and not slowed:
            slowed.append(body)
            return Fault.slow_stream(text, seconds)
        return text
    return reply


def scene_events(events, name):
    return [(e, d, t) for e, d, t in events if e == name]


# The reference's defaults; then the fixed protocol with retrieval, two replayed book turns, another seed.
SETTINGS = [{}, {"protocol": "fixed", "retrieval": "conv1", "continue_from": 2, "seed": 7}]


@pytest.mark.parametrize("settings", SETTINGS, ids=["reference-defaults", "fixed-retrieval-replay"])
def test_live_scene_streams_and_equals_the_script_record(web_app, fake_server, llm_env, tmp_path, settings):
    fake_server.set_responder(slow_first_actor_stream(responder()))
    events = web_app.sse({"test_item": ITEM, **MODELS, **settings}, path="/api/scene")
    assert events[0][0] == "start" and events[-1][0] == "done", events[-1]
    start, done = events[0][1], events[-1][1]
    assert start["book"] == "Othello" and "Iago" in start["speakers"]
    assert start["settings"]["protocol"] == settings.get("protocol", "reference")
    record = done["record"]
    sim = record["simulation"]
    turns = scene_events(events, "turn")
    assert [(d["role"], d["content"]) for _, d, _ in turns] == [(m["role"], m["content"]) for m in sim]
    # Each agent turn was announced, then streamed: its tokens put together are the turn's text.
    replayed = settings.get("continue_from", 0)
    first = next(d for _, d, _ in turns if d["role"] not in ("NSP", "Environment") and d["round"] >= replayed)
    tokens = [(d, t) for _, d, t in scene_events(events, "token") if (d["round"], d["role"]) == (first["round"],
                                                                                              first["role"])]
    assert len(tokens) > 3 and "".join(d["text"] for d, _ in tokens) == first["content"]
    turn_time = next(t for _, d, t in turns if d is first)
    assert turn_time - tokens[0][1] > 0.7  # the first words were on the wire while the server paused
    speaks = scene_events(events, "speak")
    assert len(speaks) == len([d for _, d, _ in turns if d["round"] >= replayed]) > 0
    nsp = [m["content"] for m in sim if m["role"] == "NSP"]
    assert nsp and set(nsp) <= set(start["speakers"]) | {"<END CHAT>"}
    assert record["spec"]["roles"]["actor"]["model"] == "fake-model"
    assert record["spec"]["settings"]["retrieval"] == settings.get("retrieval")
    if settings.get("retrieval"):  # the actors' prompts carried passages retrieved from the book file
        web_actor = [b for b in fake_server.chat_requests() if kind(b) == "actor" and b.get("stream")]
        assert web_actor and all("<begin of background information>" in b["messages"][0]["content"]
                                 for b in web_actor)
    assert not any("sk-test" in json.dumps(d) for _, d, _ in events)  # no key goes to the browser
    # Saved as a one-record simulation file.
    saved = os.path.join(web_app.cwd, done["saved"])
    assert os.path.dirname(saved) == str(web_app.cwd / "exp" / "scenes")
    assert json.load(open(saved, encoding="utf-8")) == [record]

    # The script, same item and settings, own cache: the same record, spec included.
    key = f"{record['book_title']}-{record['i_p']}-{record['i_c']}"
    exp = tmp_path / "script-exp"
    r = run_script(["gca_evaluation/main.py", "--test_file", shared_path("test", "example_test_set.json"),
                    "--sample_ids", key, "--judge_model", "fake-model", "--exp_dir", exp, "--num_workers", "1",
                    "--book_data", shared_path("final"), *[f"--{k}={v}" for k, v in {**MODELS, **settings}.items()]],
                   env=llm_env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    files = glob.glob(str(exp / "simulation" / "*.json"))
    assert len(files) == 1
    script_records = json.load(open(files[0], encoding="utf-8"))
    assert len(script_records) == 1
    assert script_records[0] == record
    # The script asked the server itself (its own cache) and never streamed.
    script_calls = [b for b in fake_server.chat_requests() if kind(b) != "judge" and not b.get("stream")]
    assert len(script_calls) == len(speaks)
    # With the web app's cache it asks nothing for the scene: streamed and plain calls share cache rows.
    before = len(fake_server.chat_requests())
    r = run_script(["gca_evaluation/main.py", "--test_file", shared_path("test", "example_test_set.json"),
                    "--sample_ids", key, "--judge_model", "fake-model", "--exp_dir", tmp_path / "again",
                    "--cache_path", web_app.cwd / "cache.sqlite", "--book_data", shared_path("final"),
                    *[f"--{k}={v}" for k, v in {**MODELS, **settings}.items()]], env=llm_env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert [b for b in fake_server.chat_requests()[before:] if kind(b) != "judge"] == []
    assert json.load(open(glob.glob(str(tmp_path / "again" / "simulation" / "*.json"))[0])) == [record]


def test_a_person_takes_over_one_character(web_app, fake_server):
    fake_server.set_responder(responder())
    said = []
    status, err = web_app.post("/api/scene/say", {"scene": "nope", "message": "hi"})
    assert status == 400 and "scene" in err["error"]

    def answer(event, data):
        if event == "start":
            said.append(data["scene"])
        if event == "your_turn":
            assert data["character"] == "Iago"
            line = f"(leans close) My line {len(said)}, my lord."
            status, _ = web_app.post("/api/scene/say", {"scene": said[0], "message": line})
            assert status == 200
            said.append(line)

    before = len(fake_server.chat_requests())
    events = web_app.sse({"test_item": ITEM, **MODELS, "human": "Iago"}, path="/api/scene", on_event=answer)
    assert events[-1][0] == "done", events[-1]
    record = events[-1][1]["record"]
    mine = [m["content"] for m in record["simulation"] if m["role"] == "Iago"]
    assert mine and mine == said[1:]
    requests = fake_server.chat_requests()[before:]
    assert not [b for b in requests if kind(b) == "actor" and actor_name(b) == "Iago"]  # nobody asked the model
    othello = [b for b in requests if kind(b) == "actor" and actor_name(b) == "Othello"]
    assert othello and any(said[1] in m["content"] for m in othello[-1]["messages"])  # the others heard it
    assert record["spec"]["settings"]["human"] == "Iago"


def test_leaving_a_scene_stops_it(web_app, fake_server):
    """The viewer goes away while the scene waits for their line: the scene ends, no further call."""
    import urllib.request

    fake_server.set_responder(responder())
    req = urllib.request.Request(web_app.url + "/api/scene", headers={"Content-Type": "application/json"},
                                 data=json.dumps({"test_item": ITEM, **MODELS, "human": "Othello"}).encode())
    scene = None
    with urllib.request.urlopen(req, timeout=60) as r:
        for raw in r:
            line = raw.decode("utf-8")
            if line.startswith("data: ") and '"scene"' in line and scene is None:
                scene = json.loads(line[6:])["scene"]
            if line.startswith("event: your_turn"):
                break
    assert scene
    calls = len(fake_server.chat_requests())
    deadline = time.monotonic() + 10
    while True:  # the server notices the closed connection and forgets the scene
        status, err = web_app.post("/api/scene/say", {"scene": scene, "message": "Too late."})
        if status == 400 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert status == 400 and "unknown or finished scene" in err["error"]
    time.sleep(1.0)
    assert len(fake_server.chat_requests()) == calls


def test_scene_requests_are_checked(web_app):
    cases = [({"test_item": "x"}, "test_item"), ({"test_item": 99}, "test_item"),
             ({"test_item": ITEM, "protocol": "bogus"}, "protocol"),
             ({"test_item": ITEM, "continue_from": -1}, "continue_from"),
             ({"test_item": ITEM, "seed": "1.5"}, "seed"),
             ({"test_item": ITEM, "wo_thought": "yes"}, "wo_thought"),
             ({"test_item": ITEM, "human": "Nobody"}, "human"),
             ({"test_item": ITEM, "retrieval": "bogus"}, "retrieval"),
             ({"test_item": ITEM, "actor_model": ["x"]}, "actor_model")]
    for body, field in cases:
        status, err = web_app.post("/api/scene", body)
        assert status == 400 and field in err["error"], (body, err)
    status, err = web_app.post("/api/compare_scene", {"test_item": ITEM, "a": MODELS, "b": MODELS})
    assert status == 400 and "same settings" in err["error"]
    status, err = web_app.post("/api/compare_scene", {"test_item": ITEM, "a": MODELS})
    assert status == 400 and "'b'" in err["error"]
    status, err = web_app.post("/api/agreement", {"judges": 3})
    assert status == 400 and "judges" in err["error"]


def _judged(good_marker):
    """GCA fakes, but fake-a's actors say 'A-line' and the judge finds no flaw in a scene containing
    `good_marker` and severe ones elsewhere: the judge prefers fake-a's scene."""
    def actor(body):
        tag = "A-line" if body["model"] == "fake-a" else "B-line"
        return f"[thinking] (nods) {tag} from {actor_name(body)}, {len(body['messages'])}."

    def judge(body):
        dim = next(d for d in DIMS if f"simulated conversation on {d}," in body["messages"][0]["content"])
        text = body["messages"][-1]["content"]
        flaws = [] if good_marker in text else [{"instance": "stiff", "type": dim, "severity": 5}] * 3
        return json.dumps({dim: {"flaws": flaws}})
    return responder(actor=actor, judge=judge)


def replay_and_vote(web_app, pick):
    """Replay the scene with fake-a vs fake-b, then vote for the side showing `pick`'s lines."""
    events = web_app.sse({"test_item": ITEM, "a": {**MODELS, "actor_model": "fake-a"},
                          "b": {**MODELS, "actor_model": "fake-b"}}, path="/api/compare_scene")
    assert events[-1][0] == "done", events[-1]
    assert "fake-a" not in json.dumps(events) and "fake-b" not in json.dumps(events)  # blind
    text = {side: " ".join(d["content"] for e, d, _ in events if e == "turn" and d["side"] == side)
            for side in ("left", "right")}
    assert ("A-line" in text["left"]) != ("A-line" in text["right"])
    marker = "A-line" if pick == "fake-a" else "B-line"
    choice = "left" if marker in text["left"] else "right"
    status, v = web_app.post("/api/vote", {"pair": events[-1][1]["pair"], "choice": choice})
    assert status == 200 and v["winner"] == pick
    return v


def test_scene_replay_vote_and_judge_agreement(web_app, fake_server):
    fake_server.set_responder(_judged("A-line"))
    replay_and_vote(web_app, "fake-a")
    replay_and_vote(web_app, "fake-b")
    rows = [json.loads(x) for f in glob.glob(str(web_app.cwd / "exp" / "preferences" / "*.jsonl"))
            for x in open(f, encoding="utf-8")]
    assert len(rows) == 2 and all(r["kind"] == "scene" for r in rows)
    row = rows[0]
    assert row["item"]["test_item"] == ITEM and row["item"]["key"].startswith("Othello-")
    assert [c["model"] for c in row["candidates"]] == ["fake-a", "fake-b"] and row["time"]
    assert all(c["simulation"] and c["settings"]["env_model"] == "fake-model" for c in row["candidates"])
    assert all(os.path.exists(web_app.cwd / "exp" / "scenes" / c["scene_file"]) for c in row["candidates"])
    prefs = web_app.get("/api/preferences")
    assert {m["model"]: m["wins"] for m in prefs["models"]} == {"fake-a": 1, "fake-b": 1}
    before = len(fake_server.chat_requests())
    status, agree = web_app.post("/api/agreement", {"judges": "fake-model,fake-a"})
    assert status == 200, agree
    assert [j["judge"] for j in agree["judges"]] == ["fake-model", "fake-a"]
    for j in agree["judges"]:
        assert (j["scene_votes"], j["decisive"], j["agree"], j["agreement"], j["human_ties"]) == (2, 2, 1, 0.5, 0)
        lo, hi = j["ci95"]
        assert 0 < lo < 0.5 < hi < 1
    judge_calls = [b for b in fake_server.chat_requests()[before:] if kind(b) == "judge"]
    # Per judge the two scenes once each, four dimensions (the second vote is answered from the cache).
    assert len(judge_calls) == 16
    assert sorted(b["model"] for b in judge_calls) == ["fake-a"] * 8 + ["fake-model"] * 8


def test_agreement_from_existing_evaluation_files(web_app, fake_server, llm_env):
    """The script evaluates both settings of the item; the app reads those scores for the voted scenes."""
    fake_server.set_responder(_judged("A-line"))
    for actor in ("fake-a", "fake-b"):
        r = run_script(["gca_evaluation/main.py", "--test_file", shared_path("test", "example_test_set.json"),
                        "--limit", "3", "--judge_model", "fake-judge", "--exp_dir", web_app.cwd / "exp",
                        *[f"--{k}={v}" for k, v in {**MODELS, "actor_model": actor}.items()]],
                       env=llm_env, cwd=web_app.cwd)
        assert r.returncode == 0, r.stderr
    assert len(glob.glob(str(web_app.cwd / "exp" / "evaluation" / "*.json"))) == 2
    replay_and_vote(web_app, "fake-a")
    replay_and_vote(web_app, "fake-b")
    before = len(fake_server.chat_requests())
    status, agree = web_app.post("/api/agreement", {"source": "files"})
    assert status == 200, agree
    assert [(j["judge"], j["decisive"], j["agree"], j["missing"]) for j in agree["judges"]] == [("fake-judge", 2, 1, 0)]
    assert fake_server.chat_requests()[before:] == []  # read, not judged
    # A scene no evaluation judged (another seed) has no score there: counted as missing.
    events = web_app.sse({"test_item": ITEM, "a": {**MODELS, "actor_model": "fake-a", "seed": 5},
                          "b": {**MODELS, "actor_model": "fake-b", "seed": 5}}, path="/api/compare_scene")
    web_app.post("/api/vote", {"pair": events[-1][1]["pair"], "choice": "left"})
    status, agree = web_app.post("/api/agreement", {"source": "files"})
    assert [(j["decisive"], j["missing"]) for j in agree["judges"]] == [(2, 1)]
    status, err = web_app.post("/api/agreement", {"source": "guess"})
    assert status == 400 and "source" in err["error"]


# ---- a real headless browser ------------------------------------------------------------------
def _open_on_item(web_app, tmp_path, page, item_select):
    """A browser on `page`, once the test items are listed, with the Othello item picked."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    b = _browser(tmp_path)
    wait = WebDriverWait(b, 60)
    try:
        b.get(web_app.url + "/#" + page)
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, f"#{item_select} option")) == 3)
        Select(b.find_element(By.ID, item_select)).select_by_value(str(ITEM))
    except BaseException:
        b.quit()
        raise
    return b, wait

def test_browser_live_scene_with_takeover(web_app, fake_server, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    fake_server.set_responder(slow_first_actor_stream(responder(), 2.0))
    b, wait = _open_on_item(web_app, tmp_path, "scene", "sc-item")
    try:
        for sel in ("sc-actor", "sc-env", "sc-nsp"):
            Select(b.find_element(By.ID, sel)).select_by_value("fake-model")
        assert "Iago" in b.find_element(By.ID, "sc-human").text
        b.find_element(By.ID, "sc-play").click()
        # The first actor turn is on the page while the server still holds the rest of it.
        partial = wait.until(lambda d: [m.text for m in d.find_elements(By.CSS_SELECTOR, "#sc-log .msg.streaming")
                                        if "secret of" in m.text])
        assert "turn" not in partial[0].split("secret of", 1)[1].split("]", 1)[1]
        wait.until(lambda d: "finished" in d.find_element(By.ID, "sc-status").text)
        saved = b.find_element(By.ID, "sc-status").text.split("saved to ", 1)[1].strip()
        record = json.load(open(os.path.join(web_app.cwd, saved), encoding="utf-8"))[0]
        shown = [m.text for m in b.find_elements(By.CSS_SELECTOR, "#sc-log .msg")]
        spoken = [m for m in record["simulation"] if m["role"] != "NSP"]
        assert shown == [f"{m['role']}: {m['content']}" for m in spoken]
        nexts = [n.text for n in b.find_elements(By.CSS_SELECTOR, "#sc-log .nsp")]
        assert nexts == ["→ next: " + m["content"] for m in record["simulation"] if m["role"] == "NSP"]
        thought = b.find_elements(By.CSS_SELECTOR, "#sc-log .thought")[0]
        b.find_element(By.ID, "thoughts").click()
        assert not thought.is_displayed()
        b.find_element(By.ID, "thoughts").click()
        if os.environ.get("COSER_WEB_SCREENSHOT"):
            b.save_screenshot(os.environ["COSER_WEB_SCREENSHOT"])
        # Play again as Iago: the page asks for his lines and the scene goes on with them.
        Select(b.find_element(By.ID, "sc-human")).select_by_value("Iago")
        b.find_element(By.ID, "sc-play").click()
        def iago_lines(d):
            return [m.text for m in d.find_elements(By.CSS_SELECTOR, "#sc-log .msg:not(.streaming)")
                    if m.text.startswith("Iago: ")]

        for n in range(1, 30):
            wait.until(lambda d: d.find_element(By.ID, "sc-composer").is_displayed()
                       or "finished" in d.find_element(By.ID, "sc-status").text)
            if "finished" in b.find_element(By.ID, "sc-status").text:
                break
            assert "speak as Iago" in b.find_element(By.ID, "sc-status").text
            b.find_element(By.ID, "sc-msg").send_keys(f"(whispers) Mine, number {n}.\n")
            wait.until(lambda d: len(iago_lines(d)) == n)
        assert n > 1
        assert iago_lines(b) == [f"Iago: (whispers) Mine, number {k}." for k in range(1, n)]
        # Stop while the scene waits for Iago: the page lets go of the stream and can play again.
        b.find_element(By.ID, "sc-play").click()
        wait.until(lambda d: d.find_element(By.ID, "sc-composer").is_displayed())
        b.find_element(By.ID, "sc-stop").click()
        wait.until(lambda d: d.find_element(By.ID, "sc-status").text == "stopped")
        assert not b.find_element(By.ID, "sc-composer").is_displayed() and b.find_element(By.ID, "sc-play").is_enabled()
    finally:
        b.quit()


def test_browser_scene_replay_vote_and_agreement(web_app, fake_server, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    fake_server.set_responder(_judged("A-line"))
    b, wait = _open_on_item(web_app, tmp_path, "compare", "cs-item")
    try:
        Select(b.find_element(By.ID, "model-a")).select_by_value("fake-a")
        Select(b.find_element(By.ID, "model-b")).select_by_value("fake-b")
        Select(b.find_element(By.ID, "cs-env")).select_by_value("fake-model")
        b.find_element(By.ID, "cs-play").click()
        wait.until(lambda d: d.find_element(By.ID, "vote-left").is_enabled())
        left = b.find_element(By.ID, "left").text
        assert "Iago:" in left and b.find_element(By.ID, "left-model").text == ""
        choice = "vote-left" if "A-line" in left else "vote-right"
        b.find_element(By.ID, choice).click()
        wait.until(lambda d: "vote saved" in d.find_element(By.ID, "cmp-status").text)
        side = "left-model" if choice == "vote-left" else "right-model"
        assert b.find_element(By.ID, side).text == "(fake-a)"
        b.find_element(By.ID, "nav-prefs").click()
        wait.until(lambda d: "1 vote" in d.find_element(By.ID, "prefs-note").text)
        box = b.find_element(By.ID, "judges")
        box.clear()
        box.send_keys("fake-model")
        b.find_element(By.ID, "judge-run").click()
        wait.until(lambda d: "agreement over" in d.find_element(By.ID, "agree-note").text)
        cells = [td.text for td in b.find_elements(By.CSS_SELECTOR, "#agree-table tbody td")]
        assert cells[:4] == ["fake-model", "1", "1", "1"] and cells[4].startswith("100.0%")
    finally:
        b.quit()


def test_core_and_web_import_no_script_and_scripts_no_web():
    """One scene engine and judge, in coser/: the app imports nothing from the scripts, and back."""
    import ast

    from tests.conftest import REPO

    def imports(path):
        tree = ast.parse(open(path, encoding="utf-8").read())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                yield from (a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                yield node.module

    core = glob.glob(os.path.join(REPO, "coser", "**", "*.py"), recursive=True)
    scripts = [p for d in ("gca_evaluation", "data_construction") for p in glob.glob(os.path.join(REPO, d, "*.py"))]
    assert core and scripts
    for path in core:
        bad = [m for m in imports(path) if m.split(".")[0] in ("gca_evaluation", "data_construction")]
        assert not bad, (path, bad)
    for path in scripts:
        assert not [m for m in imports(path) if m.startswith("coser.web")], path

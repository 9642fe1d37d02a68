"""gca_evaluation/main.py end to end, as a subprocess against the fake HTTP server."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import PYTHON, REPO, run_script, shared_path
from tests.gca_fakes import _no_nagle, kind, responder  # noqa: F401 (autouse fixture)

GCA = "gca_evaluation/main.py"

# Published per-case numbers (CoSER exp/evaluation/test_set_gpt-4o.json) for the published simulation.
PUBLISHED = {
    "King Lear-17-0": (0.021624838733610124, 0.07246376532209046),
    "King Lear-16-0": (0.023715767261473588, 0.1059001475702016),
    "Othello-9-0": (0.030483934319011176, 0.0732700110099804),
}
PUBLISHED_MEANS = (0.02527484677136496, 0.08387797463409082)


def published_layout(tmp_path):
    """A working directory holding the example test set as data/test/test_set.json and the
    reference's simulation of it, exactly where the reference wrote it."""
    os.makedirs(tmp_path / "data" / "test")
    os.makedirs(tmp_path / "exp" / "simulation")
    shutil.copy(shared_path("test", "example_test_set.json"), tmp_path / "data" / "test" / "test_set.json")
    shutil.copy(shared_path("exp", "simulation", "test_set_gpt-4o.json"), tmp_path / "exp" / "simulation")


def read(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def test_rejudging_published_simulation_reproduces_bleu_rouge(fake_server, llm_env, tmp_path):
    published_layout(tmp_path)
    fake_server.set_responder(responder())
    r = run_script([GCA, "--num_workers", "4"], env=llm_env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "reusing exp/simulation/test_set_gpt-4o.json" in r.stderr
    ev = read(tmp_path / "exp" / "evaluation" / "test_set_gpt-4o.json")
    assert ev["judge_model"] == "gpt-4o"
    assert list(ev["cases"]) == list(PUBLISHED)
    for key, (bleu, rouge) in PUBLISHED.items():
        crit = ev["cases"][key]["critique"]
        assert crit["bleu"] == pytest.approx(bleu, rel=1e-12, abs=0)
        assert crit["rouge_l"] == pytest.approx(rouge, rel=1e-12, abs=0)
        assert set(crit) >= {"Storyline Consistency", "Anthropomorphism", "Character Fidelity", "Storyline Quality",
                             "rouge_l_rougescore", "sacrebleu"}
    assert ev["scores"]["bleu"] == pytest.approx(PUBLISHED_MEANS[0], rel=1e-12)
    assert ev["scores"]["rouge_l"] == pytest.approx(PUBLISHED_MEANS[1], rel=1e-12)
    judge_calls = [b for b in fake_server.chat_requests() if kind(b) == "judge"]
    assert len(judge_calls) == 12 and all(b["model"] == "gpt-4o" for b in judge_calls)
    assert "Storyline Consistency" in r.stdout and "LLM calls: 12" in r.stdout
    # The published file is reused untouched, and a second run reuses the evaluation (no call).
    assert read(tmp_path / "exp" / "simulation" / "test_set_gpt-4o.json") == read(
        shared_path("exp", "simulation", "test_set_gpt-4o.json"))
    fake_server.reset()
    r = run_script([GCA], env=llm_env, cwd=tmp_path)
    assert r.returncode == 0 and fake_server.chat_requests() == []
    # A different judge never reuses (or overwrites) another judge's scores: it gets its own file.
    first = read(tmp_path / "exp" / "evaluation" / "test_set_gpt-4o.json")
    r = run_script([GCA, "--judge_model", "gpt-4o-mini"], env=llm_env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert len([b for b in fake_server.chat_requests() if b["model"] == "gpt-4o-mini"]) == 12
    assert read(tmp_path / "exp" / "evaluation" / "test_set_gpt-4o.json") == first
    other = [n for n in os.listdir(tmp_path / "exp" / "evaluation") if n.startswith("test_set_gpt-4o_spec=")]
    assert len(other) == 1 and other[0] in r.stderr
    ev = read(tmp_path / "exp" / "evaluation" / other[0])
    assert ev["judge_model"] == "gpt-4o-mini" and ev["spec"]["roles"]["judge"]["model"] == "gpt-4o-mini"
    assert ev["spec"]["source"] == "reference-implementation" and ev["spec_hash"] in other[0]


def test_judge_failures_are_counted_not_fatal(fake_server, llm_env, tmp_path):
    published_layout(tmp_path)
    fake_server.set_responder(_judge_fails_for_othello)
    r = run_script([GCA], env=llm_env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    ev = read(tmp_path / "exp" / "evaluation" / "test_set_gpt-4o.json")
    bad = ev["cases"]["Othello-9-0"]
    assert bad["failed"] is True and bad["failures"][0]["fail_to_parse_response"] == "no JSON here, sorry"
    assert ev["scores"]["n"] == 2 and ev["scores"]["failed"] == 1
    good = [ev["cases"][k]["score"] for k in ("King Lear-17-0", "King Lear-16-0")]
    assert ev["scores"]["avg"] == pytest.approx(sum(good) / 2)


def _judge_fails_for_othello(body):
    if kind(body) == "judge" and "from Othello" in body["messages"][0]["content"]:
        return "no JSON here, sorry"
    return responder()(body)


def _sim_args(tmp_path, workers, extra=(), limit=4):
    return [GCA, "--test_file", shared_path("test", "test_set.json"), "--limit", str(limit), "--num_workers", str(workers),
            "--exp_dir", str(tmp_path / "exp"), "--cache_path", str(tmp_path / "cache.sqlite"), *extra]


def test_one_and_many_workers_write_identical_files(fake_server, llm_env, tmp_path):
    fake_server.set_responder(responder(nsp=_nsp_sometimes_invalid))
    outs = {}
    for workers in (1, 32):
        d = tmp_path / f"w{workers}"
        env = dict(llm_env, PYTHONHASHSEED=str(workers))  # fallback draws must not depend on set order
        r = run_script(_sim_args(d, workers), env=env, cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        outs[workers] = {sub: open(d / "exp" / sub / "test_set_gpt-4o.json", "rb").read()
                         for sub in ("simulation", "evaluation")}
        assert not os.path.exists(d / "exp" / "simulation" / ".partial")
    assert outs[1] == outs[32]
    sim = json.loads(outs[1]["simulation"])
    assert len(sim) == 4 and all(rec["simulation"] for rec in sim)


def _nsp_sometimes_invalid(body):
    # Every third prediction is unusable, so the seeded fallback is exercised; scenes end at round 8.
    n = len(body["messages"])
    if n >= 17:
        return "Next Speaker: <END CHAT>"
    if n % 3 == 0:
        return "Hmm, hard to say."
    return responder()(body)


def test_resume_after_kill_repeats_no_call(fake_server, llm_env, tmp_path):
    fake_server.set_responder(responder(nsp=_nsp_sometimes_invalid))
    # Uninterrupted reference run.
    ref = tmp_path / "ref"
    r = run_script(_sim_args(ref, 1, limit=3), env=llm_env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    fake_server.reset()
    fake_server.latency = 0.01
    run = tmp_path / "run"
    args = [str(a) for a in _sim_args(run, 1, limit=3)]
    args[0] = os.path.join(REPO, args[0])
    proc = subprocess.Popen([PYTHON, *args], env=llm_env, cwd=tmp_path, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    partial = run / "exp" / "simulation" / ".partial" / "test_set_gpt-4o"
    deadline = time.time() + 120
    while time.time() < deadline and not (partial.exists() and len(os.listdir(partial)) >= 2):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert partial.exists() and len(os.listdir(partial)) >= 2
    first = [json.dumps(b, sort_keys=True) for b in fake_server.chat_requests()]
    fake_server.reset()
    fake_server.latency = 0.0
    r = run_script(_sim_args(run, 1, limit=3), env=llm_env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    second = [json.dumps(b, sort_keys=True) for b in fake_server.chat_requests()]
    assert len(set(first) & set(second)) <= 1  # at most the call in flight when killed
    for sub in ("simulation", "evaluation"):
        assert read(run / "exp" / sub / "test_set_gpt-4o.json") == read(ref / "exp" / sub / "test_set_gpt-4o.json")


def test_repeats_write_beside_and_summarize(fake_server, llm_env, tmp_path):
    published_layout(tmp_path)
    os.remove(tmp_path / "exp" / "simulation" / "test_set_gpt-4o.json")
    fake_server.set_responder(responder(nsp=lambda b: "Next Speaker: <END CHAT>"))
    r = run_script([GCA, "--nth_exp", "-1", "--limit", "2", "--num_workers", "4"], env=llm_env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    names = sorted(os.listdir(tmp_path / "exp" / "evaluation"))
    assert names == ["test_set_gpt-4o-repeat=1.json", "test_set_gpt-4o-repeat=2.json", "test_set_gpt-4o.json"]
    assert sorted(os.listdir(tmp_path / "exp" / "simulation")) == names
    assert "mean +- std" in r.stdout and "95% CI (bootstrap)" in r.stdout
    # Repeats are fresh generations (their own cache entries), not reloads of run 0.
    judge_calls = [b for b in fake_server.chat_requests() if kind(b) == "judge"]
    assert len(judge_calls) == 3 * 2 * 4
    assert os.path.exists(tmp_path / "exp" / "run_gca_evaluation.json")


@pytest.mark.parametrize("mutate, expected", [
    (lambda d: "not json at all", "line 1"),
    (lambda d: [d[0], {k: v for k, v in d[1].items() if k != "dialogues"}], "sample 1: missing field 'dialogues'"),
    (lambda d: [dict(d[0], character_profiles={})], "sample 0 (King Lear-17-0): field 'character_profiles'"),
    (lambda d: [dict(d[0], i_p="17")], "sample 0: field 'i_p' should be int"),
    (lambda d: {"not": "a list"}, "expected a JSON list"),
])
def test_bad_test_files_one_line_errors(llm_env, tmp_path, mutate, expected):
    data = read(shared_path("test", "example_test_set.json"))
    path = tmp_path / "bad.json"
    value = mutate(data)
    path.write_text(value if isinstance(value, str) else json.dumps(value), encoding="utf-8")
    r = run_script([GCA, "--test_file", str(path)], env=llm_env, cwd=tmp_path)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], r.stderr
    assert "bad.json" in lines[0]


def test_help_works():
    r = subprocess.run([sys.executable, os.path.join(REPO, GCA), "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "--continue_from" in r.stdout and "--use_motivation" in r.stdout


def test_retrieval_run_from_book_data(fake_server, llm_env, tmp_path):
    fake_server.set_responder(responder(nsp=lambda b: "Next Speaker: <END CHAT>"))
    book_data = os.path.dirname(shared_path("final", "King Lear.json"))
    r = run_script([GCA, "--test_file", shared_path("test", "example_test_set.json"), "--limit", "1",
                    "--retrieval", "expr3_conv1", "--book_data", book_data, "--exp_dir", str(tmp_path / "exp")],
                   env=llm_env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert os.path.exists(tmp_path / "exp" / "evaluation" / "example_test_set_gpt-4o_rag=expr3_conv1.json")
    reqs = fake_server.chat_requests()
    assert all("{retrieved_knowledge}" not in m["content"] for b in reqs for m in b["messages"])
    actors = [b["messages"][0]["content"] for b in reqs if kind(b) == "actor"]
    assert actors and all("<begin of background information>\n\n====Historical Experience====" in s for s in actors)
    assert all("====Historical Conversation====" in s for s in actors)
    r = run_script([GCA, "--test_file", shared_path("test", "example_test_set.json"), "--retrieval", "conv1",
                    "--book_data", str(tmp_path / "nowhere")], env=llm_env, cwd=tmp_path)
    assert r.returncode == 2 and "--book_data directory not found" in r.stderr


def test_files_of_another_test_set_with_the_same_name_are_not_reused(fake_server, llm_env, tmp_path):
    # exp/simulation/test_set_gpt-4o.json belongs to the example test set; a different file also called
    # test_set.json must not be scored with it (the demo and the published test set share the name).
    published_layout(tmp_path)
    sim = tmp_path / "exp" / "simulation" / "test_set_gpt-4o.json"
    before = sim.read_bytes()
    other = read(shared_path("test", "test_set.json"))[-2:]
    with open(tmp_path / "data" / "test" / "test_set.json", "w", encoding="utf-8") as f:
        json.dump(other, f)
    fake_server.set_responder(responder())
    r = run_script([GCA], env=llm_env, cwd=tmp_path)
    # Another sample set is another spec: simulated into its own, suffixed file; the published one is untouched.
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    assert sim.read_bytes() == before and fake_server.chat_requests() != []
    own = [n for n in os.listdir(tmp_path / "exp" / "simulation") if n.startswith("test_set_gpt-4o_spec=")]
    assert len(own) == 1 and f"simulation: exp/simulation/{own[0]}" in r.stderr
    recs = read(tmp_path / "exp" / "simulation" / own[0])
    assert [r_["i_p"] for r_ in recs] == [o["i_p"] for o in other]
    assert recs[0]["spec"]["test_set"]["keys"] == [f"{o['book']}-{o['i_p']}-{o['i_c']}" for o in other]
    assert not os.path.exists(tmp_path / "exp" / "evaluation" / "test_set_gpt-4o.json")
    # Samples that the file holds are reused in test-file order, even when it holds more.
    subset = read(shared_path("test", "example_test_set.json"))[1:]
    with open(tmp_path / "data" / "test" / "test_set.json", "w", encoding="utf-8") as f:
        json.dump(subset, f)
    r = run_script([GCA], env=llm_env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    ev = read(tmp_path / "exp" / "evaluation" / "test_set_gpt-4o.json")
    assert list(ev["cases"]) == list(PUBLISHED)[1:]

"""Run specs (issue 15): every result file carries its spec; a changed setting never reuses an old
file; the same command twice sends nothing; several judges side by side; published simulations judged
in place; run records and logs kept; one run at a time per output folder."""
import json
import os
import subprocess
import time

import pytest

from coser import runspec as RS
from tests.conftest import PYTHON, REPO, run_script, shared_path
from tests.gca_fakes import _no_nagle, responder  # noqa: F401 (autouse fixture)

GCA = "gca_evaluation/main.py"


def read(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def files(folder):
    return sorted(n for n in os.listdir(folder) if n.endswith(".json")) if os.path.isdir(folder) else []


def snapshot(exp):
    out = {}
    for sub in ("simulation", "evaluation"):
        for n in files(exp / sub):
            out[f"{sub}/{n}"] = (exp / sub / n).read_bytes()
    return out


def base_args(tmp_path, *extra):
    return [GCA, "--test_file", shared_path("test", "example_test_set.json"), "--limit", "1",
            "--exp_dir", str(tmp_path / "exp"), "--cache_path", str(tmp_path / "cache.sqlite"), *extra]


# ---- units --------------------------------------------------------------------------------------
def _spec(**over):
    spec = {"spec_version": 1, "stage": "simulation", "protocol": "reference",
            "roles": {"actor": {"model": "a", "endpoint": "http://127.0.0.1:1/v1"}},
            "settings": {"seed": 42}, "test_set": {"path": "x.json", "hash": "h", "keys": ["k"], "n": 1},
            "toolkit": {"version": "0.1.0", "commit": "abc"}}
    spec.update(over)
    return spec


def test_identity_ignores_provenance_only_fields():
    a = _spec()
    b = _spec(toolkit={"version": "9", "commit": None},
              roles={"actor": {"model": "a", "endpoint": "http://127.0.0.1:2/v1"}},
              test_set={"path": "elsewhere/y.json", "hash": "h", "keys": ["k"], "n": 1})
    assert RS.same_spec(a, b) and RS.spec_hash(a) == RS.spec_hash(b)
    for other in (_spec(protocol="fixed"), _spec(settings={"seed": 1}),
                  _spec(roles={"actor": {"model": "b", "endpoint": "x"}}),
                  _spec(test_set={"path": "x.json", "hash": "h2", "keys": ["k"], "n": 1})):
        assert not RS.same_spec(a, other) and RS.spec_hash(a) != RS.spec_hash(other)
        assert RS.diff_specs(a, other)
    assert len(RS.spec_hash(a)) == RS.HASH_LEN and RS.canonical({"b": 1, "a": "é"}) == '{"a":"é","b":1}'


def test_choose_path_never_overwrites_another_spec(tmp_path):
    base = str(tmp_path / "r.json")
    a, b = _spec(), _spec(settings={"seed": 7})
    assert RS.choose_path(base, a, True) == (base, "new")
    with open(base, "w") as f:
        json.dump({"spec": a}, f)
    assert RS.choose_path(base, a, True) == (base, "reuse")
    path, state = RS.choose_path(base, b, True)
    assert state == "new" and path == RS.suffixed(base, b) and RS.spec_hash(b) in path
    # A non-default setting never takes the reference name, even when it is free.
    assert RS.choose_path(str(tmp_path / "free.json"), b, False)[0].endswith(f"_spec={RS.spec_hash(b)}.json")


def test_lock_refuses_or_waits_naming_the_pid(tmp_path):
    held = RS.DirLock(str(tmp_path)).acquire()
    try:
        code = ("import sys; sys.path.insert(0, sys.argv[2]); from coser import runspec as R\n"
                "try:\n    R.DirLock(sys.argv[1]).acquire(wait=False)\nexcept R.LockBusy as e:\n    print(e)")
        r = subprocess.run([PYTHON, "-c", code, str(tmp_path), REPO], capture_output=True, text=True, timeout=60)
        assert f"PID {os.getpid()}" in r.stdout and len(r.stdout.strip().splitlines()) == 1
    finally:
        held.release()
    RS.DirLock(str(tmp_path)).acquire(wait=False).release()


def test_run_record_is_never_overwritten_and_log_has_no_key(tmp_path):
    recs = [RS.RunRecord(str(tmp_path), "unit") for _ in range(2)]
    assert recs[0].path != recs[1].path
    recs[0].log.info("retry after error at http://user:sk-SECRET123@host/v1: timeout")
    for r in recs:
        r.add(_spec(), "out.json", seconds=1.5)
        r.save()
    saved = read(recs[0].path)
    assert saved["outputs"] == [{"path": "out.json", "reused": False}] and saved["specs"][0]["spec_hash"]
    log = open(recs[0].log_path, encoding="utf-8").read()
    assert "timeout" in log and "sk-SECRET123" not in log


# ---- end to end over the fake server -------------------------------------------------------------
SETTINGS = [
    ("env_model", ["--env_model", "fake-env"]),
    ("nsp_model", ["--nsp_model", "fake-nsp"]),
    ("judge_model", ["--judge_model", "fake-judge"]),
    ("use_motivation", ["--use_motivation"]),
    ("wo_thought", ["--wo_thought"]),
    ("continue_from", ["--continue_from", "2"]),
    ("seed", ["--seed", "7"]),
    ("protocol", ["--protocol", "fixed"]),
    ("limit", ["--limit", "2"]),
    ("sample_ids", ["--sample_ids", "Othello-9-0"]),
    ("sample", ["--sample", "1", "--sample_seed", "7"]),  # draws King Lear-16-0
    ("repeats", ["--nth_exp", "1"]),
]


def test_each_setting_gets_its_own_files_and_same_command_reuses_all(fake_server, llm_env, tmp_path):
    fake_server.set_responder(responder(nsp=lambda b: "Next Speaker: <END CHAT>"))
    r = run_script(base_args(tmp_path), env=llm_env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    exp = tmp_path / "exp"
    first = snapshot(exp)
    assert set(first) == {"simulation/example_test_set_gpt-4o.json", "evaluation/example_test_set_gpt-4o.json"}
    sim = read(exp / "simulation" / "example_test_set_gpt-4o.json")
    spec = sim[0]["spec"]
    assert spec["stage"] == "simulation" and spec["protocol"] == "reference"
    assert spec["roles"]["actor"]["model"] == "gpt-4o" and spec["roles"]["nsp"]["model"] == "gpt-4o-mini"
    assert "127.0.0.1" in spec["roles"]["env"]["endpoint"] and llm_env["OPENAI_API_KEY"] not in json.dumps(spec)
    assert spec["test_set"]["keys"] == ["King Lear-17-0"] and spec["test_set"]["n"] == 1
    assert spec["toolkit"]["version"]
    ev = read(exp / "evaluation" / "example_test_set_gpt-4o.json")
    assert ev["spec"]["stage"] == "evaluation" and ev["spec"]["roles"]["judge"]["model"] == "gpt-4o"
    assert ev["spec_hash"] == RS.spec_hash(ev["spec"])
    # The same command again: everything reused, nothing sent.
    fake_server.reset()
    r = run_script(base_args(tmp_path), env=llm_env, cwd=tmp_path)
    assert r.returncode == 0 and fake_server.chat_requests() == [], r.stderr
    assert snapshot(exp) == first
    seen = dict(first)
    for name, flags in SETTINGS:
        r = run_script(base_args(tmp_path, *flags), env=llm_env, cwd=tmp_path)
        assert r.returncode == 0, (name, r.stderr)
        now = snapshot(exp)
        assert all(now[k] == v for k, v in seen.items()), f"{name}: an earlier result was overwritten"
        new = set(now) - set(seen)
        assert any(k.startswith("evaluation/") for k in new), f"{name}: reused an old evaluation ({r.stderr})"
        if name != "judge_model":
            assert any(k.startswith("simulation/") for k in new), f"{name}: reused an old simulation"
        seen = now
        # ... and that setting, run again, reuses its own files with no request.
        fake_server.reset()
        r = run_script(base_args(tmp_path, *flags), env=llm_env, cwd=tmp_path)
        assert r.returncode == 0 and fake_server.chat_requests() == [], (name, r.stderr)
        assert snapshot(exp) == seen
    # Every invocation left its own run record.
    runs = [n for n in os.listdir(exp / "runs") if n.endswith(".json")]
    assert len(runs) == 2 + 2 * len(SETTINGS)
    rec = read(exp / "runs" / sorted(runs)[0])
    assert rec["argv"] and rec["specs"] and rec["outputs"] and "usage" in rec and "seconds" in rec


def test_retrieval_is_its_own_setting(fake_server, llm_env, tmp_path):
    fake_server.set_responder(responder(nsp=lambda b: "Next Speaker: <END CHAT>"))
    book_data = os.path.dirname(shared_path("final", "King Lear.json"))
    for mode in ("expr1", "conv1"):
        r = run_script(base_args(tmp_path, "--retrieval", mode, "--book_data", book_data), env=llm_env, cwd=tmp_path)
        assert r.returncode == 0, r.stderr
    names = files(tmp_path / "exp" / "simulation")
    assert names == ["example_test_set_gpt-4o_rag=conv1.json", "example_test_set_gpt-4o_rag=expr1.json"]
    assert read(tmp_path / "exp" / "simulation" / names[0])[0]["spec"]["settings"]["retrieval"] == "conv1"


def test_two_judges_two_files_and_agreement(fake_server, llm_env, tmp_path):
    def judge_b(body):  # a harsher second judge, harsher still on later scenes
        return responder()(body).replace('"severity": 2', f'"severity": {3 + len(json.dumps(body)) % 3}')

    def reply(body):
        return judge_b(body) if body["model"] == "judge-b" else responder(nsp=lambda b: "Next Speaker: <END CHAT>")(body)

    fake_server.set_responder(reply)
    r = run_script(base_args(tmp_path, "--limit", "3", "--judge_model", "gpt-4o,judge-b", "--repeats", "2"),
                   env=llm_env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    evs = files(tmp_path / "exp" / "evaluation")
    assert len(evs) == 4, evs  # 2 repeats x 2 judges
    judges = sorted(read(tmp_path / "exp" / "evaluation" / n)["judge_model"] for n in evs)
    assert judges == ["gpt-4o", "gpt-4o", "judge-b", "judge-b"]
    assert "GCA evaluation (judge: gpt-4o" in r.stdout and "GCA evaluation (judge: judge-b" in r.stdout
    assert "Judge agreement" in r.stdout and "kendall_tau" in r.stdout and "pearson_cases" in r.stdout
    assert "mean avg score per judge: gpt-4o:" in r.stdout
    # Repeated flags are the same as a comma list: all reused.
    fake_server.reset()
    r = run_script(base_args(tmp_path, "--limit", "3", "--judge_model", "gpt-4o", "--judge_model", "judge-b",
                             "--repeats", "2"), env=llm_env, cwd=tmp_path)
    assert r.returncode == 0 and fake_server.chat_requests() == [], r.stderr


@pytest.mark.parametrize("name", ["test_set_gpt-4o.json", "test_set_gpt-4o_rag=expr3_conv1.json",
                                  "test_set_gpt-4o-mini_rag=expr3_conv1.json"])
def test_published_simulations_judged_in_place(fake_server, llm_env, tmp_path, name):
    path = shared_path("exp", "simulation", name)
    before = open(path, "rb").read()
    fake_server.set_responder(responder())
    r = run_script([GCA, "--simulation_file", path, "--limit", "1", "--exp_dir", str(tmp_path / "exp")],
                   env=llm_env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert open(path, "rb").read() == before and not os.path.exists(tmp_path / "exp" / "simulation")
    evs = files(tmp_path / "exp" / "evaluation")
    assert len(evs) == 1 and evs[0].startswith(name[:-5]), evs
    ev = read(tmp_path / "exp" / "evaluation" / evs[0])
    assert len(ev["cases"]) == 1 and ev["spec"]["source"] == "reference-implementation"
    sim_file = os.path.normpath(os.path.join(tmp_path / "exp", ev["spec"]["simulation_file"]))
    assert sim_file == os.path.normpath(path) and ev["spec"]["test_set"]["n"] == 1
    assert len([b for b in fake_server.chat_requests()]) == 4  # one case, four dimensions


def test_duplicate_sample_keys_are_one_line_errors(llm_env, tmp_path):
    items = read(shared_path("test", "example_test_set.json"))
    path = tmp_path / "dup.json"
    with open(path, "w", encoding="utf-8") as f:
        json.dump([items[0], items[1], items[0]], f)
    r = run_script([GCA, "--test_file", path, "--exp_dir", str(tmp_path / "exp")], env=llm_env, cwd=tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    line = r.stderr.strip().splitlines()
    assert len(line) == 1 and "samples 0 and 2" in line[0] and "King Lear-17-0" in line[0]


def test_second_copy_waits_for_the_first_and_pays_nothing(fake_server, llm_env, tmp_path):
    fake_server.set_responder(responder(nsp=lambda b: "Next Speaker: <END CHAT>"))
    fake_server.latency = 0.05
    args = [os.path.join(REPO, a) if a == GCA else str(a) for a in base_args(tmp_path, "--limit", "3")]
    env = dict(llm_env, PYTHONPATH=REPO)
    first = subprocess.Popen([PYTHON, *args], env=env, cwd=tmp_path, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while not fake_server.chat_requests() and time.time() < deadline:
        time.sleep(0.05)
    second = subprocess.Popen([PYTHON, *args], env=env, cwd=tmp_path, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    out1, err1 = first.communicate(timeout=120)
    n_first = len(fake_server.chat_requests())
    out2, err2 = second.communicate(timeout=120)
    assert first.returncode == 0 and second.returncode == 0, err1 + err2
    assert f"(PID {first.pid}) is writing here" in err2
    assert len(fake_server.chat_requests()) == n_first  # the second copy paid for nothing


def test_help_shows_defaults_and_modes_without_none():
    r = subprocess.run([PYTHON, os.path.join(REPO, GCA), "--help"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0
    text = " ".join(r.stdout.split())
    for needle in ("(default gpt-4o)", "(default gpt-4o-mini)", "--simulation_file", "--repeats", "--sample_ids",
                   "--sample_seed", "{raw_text,expr1,expr3,conv1,expr3_conv1,expr10_conv1}"):
        assert needle in text, needle
    assert "None" not in r.stdout


def test_construction_keeps_records_and_appends_main_log(fake_server, llm_env, tmp_path):
    from tests import construction_script as S
    from tests.test_construction_run import ARGS, othello, write_books
    books = write_books(tmp_path / "books.jsonl", [othello(20000)])
    fake_server.set_responder(S.respond)
    for _ in range(2):
        r = run_script(["data_construction/main.py", "--input", books, "--output_dir", tmp_path / "data", *ARGS],
                       env=llm_env, cwd=tmp_path)
        assert r.returncode == 0, r.stderr
    runs = sorted(n for n in os.listdir(tmp_path / "data" / "runs") if n.endswith(".json"))
    assert len(runs) == 2
    rec = read(tmp_path / "data" / "runs" / runs[0])
    assert rec["spec"]["stage"] == "construction" and rec["spec"]["roles"]["model"]["model"] == "gpt-4o"
    assert rec["outputs"][0]["path"].endswith("Othello.json") and rec["status"] == "finished"
    # Appended where the CoSER README points: data_construction/main.log in the repo folder.
    with open(os.path.join(REPO, "data_construction", "main.log"), encoding="utf-8") as f:
        mine = [ln for ln in f if str(tmp_path) in ln]
    assert sum("construction: start:" in ln for ln in mine) == 2
    assert all(llm_env["OPENAI_API_KEY"] not in ln for ln in mine)

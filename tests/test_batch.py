"""Batch mode (coser/batch.py): judge stage through the fake Batch API, export / import, resume after kill -9."""
import json
import os
import signal
import subprocess
import time

import pytest

from tests.batch_fakes import config, judge, write_simulation
from tests.conftest import PYTHON, REPO, run_script
from tests.gca_fakes import _no_nagle  # noqa: F401 (autouse fixture)

GCA = "gca_evaluation/main.py"
STANDIN = os.path.join(REPO, "tests", "vllm_standin.py")


def read(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def canon(body):
    return json.dumps({k: v for k, v in body.items() if k not in ("_path", "custom_id")}, sort_keys=True)


@pytest.fixture
def sim(tmp_path):
    path = tmp_path / "sim.json"
    write_simulation(path, 6)
    config(tmp_path / "config.json")
    return path


def gca(tmp_path, sim, name, *extra):
    return [GCA, "--simulation_file", sim, "--judge_model", "gpt-4o", "--num_workers", "4",
            "--config", tmp_path / "config.json", "--exp_dir", tmp_path / name / "exp",
            "--cache_path", tmp_path / name / "cache.sqlite", *extra]


def evaluation(tmp_path, name):
    folder = tmp_path / name / "exp" / "evaluation"
    files = [f for f in os.listdir(folder) if f.endswith(".json")]
    assert len(files) == 1, files
    return read(folder / files[0])


def cost(tmp_path, name):
    usage = read(tmp_path / name / "exp" / "run_gca_evaluation.json")["usage"]
    # Totals round the cost to 6 digits; the rows keep it exact.
    return dict(usage["totals"], cost_usd=sum(r["cost_usd"] for r in usage["rows"]))


def online(fake_server, llm_env, tmp_path, sim, *extra):
    fake_server.set_responder(judge())
    r = run_script(gca(tmp_path, sim, "online", *extra), env=llm_env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    # Distinct bodies: on a loaded machine a slow reply may time out and be sent again (a retry).
    bodies = sorted(set(canon(b) for b in fake_server.chat_requests()))
    fake_server.reset()
    return evaluation(tmp_path, "online"), bodies


@pytest.mark.parametrize("protocol", ["reference", "fixed"])
def test_batch_judge_equals_online_at_half_cost(fake_server, llm_env, tmp_path, sim, protocol):
    ev_online, bodies = online(fake_server, llm_env, tmp_path, sim, "--protocol", protocol)
    assert not any(c.get("failed") for c in ev_online["cases"].values())   # regenerated, not failed
    assert any("response_format" in b for b in bodies) == (protocol == "fixed")
    r = run_script(gca(tmp_path, sim, "batch", "--batch", "--batch_poll", "0.02", "--protocol", protocol),
                   env=llm_env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert fake_server.chat_requests() == []                      # nothing went online
    assert evaluation(tmp_path, "batch") == ev_online             # case for case, score for score
    # The batch lines are the online request bodies, bit for bit (the protocol lives in the bodies).
    assert sorted(canon(b) for b in fake_server.batches.bodies) == bodies
    counts = fake_server.batches.counts
    assert counts["create"] == counts["upload"] == 3              # 24 judge calls, repairs, regenerations
    assert len(bodies) > 24
    on, off = cost(tmp_path, "online"), cost(tmp_path, "batch")
    assert off["calls"] == on["calls"] == off["batch_calls"] == len(bodies)
    assert off["prompt_tokens"] == on["prompt_tokens"] and on["cost_usd"] > 0
    assert off["cost_usd"] == pytest.approx(on["cost_usd"] / 2, rel=1e-6)
    assert not os.path.exists(tmp_path / "batch" / "exp" / "batches" / "sim.json")  # state gone when done
    (record,) = read(tmp_path / "batch" / "exp" / "run_gca_evaluation.json")["batches"]
    assert record["rounds"] == 3 and [b["id"] for b in record["batches"]] == ["batch_1", "batch_2", "batch_3"]
    assert all(b["status"] == "completed" and b["endpoint"] == fake_server.base_url for b in record["batches"])
    # A normal rerun finds every answer in the cache under the online keys: it asks again exactly what
    # a rerun of the online run asks again (the replies rejected as unparseable, issue 19).
    fake_server.reset()
    r = run_script(gca(tmp_path, sim, "batch", "--reevaluate", "--protocol", protocol), env=llm_env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    again = sorted(canon(b) for b in fake_server.chat_requests())
    fake_server.reset()
    r = run_script(gca(tmp_path, sim, "online", "--reevaluate", "--protocol", protocol), env=llm_env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert set(again) == set(canon(b) for b in fake_server.chat_requests()) and 0 < len(set(again)) < 24
    assert evaluation(tmp_path, "batch") == ev_online


def test_failed_lines_and_expired_batch_are_asked_again(fake_server, llm_env, tmp_path, sim):
    ev_online, bodies = online(fake_server, llm_env, tmp_path, sim)
    failed_once = set()

    def fault(cid, body):
        if cid[0] in "0123" and cid not in failed_once:
            failed_once.add(cid)
            return 500
        return None

    fake_server.batches.line_fault = fault
    fake_server.batches.expire = 1
    r = run_script(gca(tmp_path, sim, "batch", "--batch", "--batch_poll", "0.01"), env=llm_env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert failed_once and fake_server.chat_requests() == []
    jobs = fake_server.batches.jobs.values()
    assert [j["status"] for j in jobs].count("expired") == 1
    # Every line that failed or expired was sent again (in the next round's batch): more lines than calls.
    sent = [canon(b) for b in fake_server.batches.bodies]
    assert set(sent) == set(bodies) and len(sent) == len(bodies) + len(failed_once)
    assert evaluation(tmp_path, "batch") == ev_online


def test_killed_run_resumes_the_same_batch(fake_server, llm_env, tmp_path, sim):
    fake_server.set_responder(judge(bad_every=0))
    fake_server.batches.steps = 40                                 # ~40 polls per status at 0.02 s
    cmd = [PYTHON, *map(str, gca(tmp_path, sim, "batch", "--batch", "--batch_poll", "0.02"))]
    cmd[1] = os.path.join(REPO, cmd[1])
    proc = subprocess.Popen(cmd, env=llm_env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 60
    while fake_server.batches.counts["poll"] < 5 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    assert proc.poll() is None, proc.communicate()[1]
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    state_file = tmp_path / "batch" / "exp" / "batches" / "sim.json"
    assert [b["id"] for b in read(state_file)["batches"]] == ["batch_1"]
    from tests.conftest import TEST_KEY
    assert TEST_KEY not in state_file.read_text()
    fake_server.batches.steps = 1
    r = run_script(gca(tmp_path, sim, "batch", "--batch", "--batch_poll", "0.02"), env=llm_env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert fake_server.batches.counts["create"] == 1 and fake_server.batches.counts["upload"] == 1
    assert len(fake_server.batches.bodies) == 24 and fake_server.chat_requests() == []
    ev = evaluation(tmp_path, "batch")
    assert len(ev["cases"]) == 6 and not any(c.get("failed") for c in ev["cases"].values())


def test_export_answer_offline_import(fake_server, llm_env, tmp_path, sim):
    """Three rounds (first answers, repairs, regenerations) through files, answered by a vllm stand-in."""
    ev_online, bodies = online(fake_server, llm_env, tmp_path, sim)
    imports, lines = [], []
    for n in range(1, 10):
        req, res = tmp_path / f"req{n}.jsonl", tmp_path / f"res{n}.jsonl"
        fake_server.reset()
        r = run_script(gca(tmp_path, sim, "files", *sum((["--batch_import", p] for p in imports), []),
                           "--batch_export", req), env=llm_env, cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        assert fake_server.chat_requests() == []                  # an export or import run sends nothing
        if not os.path.exists(req):
            break
        assert "--batch_import" in r.stderr and str(req) in r.stderr
        with open(req, encoding="utf-8") as f:
            got = [json.loads(x) for x in f]
        assert all(set(x) == {"custom_id", "method", "url", "body"} and x["method"] == "POST"
                   and x["url"] == "/v1/chat/completions" and x["body"]["model"] == "gpt-4o" for x in got)
        lines += got
        s = subprocess.run([PYTHON, STANDIN, "-i", req, "-o", res, "--url", fake_server.base_url],
                           capture_output=True, text=True, timeout=60)
        assert s.returncode == 0, s.stderr
        imports.append(res)
    assert len(imports) == 3
    assert sorted(canon(x["body"]) for x in lines) == bodies
    assert evaluation(tmp_path, "files") == ev_online


def test_import_alone_sends_nothing_it_answers(fake_server, llm_env, tmp_path, sim):
    fake_server.set_responder(judge(bad_every=0))
    req, res = tmp_path / "req.jsonl", tmp_path / "res.jsonl"
    r = run_script(gca(tmp_path, sim, "files", "--batch_export", req), env=llm_env, cwd=tmp_path)
    assert r.returncode == 0 and len(open(req).readlines()) == 24, r.stderr
    assert subprocess.run([PYTHON, STANDIN, "-i", req, "-o", res, "--url", fake_server.base_url]).returncode == 0
    fake_server.reset()
    r = run_script(gca(tmp_path, sim, "files", "--batch_import", res), env=llm_env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert fake_server.chat_requests() == []
    assert len(evaluation(tmp_path, "files")["cases"]) == 6


def test_malformed_import_file_is_one_line_error(fake_server, llm_env, tmp_path, sim):
    fake_server.set_responder(judge(bad_every=0))
    bad = tmp_path / "bad.jsonl"
    good = {"id": "x", "custom_id": "k1", "response": {"status_code": 200, "body": {
        "choices": [{"message": {"role": "assistant", "content": "{}"}}]}}, "error": None}
    for n, second in enumerate(["{not json", json.dumps({"custom_id": "k2", "response": {"status_code": "200"}}),
                                json.dumps({"custom_id": "k3", "response": {"status_code": 200, "body": {}}})]):
        bad.write_text(json.dumps(good) + "\n" + second + "\n")
        r = run_script(gca(tmp_path, sim, "files", "--batch_import", bad), env=llm_env, cwd=tmp_path)
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"error: {bad}: line 2: "), lines
    assert fake_server.chat_requests() == []


def test_batch_needs_the_cache(llm_env, tmp_path, sim):
    r = run_script(gca(tmp_path, sim, "x", "--batch", "--no_cache"), env=llm_env, cwd=tmp_path)
    assert r.returncode == 2 and "--no_cache" in r.stderr and "Traceback" not in r.stderr


def test_batch_price_defaults_to_half_and_can_be_set():
    from coser.usage import Usage

    u = Usage({"a": {"input": 2.0, "output": 8.0}, "b*": {"input": 2.0, "output": 8.0, "batch_input": 0.5,
                                                           "batch_output": 1.0}})
    u.record("a", "judge", 1_000_000, 1_000_000)
    u.record("a", "judge", 1_000_000, 1_000_000, batch=True)
    u.record("b1", "judge", 1_000_000, 2_000_000, batch=True)
    rows = {r["model"]: r for r in u.to_dict()["rows"]}
    assert rows["a"]["cost_usd"] == pytest.approx(10.0 + 5.0) and rows["a"]["batch_calls"] == 1
    assert rows["b1"]["cost_usd"] == pytest.approx(0.5 + 2.0)
    assert u.totals()["batch_calls"] == 2 and "of which batch" in u.table()


def test_construction_in_batches_equals_online(fake_server, llm_env, tmp_path):
    """Two books: each round's batch carries one extraction chunk per book, then assembly's calls."""
    from tests import construction_script as S
    from tests.test_construction_run import othello, write_books

    books = write_books(tmp_path / "books.jsonl", [othello(30000), dict(othello(20000), title="Othello B")])
    fake_server.set_responder(S.respond)
    args = ["data_construction/main.py", "--input", books, "--chunk_size", "1024", "--limit_chunks", "3",
            "--model", "gpt-4o", "--num_workers", "4", "--config", tmp_path / "config.json"]
    config(tmp_path / "config.json")
    r = run_script([*args, "--output_dir", tmp_path / "online", "--cache_path", tmp_path / "c1.sqlite"],
                   env=llm_env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    bodies = sorted(set(canon(b) for b in fake_server.chat_requests()))
    fake_server.reset()
    r = run_script([*args, "--output_dir", tmp_path / "batch", "--cache_path", tmp_path / "c2.sqlite", "--batch",
                    "--batch_poll", "0.01"], env=llm_env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert fake_server.chat_requests() == []
    assert sorted(set(canon(b) for b in fake_server.batches.bodies)) == bodies
    for sub in ("extracted", "final"):
        for name in ("Othello.json", "Othello B.json"):
            assert read(tmp_path / "batch" / sub / name) == read(tmp_path / "online" / sub / name), (sub, name)
    files = fake_server.batches.files
    first = files[fake_server.batches.jobs["batch_1"]["input_file_id"]].decode().splitlines()
    assert len(first) == 2 and all("==Chunk of Book Content==" in x for x in first)  # chunk 0 of each book
    # 3 chunk rounds, enhancements with the name normalization (independent calls: one round), profiles
    assert fake_server.batches.counts["create"] >= 5


def test_ctrl_c_while_polling_saves_state_and_resumes(fake_server, llm_env, tmp_path, sim):
    fake_server.set_responder(judge(bad_every=0))
    fake_server.batches.steps = 1000
    cmd = [PYTHON, *map(str, gca(tmp_path, sim, "batch", "--batch", "--batch_poll", "0.02"))]
    cmd[1] = os.path.join(REPO, cmd[1])
    proc = subprocess.Popen(cmd, env=llm_env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.time() + 60
    while fake_server.batches.counts["poll"] < 3 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=10)
    assert proc.returncode == 130 and "Traceback" not in err, err
    assert "rerun the same command to resume" in err
    assert read(tmp_path / "batch" / "exp" / "batches" / "sim.json")["batches"][0]["id"] == "batch_1"
    fake_server.batches.steps = 1
    r = run_script(gca(tmp_path, sim, "batch", "--batch", "--batch_poll", "0.02"), env=llm_env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert fake_server.batches.counts["create"] == 1 and fake_server.chat_requests() == []


def test_killed_between_upload_and_create_finds_its_batch(fake_server, make_llm, tmp_path):
    """The state holds an uploaded file but no batch id (killed in between): the batch made from that
    file is found and polled, never created twice."""
    from coser import batch as B
    from coser.batchapi import BatchAPI
    from coser.cache import cache_key

    fake_server.set_responder(lambda body: "fine")
    llm = make_llm()
    path = str(tmp_path / "state.json")
    session = B.Session(llm, path)
    request = llm._request("gpt-4o", "Say fine", None, 0, None, None, None, "")
    key = cache_key(request)
    session.pending = {key: {"model": "gpt-4o", "request": request, "stage": "judge"}}
    api = BatchAPI(llm, llm.route("gpt-4o"))
    file_id = api.upload("x.jsonl", "".join(session.lines([key])).encode())
    api.create(file_id, {})                                       # created, but its id never saved
    session.state["batches"].append({"model": "gpt-4o", "custom_ids": [key], "input_file_id": file_id,
                                     "done": False})
    B._await(session, 0.0)
    assert fake_server.batches.counts["create"] == 1 and fake_server.batches.counts["list"] == 1
    assert llm.cache.get(key)["content"] == "fine" and key in read(path)["answered"]
    assert llm.usage.totals()["batch_calls"] == 1


def test_rounds_are_bounded_then_the_rest_goes_online(fake_server, llm_env, tmp_path, sim):
    ev_online, bodies = online(fake_server, llm_env, tmp_path, sim)
    r = run_script(gca(tmp_path, sim, "batch", "--batch", "--batch_rounds", "1", "--batch_poll", "0.01"),
                   env=llm_env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert fake_server.batches.counts["create"] == 1 and "go online" in r.stderr
    first = {canon(b) for b in fake_server.batches.bodies}
    later = {canon(b) for b in fake_server.chat_requests()}
    assert len(first) == 24 and later and first | later == set(bodies) and not first & later
    assert evaluation(tmp_path, "batch") == ev_online


def test_max_cost_stops_before_the_next_round(fake_server, llm_env, tmp_path, sim):
    fake_server.set_responder(judge())
    r = run_script(gca(tmp_path, sim, "batch", "--batch", "--batch_poll", "0.01", "--max_cost", "0.0000001"),
                   env=llm_env, cwd=tmp_path)
    assert r.returncode == 3 and "--max_cost" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert fake_server.batches.counts["create"] == 1 and fake_server.chat_requests() == []
    r = run_script(gca(tmp_path, sim, "batch", "--batch", "--batch_poll", "0.01"), env=llm_env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert fake_server.batches.counts["create"] == 3 and fake_server.chat_requests() == []
    assert len(fake_server.batches.bodies) == len({canon(b) for b in fake_server.batches.bodies})  # none twice


def test_export_splits_by_model_and_line_limit(fake_server, make_llm, tmp_path, monkeypatch):
    from coser import batch as B
    from coser import batchfiles as BF
    from coser.errors import BatchExported

    monkeypatch.setattr(BF, "MAX_LINES", 2)
    llm = make_llm()
    session = B.Session(llm, str(tmp_path / "state.json"))
    for model, n in (("gpt-4o", 5), ("gpt-4o-mini", 1)):
        for i in range(n):
            req = llm._request(model, f"question {i}", None, 0, None, None, None, "")
            session.pending[f"{model}-{i}"] = {"model": model, "request": req, "stage": "judge"}
    with pytest.raises(BatchExported) as e:
        B._export(session, list(session.pending), str(tmp_path / "req.jsonl"), "judge")
    assert "4 files" in str(e.value)
    sizes = []
    for n in range(1, 5):
        with open(tmp_path / f"req-{n}.jsonl", encoding="utf-8") as f:
            lines = [json.loads(x) for x in f]
        assert len({x["body"]["model"] for x in lines}) == 1     # one model per file
        sizes.append((lines[0]["body"]["model"], len(lines)))
    assert sizes == [("gpt-4o", 2), ("gpt-4o", 2), ("gpt-4o", 1), ("gpt-4o-mini", 1)]
    assert not os.path.exists(tmp_path / "req.jsonl")
    # The byte bound splits too (OpenAI takes at most 200 MB per file); an oversized line stands alone.
    monkeypatch.setattr(BF, "MAX_LINES", 50_000)
    monkeypatch.setattr(BF, "MAX_BYTES", 11)
    pieces = BF.split(["a", "b", "c", "d"], ["12345\n", "1234\n", "123456789012\n", "1\n"])
    assert pieces == [(["a", "b"], ["12345\n", "1234\n"]), (["c"], ["123456789012\n"]), (["d"], ["1\n"])]


def test_batches_go_to_the_models_own_endpoint_with_its_own_key(fake_server, llm_env, tmp_path, sim):
    from tests.conftest import TEST_KEY
    from tests.fakeserver import FakeServer

    own_key = "sk-judge-OWN-KEY-9876543210"
    with FakeServer(responder=judge(bad_every=0), api_key=own_key) as judge_server:
        with open(tmp_path / "config.json", "w", encoding="utf-8") as f:
            json.dump({"models": {"gpt-4o": {"base_url": judge_server.base_url, "api_key": own_key}}}, f)
        r = run_script(gca(tmp_path, sim, "batch", "--batch", "--batch_poll", "0.01"), env=llm_env, cwd=tmp_path)
        assert r.returncode == 0, r.stderr                         # the judge server refuses any other key
        assert judge_server.batches.counts["create"] == 1 and len(judge_server.batches.bodies) == 24
    assert fake_server.batches.counts == {k: 0 for k in fake_server.batches.counts}
    assert fake_server.requests == []
    for root, _, names in os.walk(tmp_path / "batch"):
        for name in names:
            if name.endswith((".json", ".jsonl", ".log")):
                text = open(os.path.join(root, name), encoding="utf-8").read()
                assert own_key not in text and TEST_KEY not in text, name


def test_construction_export_import_rounds(fake_server, llm_env, tmp_path):
    """Construction through files: each round's requests exported, answered offline, imported."""
    from tests import construction_script as S
    from tests.test_construction_run import othello, write_books

    books = write_books(tmp_path / "books.jsonl", [othello(20000)])
    fake_server.set_responder(S.respond)
    args = ["data_construction/main.py", "--input", books, "--chunk_size", "1024", "--limit_chunks", "2",
            "--model", "gpt-4o", "--num_workers", "2"]
    r = run_script([*args, "--output_dir", tmp_path / "online", "--cache_path", tmp_path / "c1.sqlite"],
                   env=llm_env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    imports = []
    for n in range(1, 12):
        req, res = tmp_path / f"req{n}.jsonl", tmp_path / f"res{n}.jsonl"
        fake_server.reset()
        r = run_script([*args, "--output_dir", tmp_path / "files", "--cache_path", tmp_path / "c2.sqlite",
                        *sum((["--batch_import", p] for p in imports), []), "--batch_export", req],
                       env=llm_env, cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        assert fake_server.chat_requests() == []
        if not os.path.exists(req):
            break
        assert subprocess.run([PYTHON, STANDIN, "-i", req, "-o", res, "--url", fake_server.base_url],
                              timeout=60).returncode == 0
        imports.append(res)
    assert len(imports) >= 4   # 2 chunks, enhancements with the name normalization (one round), profiles
    for sub in ("extracted", "final"):
        assert read(tmp_path / "files" / sub / "Othello.json") == read(tmp_path / "online" / sub / "Othello.json")


def test_dry_run_estimates_at_batch_prices(tmp_path):
    from tests.test_construction_run import othello, write_books

    books = write_books(tmp_path / "books.jsonl", [othello(20000)])
    config(tmp_path / "config.json", price_in=2500.0, price_out=10000.0)
    est = []
    for extra in ([], ["--batch"]):
        r = run_script(["data_construction/main.py", "--input", books, "--output_dir", tmp_path / "d", "--dry_run",
                        "--model", "gpt-4o", "--config", tmp_path / "config.json", *extra], cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        row = next(x for x in r.stdout.splitlines() if x.startswith("Othello"))
        est.append(float(row.split()[-1]))
    assert est[0] > 10 and est[1] == pytest.approx(est[0] / 2, abs=0.01)


def test_results_without_usage_are_estimated_and_failures_persist(make_llm, tmp_path):
    from coser import batch as B
    from coser.batchfiles import Result
    from coser.cache import cache_key

    llm = make_llm(max_attempts=2)
    path = str(tmp_path / "state.json")
    session = B.Session(llm, path)
    reqs = {m: llm._request("gpt-4o", m, None, 0, None, None, None, "") for m in ("first question", "second")}
    keys = {m: cache_key(r) for m, r in reqs.items()}
    session.pending = {keys[m]: {"model": "gpt-4o", "request": r, "stage": "judge"} for m, r in reqs.items()}
    session.store([Result(keys["first question"], "an answer of five words"), Result(keys["second"], None),
                   Result(keys["second"], None, error="HTTP 500")])
    row = llm.usage.to_dict()["rows"][0]
    assert row["batch_calls"] == 1 and row["prompt_tokens"] > 0 and row["completion_tokens"] > 0
    # Two failures = max_attempts: after a restart the request goes online, not into another batch.
    assert B.Session(llm, path).released == {keys["second"]}


def test_full_gca_run_judges_in_batches(fake_server, llm_env, tmp_path):
    """The default command (test file in, simulation reused, judged) with --batch: same evaluation file."""
    from tests.test_gca_run import published_layout
    from tests.gca_fakes import responder

    fake_server.set_responder(responder())
    for name in ("online", "batch"):
        published_layout(tmp_path / name)
    r = run_script([GCA, "--num_workers", "2", "--cache_path", "c.sqlite"], env=llm_env, cwd=tmp_path / "online")
    assert r.returncode == 0, r.stderr
    fake_server.reset()
    r = run_script([GCA, "--num_workers", "2", "--cache_path", "c.sqlite", "--batch", "--batch_poll", "0.01"],
                   env=llm_env, cwd=tmp_path / "batch")
    assert r.returncode == 0, r.stderr
    assert fake_server.chat_requests() == [] and len(fake_server.batches.bodies) == 12
    path = os.path.join("exp", "evaluation", "test_set_gpt-4o.json")
    assert read(tmp_path / "batch" / path) == read(tmp_path / "online" / path)

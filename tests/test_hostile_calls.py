"""Hostile endpoints and values (issue 19 items 1, 2, 5, 6, 8, 9), over real HTTP to the fake server,
mostly as real subprocesses:

* a reply that failed validation is never served again as good: a run meeting an unparseable judge
  or extractor recovers on a plain rerun once the model is healthy, with the cache on;
* an endpoint answering HTTP 200 with empty content until the retries run out marks the sample
  failed (same requests as the reference), never a silent empty turn; a rerun asks again;
* the timeout bounds the whole request, not each read: a server trickling a byte every 0.5 s;
* values that are not finite numbers or known names are refused where they enter, before any call;
* credentials inside a base URL never reach a file or the terminal;
* a third Ctrl-C prints no traceback either.
"""
import glob
import json
import os
import signal
import subprocess
import time

import pytest

from tests import construction_script as S
from tests.conftest import PYTHON, REPO, run_script
from tests.fakeserver import Fault
from tests.test_bad_inputs import check_one_line_error
from tests.test_faults import CONSTRUCT, CONSTRUCT_ARGS, GCA, GCA_ARGS, gca_respond, write_gca_test_set, write_play


def gca(test_file, tmp, *extra):
    return [GCA, "--test_file", test_file, *GCA_ARGS, "--exp_dir", os.path.join(str(tmp), "exp"), *extra]


def evaluation(tmp):
    [path] = glob.glob(os.path.join(str(tmp), "exp", "evaluation", "ok_fake-actor*.json"))
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def simulation(tmp):
    [path] = glob.glob(os.path.join(str(tmp), "exp", "simulation", "ok_fake-actor*.json"))
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def is_judge(body):
    return body.get("model") == "fake-judge"


# ---- item 1: a rejected reply is not cached as good ---------------------------------------------
@pytest.mark.parametrize("protocol", ["reference", "fixed"])
def test_unparseable_judge_then_healthy_recovers_on_plain_rerun(protocol, fake_server, llm_env, tmp_path):
    test_file = write_gca_test_set(tmp_path / "ok.json", n=2)
    args = gca(test_file, tmp_path, "--protocol", protocol)
    fake_server.set_responder(lambda b: "I cannot produce JSON today." if is_judge(b) else gca_respond(b))
    r = run_script(args, env=llm_env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert all(c.get("failed") for c in evaluation(tmp_path)["cases"].values())
    fake_server.reset()
    fake_server.set_responder(gca_respond)
    r = run_script(args, env=llm_env, cwd=tmp_path)            # the same command, cache on
    assert r.returncode == 0, r.stderr[-3000:]
    ev = evaluation(tmp_path)
    assert ev["cases"] and not any(c.get("failed") for c in ev["cases"].values()), ev["cases"]
    sent = fake_server.chat_requests()
    assert sent and all(is_judge(b) for b in sent), "only the failed judgings are asked again"
    fake_server.reset()
    r = run_script(args, env=llm_env, cwd=tmp_path)            # now complete: nothing is asked
    assert r.returncode == 0 and fake_server.chat_requests() == []


@pytest.mark.parametrize("protocol", ["reference", "fixed"])
def test_unparseable_extractor_then_healthy_recovers(protocol, fake_server, llm_env, tmp_path):
    books = write_play(tmp_path / "play.jsonl", n_lines=30)
    args = [CONSTRUCT, "--input", books, "--output_dir", tmp_path / "out", *CONSTRUCT_ARGS, "--protocol", protocol]
    fake_server.set_responder(lambda b: "no JSON here, sorry")
    r = run_script(args, env=llm_env, cwd=tmp_path)
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
    [extracted] = glob.glob(str(tmp_path / "out" / "extracted" / "*.json"))
    assert json.load(open(extracted))["fail_to_parse_responses"]
    fake_server.reset()
    fake_server.set_responder(S.respond)
    r = run_script(args + ["--regenerate"], env=llm_env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    got = json.load(open(extracted))
    assert got["plots"] and not got["fail_to_parse_responses"], got.get("extraction_notes")


# ---- item 2: empty replies until the retries run out ------------------------------------------
@pytest.mark.parametrize("protocol,content", [("reference", ""), ("reference", None), ("fixed", "")],
                         ids=["reference_empty", "reference_null", "fixed_empty"])
def test_empty_replies_mark_the_sample_failed(protocol, content, fake_server, llm_env, tmp_path):
    test_file = write_gca_test_set(tmp_path / "ok.json", n=2)
    args = gca(test_file, tmp_path, "--protocol", protocol, "--num_workers", "1")
    empty = Fault.empty(null=content is None)

    def mute_actor_in_sample_1(body):
        if body.get("model") == "fake-actor" and "Scene 1:" in body["messages"][0]["content"]:
            return empty
        return gca_respond(body)

    fake_server.set_responder(mute_actor_in_sample_1)
    r = run_script(args, env=llm_env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    sim = simulation(tmp_path)
    assert not sim[0].get("failed")
    assert sim[1]["failed"] and sim[1]["failures"][0]["reason"].startswith("empty reply after 6 requests")
    # The request sequence is the reference's: six requests for every empty turn, then the scene goes on.
    actor_1 = [b for b in fake_server.chat_requests()
               if b.get("model") == "fake-actor" and "Scene 1:" in b["messages"][0]["content"]]
    assert actor_1 and len(actor_1) % 6 == 0
    assert [b["temperature"] for b in actor_1[:6]] == [0, 1, 1, 1, 1, 1]
    ev = evaluation(tmp_path)
    key_1 = "Quay Tales-1-0" if "Quay Tales-1-0" in ev["cases"] else sorted(ev["cases"])[1]
    assert ev["cases"][key_1]["failed"] and ev["cases"][key_1]["failures"][0]["stage"] == "simulation"
    assert ev["scores"]["n"] == 1 and ev["scores"]["failed"] == 1
    assert " 1 " in r.stdout.splitlines()[-1] or "failed" in r.stdout   # counted in the summary
    judged_1 = [b for b in fake_server.chat_requests() if is_judge(b) and "Scene 1:" in b["messages"][0]["content"]]
    assert judged_1 == []                                               # nothing to judge
    fake_server.reset()
    fake_server.set_responder(gca_respond)
    r = run_script(args, env=llm_env, cwd=tmp_path)                     # plain rerun: asked again
    assert r.returncode == 0, r.stderr[-3000:]
    assert not any(rec.get("failed") for rec in simulation(tmp_path))
    assert not any(c.get("failed") for c in evaluation(tmp_path)["cases"].values())


# ---- item 5: the timeout bounds the whole request ---------------------------------------------
@pytest.mark.parametrize("headers_too,stream", [(False, False), (True, False), (False, True)],
                         ids=["body", "headers", "stream"])
def test_timeout_bounds_the_whole_request(headers_too, stream, fake_server, make_llm):
    from coser.errors import LLMUnavailable
    fake_server.set_responder(lambda b: Fault.trickle(0.5, headers_too=headers_too))
    llm = make_llm(use_cache=False, timeout=2, max_attempts=1)
    t0 = time.monotonic()
    with pytest.raises(LLMUnavailable) as e:
        llm.chat("gpt-4o-mini", "hi", on_token=(lambda t: None) if stream else None)
    elapsed = time.monotonic() - t0
    assert elapsed < 3.5, f"the call lasted {elapsed:.1f} s with a 2 s timeout"
    assert "within 2 s" in str(e.value) and "whole request" in str(e.value)


def test_timeout_error_from_the_command_line(fake_server, llm_env, tmp_path):
    fake_server.set_responder(lambda b: Fault.trickle(0.5))
    (tmp_path / "c.json").write_text(json.dumps({"max_attempts": 2}))
    r = run_script(["-m", "coser.llm", "--model", "gpt-4o-mini", "--config", tmp_path / "c.json", "hi"],
                   env=dict(llm_env, COSER_TIMEOUT="1"), cwd=tmp_path, timeout=60)
    assert r.returncode == 2
    check_one_line_error(r, ["gpt-4o-mini", "2 attempts", "within 1 s", "whole request"])
    assert len(fake_server.chat_requests()) == 2


# ---- item 8: values refused where they enter ----------------------------------------------------
@pytest.mark.parametrize("argv,env,expect", [
    (["--max_cost", "nan"], {}, ["--max_cost", "nan"]),
    (["--max_cost", "-1"], {}, ["--max_cost"]),
    ([], {"COSER_TIMEOUT": "abc"}, ["COSER_TIMEOUT", "abc"]),
    ([], {"COSER_TIMEOUT": "nan"}, ["COSER_TIMEOUT", "finite"]),
    ([], {"COSER_TIMEOUT": "-1"}, ["COSER_TIMEOUT"]),
    (["--config", "{cfg}"], {"CFG": '{"timeout": -1}'}, ["c.json", "'timeout'"]),
    (["--config", "{cfg}"], {"CFG": '{"max_attempts": 1e400}'}, ["c.json", "'max_attempts'", "finite"]),
    (["--config", "{cfg}"], {"CFG": '{"max_attempts": NaN}'}, ["c.json", "'max_attempts'", "finite"]),
    (["--config", "{cfg}"], {"CFG": '{"structured_output": "maybe"}'}, ["c.json", "'structured_output'"]),
    (["--config", "{tmp}"], {}, ["expected a config file, found a directory"]),
], ids=["max_cost_nan", "max_cost_negative", "timeout_env_abc", "timeout_env_nan", "timeout_env_negative",
        "timeout_minus_1", "attempts_1e400", "attempts_nan", "structured_maybe", "config_is_dir"])
def test_values_refused_before_any_call(argv, env, expect, fake_server, llm_env, tmp_path):
    test_file = write_gca_test_set(tmp_path / "ok.json", n=1)
    fake_server.set_responder(gca_respond)
    run_env = dict(llm_env, **{k: v for k, v in env.items() if k != "CFG"})
    if "CFG" in env:
        (tmp_path / "c.json").write_text(env["CFG"])
    argv = [a.replace("{cfg}", str(tmp_path / "c.json")).replace("{tmp}", str(tmp_path)) for a in argv]
    r = run_script(gca(test_file, tmp_path, *argv), env=run_env, cwd=tmp_path, timeout=120)
    assert r.returncode == 2, r.stderr[-2000:]
    check_one_line_error(r, expect)
    assert fake_server.chat_requests() == []


@pytest.mark.parametrize("value", ["nan", "inf", "-1"])
def test_chat_temperature_refused_and_nothing_sent(value, fake_server, llm_env, tmp_path):
    r = run_script(["chat.py", "--model", "gpt-4o-mini", "--system_prompt", "You are X.", "--temperature", value,
                    "--out_dir", tmp_path / "chat"], env=llm_env, cwd=tmp_path, input="hello\n")
    assert r.returncode == 2
    check_one_line_error(r, ["--temperature"])
    assert fake_server.chat_requests() == []


def test_client_refuses_nan_temperature_without_sending(fake_server, make_llm):
    from coser.errors import ConfigError
    llm = make_llm(use_cache=False)
    with pytest.raises(ConfigError, match="temperature"):
        llm.chat("gpt-4o-mini", "hi", temperature=float("nan"))
    assert fake_server.chat_requests() == []


# ---- item 9: credentials inside a base URL --------------------------------------------------------
URL_SECRET = "URLKEY-7c1f00d2e9"


def test_key_inside_base_url_is_never_written_or_printed(fake_server, llm_env, tmp_path):
    url = fake_server.base_url.replace("http://", f"http://user:{URL_SECRET}@")
    env = dict(llm_env, OPENAI_BASE_URL=url)
    test_file = write_gca_test_set(tmp_path / "ok.json", n=1)
    fake_server.set_responder(gca_respond)
    ok = run_script(gca(test_file, tmp_path), env=env, cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr[-3000:]
    fake_server.set_responder(lambda b: Fault.http(500, message=f"upstream {url} failed"))
    (tmp_path / "c.json").write_text(json.dumps({"max_attempts": 1}))
    bad = run_script(gca(test_file, tmp_path, "--regenerate", "--no_cache", "--config", tmp_path / "c.json"),
                     env=env, cwd=tmp_path)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    for r in (ok, bad):
        assert URL_SECRET not in r.stdout + r.stderr
    files = 0
    for folder, _, names in os.walk(tmp_path):
        for name in names:
            with open(os.path.join(folder, name), "rb") as f:
                assert URL_SECRET.encode() not in f.read(), os.path.join(folder, name)
            files += 1
    assert files > 3 and glob.glob(str(tmp_path / "exp" / "runs" / "*.json"))


# ---- item 6: a third Ctrl-C ---------------------------------------------------------------------
def test_three_ctrl_c_in_a_row_print_no_traceback(fake_server, llm_env, tmp_path):
    fake_server.set_responder(gca_respond)
    fake_server.latency = 0.5
    test_file = write_gca_test_set(tmp_path / "ok.json", n=6)
    proc = subprocess.Popen([PYTHON, os.path.join(REPO, GCA), *gca(test_file, tmp_path)[1:]], env=llm_env,
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 60
        while len(fake_server.chat_requests()) < 4:
            assert proc.poll() is None and time.time() < deadline
            time.sleep(0.05)
        t0 = time.time()
        for _ in range(3):
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
            time.sleep(0.02)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130 and time.time() - t0 < 5, err[-3000:]
    assert "Traceback" not in err and "Exception ignored" not in err, err[-3000:]


@pytest.mark.parametrize("anywhere", [False, True])
def test_piped_chat_save_is_confined_to_the_transcript_folder(anywhere, fake_server, llm_env, tmp_path):
    fake_server.set_responder(lambda b: "Iago: Speak low.")
    (tmp_path / "work").mkdir()
    outside = tmp_path / "outside.json"
    argv = ["chat.py", "--model", "gpt-4o-mini", "--system_prompt", "You are Iago.", "--out_dir", tmp_path / "work"
            / "chat"] + (["--save_anywhere"] if anywhere else [])
    r = run_script(argv, env=llm_env, cwd=tmp_path / "work", input=f"Who goes there?\n/save {outside}\n/save ../x\n")
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert outside.exists() is anywhere
    if not anywhere:
        assert "outside the transcript folder" in r.stderr
        assert not (tmp_path / "work" / "x").exists() and not (tmp_path / "x").exists()


# ---- item 10: two copies of one construction run ------------------------------------------------
def test_second_construction_copy_waits_and_pays_nothing(fake_server, llm_env, tmp_path):
    fake_server.set_responder(S.respond)
    fake_server.latency = 0.05
    books = write_play(tmp_path / "play.jsonl", n_lines=60)
    argv = [PYTHON, os.path.join(REPO, CONSTRUCT), "--input", books, "--output_dir", str(tmp_path / "out"),
            *CONSTRUCT_ARGS]
    first = subprocess.Popen(argv, env=llm_env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
    deadline = time.time() + 60
    while not fake_server.chat_requests() and time.time() < deadline:
        time.sleep(0.05)
    second = subprocess.Popen(argv, env=llm_env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True)
    _, err1 = first.communicate(timeout=180)
    n_first = len(fake_server.chat_requests())
    _, err2 = second.communicate(timeout=180)
    assert first.returncode == 0 and second.returncode == 0, err1[-2000:] + err2[-2000:]
    assert f"(PID {first.pid}) is writing here" in err2
    assert len(fake_server.chat_requests()) == n_first      # the second copy paid for nothing

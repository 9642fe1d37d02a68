"""A recognisable fake key never reaches a file the toolkit writes (outputs, logs, cache bytes, run
records) nor anything it prints, on success and on failure (401 included)."""
import json
import os

import pytest

from tests import construction_script as S
from tests.conftest import run_script
from tests.fakeserver import Fault
from tests.test_faults import CONSTRUCT_ARGS, GCA_ARGS, gca_respond, write_gca_test_set, write_play

CANARY = "sk-SECRET-canary-5f1e9d27c3b84a60"
# Fragments that would betray a partial leak (a key cut to a prefix, or its distinctive tail).
FRAGMENTS = (CANARY, "SECRET-canary", "5f1e9d27c3b84a60")
CONSTRUCT = "data_construction/main.py"
TRANSFORM = "data_construction/transform.py"
GCA = "gca_evaluation/main.py"
REPORT = "gca_evaluation/report.py"
CHAT = "chat.py"
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def secret_env(llm_env, tmp_path):
    return dict(llm_env, OPENAI_API_KEY=CANARY, COSER_CACHE_DIR=str(tmp_path / ".cache"))


def assert_no_leak(tmp_path, *results):
    for r in results:
        for stream in (r.stdout, r.stderr):
            for frag in FRAGMENTS:
                assert frag not in stream, f"key fragment {frag!r} printed:\n{stream[-2000:]}"
    checked = 0
    for folder, _, names in os.walk(tmp_path):
        for name in names:
            path = os.path.join(folder, name)
            with open(path, "rb") as f:
                data = f.read()
            checked += 1
            for frag in FRAGMENTS:
                assert frag.encode() not in data, f"key fragment {frag!r} written to {path}"
    return checked


def all_401(body):
    return Fault.http(401, message="Incorrect API key provided")


def test_diagnostic_success_and_401(fake_server, llm_env, tmp_path):
    env = secret_env(llm_env, tmp_path)
    fake_server.set_responder(lambda body: "Well met.")
    ok = run_script(["-m", "coser.llm", "--model", "gpt-4o-mini", "--json", "Say hello"], env=env, cwd=tmp_path)
    assert ok.returncode == 0 and "Well met." in ok.stdout, ok.stderr
    fake_server.set_responder(all_401)
    bad = run_script(["-m", "coser.llm", "--model", "gpt-4o-mini", "Say hello again"], env=env, cwd=tmp_path)
    assert bad.returncode != 0 and "401" in bad.stderr and "Traceback" not in bad.stderr
    assert fake_server.auth_seen and all(fake_server.auth_seen)     # the key was really sent
    assert assert_no_leak(tmp_path, ok, bad) >= 1                    # the cache file was checked


def test_key_in_config_file_not_copied_to_run_record(fake_server, llm_env, tmp_path):
    """A key given in config.json (not the environment) stays out of the run record and outputs."""
    env = dict(llm_env, COSER_CACHE_DIR=str(tmp_path / ".cache"))
    env.pop("OPENAI_API_KEY")
    with open(tmp_path / "config.json", "w", encoding="utf-8") as f:
        json.dump({"api_key": CANARY, "base_url": fake_server.base_url, "embedding_api_key": CANARY}, f)
    books = write_play(tmp_path / "books.jsonl", n_lines=40)
    fake_server.set_responder(S.respond)
    r = run_script([CONSTRUCT, "--input", books, "--output_dir", tmp_path / "data", *CONSTRUCT_ARGS],
                   env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert fake_server.chat_requests()
    os.remove(tmp_path / "config.json")      # the only file allowed to hold the key: the user's own
    record = tmp_path / "data" / "run_construction.json"
    assert record.exists()
    assert_no_leak(tmp_path, r)


def either_respond(body):
    """Construction prompts are one user message; GCA agents and judges have a system prompt."""
    msgs = body.get("messages") or []
    return gca_respond(body) if msgs and msgs[0]["role"] == "system" else S.respond(body)


def test_every_script_success_and_failure(fake_server, llm_env, tmp_path):
    """construction -> transform -> GCA -> report -> chat, then 401s and an unreachable endpoint."""
    env = secret_env(llm_env, tmp_path)
    books = write_play(tmp_path / "books.jsonl", n_lines=60)
    fake_server.set_responder(either_respond)
    out = tmp_path / "data"
    r1 = run_script([CONSTRUCT, "--input", books, "--output_dir", out, *CONSTRUCT_ARGS], env=env, cwd=tmp_path)
    assert r1.returncode == 0, r1.stderr[-3000:]
    r2 = run_script([TRANSFORM, "--dir", out, "--test_per_split", "2"], env=env, cwd=tmp_path)
    assert r2.returncode == 0, r2.stderr[-3000:]
    assert (out / "test" / "test_set.json").exists()
    test_file = write_gca_test_set(tmp_path / "gca_test.json", n=2)
    gca = [GCA, "--test_file", test_file, *GCA_ARGS, "--exp_dir", tmp_path / "exp"]
    r5 = run_script(gca, env=env, cwd=tmp_path)
    assert r5.returncode == 0, r5.stderr[-3000:]
    r6 = run_script([REPORT, "--exp_dir", tmp_path / "exp"], env=env, cwd=tmp_path)
    assert r6.returncode == 0, r6.stderr[-3000:]
    assert (tmp_path / "exp" / "report.html").exists()
    r7 = run_script([CHAT, "--model", "gpt-4o-mini", "--book_data", out / "final", "--character", "Iago",
                     "--out_dir", tmp_path / "chat", "--max_turns", "2"], env=env, cwd=tmp_path,
                    input="Who goes there?\nSpeak up.\n")
    assert r7.returncode == 0, r7.stderr[-3000:]
    assert os.listdir(tmp_path / "chat")
    # The same jobs against an endpoint that rejects the key, and one that is unreachable.
    fake_server.set_responder(all_401)
    r8 = run_script(gca + ["--regenerate", "--no_cache"], env=env, cwd=tmp_path)
    assert r8.returncode != 0 and "401" in r8.stderr and "Traceback" not in r8.stderr
    r9 = run_script([CHAT, "--model", "gpt-4o-mini", "--system_prompt", "You are X.", "--out_dir", tmp_path / "chat",
                     "--no_cache"], env=env, cwd=tmp_path, input="Hello?\n")
    assert r9.returncode != 0 and "401" in r9.stderr and "Traceback" not in r9.stderr
    r3 = run_script([CONSTRUCT, "--input", books, "--output_dir", tmp_path / "data401", *CONSTRUCT_ARGS,
                     "--regenerate", "--no_cache"], env=env, cwd=tmp_path)
    assert r3.returncode != 0 and "401" in r3.stderr and "Traceback" not in r3.stderr
    env_down = dict(env, OPENAI_BASE_URL="http://127.0.0.1:9/v1", COSER_TIMEOUT="1")
    with open(tmp_path / "attempts.json", "w", encoding="utf-8") as f:
        json.dump({"max_attempts": 2}, f)
    r4 = run_script(["-m", "coser.llm", "--model", "gpt-4o-mini", "--config", tmp_path / "attempts.json", "hi"],
                    env=env_down, cwd=tmp_path)
    assert r4.returncode != 0 and "Traceback" not in r4.stderr
    assert_no_leak(tmp_path, r1, r2, r3, r4, r5, r6, r7, r8, r9)

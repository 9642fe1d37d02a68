"""The production client against the fake OpenAI-compatible server, over real HTTP."""
import json
import os
import threading

import pytest

from coser.cache import cache_key
from coser.config import Settings
from coser.errors import ConfigError, LLMPermanentError, LLMUnavailable
from coser.llm import LLM, prepare_messages, strip_reasoning
from tests.conftest import TEST_KEY, run_script
from tests.fakeserver import Fault


def test_first_generation_at_temperature_zero_retries_at_one(fake_server, make_llm):
    llm = make_llm()
    assert llm.chat("gpt-4o", "hi") == "ok"
    llm.chat("gpt-4o", "hi", nth_generation=2)
    temps = [r["temperature"] for r in fake_server.chat_requests()]
    assert temps == [0.0, 1.0]
    assert fake_server.chat_requests()[0]["messages"] == [{"role": "user", "content": "hi"}]
    assert fake_server.chat_requests()[0]["max_tokens"] == 16384


def test_cache_hit_makes_no_request_and_counts(fake_server, make_llm):
    llm = make_llm()
    fake_server.set_responder(lambda body: "Hello there")
    assert llm.chat("gpt-4o", "hi") == "Hello there"
    assert llm.chat("gpt-4o", "hi") == "Hello there"
    assert len(fake_server.chat_requests()) == 1
    assert llm.usage.totals()["cache_hits"] == 1
    # a different generation index is a different cache entry
    llm.chat("gpt-4o", "hi", nth_generation=1)
    assert len(fake_server.chat_requests()) == 2


def test_empty_reply_is_not_cached(fake_server, make_llm):
    llm = make_llm()
    fake_server.queue("", "second")
    assert llm.chat("gpt-4o", "hi") == ""
    assert llm.chat("gpt-4o", "hi") == "second"
    assert len(fake_server.chat_requests()) == 2


def test_chat_retry_reasks_on_empty(fake_server, make_llm):
    llm = make_llm()
    fake_server.queue("", "  ", "finally")
    assert llm.chat_retry("gpt-4o", "hi") == "finally"
    assert [r["temperature"] for r in fake_server.chat_requests()] == [0.0, 1.0, 1.0]


def test_transient_errors_are_retried_with_retry_after(fake_server, make_llm):
    llm = make_llm()
    fake_server.queue(Fault.http(429, retry_after=0.05), Fault.http(500), Fault.http(503), Fault.malformed(),
                      Fault.truncated_body(), "recovered")
    assert llm.chat("gpt-4o", "hi") == "recovered"
    assert len(fake_server.chat_requests()) == 6
    t = llm.usage.totals()
    assert t["faults"] == 5 and t["retries"] == 5


def test_retries_are_bounded(fake_server, make_llm):
    llm = make_llm(max_attempts=3)
    fake_server.set_responder(lambda body: Fault.http(500))
    with pytest.raises(LLMUnavailable) as e:
        llm.chat("gpt-4o", "hi")
    assert "gave up after 3 attempts" in str(e.value)
    assert len(fake_server.chat_requests()) == 3


def test_timeout_is_transient(fake_server, make_llm):
    llm = make_llm(timeout=0.5, max_attempts=2)
    fake_server.queue(Fault.hang(2.0), "after the hang")
    assert llm.chat("gpt-4o", "hi") == "after the hang"


@pytest.mark.parametrize("status,needle", [(401, "authentication failed"), (404, "not found"),
                                           (400, "HTTP 400")])
def test_permanent_errors_fail_at_once(fake_server, make_llm, status, needle):
    llm = make_llm()
    fake_server.set_responder(lambda body: Fault.http(status, message="maximum context length exceeded"))
    with pytest.raises(LLMPermanentError) as e:
        llm.chat("gpt-4o", "hi")
    msg = str(e.value)
    assert needle in msg and "gpt-4o" in msg and fake_server.base_url in msg
    assert TEST_KEY not in msg
    assert len(fake_server.chat_requests()) == 1


def test_model_family_adjustments():
    msgs = [{"role": "system", "content": "S"}, {"role": "user", "content": "A"}, {"role": "user", "content": "B"}]
    assert prepare_messages("claude-3-5-sonnet", msgs) == [{"role": "user", "content": "SAB"}]
    assert prepare_messages("o1-mini", msgs)[0]["role"] == "user"
    assert prepare_messages("gpt-4o", msgs) == [{"role": "system", "content": "S"}, {"role": "user", "content": "AB"}]
    assert prepare_messages("x", "plain") == [{"role": "user", "content": "plain"}]


def test_reasoning_blocks_are_stripped(fake_server, make_llm):
    assert strip_reasoning("<think>plan\nmore</think>\nAnswer") == "Answer"
    assert strip_reasoning("half a thought</think>Answer") == "Answer"
    llm = make_llm()
    fake_server.queue("<think>secret plan</think>Visible")
    assert llm.chat("deepseek-r1", "hi") == "Visible"


def test_streaming_delivers_tokens_and_caches(fake_server, make_llm):
    llm = make_llm()
    fake_server.set_responder(lambda body: "one two three")
    got = []
    assert llm.chat("gpt-4o", "hi", on_token=got.append) == "one two three"
    assert "".join(got) == "one two three" and len(got) == 3
    replay = []
    llm.chat("gpt-4o", "hi", on_token=replay.append)
    assert replay == ["one two three"] and len(fake_server.chat_requests()) == 1


def test_concurrency_is_bounded(fake_server, make_llm):
    llm = make_llm(max_in_flight=3)
    fake_server.latency = 0.1
    threads = [threading.Thread(target=llm.chat, args=("gpt-4o", f"q{i}")) for i in range(9)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert fake_server.max_in_flight == 3
    assert len(fake_server.chat_requests()) == 9


def test_missing_key_is_a_config_error(fake_server, make_llm):
    llm = make_llm(api_key="YOUR_API_KEY")
    with pytest.raises(ConfigError) as e:
        llm.chat("gpt-4o", "hi")
    assert "OPENAI_API_KEY" in str(e.value) and "api_key" in str(e.value)


def test_diagnostic_cli_against_endpoint(fake_server, llm_env, tmp_path):
    fake_server.set_responder(lambda body: "Good morrow")
    r = run_script(["-m", "coser.llm", "--model", "gpt-4o", "Say hello"], env=llm_env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "Good morrow"
    r = run_script(["-m", "coser.llm", "--model", "gpt-4o", "--json", "Say hello"], env=llm_env, cwd=tmp_path)
    out = json.loads(r.stdout)
    assert out["content"] == "Good morrow" and out["cached"] is True
    assert len(fake_server.chat_requests()) == 1
    assert TEST_KEY not in r.stdout + r.stderr


def test_diagnostic_cli_missing_key_one_line(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")}
    env["COSER_CACHE_DIR"] = str(tmp_path / ".cache")
    r = run_script(["-m", "coser.llm", "--model", "gpt-4o", "hi"], env=env, cwd=tmp_path)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "OPENAI_API_KEY" in lines[0]


def test_bad_config_file_one_line(tmp_path):
    bad = tmp_path / "config.json"
    bad.write_text('{"api_key": "x",,}')
    r = run_script(["-m", "coser.llm", "--config", str(bad), "hi"], cwd=tmp_path)
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "config.json" in r.stderr and "line 1" in r.stderr


def test_local_repeat_penalty_is_part_of_the_cache_key(tmp_path):
    a = LLM(Settings(cache_dir=str(tmp_path)), cache=None)
    b = LLM(Settings(cache_dir=str(tmp_path), local_repeat_penalty=1.0), cache=None)
    msgs = [{"role": "user", "content": "hi"}]
    ra = a._request("local", msgs, None, 0, None, None, None, "")
    rb = b._request("local", msgs, None, 0, None, None, None, "")
    assert ra["repeat_penalty"] == 1.2 and cache_key(ra) != cache_key(rb)
    # Remote requests do not carry it, so changing the setting leaves their cache valid.
    assert "repeat_penalty" not in a._request("gpt-4o", msgs, None, 0, None, None, None, "")

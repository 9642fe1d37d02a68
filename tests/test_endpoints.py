"""Issue 13: each model at its own endpoint, with its own key and concurrency (config.json `models`).

Two fake servers over real HTTP stand in for a self-served "vLLM" box and "OpenAI"; each accepts
only its own key and its own model names (401 / 404 otherwise) and keeps a hash of every
Authorization header it received, so a key reaching the wrong server shows.
"""
import glob
import hashlib
import json
import os

import pytest

from coser.cache import Cache
from coser.config import Settings, load_settings
from coser.endpoints import match_entry, redact_url
from coser.errors import ConfigError, LLMPermanentError
from coser.llm import LLM
from tests.conftest import TEST_KEY, run_script, shared_path
from tests.fakeserver import Fault, FakeServer
from tests.gca_fakes import _no_nagle, kind, responder  # noqa: F401 (autouse fixture)

ACTOR = "Neph0s/CoSER-Llama-3.1-8B"
VLLM_KEY = "vllm-box-key-7f3e9a"


def bearer(key):
    return hashlib.sha256(f"Bearer {key}".encode()).hexdigest()


@pytest.fixture
def servers():
    vllm = FakeServer(api_key="EMPTY", models=[ACTOR]).start()
    openai = FakeServer(api_key=TEST_KEY, models=["gpt-4o", "gpt-4o-mini"]).start()
    yield vllm, openai
    vllm.stop()
    openai.stop()


def write_config(path, openai, models):
    with open(path, "w", encoding="utf-8") as f:
        json.dump({"api_key": TEST_KEY, "base_url": openai.base_url, "models": models}, f)
    return str(path)


def clean_env(llm_env, tmp_path):
    env = dict(llm_env, COSER_CACHE_DIR=str(tmp_path / ".cache"))
    env.pop("OPENAI_API_KEY", None)
    env.pop("OPENAI_BASE_URL", None)
    return env


def client(tmp_path, settings, workers=8):
    return LLM(settings, cache=Cache(str(tmp_path / "c.sqlite")), max_in_flight=workers)


def settings_for(tmp_path, openai, models):
    return load_settings(write_config(tmp_path / "config.json", openai, models))


# -- the table ------------------------------------------------------------------------------------
def test_exact_name_wins_then_first_glob_in_file_order():
    models = {"gpt-4o*": {}, "gpt-*": {}, "gpt-4o-mini": {}}
    assert match_entry(models, "gpt-4o-mini") == "gpt-4o-mini"
    assert match_entry(models, "gpt-4o") == "gpt-4o*"
    assert match_entry(models, "gpt-3.5") == "gpt-*"
    assert match_entry(models, "claude-3") is None


@pytest.mark.parametrize("entry, expected", [
    ({"base_ur": "http://x/v1"}, "unknown key 'base_ur' (did you mean 'base_url'?)"),
    ({"max_conections": 4}, "did you mean 'max_connections'?"),
    ({"api_key": "a", "api_key_env": "B"}, "api_key or api_key_env, not both"),
    ({"max_connections": 0}, "max_connections"),
])
def test_bad_entry_is_one_line_error_exit_2(tmp_path, llm_env, entry, expected):
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps({"models": {"m": entry}, "some_other_tool_key": 1}))
    r = run_script(["-m", "coser.llm", "--model", "m", "hi"], env=clean_env(llm_env, tmp_path), cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0, r.stderr
    assert expected in r.stderr and 'models["m"]' in r.stderr and "config.json" in r.stderr


# -- keys go only where they belong ---------------------------------------------------------------------
def test_each_model_reaches_its_own_server_with_its_own_key(servers, tmp_path):
    vllm, openai = servers
    s = settings_for(tmp_path, openai, {ACTOR: {"base_url": vllm.base_url}})
    llm = client(tmp_path, s)
    assert llm.chat(ACTOR, "hi") == "ok" and llm.chat("gpt-4o", "hi") == "ok"
    assert [b["model"] for b in vllm.chat_requests()] == [ACTOR]
    assert [b["model"] for b in openai.chat_requests()] == ["gpt-4o"]
    assert vllm.auth_hashes == [bearer("EMPTY")]           # no key of its own: none sent
    assert openai.auth_hashes == [bearer(TEST_KEY)]
    assert llm.endpoint_info(ACTOR) == {"model": ACTOR, "endpoint": vllm.base_url}
    assert llm.endpoint_info("local") == {"model": "local", "endpoint": "embedded"}


def test_entry_key_alias_and_env_key(servers, tmp_path, monkeypatch):
    vllm, openai = servers
    vllm.api_key = VLLM_KEY
    monkeypatch.setenv("MY_OPENAI_KEY", TEST_KEY)
    s = settings_for(tmp_path, openai, {"coser-8b": {"model": ACTOR, "base_url": vllm.base_url, "api_key": VLLM_KEY},
                                        "gpt-4o*": {"api_key_env": "MY_OPENAI_KEY"}})
    s.api_key = "sk-top-level-not-this-one"
    llm = client(tmp_path, s)
    assert llm.chat("coser-8b", "hi") == "ok" and llm.chat("gpt-4o-mini", "hi") == "ok"
    assert vllm.chat_requests()[0]["model"] == ACTOR       # the alias sends the real name
    assert vllm.auth_hashes == [bearer(VLLM_KEY)] and openai.auth_hashes == [bearer(TEST_KEY)]


def test_errors_name_the_entry_and_404_lists_served_models(servers, tmp_path):
    vllm, openai = servers
    s = settings_for(tmp_path, openai, {"coser-*": {"base_url": vllm.base_url},
                                        "gpt-4o*": {"api_key": "sk-wrong-key-000000"}})
    llm = client(tmp_path, s)
    with pytest.raises(LLMPermanentError) as e:
        llm.chat("gpt-4o", "hi")
    assert str(e.value).startswith(f"model 'gpt-4o' (config.json models[\"gpt-4o*\"]) at {openai.base_url}: "
                                   "authentication failed (HTTP 401)")
    assert "sk-wrong" not in str(e.value)
    with pytest.raises(LLMPermanentError) as e:
        llm.chat("coser-typo", "hi")
    assert "models[\"coser-*\"]" in str(e.value) and "HTTP 404" in str(e.value) and ACTOR in str(e.value)


def test_credentials_in_urls_never_printed_or_recorded(servers, tmp_path, llm_env):
    vllm, openai = servers
    vllm.api_key = None  # httpx turns URL credentials into Basic auth
    url = vllm.base_url.replace("http://", "http://user:URLSECRET99@")
    assert redact_url(url) == vllm.base_url.replace("http://", "http://***@")
    cfg = write_config(tmp_path / "config.json", openai, {"lost-model": {"base_url": url}})
    r = run_script(["-m", "coser.llm", "--config", cfg, "--model", "lost-model", "hi"],
                   env=clean_env(llm_env, tmp_path), cwd=tmp_path)
    assert r.returncode == 2 and "HTTP 404" in r.stderr and "***@" in r.stderr
    listing = run_script(["-m", "coser.llm", "--config", cfg, "--list"], env=clean_env(llm_env, tmp_path), cwd=tmp_path)
    assert listing.returncode == 0 and ACTOR in listing.stdout and "gpt-4o-mini" in listing.stdout
    for out in (r.stdout, r.stderr, listing.stdout, listing.stderr,
                json.dumps(load_settings(cfg).public()), json.dumps(client(tmp_path, load_settings(cfg))
                                                                    .endpoint_info("lost-model"))):
        assert "URLSECRET99" not in out and TEST_KEY not in out


def test_list_shows_key_state_never_the_key(servers, tmp_path, llm_env):
    vllm, openai = servers
    cfg = write_config(tmp_path / "config.json", openai, {ACTOR: {"base_url": vllm.base_url},
                                                          "claude-*": {"api_key_env": "NO_SUCH_VAR_X"}})
    r = run_script(["-m", "coser.llm", "--config", cfg, "--list"], env=clean_env(llm_env, tmp_path), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert f"models[\"{ACTOR}\"]: {vllm.base_url}" in r.stdout and "sends EMPTY" in r.stdout
    assert f"/models serves 1: {ACTOR}" in r.stdout and "gpt-4o, gpt-4o-mini" in r.stdout
    assert "not checked (no key)" in r.stdout and TEST_KEY not in r.stdout + r.stderr
    assert bearer(TEST_KEY) not in vllm.auth_hashes


# -- cache, concurrency, structured output --------------------------------------------------------------
def test_same_name_at_two_servers_never_shares_answers(servers, tmp_path):
    vllm, openai = servers
    vllm.models = openai.models = None
    vllm.set_responder(lambda b: "from vllm")
    openai.set_responder(lambda b: "from openai")
    top = client(tmp_path, settings_for(tmp_path, openai, {}))
    assert top.chat("gpt-4o", "hi") == "from openai"
    # Reference-style config (no models): the cache key is exactly as before, no endpoint in it.
    assert "endpoint" not in top._request("gpt-4o", "hi", None, 0, None, None, None, "")
    s = settings_for(tmp_path, openai, {"gpt-4o": {"base_url": vllm.base_url}})
    assert client(tmp_path, s).chat("gpt-4o", "hi") == "from vllm"     # same cache file, other endpoint
    assert len(vllm.chat_requests()) == 1


def test_max_connections_holds_across_threads(servers, tmp_path):
    from concurrent.futures import ThreadPoolExecutor
    vllm, openai = servers
    vllm.latency = 0.05
    llm = client(tmp_path, settings_for(tmp_path, openai, {ACTOR: {"base_url": vllm.base_url,
                                                                   "max_connections": 3}}), workers=16)
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda i: llm.chat(ACTOR, f"q{i}"), range(24)))
    assert len(vllm.chat_requests()) == 24 and vllm.max_in_flight == 3


def test_schema_rejected_with_500_degrades_per_endpoint(servers, tmp_path):
    """llama-cpp-python's server answers a json_schema response_format with HTTP 500 naming it."""
    vllm, openai = servers
    s = settings_for(tmp_path, openai, {ACTOR: {"base_url": vllm.base_url, "structured_output": "on"}})
    llm = client(tmp_path, s)
    vllm.queue(Fault.http(500, message="1 validation error: response_format ... json_schema not permitted"))
    vllm.set_responder(lambda b: '{"a": 1}')
    schema = {"type": "object"}
    assert llm.chat(ACTOR, "q1", schema=schema) == '{"a": 1}'
    assert llm.chat(ACTOR, "q2", schema=schema) == '{"a": 1}'
    sent = vllm.chat_requests()
    assert len(sent) == 3 and "response_format" in sent[0]
    assert all("response_format" not in b for b in sent[1:])   # remembered for this endpoint
    assert llm.usage.totals()["faults"] == 0


def test_replicas_share_load_and_survive_one_going_down(tmp_path):
    from concurrent.futures import ThreadPoolExecutor
    a, b = FakeServer(latency=0.02).start(), FakeServer(latency=0.02).start()
    try:
        s = Settings(retry_base=0.01, timeout=5, models={"m": {"base_url": [a.base_url, b.base_url]}})
        llm = client(tmp_path, s)
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(lambda i: llm.chat("m", f"q{i}"), range(12)))
        assert len(a.chat_requests()) >= 3 and len(b.chat_requests()) >= 3
        b.set_responder(lambda body: Fault.http(503))
        for i in range(6):
            assert llm.chat("m", f"later {i}") == "ok"
        assert llm.usage.totals()["faults"] <= 1                # out of rotation after its first failure
        llm._down_until.clear()
        b.stop()                                                # gone for good mid-run: connection refused
        n_a = len(a.chat_requests())
        for i in range(4):
            assert llm.chat("m", f"after stop {i}") == "ok"
        assert len(a.chat_requests()) == n_a + 4
        assert llm.endpoint_info("m")["endpoint"] == f"{a.base_url}, {b.base_url}"
    finally:
        a.stop()
        b.stop()


# -- scripts ------------------------------------------------------------------------------------
def test_gca_run_actor_on_vllm_others_on_openai(servers, llm_env, tmp_path):
    vllm, openai = servers
    vllm.set_responder(responder())
    openai.set_responder(responder())
    vllm.latency = 0.02
    write_config(tmp_path / "config.json", openai, {ACTOR: {"base_url": vllm.base_url, "max_connections": 2}})
    r = run_script(["gca_evaluation/main.py", "--test_file", shared_path("test", "test_set.json"), "--limit", "4",
                    "--num_workers", "8", "--actor_model", ACTOR, "--exp_dir", str(tmp_path / "exp"),
                    "--cache_path", str(tmp_path / "cache.sqlite")], env=clean_env(llm_env, tmp_path), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    on_vllm, on_openai = vllm.chat_requests(), openai.chat_requests()
    assert on_vllm and all(kind(b) == "actor" and b["model"] == ACTOR for b in on_vllm)
    assert {kind(b) for b in on_openai} == {"env", "nsp", "judge"}
    assert all(b["model"] in ("gpt-4o", "gpt-4o-mini") for b in on_openai)
    assert set(vllm.auth_hashes) == {bearer("EMPTY")} and set(openai.auth_hashes) == {bearer(TEST_KEY)}
    assert vllm.max_in_flight == 2          # 4 scenes in parallel, max_connections 2 at the vLLM box
    record = json.load(open(tmp_path / "exp" / "run_gca_evaluation.json", encoding="utf-8"))
    assert record["endpoints"]["actor_model"] == {"model": ACTOR, "endpoint": vllm.base_url}
    assert record["endpoints"]["judge_model"] == {"model": "gpt-4o", "endpoint": openai.base_url}
    for path in glob.glob(str(tmp_path / "**" / "*"), recursive=True):
        if os.path.isfile(path) and not path.endswith("config.json"):
            assert TEST_KEY.encode() not in open(path, "rb").read(), path


def test_explicit_model_without_key_is_an_error_not_local(tmp_path, llm_env):
    env = clean_env(llm_env, tmp_path)
    r = run_script(["gca_evaluation/main.py", "--actor_model", "gpt-4o", "--limit", "1",
                    "--test_file", shared_path("test", "test_set.json")], env=env, cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0, r.stderr
    assert "--actor_model gpt-4o" in r.stderr and "OPENAI_API_KEY" in r.stderr
    (tmp_path / "config.json").write_text(json.dumps({"models": {"claude-*": {"api_key_env": "ANTHROPIC_KEY_X"}}}))
    r = run_script(["-m", "coser.llm", "--model", "claude-3-5-sonnet", "hi"], env=env, cwd=tmp_path)
    assert r.returncode == 2 and "ANTHROPIC_KEY_X" in r.stderr, r.stderr


def test_explicit_model_with_own_endpoint_needs_no_key(servers, tmp_path, llm_env):
    vllm, openai = servers
    (tmp_path / "config.json").write_text(json.dumps({"models": {ACTOR: {"base_url": vllm.base_url}}}))
    r = run_script(["-m", "coser.llm", "--model", ACTOR, "--json", "hi"], env=clean_env(llm_env, tmp_path),
                   cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["content"] == "ok" and out["endpoint"] == vllm.base_url and openai.requests == []


# -- issue 19 item 1: a reply that failed parsing is never served again as good ------------------------
def test_rejected_reply_is_not_served_from_cache(fake_server, make_llm):
    from coser.jsonio import JsonFailure, get_json
    llm = make_llm()
    fake_server.set_responder(lambda b: "not json" if "fix" not in b["messages"][-1]["content"] else "still not")
    assert isinstance(get_json(llm, "gpt-4o", "q", max_retry=1, repair=None), JsonFailure)
    n = len(fake_server.chat_requests())
    fake_server.set_responder(lambda b: '{"a": 1}')
    assert get_json(llm, "gpt-4o", "q", max_retry=1, repair=None) == {"a": 1}
    assert len(fake_server.chat_requests()) == n + 1           # asked again, not served the bad reply
    assert llm.chat("gpt-4o", "q") == '{"a": 1}' and len(fake_server.chat_requests()) == n + 1  # good one cached


@pytest.mark.parametrize("protocol", ["reference", "fixed"])
def test_gca_judge_failure_recovers_on_reevaluate_with_cache(fake_server, llm_env, tmp_path, protocol):
    fake_server.set_responder(responder(judge=lambda b: "I cannot produce JSON today."))
    args = ["gca_evaluation/main.py", "--protocol", protocol, "--test_file", shared_path("test", "test_set.json"), "--limit", "1",
            "--num_workers", "2", "--exp_dir", str(tmp_path / "exp"), "--cache_path", str(tmp_path / "cache.sqlite")]
    r = run_script(args, env=llm_env, cwd=tmp_path)
    assert r.returncode in (0, 1), r.stderr
    ev_path, = glob.glob(str(tmp_path / "exp" / "evaluation" / "test_set_gpt-4o*.json"))
    ev = json.load(open(ev_path, encoding="utf-8"))
    assert all(c.get("failed") for c in ev["cases"].values())
    fake_server.set_responder(responder())
    r = run_script(args + ["--reevaluate"], env=llm_env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    ev = json.load(open(ev_path, encoding="utf-8"))
    assert ev["cases"] and not any(c.get("failed") for c in ev["cases"].values())


# -- embeddings through the core layer ----------------------------------------------------------------
def test_embeddings_use_the_table_cache_and_own_key(servers, tmp_path):
    from gca_evaluation.retrieval import Embedder
    vllm, openai = servers
    vllm.models = ["bge-m3"]
    s = settings_for(tmp_path, openai, {"bge-*": {"base_url": vllm.base_url}})
    s.embedding_model = "bge-m3"
    llm = client(tmp_path, s)
    vecs = Embedder(s, llm).embed(["the king", "the fool", "the king"])
    assert len(vecs) == 3 and vecs[0] == vecs[2] and vecs[0] != vecs[1]
    assert Embedder(s, llm).embed(["the fool"]) == [vecs[1]]        # second time from the cache
    posts = [r for r in vllm.requests if r["_path"].endswith("/embeddings")]
    assert len(posts) == 1 and posts[0]["input"] == ["the king", "the fool"] and openai.requests == []
    assert set(vllm.auth_hashes) == {bearer("EMPTY")}
    # Reference keys: embedding_base_url without embedding_api_key never gets the top-level key.
    s2 = Settings(api_key=TEST_KEY, base_url=openai.base_url, embedding_base_url=vllm.base_url,
                  embedding_model="bge-m3", retry_base=0.01)
    assert len(LLM(s2, cache=None, use_cache=False).embed("bge-m3", ["x"])) == 1
    assert bearer(TEST_KEY) not in vllm.auth_hashes

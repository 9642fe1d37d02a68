"""The durable cache: threads, processes, kill -9, broken rows."""
import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time

from coser.cache import Cache, cache_key
from tests.conftest import PYTHON, REPO, TEST_KEY, run_script


def test_key_is_canonical_and_covers_generation_params():
    a = cache_key({"model": "m", "messages": [{"role": "user", "content": "x"}], "temperature": 0})
    b = cache_key({"temperature": 0, "messages": [{"content": "x", "role": "user"}], "model": "m"})
    assert a == b
    assert a != cache_key({"model": "m", "messages": [{"role": "user", "content": "x"}], "temperature": 1})


def test_broken_row_is_a_miss(tmp_path):
    c = Cache(str(tmp_path / "c.sqlite"))
    c.put("k", {"model": "m"}, {"content": "v"})
    assert c.get("k") == {"content": "v"}
    conn = sqlite3.connect(str(tmp_path / "c.sqlite"))
    conn.execute("UPDATE responses SET response='{not json' WHERE key='k'")
    conn.commit()
    assert c.get("k") is None


def test_hits_across_processes(fake_server, llm_env, tmp_path):
    fake_server.set_responder(lambda body: "shared answer")
    for _ in range(2):
        r = run_script(["-m", "coser.llm", "--model", "gpt-4o", "same prompt"], env=llm_env, cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        assert r.stdout.strip() == "shared answer"
    assert len(fake_server.chat_requests()) == 1
    # no key is stored in the cache file
    raw = open(tmp_path / ".cache" / "llm_cache.sqlite", "rb").read()
    assert TEST_KEY.encode() not in raw


_WRITER = textwrap.dedent("""
    import sys
    from coser.cache import Cache
    c = Cache(sys.argv[1])
    tag = sys.argv[2]
    for i in range(int(sys.argv[3])):
        c.put(f"{tag}-{i}", {"model": "m", "i": i}, {"content": "x" * 200 + str(i)})
    print("done")
""")


def test_concurrent_writer_processes(tmp_path):
    path = str(tmp_path / "c.sqlite")
    Cache(path)
    env = dict(os.environ, PYTHONPATH=REPO)
    procs = [subprocess.Popen([PYTHON, "-c", _WRITER, path, f"p{j}", "300"], env=env, stdout=subprocess.PIPE)
             for j in range(3)]
    for p in procs:
        assert p.wait(120) == 0
    c = Cache(path)
    assert len(c) == 900
    assert c.get("p2-299")["content"].endswith("299")


def test_kill_9_during_writes_leaves_usable_cache(tmp_path):
    path = str(tmp_path / "c.sqlite")
    Cache(path)
    env = dict(os.environ, PYTHONPATH=REPO)
    for round_ in range(3):
        p = subprocess.Popen([PYTHON, "-c", _WRITER, path, f"r{round_}", "100000"], env=env, stdout=subprocess.PIPE)
        time.sleep(1.0 + 0.3 * round_)
        p.send_signal(signal.SIGKILL)
        p.wait(30)
    c = Cache(path)
    n = len(c)
    assert n > 0
    c.put("after", {"model": "m"}, {"content": "fine"})
    assert c.get("after") == {"content": "fine"}
    assert sqlite3.connect(path).execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_no_cache_flag_bypasses(fake_server, llm_env, tmp_path):
    fake_server.set_responder(lambda body: "fresh")
    for _ in range(2):
        r = run_script(["-m", "coser.llm", "--no_cache", "--model", "gpt-4o", "q"], env=llm_env, cwd=tmp_path)
        assert r.returncode == 0, r.stderr
    assert len(fake_server.chat_requests()) == 2

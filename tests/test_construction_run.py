"""Construction end to end over HTTP: the script as a subprocess against the fake server, on real Othello text."""
import json
import os
import signal
import subprocess
import threading
import time

import pytest

from tests import construction_script as S
from tests.conftest import PYTHON, REPO, run_script, shared_path

SCRIPT = "data_construction/main.py"


def othello(max_chars=None, title="Othello"):
    with open(shared_path("src", "books_example.jsonl"), encoding="utf-8") as f:
        for line in f:
            b = json.loads(line)
            if b["title"] == title:
                content = b["content"] if max_chars is None else b["content"][:max_chars]
                return {"title": b["title"], "author": b["author"], "content": content}
    raise AssertionError(f"{title} missing from books_example.jsonl")


def write_books(path, books, raw_lines=()):
    with open(path, "wb") as f:
        for b in books:
            f.write((json.dumps(b, ensure_ascii=False) + "\n").encode())
        for raw in raw_lines:
            f.write(raw + b"\n")
    return str(path)


def load(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def request_key(body):
    return json.dumps([body.get("model"), body.get("messages"), body.get("temperature"), body.get("seed")],
                      sort_keys=True)


ARGS = ["--chunk_size", "1024", "--limit_chunks", "4", "--model", "gpt-4o", "--num_workers", "4"]


@pytest.fixture
def books_file(tmp_path):
    return write_books(tmp_path / "books.jsonl", [othello(60000)])


def test_full_run_writes_published_structure(fake_server, llm_env, tmp_path, books_file):
    fake_server.set_responder(S.respond)
    out = tmp_path / "data"
    r = run_script([SCRIPT, "--input", books_file, "--output_dir", out, *ARGS], env=llm_env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "Othello" in r.stdout and "grounded" in r.stdout      # the per-book summary table

    extracted = load(out / "extracted" / "Othello.json")
    assert extracted["fail_to_parse_responses"] == []
    assert all(set(p) >= {"text", "summary", "prominence", "key_characters", "chapter", "conversation", "state",
                          "i_chunk"} for p in extracted["plots"])
    assert [p["i_chunk"] for p in extracted["plots"]] == sorted(p["i_chunk"] for p in extracted["plots"])
    book = othello(60000)["content"]
    for p in extracted["plots"]:
        assert p["state"] == "finished" and p["text"]
        assert not [k for k in p if k.startswith("_")]      # no bookkeeping leaks into the file
    # A truncated plot continued in the next chunk: one plot, its text spanning both chunks.
    from data_construction.chunking import chunk_book
    chunks = chunk_book(book, 1024).chunks
    merged = [p for p in extracted["plots"] if p["summary"].startswith("Unfinished storyline")]
    assert merged
    for p in merged:
        if p["i_chunk"] < 3:    # the last chunk's truncated plot has nothing to merge with
            assert p["text"][:40] in chunks[p["i_chunk"] - 1] and p["text"][-40:] in chunks[p["i_chunk"]]
            assert len(p["conversation"]) == 1     # the continued conversation replaced the old one
    assert not os.path.exists(out / "extracted" / ".Othello.progress.json")

    final = load(out / "final" / "Othello.json")
    assert list(final) == ["plots", "character_datasets", "split_plot_index"]
    assert final["split_plot_index"] == int(len(final["plots"]) * 0.9)
    datasets = final["character_datasets"]
    assert "Iago" in datasets and "IAGO" not in datasets and "Environment" not in datasets
    for name, d in datasets.items():
        assert list(d) == ["plots", "conversations", "utterances", "profile"]
        assert d["profile"].startswith(f"{name} is a figure")
        for e in d["plots"]:
            assert e in final["plots"][e["i_p"]]["key_characters"] and e["name"] == name
        for e in d["conversations"]:
            assert e in final["plots"][e["i_p"]]["conversation"][e["i_c"]]["key_characters"]
        for e in d["utterances"]:
            assert final["plots"][e["i_p"]]["conversation"][e["i_c"]]["dialogues"][e["i_u"]] == e
            assert e["character"] == name
    convs = [c for p in final["plots"] for c in p["conversation"]]
    assert all(c["scenario"].startswith("An enriched scenario") for c in convs)
    assert all(c["grounded_ratio"] == 1.0 for c in convs)     # every line was quoted from the chunk
    env_lines = [u for c in convs for u in c["dialogues"] if u["character"] == "Environment"]
    assert env_lines and all("i_p" not in u for u in env_lines)
    assert any(b in book for b in (p["text"][:200] for p in final["plots"]))

    keys = [request_key(b) for b in fake_server.chat_requests()]
    assert len(keys) == len(set(keys)), "a request was sent twice"
    record = load(out / "run_construction.json")
    assert record["books"][0]["title"] == "Othello" and "sk-test" not in json.dumps(record)

    # Rerun with --regenerate: everything comes from the cache, no request reaches the server.
    before = len(fake_server.chat_requests())
    r2 = run_script([SCRIPT, "--input", books_file, "--output_dir", out, "--regenerate", *ARGS],
                    env=llm_env, cwd=tmp_path)
    assert r2.returncode == 0, r2.stderr
    assert len(fake_server.chat_requests()) == before
    assert load(out / "final" / "Othello.json") == final


def test_bad_input_lines_are_reported_and_other_books_run(tmp_path, llm_env, fake_server):
    fake_server.set_responder(S.respond)
    path = write_books(tmp_path / "books.jsonl", [othello(20000), othello(20000, "King Lear")], raw_lines=[
        b'{"title": "Broken", "author": "X", "content": "abc"',                    # line 3: bad JSON
        b'{"title": "No Author", "content": "some text"}',                         # line 4: missing field
        b'{"title": "Blank", "author": "X", "content": "  \\n\\t "}',              # line 5: whitespace only
        b'{"title": "Bytes", "author": "X", "content": "caf\xe9"}',                # line 6: not UTF-8
        b'{"title": "Othello", "author": "Y", "content": "other"}',                # line 7: same file name
        b'{"title": 7, "author": "X", "content": "text"}',                         # line 8: wrong type
    ])
    out = tmp_path / "dry"
    r = run_script([SCRIPT, "--input", path, "--output_dir", out, "--dry_run", "--chunk_size", "1024"],
                   env=llm_env, cwd=tmp_path)
    assert r.returncode != 0
    err = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(err) == 6 and "Traceback" not in r.stderr
    assert "line 3" in err[0] and "JSON" in err[0]
    assert "line 4" in err[1] and "'author'" in err[1]
    assert "line 5" in err[2] and "'content'" in err[2]
    assert "line 6" in err[3] and "UTF-8" in err[3]
    assert "line 7" in err[4] and "line 1" in err[4]
    assert "line 8" in err[5] and "'title'" in err[5]
    assert fake_server.chat_requests() == []                 # dry run: no LLM call
    with open(out / "chunks" / "Othello.jsonl", encoding="utf-8") as f:
        rows = [json.loads(line) for line in f]
    assert [r["i_chunk"] for r in rows] == list(range(len(rows))) and len(rows) >= 5
    from data_construction.chunking import count_tokens
    assert all(r["n_tokens"] == count_tokens(r["text"]) for r in rows)
    assert "Othello" in r.stdout

    # The real run processes the good book and still exits non-zero for the bad lines.
    r = run_script([SCRIPT, "--input", path, "--output_dir", tmp_path / "real", "--chunk_size", "1024",
                    "--limit_chunks", "2", "--model", "gpt-4o", "--num_workers", "2"], env=llm_env, cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    for title in ("Othello", "King Lear"):     # both good books ran, in parallel
        assert os.path.exists(tmp_path / "real" / "final" / f"{title}.json")
    assert "King Lear" in r.stdout


@pytest.mark.parametrize("stage", ["extract", "enhance"])
def test_resume_after_kill_repeats_no_finished_call(fake_server, llm_env, tmp_path, books_file, stage):
    """kill -9 while the third request of a stage is in flight, rerun: same files, no finished call resent."""
    gate = threading.Event()
    seen = []

    def responder(body):
        if S.kind(body) == stage:
            seen.append(body)
            if len(seen) == 3 and not gate.is_set():
                gate.wait(30)           # hold this request until the process is killed
        return S.respond(body)

    fake_server.set_responder(responder)
    out = tmp_path / "data"
    env = dict(llm_env, PYTHONPATH=REPO)
    # One worker keeps the in-flight request unique, so "finished" is well defined.
    args = ARGS[:-1] + ["1"]
    cmd = [PYTHON, os.path.join(REPO, SCRIPT), "--input", books_file, "--output_dir", str(out), *args]
    proc = subprocess.Popen(cmd, env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if stage == "extract":
        progress = out / "extracted" / ".Othello.progress.json"
        ready = lambda: load(progress)["next_chunk"] == 2  # noqa: E731
    else:
        progress = out / "final" / ".Othello.progress.json"
        ready = lambda: len(load(progress)["enhance"]) == 2  # noqa: E731
    deadline = time.time() + 60
    while time.time() < deadline:
        if len(seen) >= 3 and progress.exists() and ready():
            break
        time.sleep(0.05)
    else:
        proc.kill()
        pytest.fail(f"the run never reached the third {stage} request")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)
    gate.set()
    # Everything but the held request got its answer before the kill.
    completed = {request_key(b) for b in fake_server.chat_requests()[:-1]}
    assert request_key(fake_server.chat_requests()[-1]) == request_key(seen[2])
    n_before = len(fake_server.chat_requests())

    r = run_script(cmd[1:], env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    resumed = [request_key(b) for b in fake_server.chat_requests()[n_before:]]
    assert not completed & set(resumed), "a finished call was sent again after the restart"
    assert len(resumed) == len(set(resumed))
    assert not progress.exists()

    # Same files as an uninterrupted run with a fresh cache.
    fake_server.set_responder(S.respond)
    env2 = dict(env, COSER_CACHE_DIR=str(tmp_path / "cache2"))
    r = run_script([SCRIPT, "--input", books_file, "--output_dir", tmp_path / "clean", *ARGS], env=env2, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    for sub in ("extracted", "final"):
        assert load(out / sub / "Othello.json") == load(tmp_path / "clean" / sub / "Othello.json")


def test_help_works():
    r = run_script([SCRIPT, "--help"])
    assert r.returncode == 0 and "--dry_run" in r.stdout and "--limit_chunks" in r.stdout

"""Hostile conditions (issue 19, items 6, 7 and 9's retrieval paths), each as a real subprocess
against the fake server:

* JSON the parser refuses with RecursionError / ValueError (100k nested brackets, a 5,000-digit
  integer), unwritable outputs (a file where a folder is needed, a file name too long, a write
  that fails mid-run), broken caches, odd test sets and out-of-range seeds end in a one-line error
  naming the file or field, exit 2, no traceback, earlier outputs intact;
* Ctrl-C during GCA and construction stops within seconds (exit 130, one line saying how to
  resume, no traceback), and the rerun does not repeat finished calls;
* a test item whose `book` is a path cannot make --retrieval read outside --book_data.
"""
import glob
import json
import os
import resource
import signal
import subprocess
import time

import pytest

from tests import construction_script as S
from tests.conftest import PYTHON, REPO, run_script
from tests.test_bad_inputs import check_one_line_error
from tests.test_faults import (CONSTRUCT, CONSTRUCT_ARGS, GCA, GCA_ARGS, body_key, gca_respond, gca_test_set,
                               write_gca_test_set, write_play)

TRANSFORM = "data_construction/transform.py"
DEEP = "[" * 100_000
HUGE_INT = "1" * 5000


def write(path, text):
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    return str(path)


def gca(test_file, tmp, *extra):
    return [GCA, "--test_file", test_file, *GCA_ARGS, "--exp_dir", os.path.join(tmp, "exp"), *extra]


def sim_files(tmp):
    """The simulation outputs of the test set ok.json (named ok_fake-actor[_spec=HASH].json)."""
    return sorted(glob.glob(os.path.join(str(tmp), "exp", "simulation", "ok_fake-actor*.json")))


def partial_files(tmp):
    """Finished-sample checkpoints of a simulation in progress."""
    return glob.glob(os.path.join(str(tmp), "exp", "simulation", ".partial", "ok_fake-actor*", "[0-9]*.json"))


def temp_files(root):
    return [n for _, _, names in os.walk(root) for n in names if n.startswith(".tmp-")]


def snapshot(root):
    """{relative path: bytes} of every file under root (the cache folder left out)."""
    out = {}
    for folder, dirs, names in os.walk(root):
        dirs[:] = [d for d in dirs if d != ".cache"]
        for name in names:
            path = os.path.join(folder, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, root)] = f.read()
    return out


# ---- item 7: JSON the parser refuses without a JSONDecodeError --------------------------------
@pytest.mark.parametrize("payload,why", [(DEEP, "nested too deeply"), (HUGE_INT, "too many digits"),
                                         ('[{"a": ' + HUGE_INT + "}]", "too many digits")],
                         ids=["deep", "huge_int", "huge_int_inside"])
def test_gca_test_file_parser_limits(payload, why, fake_server, llm_env, tmp_path):
    fake_server.set_responder(gca_respond)
    test_file = write(tmp_path / "hostile.json", payload)
    r = run_script(gca(test_file, str(tmp_path)), env=llm_env, cwd=tmp_path, timeout=120)
    assert r.returncode == 2
    check_one_line_error(r, ["hostile.json", why])
    assert fake_server.chat_requests() == []


@pytest.mark.parametrize("line,why", [(DEEP, "nested too deeply"),
                                      ('{"title": "T", "author": "A", "content": "x", "n": ' + HUGE_INT + "}",
                                       "too many digits")], ids=["deep", "huge_int"])
def test_books_jsonl_parser_limits(line, why, fake_server, llm_env, tmp_path):
    fake_server.set_responder(S.respond)
    books = write(tmp_path / "books.jsonl", line + "\n")
    r = run_script([CONSTRUCT, "--input", books, "--output_dir", tmp_path / "out", *CONSTRUCT_ARGS],
                   env=llm_env, cwd=tmp_path, timeout=120)
    assert r.returncode == 2
    check_one_line_error(r, ["books.jsonl", "line 1", why])


def test_torn_checkpoint_with_deep_nesting_is_redone(fake_server, llm_env, tmp_path):
    """A checkpoint the parser refuses (RecursionError) is redone, not a crash."""
    fake_server.set_responder(gca_respond)
    test_file = write_gca_test_set(tmp_path / "ok.json", n=2)
    args = gca(test_file, str(tmp_path))
    r = run_script(args, env=llm_env, cwd=tmp_path, timeout=120)   # learn where checkpoints go
    assert r.returncode == 0, r.stderr[-3000:]
    [sim] = sim_files(tmp_path)
    partial = os.path.join(os.path.dirname(sim), ".partial", os.path.basename(sim)[:-5])
    os.makedirs(partial)
    write(os.path.join(partial, "00000.json"), DEEP)
    fake_server.reset()
    r = run_script(args + ["--regenerate"], env=llm_env, cwd=tmp_path, timeout=120)   # reads the checkpoint
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Traceback" not in r.stderr
    assert len(json.load(open(sim))) == 2
    assert not os.path.exists(partial)


# ---- item 7: test sets that validate badly ---------------------------------------------------
def test_profile_that_is_a_number(fake_server, llm_env, tmp_path):
    fake_server.set_responder(gca_respond)
    items = gca_test_set(2)
    items[1]["character_profiles"]["Tomas"] = 42
    test_file = write(tmp_path / "t.json", json.dumps(items))
    r = run_script(gca(test_file, str(tmp_path)), env=llm_env, cwd=tmp_path, timeout=120)
    assert r.returncode == 2
    check_one_line_error(r, ["t.json", "sample 1", "character_profiles.Tomas"])
    assert fake_server.chat_requests() == []


def test_major_character_not_speaking(fake_server, llm_env, tmp_path):
    fake_server.set_responder(gca_respond)
    items = gca_test_set(2)
    items[0]["speaking_characters_w_env"] = ["Tomas", "Environment"]   # Mara is major but has no agent
    test_file = write(tmp_path / "t.json", json.dumps(items))
    r = run_script(gca(test_file, str(tmp_path)), env=llm_env, cwd=tmp_path, timeout=120)
    assert r.returncode == 2
    check_one_line_error(r, ["t.json", "sample 0", "'Mara'", "speaking_characters_w_env"])


@pytest.mark.parametrize("seed", ["-1", str(2**32), str(10**30)])
def test_transform_seed_out_of_range(seed, tmp_path):
    (tmp_path / "final").mkdir()
    r = run_script([TRANSFORM, "--dir", tmp_path, "--seed", seed], cwd=tmp_path, timeout=60)
    assert r.returncode == 2
    check_one_line_error(r, ["--seed", seed])
    assert sorted(os.listdir(tmp_path)) == ["final"]


# ---- item 7: caches SQLite cannot use ----------------------------------------------------------
@pytest.mark.parametrize("kind", ["not_a_database", "directory", "under_a_file"])
def test_unusable_cache(kind, fake_server, llm_env, tmp_path):
    fake_server.set_responder(gca_respond)
    test_file = write_gca_test_set(tmp_path / "ok.json", n=1)
    if kind == "not_a_database":
        cache = write(tmp_path / "cache.sqlite", "this is a text file, not SQLite\n" * 200)
        expect = ["cache.sqlite", "not a SQLite database"]
    elif kind == "directory":
        cache = tmp_path / "cachedir"
        cache.mkdir()
        expect = ["cachedir", "directory"]
    else:
        write(tmp_path / "plainfile", "x")
        cache = tmp_path / "plainfile" / "cache.sqlite"
        expect = ["plainfile", "cache"]
    r = run_script(gca(test_file, str(tmp_path), "--cache_path", cache), env=llm_env, cwd=tmp_path, timeout=120)
    assert r.returncode == 2
    check_one_line_error(r, expect)
    assert fake_server.chat_requests() == []


# ---- item 7: outputs that cannot be written ----------------------------------------------------
def test_exp_dir_is_a_file(fake_server, llm_env, tmp_path):
    fake_server.set_responder(gca_respond)
    test_file = write_gca_test_set(tmp_path / "ok.json", n=1)
    write(tmp_path / "exp", "I am a file\n")
    r = run_script(gca(test_file, str(tmp_path)), env=llm_env, cwd=tmp_path, timeout=120)
    assert r.returncode == 2
    check_one_line_error(r, [str(tmp_path / "exp"), "cannot", "a file stands where a folder is needed"])
    assert open(tmp_path / "exp").read() == "I am a file\n"


def test_construction_output_dir_is_a_file(fake_server, llm_env, tmp_path):
    fake_server.set_responder(S.respond)
    books = write_play(tmp_path / "play.jsonl", n_lines=30)
    write(tmp_path / "out", "occupied\n")
    r = run_script([CONSTRUCT, "--input", books, "--output_dir", tmp_path / "out", *CONSTRUCT_ARGS],
                   env=llm_env, cwd=tmp_path, timeout=120)
    assert r.returncode == 2
    check_one_line_error(r, [str(tmp_path / "out"), "cannot", "a file stands where a folder is needed"])
    assert "unexpected" not in r.stderr
    assert open(tmp_path / "out").read() == "occupied\n"


def test_output_file_name_too_long(fake_server, llm_env, tmp_path):
    """The test file's stem names the outputs: 240 characters fit a file name, plus '_fake-actor.json' do not."""
    fake_server.set_responder(gca_respond)
    test_file = write_gca_test_set(tmp_path / ("t" * 240 + ".json"), n=1)
    r = run_script(gca(test_file, str(tmp_path)), env=llm_env, cwd=tmp_path, timeout=120)
    assert r.returncode == 2
    check_one_line_error(r, ["t" * 240, "file name too long"])


def _file_size_limit(limit):
    def pre():
        # Writes past the limit fail with EFBIG instead of killing the process: a stand-in for a full disk.
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return pre


def test_write_failure_mid_run_keeps_earlier_outputs(fake_server, llm_env, tmp_path):
    """A second run whose writes fail (file size limit, like a full disk) names the file, exits 2 and
    leaves the first run's outputs byte-identical, with no temp files."""
    fake_server.set_responder(gca_respond)
    test_file = write_gca_test_set(tmp_path / "ok.json", n=2)
    args = gca(test_file, str(tmp_path))
    r = run_script(args, env=llm_env, cwd=tmp_path, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    before = snapshot(tmp_path / "exp")
    assert [k for k in before if k.startswith("evaluation" + os.sep)], sorted(before)
    rerun = [PYTHON, os.path.join(REPO, GCA), *args[1:], "--reevaluate", "--judge_model", "fake-judge-2"]
    # With the cache: SQLite cannot grow its files; without: the checkpoint / evaluation write fails.
    for extra, expect in (([], ["llm_cache.sqlite", "cache"]), (["--no_cache"], ["exp", "cannot write"])):
        p = subprocess.run(rerun + extra, env=llm_env, cwd=tmp_path, capture_output=True, text=True, timeout=120,
                           preexec_fn=_file_size_limit(64))
        assert p.returncode == 2, p.stderr[-3000:]
        check_one_line_error(p, expect)
        after = snapshot(tmp_path / "exp")
        assert {k: v for k, v in after.items() if k in before} == before
        assert not [k for k in after if os.path.basename(k).startswith(".tmp-")]


def test_construction_write_failure_names_the_file(fake_server, llm_env, tmp_path):
    """A construction run whose writes fail (file size limit, like a full disk): one line naming the file,
    not an 'unexpected OSError'."""
    fake_server.set_responder(S.respond)
    books = write_play(tmp_path / "play.jsonl", n_lines=30)
    argv = [PYTHON, os.path.join(REPO, CONSTRUCT), "--input", books, "--output_dir", str(tmp_path / "out"),
            *CONSTRUCT_ARGS, "--no_cache"]
    p = subprocess.run(argv, env=llm_env, cwd=tmp_path, capture_output=True, text=True, timeout=120,
                       preexec_fn=_file_size_limit(64))
    assert p.returncode == 2, p.stderr[-3000:]
    check_one_line_error(p, [str(tmp_path / "out"), "cannot write"])
    assert "unexpected" not in p.stderr
    assert not temp_files(tmp_path)


# ---- item 6: Ctrl-C --------------------------------------------------------------------------
def _interrupt_when(proc, ready, timeout=60):
    deadline = time.time() + timeout
    while not ready():
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.time() < deadline, "run never reached the point to interrupt"
        time.sleep(0.05)


def _sigint_and_wait(proc, fake_server, second=False):
    sent_before = len(fake_server.chat_requests())
    t0 = time.time()
    proc.send_signal(signal.SIGINT)
    if second:
        time.sleep(0.05)
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    elapsed = time.time() - t0
    return err, elapsed, len(fake_server.chat_requests()) - sent_before


@pytest.mark.parametrize("second,workers", [(False, 3), (True, 3), (False, 1)],
                         ids=["one_ctrl_c", "two_ctrl_c", "one_ctrl_c_one_worker"])
def test_ctrl_c_during_gca(second, workers, fake_server, llm_env, tmp_path):
    fake_server.set_responder(gca_respond)
    fake_server.latency = 0.5
    test_file = write_gca_test_set(tmp_path / "ok.json", n=8)
    args = gca(test_file, str(tmp_path))
    args[args.index("--num_workers") + 1] = str(workers)
    proc = subprocess.Popen([PYTHON, os.path.join(REPO, GCA), *args[1:]], env=llm_env, cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _interrupt_when(proc, lambda: bool(partial_files(tmp_path)))
        err, elapsed, after = _sigint_and_wait(proc, fake_server, second)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err[-3000:]
    assert elapsed < 5, f"took {elapsed:.1f}s to stop"
    assert "Traceback" not in err, err[-3000:]
    # One Ctrl-C: one line saying how to resume; a second one during the grace period: exit at once.
    assert "rerun the same command" in err or (second and "interrupted again: exiting now" in err), err[-2000:]
    assert after <= 3, f"{after} requests started after Ctrl-C"      # at most the ones already on the way
    assert partial_files(tmp_path), "finished samples were not kept"
    assert not temp_files(tmp_path)
    assert not sim_files(tmp_path)
    first = [body_key(b) for b in fake_server.chat_requests()]

    fake_server.latency = 0.0
    fake_server.reset()
    r = run_script(args, env=llm_env, cwd=tmp_path, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    again = [k for k in (body_key(b) for b in fake_server.chat_requests()) if k in set(first)]
    # Calls on the wire at Ctrl-C finish within the grace period and are cached. Only a second Ctrl-C
    # (exit at once: up to the 3 calls in flight are abandoned) or a single worker (the call runs in the
    # main thread, which the signal interrupts) can leave calls to repeat.
    allowed = 3 if second else 1 if workers == 1 else 0
    assert len(again) <= allowed, f"{len(again)} calls repeated"
    [sim] = sim_files(tmp_path)
    assert len(json.load(open(sim))) == 8


def test_ctrl_c_during_construction(fake_server, llm_env, tmp_path):
    fake_server.set_responder(S.respond)
    fake_server.latency = 0.5
    books = write_play(tmp_path / "play.jsonl", n_lines=300)
    args = [CONSTRUCT, "--input", books, "--output_dir", tmp_path / "out", *CONSTRUCT_ARGS]
    proc = subprocess.Popen([PYTHON, os.path.join(REPO, CONSTRUCT), *[str(a) for a in args[1:]]], env=llm_env,
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _interrupt_when(proc, lambda: len(fake_server.chat_requests()) >= 2)
        err, elapsed, after = _sigint_and_wait(proc, fake_server)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err[-3000:]
    assert elapsed < 5, f"took {elapsed:.1f}s to stop"
    assert "Traceback" not in err, err[-3000:]
    assert "rerun" in err
    assert after <= 4, f"{after} requests started after Ctrl-C"
    assert not temp_files(tmp_path)
    first = {body_key(b) for b in fake_server.chat_requests()}

    fake_server.latency = 0.0
    fake_server.reset()
    r = run_script(args, env=llm_env, cwd=tmp_path, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    again = [b for b in fake_server.chat_requests() if body_key(b) in first]
    assert again == [], f"{len(again)} calls repeated"


# ---- item 9: retrieval stays inside --book_data -----------------------------------------------
SECRET = "SECRET-OUTSIDE-BOOK-DATA"


def _book_file(path):
    data = {"plots": [{"summary": f"{SECRET} the ferry sinks", "text": f"{SECRET} chapter text",
                       "key_characters": [{"name": c, "experience": f"{SECRET} {c} saw it all"} for c in
                                          ("Mara", "Tomas", "Old Bell")], "conversation": []}],
            "character_datasets": {c: {"plots": [{"i_p": 0}]} for c in ("Mara", "Tomas", "Old Bell")}}
    write(path, json.dumps(data))


@pytest.mark.parametrize("book,leaks", [("Inside", True), ("../outside", False), ("../../outside", False)],
                         ids=["inside", "one_up", "two_up"])
def test_retrieval_confined_to_book_data(book, leaks, fake_server, llm_env, tmp_path):
    fake_server.set_responder(gca_respond)
    (tmp_path / "books").mkdir()
    _book_file(tmp_path / "books" / "Inside.json")
    _book_file(tmp_path / "outside.json")           # what "../outside" points at
    (tmp_path / "a").mkdir()
    items = gca_test_set(1)
    items[0]["book"] = book
    test_file = write(tmp_path / "t.json", json.dumps(items))
    work = tmp_path / "a" if book.startswith("../../") else tmp_path
    books_dir = tmp_path / "a" / "books" if book.startswith("../../") else tmp_path / "books"
    if book.startswith("../../"):
        books_dir.mkdir()
        (tmp_path / "a" / "outside.json").write_text("{}")   # decoy one level up: only ../../ reaches the secret
    r = run_script(gca(test_file, str(tmp_path), "--retrieval", "expr1", "--book_data", books_dir),
                   env=llm_env, cwd=work, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Traceback" not in r.stderr
    sent = json.dumps(fake_server.chat_requests())
    assert (SECRET in sent) is leaks
    if not leaks:
        assert "without retrieval" in r.stderr


@pytest.mark.parametrize("payload,why", [(DEEP, "nested too deeply"), ('{"x": ' + HUGE_INT + "}", "too many digits")],
                         ids=["deep", "huge_int"])
@pytest.mark.parametrize("script", ["chat_book_data", "chat_resume", "chat_test_file", "gca_config",
                                    "construct_config"])
def test_other_readers_parser_limits(script, payload, why, fake_server, llm_env, tmp_path):
    """Every other JSON input (chat's book file / transcript / test set, --config) says which file."""
    fake_server.set_responder(S.respond)
    bad = write(tmp_path / "hostile.json", payload)
    ok_test = write_gca_test_set(tmp_path / "ok.json", n=1)
    argv = {
        "chat_book_data": ["chat.py", "--book_data", bad, "--character", "Mara"],
        "chat_resume": ["chat.py", "--resume", bad],
        "chat_test_file": ["chat.py", "--test_file", bad, "--character", "Mara"],
        "gca_config": gca(ok_test, str(tmp_path), "--config", bad),
        "construct_config": [CONSTRUCT, "--input", write_play(tmp_path / "p.jsonl", 20), "--output_dir",
                             tmp_path / "out", *CONSTRUCT_ARGS, "--config", bad],
    }[script]
    r = run_script(argv, env=llm_env, cwd=tmp_path, timeout=120, input="")
    assert r.returncode == 2, r.stderr[-3000:]
    check_one_line_error(r, ["hostile.json", why])
    assert fake_server.chat_requests() == []

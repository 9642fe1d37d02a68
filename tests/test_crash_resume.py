"""kill -9 at seeded random points, restart, compare with an uninterrupted run.

A kill point is a cumulative request number: when the fake server receives that request, the
process is killed after a seeded delay shorter than the server latency, so the kill lands while
calls are in flight (and, at other points, while outputs are being written). After each kill the
cache file is read: no request whose answer was already stored may reach the server again. The
only repeats allowed are the calls in flight at the moment of a kill (their answers were lost).

CI runs KILLS_CI points per job; COSER_FULL_KILL=1 runs KILLS_FULL (the issue's count);
COSER_KILL_SEED=N draws other points (soak: for n in 1 2 3; do COSER_KILL_SEED=$n pytest ...; done).
"""
import json
import os
import random
import signal
import sqlite3
import subprocess
import threading
import time
from collections import Counter

import pytest

from tests import construction_script as S
from tests.conftest import PYTHON, REPO
from tests.test_faults import (CONSTRUCT_ARGS, GCA_ARGS, assert_same_outputs, gca_respond, output_files,
                               write_gca_test_set, write_play)

KILLS_CI, KILLS_FULL = 2, 5
LATENCY = 0.05
CONSTRUCT = "data_construction/main.py"
GCA = "gca_evaluation/main.py"


def kill_seed(default):
    """COSER_KILL_SEED varies the kill points and delays (for soak runs); CI uses the defaults."""
    extra = os.environ.get("COSER_KILL_SEED")
    return default if extra is None else f"{default}-{extra}"


def n_kills():
    return KILLS_FULL if os.environ.get("COSER_FULL_KILL") == "1" else KILLS_CI


def wire_key(model, messages, temperature, max_tokens):
    return json.dumps([model, messages, float(temperature), max_tokens], sort_keys=True)


def body_wire_key(body):
    return wire_key(body.get("model"), body.get("messages"), body.get("temperature", 0),
                    body.get("max_tokens", body.get("max_completion_tokens")))


def cached_wire_keys(cache_file):
    """Requests whose answers are stored in the cache file (read after the writer was killed)."""
    if not os.path.exists(cache_file):
        return set()
    conn = sqlite3.connect(cache_file, timeout=30)
    try:
        rows = conn.execute("SELECT request FROM responses").fetchall()
    finally:
        conn.close()
    keys = set()
    for (req,) in rows:
        r = json.loads(req)
        keys.add(wire_key(r["model"], r["messages"], r["temperature"], r["max_tokens"]))
    return keys


class Killer:
    """A responder wrapper that kills the running process once the request count reaches a point."""

    def __init__(self, inner, points, rng):
        self.inner, self.points, self.rng = inner, sorted(points), rng
        self.lock = threading.Lock()
        self.count = 0
        self.proc = None
        self.armed = False
        self.sent = []          # (run index, wire key) for every request received
        self.run = 0

    def start(self, proc, run):
        with self.lock:
            self.proc, self.run, self.armed = proc, run, True

    def __call__(self, body):
        fire = None
        with self.lock:
            self.count += 1
            self.sent.append((self.run, body_wire_key(body)))
            if self.armed and self.points and self.count >= self.points[0]:
                self.points.pop(0)
                self.armed = False
                fire = (self.proc, self.rng.uniform(0, LATENCY * 0.8))
        if fire:
            proc, delay = fire
            threading.Timer(delay, lambda: proc.poll() is None and proc.send_signal(signal.SIGKILL)).start()
        return self.inner(body)


def run_with_kills(cmd, env, cwd, fake_server, inner, points, seed, cache_file, timeout=120):
    """Run cmd until it exits 0, killing it at the given request counts; returns (killer, snapshots)."""
    killer = Killer(inner, points, random.Random(seed))
    fake_server.set_responder(killer)
    snapshots = []          # (run index killed, cached keys afterwards)
    for run in range(len(points) + 3):
        proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        killer.start(proc, run)
        out, err = proc.communicate(timeout=timeout)
        if proc.returncode == -signal.SIGKILL:
            # Requests of the dead process still being served must not count as the next run's.
            deadline = time.time() + 10
            while fake_server.in_flight and time.time() < deadline:
                time.sleep(0.01)
            snapshots.append((run, cached_wire_keys(cache_file)))
            continue
        assert proc.returncode == 0, f"run {run} exited {proc.returncode}:\n{err[-3000:]}"
        assert "Traceback" not in err
        return killer, snapshots
    pytest.fail(f"still not finished after {len(points) + 3} runs")


def check_no_finished_call_repeated(killer, snapshots, max_in_flight):
    by_run = {}
    for run, key in killer.sent:
        by_run.setdefault(run, []).append(key)
    for run, keys in by_run.items():
        dup = [k for k, n in Counter(keys).items() if n > 1]
        assert not dup, f"run {run} sent the same request twice"
    for killed_run, cached in snapshots:
        later = {k for run, k in killer.sent if run > killed_run}
        assert not cached & later, f"an answer cached before kill {killed_run} was requested again"
    repeats = len(killer.sent) - len({k for _, k in killer.sent})
    assert repeats <= max_in_flight * len(snapshots), f"{repeats} repeated requests for {len(snapshots)} kills"
    return repeats


def test_construction_killed_at_random_points_ends_identical(fake_server, llm_env, tmp_path):
    books = write_play(tmp_path / "books.jsonl")
    fake_server.latency = LATENCY
    script = os.path.join(REPO, CONSTRUCT)

    fake_server.set_responder(S.respond)
    clean_env = dict(llm_env, COSER_CACHE_DIR=str(tmp_path / "cache-clean"))
    cmd = [PYTHON, script, "--input", books, *CONSTRUCT_ARGS]
    r = subprocess.run(cmd + ["--output_dir", str(tmp_path / "clean")], env=clean_env, cwd=tmp_path,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    total = len(fake_server.chat_requests())
    assert total >= 10

    k = n_kills()
    rng = random.Random(kill_seed(20261128))
    points = sorted(rng.sample(range(1, total - 2), k))
    cache_dir = tmp_path / "cache-killed"
    # A generous timeout: on a loaded machine a reply slower than the suite's 5 s would be retried, and that
    # retry would look like a finished call sent twice.
    env = dict(llm_env, COSER_CACHE_DIR=str(cache_dir), COSER_TIMEOUT="60")
    killer, snapshots = run_with_kills(cmd + ["--output_dir", str(tmp_path / "killed")], env, tmp_path, fake_server,
                                       S.respond, points, seed=kill_seed(7),
                                       cache_file=str(cache_dir / "llm_cache.sqlite"))
    assert len(snapshots) >= k - 1, f"only {len(snapshots)} of {k} kills landed"
    check_no_finished_call_repeated(killer, snapshots, max_in_flight=4)
    assert_same_outputs(output_files(tmp_path / "killed", allow_temp=True), output_files(tmp_path / "clean"))


def run_two_concurrently(cmds, env, cwd, timeout=180):
    procs = [subprocess.Popen(c, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for c in cmds]
    results = [(p, *p.communicate(timeout=timeout)) for p in procs]
    for p, _, err in results:
        assert p.returncode == 0, err[-3000:]
        assert "Traceback" not in err
    return results


def test_two_construction_processes_share_one_cache(fake_server, llm_env, tmp_path):
    """Two runs of the same job started together on one cache file: both finish, identical files,
    and together they ask at most twice per distinct request (no corrupted or lost cache rows)."""
    books = write_play(tmp_path / "books.jsonl", n_lines=100)
    fake_server.latency = LATENCY
    fake_server.set_responder(S.respond)
    script = os.path.join(REPO, CONSTRUCT)
    cmd = [PYTHON, script, "--input", books, *CONSTRUCT_ARGS]
    env = dict(llm_env, COSER_CACHE_DIR=str(tmp_path / "shared-cache"))
    run_two_concurrently([cmd + ["--output_dir", str(tmp_path / "a")], cmd + ["--output_dir", str(tmp_path / "b")]],
                         env, tmp_path)
    assert_same_outputs(output_files(tmp_path / "a"), output_files(tmp_path / "b"))
    sent = Counter(body_wire_key(b) for b in fake_server.chat_requests())
    assert max(sent.values()) <= 2
    n_first = len(fake_server.chat_requests())
    # Everything both wrote is in the cache: a third run sends nothing.
    r = subprocess.run(cmd + ["--output_dir", str(tmp_path / "c")], env=env, cwd=tmp_path, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    assert len(fake_server.chat_requests()) == n_first
    assert_same_outputs(output_files(tmp_path / "c"), output_files(tmp_path / "a"))
    assert len(cached_wire_keys(str(tmp_path / "shared-cache" / "llm_cache.sqlite"))) == len(sent)


def test_gca_killed_at_random_points_ends_identical(fake_server, llm_env, tmp_path):
    test_file = write_gca_test_set(tmp_path / "gca_test.json")
    fake_server.latency = LATENCY
    cmd = [PYTHON, os.path.join(REPO, GCA), "--test_file", test_file, *GCA_ARGS]

    fake_server.set_responder(gca_respond)
    clean_env = dict(llm_env, COSER_CACHE_DIR=str(tmp_path / "cache-clean"))
    r = subprocess.run(cmd + ["--exp_dir", str(tmp_path / "clean")], env=clean_env, cwd=tmp_path,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    total = len(fake_server.chat_requests())
    assert total >= 50

    k = n_kills()
    rng = random.Random(kill_seed(1128))
    points = sorted(rng.sample(range(1, total - 2), k))
    cache_dir = tmp_path / "cache-killed"
    # A generous timeout: on a loaded machine a reply slower than the suite's 5 s would be retried, and that
    # retry would look like a finished call sent twice.
    env = dict(llm_env, COSER_CACHE_DIR=str(cache_dir), COSER_TIMEOUT="60")
    killer, snapshots = run_with_kills(cmd + ["--exp_dir", str(tmp_path / "killed")], env, tmp_path, fake_server,
                                       gca_respond, points, seed=kill_seed(11),
                                       cache_file=str(cache_dir / "llm_cache.sqlite"))
    assert len(snapshots) >= k - 1, f"only {len(snapshots)} of {k} kills landed"
    check_no_finished_call_repeated(killer, snapshots, max_in_flight=4)
    assert_same_outputs(output_files(tmp_path / "killed", allow_temp=True), output_files(tmp_path / "clean"))


def test_two_gca_processes_same_job_one_cache(fake_server, llm_env, tmp_path):
    """The same GCA job (same exp_dir, same cache file) started twice at once: both succeed and the
    files equal those of a single uninterrupted run."""
    test_file = write_gca_test_set(tmp_path / "gca_test.json")
    fake_server.latency = LATENCY
    fake_server.set_responder(gca_respond)
    cmd = [PYTHON, os.path.join(REPO, GCA), "--test_file", test_file, *GCA_ARGS]
    r = subprocess.run(cmd + ["--exp_dir", str(tmp_path / "clean")],
                       env=dict(llm_env, COSER_CACHE_DIR=str(tmp_path / "cache-clean")), cwd=tmp_path,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    n_single = len(fake_server.chat_requests())

    env = dict(llm_env, COSER_CACHE_DIR=str(tmp_path / "shared-cache"))
    job = cmd + ["--exp_dir", str(tmp_path / "both")]
    run_two_concurrently([job, job], env, tmp_path)
    assert_same_outputs(output_files(tmp_path / "both"), output_files(tmp_path / "clean"))
    sent = Counter(body_wire_key(b) for b in fake_server.chat_requests()[n_single:])
    assert max(sent.values()) <= 2
    assert len(cached_wire_keys(str(tmp_path / "shared-cache" / "llm_cache.sqlite"))) == len(sent)


def test_checkpoint_clear_during_another_writer(tmp_path, monkeypatch):
    """The interleaving two processes running the same GCA job hit: A finishes and clears its
    checkpoints exactly while B is writing one. B's write must still succeed."""
    from gca_evaluation.main import Checkpoints

    folder = str(tmp_path / "exp" / "evaluation" / ".partial" / "job")
    a, b = Checkpoints(folder), Checkpoints(folder)
    a.put(0, "fp", {"case": 0})
    real_chmod = os.chmod
    fired = []

    def chmod_after_clear(path, mode, *args, **kw):
        if not fired and ".tmp-" in os.path.basename(str(path)):
            fired.append(path)
            a.clear()           # process A is done: it removes the checkpoint folder
        return real_chmod(path, mode, *args, **kw)

    monkeypatch.setattr(os, "chmod", chmod_after_clear)
    b.put(1, "fp", {"case": 1})
    monkeypatch.setattr(os, "chmod", real_chmod)
    assert fired, "the write no longer goes through a temp file: rewrite this interleaving"
    assert b.get(1, "fp") == {"case": 1}

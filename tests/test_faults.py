"""Fault injection: runs against a server that fails ~20% of requests finish with the same files as
fault-free runs, and their run records count the faults and retries.

The injector decides per (request body, attempt) from a hash, so the schedule does not depend on
thread timing; the fault kind rotates so every kind appears. It never fails one body more than
MAX_CONSECUTIVE times in a row, which keeps every call inside the client's retry bound.
"""
import ast
import hashlib
import json
import os
import random
import re
import threading

from tests import construction_script as S
from tests.conftest import run_script
from tests.fakeserver import Fault

CONSTRUCT = "data_construction/main.py"
FAULT_RATE = 0.2
MAX_CONSECUTIVE = 3
HANG_SECONDS = 1.6          # past COSER_TIMEOUT=1 below
TRANSPORT_KINDS = ("429", "500", "hang", "truncated_body", "malformed", "drop")
KINDS = TRANSPORT_KINDS + ("empty",)

# ---- a synthetic play (no shared data needed): speaker lines the scripted extractor quotes ----
SPEAKER_KEYS = ["IAGO", "RODERIGO", "OTHELLO", "CASSIO", "DESDEMONA"]
WORDS = ("the night is long and every street in this city keeps a secret of its own while lanterns swing above "
         "the water and a careful friend may listen at the door for news of ships and letters and old debts").split()
PLAY_TITLE = "The Lantern Street"


def play_text(n_lines=150, seed=7):
    rng = random.Random(seed)
    out = []
    for i in range(n_lines):
        if i % 25 == 0:
            out.append(f"\nSCENE {i // 25 + 1}. A street in the old city, lanterns burning low.\n")
        who = SPEAKER_KEYS[rng.randrange(len(SPEAKER_KEYS))]
        words = " ".join(rng.choice(WORDS) for _ in range(rng.randint(9, 16)))
        out.append(f"{who}. {words.capitalize()}, I say it plainly for the {i}th time.")
    return "\n".join(out)


def write_play(path, n_lines=150):
    """A books JSONL with the synthetic play (about 5 chunks at --chunk_size 1024)."""
    with open(path, "w", encoding="utf-8") as f:
        f.write(json.dumps({"title": PLAY_TITLE, "author": "Test Suite", "content": play_text(n_lines)}) + "\n")
    return str(path)


CONSTRUCT_ARGS = ["--chunk_size", "1024", "--model", "gpt-4o-mini", "--num_workers", "4"]

# ---- a synthetic GCA test set and a scripted actor / environment / NSP / judge ----
GCA = "gca_evaluation/main.py"
GCA_DIMENSIONS = ["Storyline Consistency", "Anthropomorphism", "Character Fidelity", "Storyline Quality"]
CAST = ["Mara", "Tomas", "Old Bell"]


def gca_test_set(n=6):
    items = []
    for i in range(n):
        majors = CAST[:2] if i % 2 == 0 else CAST
        dialogues = [{"character": majors[j % len(majors)],
                      "message": f"[I must be careful.] (looks at the water) Line {j} of scene {i}, said plainly."}
                     for j in range(6)]
        items.append({
            "scenario": f"Scene {i}: a lantern-lit quay at night; the ferry is late and tempers are short.",
            "topic": "the missing ferry", "key_characters": [{"name": c, "motivation": f"{c} wants the truth."}
                                                            for c in majors],
            "dialogues": dialogues, "speaking_characters_w_env": majors + ["Environment"],
            "major_characters": majors,
            "plot": {"summary": f"Plot {i}: the quay waits for a ferry that does not come.", "i_p": i,
                     "key_characters": [{"name": c, "description": f"{c} of the quay."} for c in majors]},
            "character_profiles": {c: f"{c} is a regular of the lantern quay, stubborn and kind." for c in CAST},
            "book": "The Lantern Street" if i < n // 2 else "Quay Tales", "i_p": i, "i_c": 0,
            "tag": "id" if i < n // 2 else "ood"})
    return items


def write_gca_test_set(path, n=6):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(gca_test_set(n), f, indent=2)
    return str(path)


def _h(text):
    return int(hashlib.sha256(text.encode()).hexdigest()[:8], 16)


def gca_respond(body):
    """Deterministic replies: same request, same answer (no dependence on temperature or timing)."""
    msgs = body.get("messages") or []
    system = msgs[0]["content"] if msgs else ""
    convo = json.dumps(msgs[1:])
    if system.startswith("You are a literary critic"):
        dim = next(d for d in GCA_DIMENSIONS if f"Evaluate the simulated conversation on {d}" in system)
        n = _h(convo + dim) % 3
        flaws = [{"instance": f"flaw {k} in the simulated line", "type": "Character Consistency",
                  "severity": 1 + (_h(convo + dim + str(k)) % 5)} for k in range(n)]
        return json.dumps({dim: {"flaws": flaws}})
    if "predict who acts next" in system:
        if len(msgs) > 9:
            return "Reasoning: the scene has run its course.\nNext Speaker: <END CHAT>"
        names = re.search(r"from this list: (\[.*?\])", system)
        cands = ast.literal_eval(names.group(1)) if names else CAST
        return f"Reasoning: it is their turn.\nNext Speaker: {cands[_h(convo) % len(cands)]}"
    if "environmental feedback" in system:
        return f"The lanterns sway; a gull cries over the water ({_h(convo) % 97})."
    return f"[I keep my voice low.] (leans on the rail) I heard you, and I answer plainly, friend {_h(convo) % 991}."


GCA_ARGS = ["--actor_model", "fake-actor", "--judge_model", "fake-judge", "--env_model", "fake-env",
            "--nsp_model", "fake-nsp", "--num_workers", "4"]


def body_key(body):
    """What identifies a request on the wire (the Authorization header is never recorded)."""
    return json.dumps({k: v for k, v in body.items() if k != "_path"}, sort_keys=True)


def output_files(root, allow_temp=False):
    """{relative path: parsed JSON} of a run's outputs; run records (timings) and caches left out.

    allow_temp: a kill -9 during an atomic write leaves its hidden temp file behind (nothing
    can remove it at that moment); such files are then skipped instead of failing."""
    files = {}
    for folder, dirs, names in os.walk(root):
        dirs[:] = [d for d in dirs if d not in (".cache", "runs")]  # runs/: per-invocation records and logs
        for name in names:
            if name == ".lock":  # the output folder's lock (holds the PID of the run that held it)
                continue
            rel = os.path.relpath(os.path.join(folder, name), root)
            if name.startswith(".tmp-") and allow_temp:
                continue
            assert not name.startswith(".tmp-"), f"leftover temp file {rel}"
            if name.startswith("run_") and name.endswith(".json"):
                continue
            with open(os.path.join(folder, name), encoding="utf-8") as f:
                text = f.read()
            if name.endswith(".json"):
                files[rel] = json.loads(text)
            elif name.endswith(".jsonl"):
                files[rel] = [json.loads(line) for line in text.splitlines() if line.strip()]
            else:
                files[rel] = text
    return files


def first_difference(a, b, path=""):
    """Where two parsed output trees first differ (for readable failure messages), or None."""
    if type(a) is not type(b):
        return f"{path}: {type(a).__name__} != {type(b).__name__}"
    if isinstance(a, dict):
        for k in sorted(set(a) | set(b), key=str):
            if k not in a or k not in b:
                return f"{path}/{k}: only in {'second' if k not in a else 'first'}"
            d = first_difference(a[k], b[k], f"{path}/{k}")
            if d:
                return d
        return None
    if isinstance(a, list):
        for i, (x, y) in enumerate(zip(a, b)):
            d = first_difference(x, y, f"{path}[{i}]")
            if d:
                return d
        return None if len(a) == len(b) else f"{path}: length {len(a)} != {len(b)}"
    return None if a == b else f"{path}: {repr(a)[:300]} != {repr(b)[:300]}"


def assert_same_outputs(got, want):
    assert got == want, first_difference(got, want)


class FaultInjector:
    """Wraps a responder: ~rate of requests get a fault, decided by hash(seed, body, attempt)."""

    def __init__(self, inner, rate=FAULT_RATE, seed=0):
        self.inner, self.rate, self.seed = inner, rate, seed
        self.lock = threading.Lock()
        self.attempts = {}      # body key -> times seen
        self.streak = {}        # body key -> consecutive faults
        self.injected = []      # kinds in injection order
        self.requests = 0

    def __call__(self, body):
        key = body_key(body)
        with self.lock:
            self.requests += 1
            n = self.attempts[key] = self.attempts.get(key, 0) + 1
            h = hashlib.sha256(f"{self.seed}|{n}|{key}".encode()).digest()
            draw = int.from_bytes(h[:8], "big") / 2 ** 64
            kind = None
            if draw < self.rate and self.streak.get(key, 0) < MAX_CONSECUTIVE:
                kind = KINDS[len(self.injected) % len(KINDS)]
                self.injected.append(kind)
                self.streak[key] = self.streak.get(key, 0) + 1
            else:
                self.streak[key] = 0
        if kind is None:
            return self.inner(body)
        return {"429": Fault.http(429, retry_after=0.01), "500": Fault.http(500), "hang": Fault.hang(HANG_SECONDS),
                "truncated_body": Fault.truncated_body(), "malformed": Fault.malformed(), "drop": Fault.drop(),
                "empty": ""}[kind]

    def transport_faults(self):
        return sum(1 for k in self.injected if k in TRANSPORT_KINDS)


def fault_env(llm_env, cache_dir):
    return dict(llm_env, COSER_CACHE_DIR=str(cache_dir), COSER_TIMEOUT="1", COSER_RETRY_BASE="0.01")


def test_injector_is_deterministic_and_near_rate():
    """Same bodies, same schedule; about 20% of first attempts fault; every kind appears."""
    bodies = [{"model": "m", "messages": [{"role": "user", "content": f"q{i}"}]} for i in range(400)]
    a, b = FaultInjector(lambda body: "ok"), FaultInjector(lambda body: "ok")
    ra = [repr(a(x)) for x in bodies]
    rb = [repr(b(x)) for x in reversed(bodies)][::-1]
    assert [r == "'ok'" for r in ra] == [r == "'ok'" for r in rb]
    assert 0.14 < len(a.injected) / len(bodies) < 0.26
    assert set(a.injected) == set(KINDS)


def test_construction_under_faults_matches_fault_free_run(fake_server, llm_env, tmp_path):
    books = write_play(tmp_path / "books.jsonl")
    fake_server.latency = 0.01
    fake_server.set_responder(S.respond)
    clean = run_script([CONSTRUCT, "--input", books, "--output_dir", tmp_path / "clean", *CONSTRUCT_ARGS],
                       env=fault_env(llm_env, tmp_path / "cache-clean"), cwd=tmp_path, timeout=300)
    assert clean.returncode == 0, clean.stderr[-3000:]
    n_clean = len(fake_server.chat_requests())

    injector = FaultInjector(S.respond, seed=1)
    fake_server.set_responder(injector)
    faulty = run_script([CONSTRUCT, "--input", books, "--output_dir", tmp_path / "faulty", *CONSTRUCT_ARGS],
                        env=fault_env(llm_env, tmp_path / "cache-faulty"), cwd=tmp_path, timeout=300)
    assert faulty.returncode == 0, faulty.stderr[-3000:]
    assert "Traceback" not in faulty.stderr

    assert_same_outputs(output_files(tmp_path / "faulty"), output_files(tmp_path / "clean"))
    assert len(injector.injected) >= 0.1 * n_clean, injector.injected
    assert {"429", "500", "hang", "truncated_body"} <= set(injector.injected), injector.injected
    print("injected:", injector.injected)

    with open(tmp_path / "faulty" / "run_construction.json", encoding="utf-8") as f:
        totals = json.load(f)["usage"]["totals"]
    # Every transport fault was seen, counted and retried; empty replies are regenerated, not retried.
    assert totals["faults"] == injector.transport_faults()
    assert totals["retries"] == injector.transport_faults()
    with open(tmp_path / "clean" / "run_construction.json", encoding="utf-8") as f:
        assert json.load(f)["usage"]["totals"]["faults"] == 0
    retries_column = [line for line in faulty.stderr.splitlines() if line.startswith("total")]
    assert retries_column and str(injector.transport_faults()) in retries_column[-1].split()


def test_gca_under_faults_matches_fault_free_run(fake_server, llm_env, tmp_path):
    test_file = write_gca_test_set(tmp_path / "gca_test.json")
    fake_server.latency = 0.01
    fake_server.set_responder(gca_respond)
    args = [GCA, "--test_file", test_file, *GCA_ARGS]
    clean = run_script(args + ["--exp_dir", tmp_path / "clean"], env=fault_env(llm_env, tmp_path / "cache-clean"),
                       cwd=tmp_path, timeout=300)
    assert clean.returncode == 0, clean.stderr[-3000:]
    n_clean = len(fake_server.chat_requests())
    assert n_clean > 50

    injector = FaultInjector(gca_respond, seed=3)
    fake_server.set_responder(injector)
    faulty = run_script(args + ["--exp_dir", tmp_path / "faulty"], env=fault_env(llm_env, tmp_path / "cache-faulty"),
                        cwd=tmp_path, timeout=300)
    assert faulty.returncode == 0, faulty.stderr[-3000:]
    assert "Traceback" not in faulty.stderr
    print("injected:", injector.injected)

    clean_files, faulty_files = output_files(tmp_path / "clean"), output_files(tmp_path / "faulty")
    assert sorted(clean_files) == sorted(faulty_files)
    evaluations = [v for k, v in clean_files.items() if k.startswith("evaluation")]
    assert len(evaluations) == 1 and len(evaluations[0]["cases"]) == 6
    assert not [k for k, c in evaluations[0]["cases"].items() if c.get("failed")]
    assert_same_outputs(faulty_files, clean_files)
    assert len(injector.injected) >= 0.1 * n_clean
    assert set(TRANSPORT_KINDS) <= set(injector.injected), injector.injected
    with open(tmp_path / "faulty" / "run_gca_evaluation.json", encoding="utf-8") as f:
        totals = json.load(f)["usage"]["totals"]
    assert totals["faults"] == injector.transport_faults()
    assert totals["retries"] == injector.transport_faults()


def test_gca_judge_outage_then_rerun_recovers(fake_server, llm_env, tmp_path):
    """The judge endpoint is down for a whole run: the run fails loudly, and once it is back the same
    command (no --reevaluate) ends with the evaluation of a run that never saw the outage."""
    test_file = write_gca_test_set(tmp_path / "gca_test.json", n=3)
    args = [GCA, "--test_file", test_file, *GCA_ARGS]
    with open(tmp_path / "attempts.json", "w", encoding="utf-8") as f:
        json.dump({"max_attempts": 2}, f)
    env = fault_env(llm_env, tmp_path / "cache")

    def judge_down(body):
        return Fault.http(503) if body.get("model") == "fake-judge" else gca_respond(body)

    fake_server.set_responder(judge_down)
    down = run_script(args + ["--exp_dir", tmp_path / "exp", "--config", tmp_path / "attempts.json"], env=env,
                      cwd=tmp_path, timeout=300)
    assert down.returncode != 0 and "Traceback" not in down.stderr, down.stderr[-3000:]
    fake_server.set_responder(gca_respond)
    again = run_script(args + ["--exp_dir", tmp_path / "exp"], env=env, cwd=tmp_path, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    clean = run_script(args + ["--exp_dir", tmp_path / "clean"], env=fault_env(llm_env, tmp_path / "cache2"),
                       cwd=tmp_path, timeout=300)
    assert clean.returncode == 0, clean.stderr[-3000:]
    assert_same_outputs(output_files(tmp_path / "exp"), output_files(tmp_path / "clean"))

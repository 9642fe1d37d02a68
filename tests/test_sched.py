"""Critical-path scheduling, over real HTTP to the fake server: when work starts, what overlaps, and
how an endpoint's concurrency reacts to 429s. (How fast it all is: bench/, not here.)"""
import json
import re
import threading
import time

from tests.conftest import run_script
from tests.fakeserver import Fault
from tests.test_faults import CONSTRUCT, GCA, GCA_ARGS, gca_respond, play_text, write_gca_test_set

SCENE = re.compile(r"Scene (\d+):")


class Timeline:
    """Wraps a responder: (arrival, departure, request kind, scene or book) of every request."""

    def __init__(self, respond, classify, latency=0.0):
        self.respond, self.classify, self.latency = respond, classify, latency
        self.rows, self.lock = [], threading.Lock()
        self.live = {}

    def __call__(self, body):
        label = self.classify(body)
        t0 = time.monotonic()
        with self.lock:
            self.live[label[0]] = self.live.get(label[0], 0) + 1
            peak = self.live[label[0]]
        time.sleep(self.latency(label) if callable(self.latency) else self.latency)
        try:
            return self.respond(body)
        finally:
            with self.lock:
                self.live[label[0]] -= 1
                self.rows.append((t0, time.monotonic(), *label, peak))

    def of(self, kind, tag=None):
        return [r for r in self.rows if r[2] == kind and (tag is None or r[3] == tag)]


def gca_kind(body):
    system = body["messages"][0]["content"]
    m = SCENE.search(system)
    scene = int(m.group(1)) if m else -1
    return ("judge" if system.startswith("You are a literary critic") else "sim", scene)


def test_judging_starts_while_other_samples_still_simulate(fake_server, llm_env, tmp_path):
    # Scene 0 ends after 5 rounds, the others run to 20: scene 0's judge calls must go out while the
    # others are still being simulated, and its four dimensions together.
    def respond(body):
        system = body["messages"][0]["content"]
        if "predict who acts next" in system:
            rounds = (len(body["messages"]) - 1) // 2
            short = "Scene 0:" in system
            if (short and rounds >= 5) or rounds >= 20:
                return "Next Speaker: <END CHAT>"
            return gca_respond(dict(body, messages=body["messages"][:9]))   # never its own <END CHAT>
        return gca_respond(body)

    # judge calls take long enough that "in flight together" does not hinge on thread timing
    timeline = Timeline(respond, gca_kind, latency=lambda label: 0.5 if label[0] == "judge" else 0.02)
    fake_server.set_responder(timeline)
    test_file = write_gca_test_set(tmp_path / "t.json", n=4)
    args = [GCA, "--test_file", test_file, *GCA_ARGS, "--exp_dir", tmp_path / "exp"]
    args[args.index("--num_workers") + 1] = "8"   # room for 3 simulation chains and 4 judge calls at once
    r = run_script(args, env=llm_env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    judge0 = timeline.of("judge", 0)
    assert len(judge0) == 4
    first_judge = min(row[0] for row in judge0)
    last_sim_others = max(row[1] for row in timeline.rows if row[2] == "sim" and row[3] != 0)
    assert first_judge < last_sim_others - 0.5, "scene 0 was judged only after the others' simulations"
    # the four dimensions were in flight at once
    starts, ends = [row[0] for row in judge0], [row[1] for row in judge0]
    assert max(starts) < min(ends), "scene 0's dimensions were judged one after another"


def test_repeats_run_concurrently(fake_server, llm_env, tmp_path):
    # One sample, three repeats: within one repeat the simulation is a chain (one call at a time), so
    # three simulation calls in flight at once means the repeats ran side by side.
    timeline = Timeline(gca_respond, gca_kind, latency=0.05)
    fake_server.set_responder(timeline)
    test_file = write_gca_test_set(tmp_path / "t.json", n=1)
    args = [GCA, "--test_file", test_file, *GCA_ARGS, "--exp_dir", tmp_path / "exp", "--repeats", "3"]
    args[args.index("--num_workers") + 1] = "3"
    r = run_script(args, env=llm_env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert max(row[4] for row in timeline.of("sim")) == 3
    sims = sorted((tmp_path / "exp" / "simulation").glob("*.json"))
    assert len(sims) == 3 and all(len(json.loads(p.read_text())) == 1 for p in sims)


def test_429_halves_the_endpoint_limit_and_it_recovers(fake_server, make_llm):
    # The server takes 4 requests at once and answers 429 beyond that; then it takes any number.
    capacity, delay = [4], [0.01]

    def respond(body):
        if fake_server.in_flight > capacity[0]:
            return Fault.http(429)
        time.sleep(delay[0])
        return "ok"

    fake_server.set_responder(respond)
    llm = make_llm(max_in_flight=16, use_cache=False, max_attempts=20)
    limit = llm._endpoint_slots(llm.route("gpt-4o"))

    def burst(n, tag):
        todo, lock = iter(range(n)), threading.Lock()

        def work():
            while True:
                with lock:
                    k = next(todo, None)
                if k is None:
                    return
                assert llm.chat("gpt-4o", f"{tag} {k}") == "ok"
        threads = [threading.Thread(target=work) for _ in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    burst(100, "warm")
    assert limit.cuts >= 1 and limit.lowest <= 4
    fake_server.max_in_flight = 0
    burst(200, "adapted")
    # Adapted: far fewer than the 16 threads' requests reach the server at once.
    assert fake_server.max_in_flight <= 8, fake_server.max_in_flight
    capacity[0] = 10**6
    burst(400, "recover")   # additive increase: about 1 + 2 + ... + 15 successes from a limit of 1
    assert limit.limit == 16
    fake_server.max_in_flight, delay[0] = 0, 0.2
    burst(64, "recovered")
    assert fake_server.max_in_flight == 16


def book_of(body):
    text = body["messages"][-1]["content"]
    kind = "extract" if "==Chunk of Book Content==" in text else "enhance" if "===Input Conversation" in text \
        else "other"
    return (kind, "A" if "Book A" in text else "B" if "Book B" in text else "?")


def test_construction_runs_books_in_parallel_and_enhances_during_extraction(fake_server, llm_env, tmp_path):
    from tests import construction_script as S

    timeline = Timeline(S.respond, book_of, latency=0.05)
    fake_server.set_responder(timeline)
    books = tmp_path / "books.jsonl"
    books.write_text("".join(json.dumps({"title": t, "author": "Test Suite", "content": play_text(300, seed=s)}) + "\n"
                             for t, s in (("Book A", 1), ("Book B", 2))))
    r = run_script([CONSTRUCT, "--input", books, "--output_dir", tmp_path / "out", "--chunk_size", "1024",
                    "--model", "gpt-4o-mini", "--num_workers", "4"], env=llm_env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    a, b = timeline.of("extract", "A"), timeline.of("extract", "B")
    assert len(a) >= 4 and len(b) >= 4
    # both books' extraction chains ran at the same time
    assert min(row[0] for row in b) < max(row[0] for row in a) and min(row[0] for row in a) < max(row[0] for row in b)
    # a book's first conversations were enhanced while its later chunks were still being extracted
    for book, chain in (("A", a), ("B", b)):
        enhance = timeline.of("enhance", book)
        assert enhance and min(row[0] for row in enhance) < max(row[0] for row in chain), book
    for title in ("Book A", "Book B"):
        assert (tmp_path / "out" / "final" / f"{title}.json").exists()

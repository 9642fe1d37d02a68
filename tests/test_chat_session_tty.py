"""chat.py driven in a real terminal (pty): --list/--search, the session commands, Ctrl-C mid-stream, --resume,
cut streams. LLM replies come over real HTTP from the fake server."""
import json
import os
import threading
import time

from tests.conftest import shared_path
from tests.fakeserver import Fault, last_user_text
from tests.test_chat_cli import Terminal, tty_env  # noqa: F401  (tty_env is a fixture)

SLOW = 60  # generous: two cores shared by several test runs


class Counter:
    """Replies 'Reply N to <last line>' with N counting requests: a repeated request gets a new reply."""

    def __init__(self):
        self.n = 0
        self.lock = threading.Lock()

    def __call__(self, body):
        with self.lock:
            self.n += 1
            n = self.n
        said = last_user_text(body).split("\n")[-1]
        return f"Iago: [Careful.] Reply {n} to {said}"


def _close(term):
    if term.proc.poll() is None:
        term.proc.kill()


def test_list_and_search_in_a_terminal(tty_env, tmp_path):
    final = shared_path("final")
    term = Terminal(["--list", "--book_data", final], tty_env)
    try:
        screen = term.expect("chat with one: python chat.py", timeout=SLOW)
        assert term.wait(SLOW) == 0
    finally:
        _close(term)
    assert "Othello  (" in term.seen and "utterances" in term.seen and "conversations" in term.seen
    # best first: within a book the character with the most utterances leads
    hp = screen[screen.index("Harry Potter and the Order of the Phoenix"):]
    assert hp.split("\n")[1].split()[:2] == ["Harry", "Potter"]
    # With no data/final here, the default --book_data finds the published files beside the working folder. Run
    # from a folder laid out like a checkout, so a data/final that `make demo` left in the repo is not found first.
    work = tmp_path / "work"
    work.mkdir()
    (tmp_path / "shared" / "coser-data").mkdir(parents=True)
    os.symlink(os.path.abspath(final), tmp_path / "shared" / "coser-data" / "final")
    term = Terminal(["--list", "--search", "iag"], tty_env, cwd=str(work))
    try:
        term.expect("chat with one: python chat.py", timeout=SLOW)
        assert term.wait(SLOW) == 0
    finally:
        _close(term)
    lines = [x for x in term.seen.splitlines() if x.strip()]
    assert lines[0].startswith("Othello  (1 character)") and "36 utterances" in lines[1]
    assert "9 conversations" in lines[1]


def test_session_commands_ctrl_c_mid_stream_save_and_resume(fake_server, tty_env, tmp_path):
    replies = Counter()
    fake_server.set_responder(replies)
    out = tmp_path / "chat"
    term = Terminal(["--model", "gpt-4o-mini", "--book_data", shared_path("final"), "--character", "Iago",
                     "--user_role", "Roderigo", "--show_profile", "--out_dir", out], tty_env)
    try:
        term.expect("== Iago (Othello) ==", timeout=SLOW)
        term.expect("== Scene ==")
        term.expect("Roderigo: ", timeout=SLOW)
        term.send("Who goes there?\n")
        term.expect("Reply 1 to Roderigo: Who goes there?", timeout=SLOW)
        term.expect("Roderigo: ")
        term.send("/retry\n")  # a new request (next nth_generation), not the cached reply
        term.expect("Reply 2 to Roderigo: Who goes there?", timeout=SLOW)
        term.expect("(reply 2 of 2; /alt N picks another)")
        term.expect("Roderigo: ")
        term.send("/alt 1\n")
        term.expect("Reply 1 to Roderigo: Who goes there?", timeout=SLOW)
        term.expect("Roderigo: ")
        term.send("/edit It is I, Roderigo.\n")
        term.expect("Reply 3 to Roderigo: It is I, Roderigo.", timeout=SLOW)
        term.expect("Roderigo: ")
        term.send("A second line.\n")
        term.expect("Reply 4 to Roderigo: A second line.", timeout=SLOW)
        term.expect("Roderigo: ")
        term.send("/undo\n")
        term.expect("(undone: A second line.)", timeout=SLOW)
        term.expect("Roderigo: ")
        term.send("/thoughts off\n")
        term.expect("(thoughts hidden", timeout=SLOW)
        term.expect("Roderigo: ")
        term.send("/scene\n")
        term.expect("Venice", timeout=SLOW)
        term.expect("Roderigo: ")
        term.send("/user Brabantio\n")
        term.expect("(you speak as Brabantio)", timeout=SLOW)
        term.expect("Brabantio: ")
        # a reply that streams slowly: Ctrl-C once its first half is on screen
        fake_server.queue(Fault.slow_stream("Iago: I will tell thee all of it, slowly and at length", 30))
        term.send("What news?\n")
        term.expect("I will tell thee", timeout=SLOW)
        started = time.monotonic()
        term.send("\x03")
        term.expect("[stopped]", timeout=SLOW)
        assert time.monotonic() - started < 25
        term.expect("(reply stopped; kept as it is")
        term.expect("Brabantio: ")
        term.send("/save copy\n")
        term.expect(f"saved: {out / 'copy.json'}", timeout=SLOW)
        term.expect("Brabantio: ")
        term.send("/retry\n")
        term.expect("Reply 5 to Brabantio: What news?", timeout=SLOW)
        term.expect("Brabantio: ")
        term.send("/save ../outside.json\n")
        term.expect("outside the transcript folder", timeout=SLOW)
        term.expect("Brabantio: ")
        term.send("\x04")
        term.expect("transcript:", timeout=SLOW)
        assert term.wait(SLOW) == 0
    finally:
        _close(term)
    assert "Traceback" not in term.seen and "[Careful.]" not in term.seen.split("/thoughts off")[1]
    assert not (tmp_path / "outside.json").exists()
    reqs = fake_server.chat_requests()
    assert len(reqs) == 6 and all(r["stream"] for r in reqs)
    assert reqs[1]["messages"] == reqs[0]["messages"]  # /retry: same turn, asked again
    assert reqs[2]["messages"][-1]["content"].endswith("\n\nRoderigo: It is I, Roderigo.")  # GCA start merged
    assert reqs[4]["messages"][-2]["content"].startswith("Iago: [Careful.] Reply 3")  # the undone turn is gone
    assert reqs[4]["messages"][-1]["content"] == "Brabantio: What news?"
    files = [f for f in out.glob("*_Iago.json")]
    assert len(files) == 1  # /save made a copy; the transcript stayed where it was
    t = json.loads(files[0].read_text(encoding="utf-8"))
    assert [x["user"] for x in t["turns"]] == ["It is I, Roderigo.", "What news?"]
    assert t["turns"][0]["reply"].endswith("Reply 3 to Roderigo: It is I, Roderigo.")  # thoughts kept in history
    last = t["turns"][1]
    assert [r["status"] for r in last["replies"]] == ["stopped", "stop"] and last["chosen"] == 1
    assert last["replies"][0]["text"].startswith("Iago: I will tell thee") and "length" not in last["replies"][0]["text"]
    assert [r["nth"] for r in last["replies"]] == [0, 1]
    assert [d["user"] for d in t["dropped"]] == ["Who goes there?", "A second line."]  # edited, undone
    assert [len(d["replies"]) for d in t["dropped"]] == [2, 1]
    assert [e["event"] for e in t["events"]] == ["retry", "alt", "edit", "undo", "user", "retry"]
    copy = json.loads((out / "copy.json").read_text(encoding="utf-8"))
    assert len(copy["turns"][1]["replies"]) == 1  # the copy is the state at /save time

    # --resume: same persona and settings, the history goes out again, a new transcript records where from
    fake_server.reset()
    term = Terminal(["--resume", files[0], "--out_dir", out], tty_env)
    try:
        term.expect("(resumed: 2 turns", timeout=SLOW)
        term.expect("Brabantio: ", timeout=SLOW)
        term.send("And then?\n")
        term.expect("to Brabantio: And then?", timeout=SLOW)
        term.expect("Brabantio: ")
        term.send("/exit\n")
        term.expect("transcript:", timeout=SLOW)
        assert term.wait(SLOW) == 0
    finally:
        _close(term)
    req = fake_server.chat_requests()[0]
    assert req["model"] == "gpt-4o-mini" and req["temperature"] == 0.7
    assert req["messages"][:-1] == t["messages"] and req["messages"][-1]["content"] == "Brabantio: And then?"
    newer = [f for f in out.glob("*_Iago*.json") if f != files[0]]
    assert len(newer) == 1
    t2 = json.loads(newer[0].read_text(encoding="utf-8"))
    assert t2["resumed_from"] == [str(files[0])] and len(t2["turns"]) == 3 and t2["dropped"] == t["dropped"]


def test_cut_stream_is_retried_and_length_is_reported(fake_server, tty_env, tmp_path):
    fake_server.queue(Fault.cut_stream("Iago: I was about to"), Fault.length("Iago: Honest Iago, at your"))
    fake_server.set_responder(lambda body: "Iago: Honest Iago, at your service.")
    term = Terminal(["--model", "gpt-4o-mini", "--system_prompt", "You are Iago.", "--name", "Iago",
                     "--out_dir", tmp_path], tty_env)
    try:
        term.expect("You: ", timeout=SLOW)
        term.send("Who are you?\n")
        term.expect("(the stream broke off before its end; asking again)", timeout=SLOW)
        term.expect("(the reply was cut at the length limit, --max_new_tokens 128)", timeout=SLOW)
        term.expect("You: ")
        term.send("/retry\n")
        term.expect("Honest Iago, at your service.", timeout=SLOW)
        term.expect("You: ")
        term.send("/exit\n")
        term.expect("transcript:", timeout=SLOW)
        assert term.wait(SLOW) == 0
    finally:
        _close(term)
    t = json.loads(next(tmp_path.glob("*_Iago.json")).read_text(encoding="utf-8"))
    replies = t["turns"][0]["replies"]
    assert [(r["text"], r["status"]) for r in replies] == [("Iago: Honest Iago, at your", "length"),
                                                           ("Iago: Honest Iago, at your service.", "stop")]
    assert len(fake_server.chat_requests()) == 3  # cut, retried (cut at length), /retry


def test_cut_stream_is_never_cached(fake_server, make_llm):
    llm = make_llm()
    fake_server.queue(Fault.cut_stream("Half a"))
    fake_server.set_responder(lambda body: "A whole reply.")
    seen = []
    msgs = [{"role": "user", "content": "Hi"}]
    assert llm.chat("gpt-4o-mini", msgs, on_token=seen.append) == "A whole reply."
    assert len(fake_server.chat_requests()) == 2 and "".join(seen).startswith("Half a")
    fake_server.queue(Fault.cut_stream("Half a"))  # would be served if the cut reply had been kept
    assert llm.chat("gpt-4o-mini", msgs, on_token=seen.append) == "A whole reply."
    assert len(fake_server.chat_requests()) == 2  # the cache holds the whole reply
    fake_server.set_responder(lambda body: Fault.cut_stream("never ends"))
    import pytest

    from coser.errors import LLMUnavailable
    with pytest.raises(LLMUnavailable, match="stream closed before its end"):
        llm.chat("gpt-4o-mini", [{"role": "user", "content": "Other"}], on_token=seen.append)
    assert not llm.was_cached("gpt-4o-mini", [{"role": "user", "content": "Other"}])

"""chat.py as a user runs it: piped stdin, a real terminal (pty), cards, errors, and the offline model."""
import fcntl
import json
import os
import pty
import select
import signal
import subprocess
import sys
import termios
import time

import pytest

from tests.conftest import REPO, run_script, shared_path
from tests.fakeserver import last_user_text

CHAT = "chat.py"


def iago_responder(body):
    asked = last_user_text(body).split("\n")[-1].split(": ")[-1]
    return f"Iago: [He must not know me.] (steps from the shadow) You asked: {asked}"


def test_help():
    r = run_script([CHAT, "--help"])
    assert r.returncode == 0 and "--book_data" in r.stdout and "--export_card" in r.stdout


def test_piped_book_chat_prints_replies_and_saves_transcript(fake_server, llm_env, tmp_path):
    fake_server.set_responder(iago_responder)
    out_dir = tmp_path / "chat"
    r = run_script([CHAT, "--model", "gpt-4o-mini", "--book_data", shared_path("final"), "--character", "Iago",
                    "--user_role", "Roderigo", "--hide_thoughts", "--out_dir", out_dir],
                   env=llm_env, input="Who goes there?\n\nIt is I, Roderigo.\n", timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["Iago: (steps from the shadow) You asked: Who goes there?",
                                     "Iago: (steps from the shadow) You asked: It is I, Roderigo."]
    reqs = fake_server.chat_requests()
    assert len(reqs) == 2 and all(not q.get("stream") and q["temperature"] == 0.7 and q["max_tokens"] == 128 for q in reqs)
    assert reqs[1]["messages"][-1] == {"role": "user", "content": "Roderigo: It is I, Roderigo."}
    files = list(out_dir.glob("*_Iago.json"))
    assert len(files) == 1 and f"transcript: {files[0]}" in r.stderr
    t = json.loads(files[0].read_text(encoding="utf-8"))
    assert t["model"] == "gpt-4o-mini" and t["persona"]["book"] == "Othello"
    assert t["settings"]["hide_thoughts"] is True and t["settings"]["user_role"] == "Roderigo"
    assert t["config"]["api_key"] == "(set)" and "sk-test" not in files[0].read_text(encoding="utf-8")
    assert "[He must not know me.]" in t["turns"][0]["reply"]  # stored raw; only the display hides thoughts
    assert t["messages"][0]["content"] == t["system_prompt"] and len(t["messages"]) == 5


def test_piped_local_family_reply_is_repaired(fake_server, llm_env, tmp_path):
    looping = "I know. " + "She is the one, the one I love. " * 8
    fake_server.set_responder(lambda body: looping)
    r = run_script([CHAT, "--model", "my-finetune", "--system_prompt", "You are X.", "--out_dir", tmp_path],
                   env=llm_env, input="Hi\n", timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("She is the one") < 8
    t = json.loads(next(tmp_path.glob("*.json")).read_text(encoding="utf-8"))
    assert t["turns"][0]["raw"] == looping and t["messages"][-1]["content"] == t["turns"][0]["reply"]


def test_piped_no_args_first_line_is_the_system_prompt(fake_server, llm_env, tmp_path):
    fake_server.set_responder(lambda body: "Halt!")
    r = run_script([CHAT, "--model", "gpt-4o-mini", "--max_turns", "1", "--out_dir", tmp_path],
                   env=llm_env, input="You are a castle guard.\nHello\nNot read\n", timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout == "Character: Halt!\n"
    assert fake_server.chat_requests()[0]["messages"] == [{"role": "system", "content": "You are a castle guard."},
                                                         {"role": "user", "content": "Hello"}]


def test_system_file_and_test_file_personas(fake_server, llm_env, tmp_path):
    fake_server.set_responder(lambda body: "Fine.")
    sysfile = tmp_path / "me.txt"
    sysfile.write_text("You are Captain Vell of the Salt Lamp.\n", encoding="utf-8")
    r = run_script([CHAT, "--model", "gpt-4o-mini", "--system_file", sysfile, "--name", "Vell", "--out_dir", tmp_path],
                   env=llm_env, input="Report.\n", timeout=60)
    assert r.returncode == 0 and r.stdout == "Vell: Fine.\n", r.stderr
    assert fake_server.chat_requests()[0]["messages"][0]["content"] == "You are Captain Vell of the Salt Lamp.\n"
    r = run_script([CHAT, "--model", "gpt-4o-mini", "--test_file", shared_path("test", "example_test_set.json"),
                    "--sample", "2", "--character", "Othello", "--out_dir", tmp_path], env=llm_env, input="Hm?\n",
                   timeout=60)
    assert r.returncode == 0 and r.stdout == "Othello: Fine.\n", r.stderr
    assert fake_server.chat_requests()[1]["messages"][0]["content"].startswith(
        "You are playing Othello, a character from Othello.")


def test_export_card_then_play_it(fake_server, llm_env, tmp_path):
    card = tmp_path / "iago.card.json"
    r = run_script([CHAT, "--book_data", shared_path("final"), "--character", "Iago", "--export_card", card],
                   env=llm_env, timeout=60)
    assert r.returncode == 0, r.stderr
    data = json.loads(card.read_text(encoding="utf-8"))
    assert data["spec"] == "chara_card_v2" and data["data"]["name"] == "Iago" and data["data"]["mes_example"]
    assert not fake_server.requests  # exporting makes no LLM call
    fake_server.set_responder(lambda body: "Iago: Honest Iago, at your service.")
    r = run_script([CHAT, "--model", "gpt-4o-mini", "--card", card, "--out_dir", tmp_path], env=llm_env,
                   input="Who are you?\n", timeout=60)
    assert r.returncode == 0, r.stderr
    first, reply = r.stdout.splitlines()
    assert first == "Iago: " + data["data"]["first_mes"] and reply == "Iago: Honest Iago, at your service."
    msgs = fake_server.chat_requests()[0]["messages"]
    assert msgs[2] == {"role": "assistant", "content": data["data"]["first_mes"]}


@pytest.mark.parametrize("argv,expect", [
    (["--book_data", "FINAL", "--character", "Iagoo"], "error: character 'Iagoo' not found in"),
    (["--book_data", "FINAL", "--character", "Harry Potter"], "pick one with --book"),
    (["--book_data", "no/such/dir", "--character", "Iago"], "error: no/such/dir: --book_data not found"),
    (["--system_file", "no/such/prompt.txt"], "error: no/such/prompt.txt: --system_file not found"),
    (["--card", "no/such/card.json"], "error: no/such/card.json: --card file not found"),
    (["--book_data", "FINAL"], "error: --book_data needs --character NAME"),
    (["--search", "Iago"], "error: --search goes with --list"),
    (["--resume", "RESUME", "--character", "Iago"], "error: --resume continues a saved chat"),
    (["--system_prompt", "x", "--card", "y"], "error: choose one persona source"),
    (["--test_file", "TEST", "--sample", "7", "--character", "Iago"], "--sample 7 out of range (0..2)"),
])
def test_errors_are_one_line(argv, expect, llm_env):
    argv = [a.replace("FINAL", shared_path("final")).replace("TEST", shared_path("test", "example_test_set.json"))
            .replace("RESUME", "no/such/transcript.json") for a in argv]
    r = run_script([CHAT, "--model", "gpt-4o-mini", *argv], env=llm_env, input="", timeout=60)
    assert r.returncode == 2 and expect in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    if "Iagoo" in argv:
        assert "; close matches: Iago" in r.stderr


def test_remote_model_without_key_fails_before_reading(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")}
    env["COSER_CACHE_DIR"] = str(tmp_path)
    (tmp_path / "c.json").write_text(json.dumps({"api_key": "YOUR_API_KEY"}))
    r = run_script([CHAT, "--model", "gpt-4o", "--system_prompt", "You are X.", "--config", tmp_path / "c.json"],
                   env=env, input="Hi\n", timeout=60)
    assert r.returncode == 2 and "API key" in r.stderr and "OPENAI_API_KEY" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_endpoint_failure_in_piped_mode_is_one_line(fake_server, llm_env, tmp_path):
    from tests.fakeserver import Fault

    fake_server.set_responder(lambda body: Fault.http(404))
    r = run_script([CHAT, "--model", "gpt-nope", "--system_prompt", "You are X.", "--out_dir", tmp_path],
                   env=llm_env, input="Hi\n", timeout=60)
    assert r.returncode == 2 and "not found (HTTP 404)" in r.stderr and "Traceback" not in r.stderr


# ---- a real terminal --------------------------------------------------------------------------
def _controlling_tty():
    """New session with the pty as its controlling terminal, so ^C becomes SIGINT as in a real shell."""
    os.setsid()
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)
    # Like a shell's background job (CI may run the suite as one): chat.py must still honour Ctrl-C.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class Terminal:
    """chat.py on a pseudo-terminal: stdin/stdout/stderr are a tty, as for a person typing."""

    def __init__(self, argv, env, cwd=REPO):
        self.master, slave = pty.openpty()
        self.proc = subprocess.Popen([sys.executable, os.path.join(REPO, CHAT), *map(str, argv)], cwd=cwd, env=env,
                                     stdin=slave, stdout=slave, stderr=slave, close_fds=True,
                                     preexec_fn=_controlling_tty)
        os.close(slave)
        self.seen = ""
        self.pos = 0  # each expect() looks past the previous match, like pexpect

    def expect(self, text, timeout=30.0):
        deadline = time.monotonic() + timeout
        while text not in self.seen[self.pos:]:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"timed out waiting for {text!r}; screen so far:\n{self.seen}")
            ready, _, _ = select.select([self.master], [], [], left)
            if ready:
                try:
                    chunk = os.read(self.master, 4096)
                except OSError:  # the child closed the terminal
                    chunk = b""
                if not chunk:
                    raise AssertionError(f"terminal closed before {text!r}; screen:\n{self.seen}")
                self.seen += chunk.decode("utf-8", "replace")
        start = self.seen.index(text, self.pos)
        self.pos = start + len(text)
        return self.seen[:self.pos]

    def send(self, text):
        os.write(self.master, text.encode())

    def interrupt_at_prompt(self):
        """Ctrl-C as a person presses it at the prompt: once the child waits for input.

        CPython only looks at a SIGINT once its blocking read is interrupted; one that lands in the
        instant between printing the prompt and blocking (a loaded machine widens it) waits for the
        next key. A person never types that fast; a test does, so it presses Ctrl-C again until the
        chat reacts, as a person would.
        """
        for _ in range(10):
            time.sleep(0.3)
            self.send("\x03")
            ready, _, _ = select.select([self.master], [], [], 2.0)
            if ready:
                return
        raise AssertionError(f"no reaction to Ctrl-C; screen:\n{self.seen}")

    def wait(self, timeout=30):
        try:
            return self.proc.wait(timeout)
        finally:
            os.close(self.master)


@pytest.fixture
def tty_env(llm_env):
    env = dict(llm_env)
    env["TERM"] = "dumb"
    return env


def test_interactive_session_streams_and_saves(fake_server, tty_env, tmp_path):
    fake_server.set_responder(iago_responder)
    fake_server.latency = 0.0
    saved = tmp_path / "chat" / "kept.json"
    term = Terminal(["--model", "gpt-4o-mini", "--book_data", shared_path("final"), "--character", "Iago",
                     "--hide_thoughts", "--out_dir", tmp_path / "chat"], tty_env)
    try:
        term.expect("Chatting with Iago from Othello")
        term.expect("You: ")
        term.send("Who goes there?\n")
        screen = term.expect("You asked: Who goes there?")
        assert "Iago: (steps from the shadow) You asked" in screen and "[He must not know me.]" not in screen
        term.expect("You: ")
        term.send("/save kept\n")
        term.expect(f"saved: {saved}")
        term.send("/exit\n")
        term.expect("transcript:")
        assert term.wait() == 0
    finally:
        if term.proc.poll() is None:
            term.proc.kill()
    req = fake_server.chat_requests()[0]
    assert req["stream"] is True  # the reply arrived as a stream of deltas
    t = json.loads(saved.read_text(encoding="utf-8"))
    assert t["turns"][0]["user"] == "Who goes there?" and t["turns"][0]["reply"].startswith("Iago: [He must")
    # /save wrote a copy; the final transcript is a file of its own
    assert len(list((tmp_path / "chat").glob("*_Iago.json"))) == 1


def test_interactive_ctrl_c_ends_cleanly(fake_server, tty_env, tmp_path):
    fake_server.set_responder(lambda body: "Stand and unfold yourself.")
    term = Terminal(["--model", "gpt-4o-mini", "--system_prompt", "You are Francisco, a sentry.", "--name",
                     "Francisco", "--out_dir", tmp_path], tty_env)
    try:
        term.expect("You: ")
        term.send("Who's there?\n")
        term.expect("Stand and unfold yourself.")
        term.expect("You: ")
        term.interrupt_at_prompt()
        term.expect("transcript:")
        assert term.wait() == 0
    finally:
        if term.proc.poll() is None:
            term.proc.kill()
    assert "Traceback" not in term.seen
    files = list(tmp_path.glob("*_Francisco.json"))
    assert len(files) == 1 and json.loads(files[0].read_text(encoding="utf-8"))["turns"][0]["reply"].startswith("Stand")


# ---- offline ----------------------------------------------------------------------------------
def test_offline_local_model_answers(tmp_path):
    """The issue's acceptance command, with a short reply so it stays quick on CI."""
    pytest.importorskip("llama_cpp", reason="llama-cpp-python not installed (run `make venv`)")
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")}
    env["COSER_CACHE_DIR"] = str(tmp_path / ".cache")
    r = run_script([CHAT, "--model", "local", "--book_data", shared_path("final"), "--character", "Iago",
                    "--max_new_tokens", "12", "--out_dir", tmp_path / "chat"], env=env, input="Who goes there?\n",
                   timeout=600)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("Iago: ") and len(r.stdout.strip()) > len("Iago:")
    t = json.loads(next((tmp_path / "chat").glob("*_Iago.json")).read_text(encoding="utf-8"))
    assert t["model"] == "local" and t["turns"][0]["reply"].strip()


def test_interactive_ctrl_c_during_a_reply_returns_to_the_prompt_and_ctrl_d_ends(fake_server, tty_env, tmp_path):
    from tests.fakeserver import Fault

    fake_server.queue("Stand and unfold yourself.", Fault.hang(20))
    fake_server.set_responder(lambda body: "Bernardo?")
    term = Terminal(["--model", "gpt-4o-mini", "--system_prompt", "You are Francisco, a sentry.", "--name",
                     "Francisco", "--out_dir", tmp_path], tty_env)
    try:
        term.expect("You: ")
        term.send("Who's there?\n")
        term.expect("You: ")
        term.send("Long live the king!\n")
        term.expect("Francisco: ")
        time.sleep(0.5)  # the request is in flight, nothing has arrived yet
        started = time.monotonic()
        term.send("\x03")
        term.expect("(stopped before the reply began; nothing kept)", timeout=20)
        assert time.monotonic() - started < 20
        term.expect("You: ")
        term.send("Long live the king!\n")  # the chat goes on
        term.expect("Bernardo?")
        term.expect("You: ")
        term.send("\x04")  # Ctrl-D at the prompt ends the chat
        term.expect("transcript:")
        assert term.wait(60) == 0
    finally:
        if term.proc.poll() is None:
            term.proc.kill()
    assert "Traceback" not in term.seen
    t = json.loads(next(tmp_path.glob("*_Francisco.json")).read_text(encoding="utf-8"))
    assert [x["user"] for x in t["turns"]] == ["Who's there?", "Long live the king!"]
    assert t["turns"][1]["reply"] == "Bernardo?" and t["messages"][-1]["role"] == "assistant"


def test_interactive_no_arguments_asks_for_a_system_prompt(fake_server, tty_env, tmp_path):
    fake_server.set_responder(lambda body: "(bows) Good morrow.")
    term = Terminal(["--model", "gpt-4o-mini", "--out_dir", tmp_path], tty_env)
    try:
        term.expect("Role-play system prompt (one line): ")
        term.send("You are Horatio, a scholar.\n")
        term.expect("You: ")
        term.send("Hail!\n")
        term.expect("Character: (bows) Good morrow.")
        term.expect("You: ")
        term.send("exit\n")  # the reference's way out still works
        term.expect("transcript:")
        assert term.wait() == 0
    finally:
        if term.proc.poll() is None:
            term.proc.kill()
    assert fake_server.chat_requests()[0]["messages"][0] == {"role": "system", "content": "You are Horatio, a scholar."}


# ---- defaults that follow the configuration ---------------------------------------------------
def test_model_defaults_to_local_only_when_nothing_is_configured(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")}
    env["COSER_CACHE_DIR"] = str(tmp_path / ".cache")
    r = run_script([CHAT, "--system_prompt", "You are X.", "--out_dir", tmp_path], env=env, input="", cwd=tmp_path,
                   timeout=60)
    assert r.returncode == 0, r.stderr
    assert "note: no API key or models configured: chatting with the embedded offline model 'local'" in r.stderr


def test_model_defaults_to_the_configured_model(fake_server, llm_env, tmp_path):
    from coser import config

    if not hasattr(config, "configured_default_model"):
        pytest.skip("coser.config.configured_default_model not available yet")
    fake_server.set_responder(lambda body: "Halt!")
    # a remote key configured: the configured default model, over HTTP
    r = run_script([CHAT, "--system_prompt", "You are a guard.", "--name", "Guard", "--out_dir", tmp_path / "a"],
                   env=llm_env, input="Hello\n", cwd=tmp_path, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout == "Guard: Halt!\n" and "embedded offline model" not in r.stderr
    want = config.configured_default_model(config.Settings(api_key=llm_env["OPENAI_API_KEY"]))
    assert [q["model"] for q in fake_server.chat_requests()] == [want] and want != "local"
    # no key, only a `models` entry with its own endpoint: that entry
    env = {k: v for k, v in llm_env.items() if not k.startswith("OPENAI_")}
    (tmp_path / "config.json").write_text(json.dumps({"models": {"my-vllm": {"base_url": fake_server.base_url}}}))
    r = run_script([CHAT, "--system_prompt", "You are a guard.", "--name", "Guard", "--out_dir", tmp_path / "b"],
                   env=env, input="Hello again\n", cwd=tmp_path, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout == "Guard: Halt!\n" and fake_server.chat_requests()[-1]["model"] == "my-vllm"
    t = json.loads(next((tmp_path / "b").glob("*_Guard.json")).read_text(encoding="utf-8"))
    assert t["model"] == "my-vllm"

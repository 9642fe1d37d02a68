"""One chat with a persona: history kept as GCA agents keep it, streamed replies, slash commands, transcripts."""
from __future__ import annotations

import dataclasses
import datetime
import os
import re
import sys
from typing import Callable, TextIO

from .errors import BudgetExceeded, InputError, LLMError, LLMUnavailable, OutputError
from .io import atomic_write_json
from .persona import Persona
from .prompts import CONVERSATION_START
from .text import add_speaker_name, append_message, fix_repetition, own_segment

COMMANDS_HELP = ("commands: /retry (another reply; /alt N picks one), /undo, /edit [text], /reset, /scene, /profile, "
                 "/thoughts on|off, /user NAME, /save [name], /help, /exit (so do Ctrl-C at the prompt and Ctrl-D); "
                 "Ctrl-C during a reply stops it")
TRANSCRIPT_FORMAT = "coser-chat/2"
EXIT_WORDS = ("/exit", "/quit", "exit")  # the reference chat.py quit on a bare `exit`
EMPTY_RETRIES = 2  # a blank reply is re-asked with a new generation index, as get_response_with_retry does


def prefix_speaker(text: str, speaker: str) -> str:
    """GCA's add_speaker_name: leave text alone if a line already starts with 'speaker:'."""
    return add_speaker_name(text, speaker)


def postprocess(model: str, reply: str, name: str) -> str:
    """GCA Agent.chat's repairs (METHOD 4.5 steps 3-4), so the history holds what an actor agent would keep."""
    lower = model.lower()
    if lower.startswith(("llama", "step")):
        reply = own_segment(reply, name)
    if not lower.startswith(("gpt", "claude")):
        fixed = fix_repetition(reply)
        if fixed is not None:
            reply = fixed
    return reply


class ThoughtFilter:
    """Streaming counterpart of remove_inner_thoughts for display: hides single-line [...] spans.

    A '[' opens a held span; ']' drops it; a newline first means it was not a thought (the
    reference pattern does not cross lines), so the held text is shown after all.
    """

    def __init__(self):
        self.held = None

    def feed(self, piece: str) -> str:
        out = []
        for ch in piece:
            if self.held is None:
                if ch == "[":
                    self.held = ch
                else:
                    out.append(ch)
            elif ch == "]":
                self.held = None
            elif ch == "\n":
                out.append(self.held + ch)
                self.held = None
            else:
                self.held += ch
        return "".join(out)

    def flush(self) -> str:
        held, self.held = self.held or "", None
        return held


class ReplyPrinter:
    """Writes a streamed reply under the character's label, dropping a duplicated 'Name:' opening."""

    def __init__(self, name: str, write: Callable[[str], None], hide_thoughts: bool):
        self.name, self.write = name, write
        self.filter = ThoughtFilter() if hide_thoughts else None
        self.head = ""          # undecided opening text
        self.decided = False
        self.started = False    # leading whitespace of the visible text is dropped

    def _emit(self, text: str) -> None:
        if self.filter is not None:
            text = self.filter.feed(text)
        if not self.started:
            text = text.lstrip()
            if not text:
                return
            self.started = True
        self.write(text)

    def feed(self, piece: str) -> None:
        if self.decided:
            return self._emit(piece)
        self.head += piece
        stripped = self.head.lstrip()
        labels = (f"{self.name}:", f"{self.name}：")
        for label in labels:
            if stripped.startswith(label):
                self.decided = True
                return self._emit(stripped[len(label):])
        if any(label.startswith(stripped) for label in labels):
            return  # could still become the label: wait for more
        self.decided = True
        self._emit(self.head)

    def close(self) -> None:
        if not self.decided and self.head:
            self._emit(self.head)
        if self.filter is not None:
            rest = self.filter.flush()
            if rest:
                self._emit(rest)


class ReplyStopped(Exception):
    """Ctrl-C (or a caller's stop) before any text of the reply arrived: nothing is kept."""


class StopReply(Exception):
    """Raised (by _Stream, after ChatSession.stop()) to end a streaming reply early; the partial text is kept."""


class _Stream:
    """The on_token callback handed to LLM.chat: collects the text and forwards it for display.

    coser.llm calls `discard()` when a stream broke off and will be asked again (the shown text is
    abandoned) and `finish(reason)` with the stream's finish_reason.
    """

    def __init__(self, on_token: Callable[[str], None] | None, on_discard: Callable[[], None] | None = None,
                 stopped: Callable[[], bool] = lambda: False):
        self.on_token, self.on_discard, self.stopped = on_token, on_discard, stopped
        self.pieces: list[str] = []
        self.finish_reason = None

    def __call__(self, piece: str) -> None:
        if self.stopped():
            raise StopReply()
        self.pieces.append(piece)
        if self.on_token is not None:
            self.on_token(piece)

    def discard(self) -> None:
        if self.pieces and self.on_discard is not None:
            self.on_discard()
        self.pieces = []

    def finish(self, reason) -> None:
        self.finish_reason = reason

    def text(self) -> str:
        return "".join(self.pieces)


class ChatSession:
    """The message history one actor agent would hold, plus everything that happened in the chat.

    Terminal-independent: chat.py and the web app drive it with send/retry/alt/undo/edit/reset.
    `turns` are the live exchanges (each with all its alternative replies); `earlier` keeps the
    turns of sessions ended by reset, `dropped` the turns removed by undo or edit, `events` the log.
    """

    def __init__(self, llm, model: str, persona: Persona, max_new_tokens: int = 128, temperature: float = 0.7,
                 user_role: str | None = None, hide_thoughts: bool = False, settings: dict | None = None):
        self.llm, self.model, self.persona = llm, model, persona
        self.max_new_tokens, self.temperature = max_new_tokens, temperature
        self.user_role, self.hide_thoughts = user_role, hide_thoughts
        self.settings = settings or {}
        self.started = _now()
        self.turns: list[dict] = []
        self.earlier: list[list[dict]] = []
        self.dropped: list[dict] = []
        self.events: list[dict] = []
        self.resumed_from: list[str] = []
        self._stop = False
        self._rebuild()

    def stop(self) -> None:
        """Ask a streaming reply (in another thread) to end at its next piece; what arrived is kept, marked."""
        self._stop = True

    # -- history ------------------------------------------------------------------------------
    def _rebuild(self) -> None:
        """messages = system prompt (+ GCA's opening) (+ greeting) + each turn's user text and chosen reply."""
        self.messages = [{"role": "system", "content": self.persona.system_prompt(self.model)}]
        if self.persona.structured:
            append_message(self.messages, "user", CONVERSATION_START)
        if self.persona.greet:
            append_message(self.messages, "assistant", self.persona.first_mes)
        for t in self.turns:
            append_message(self.messages, "user", t["user_text"])
            append_message(self.messages, "assistant", t["reply"])

    def _log(self, event: str, **kw) -> None:
        self.events.append({"event": event, "at": _now(), **kw})

    def reset(self) -> None:
        """Start over; the finished turns stay in the transcript under 'earlier'."""
        if self.turns:
            self.earlier.append(self.turns)
            self._log("reset", turns=len(self.turns))
        self.turns = []
        self._rebuild()

    def set_user(self, name: str | None) -> None:
        self.user_role = (name or "").strip() or None
        self._log("user", name=self.user_role)

    def user_text(self, line: str) -> str:
        return prefix_speaker(line, self.user_role) if self.user_role else line

    # -- generation -----------------------------------------------------------------------------
    def _generate(self, messages: list[dict], start_nth: int, on_token=None, on_discard=None) -> dict:
        """One reply: nth_generation from start_nth (a blank reply is re-asked with the next index).

        Ctrl-C (KeyboardInterrupt) while streaming keeps what arrived, marked 'stopped'; before any
        text it raises ReplyStopped. A cut stream is retried inside coser.llm; a reply cut at the
        token limit is marked 'length'.
        """
        self._stop = False
        for nth in range(start_nth, start_nth + EMPTY_RETRIES + 1):
            stream = _Stream(on_token, on_discard, lambda: self._stop)
            try:
                # No display, no stream: a script gets one plain request per reply.
                raw = self.llm.chat(self.model, messages, max_tokens=self.max_new_tokens, nth_generation=nth,
                                    temperature=self.temperature, stage="chat",
                                    on_token=stream if on_token is not None else None)
            except (KeyboardInterrupt, StopReply):
                partial = stream.text()
                if not partial.strip():
                    raise ReplyStopped() from None
                return {"text": partial, "nth": nth, "status": "stopped"}
            if raw.strip():
                reply = postprocess(self.model, raw, self.persona.name)
                out = {"text": reply, "nth": nth, "status": "length" if stream.finish_reason == "length" else "stop"}
                if reply != raw:
                    out["raw"] = raw
                return out
        raise LLMUnavailable(f"model '{self.model}' gave an empty reply {EMPTY_RETRIES + 1} times; "
                             "type your line again or /retry")

    def _choose(self, turn: dict, i: int) -> None:
        turn["chosen"] = i
        alt = turn["replies"][i]
        turn["reply"] = alt["text"]
        turn.pop("raw", None)
        if "raw" in alt:
            turn["raw"] = alt["raw"]
        turn["status"] = alt["status"]

    def send(self, line: str, on_token=None, on_discard=None) -> dict:
        """One user turn: the whole history goes out again (the cache makes replays free). Returns the turn."""
        text = self.user_text(line)
        messages = list(self.messages)
        append_message(messages, "user", text)
        alt = self._generate(messages, 0, on_token, on_discard)
        turn = {"user": line, "user_text": text, "replies": [alt], "chosen": 0, "reply": ""}
        self._choose(turn, 0)
        self.turns.append(turn)
        self._rebuild()
        return turn

    def ask(self, line: str, on_token=None) -> str:
        return self.send(line, on_token)["reply"]

    def retry(self, on_token=None, on_discard=None) -> dict:
        """A new reply to the last turn, asked as the next generation so the cache cannot repeat the old one."""
        if not self.turns:
            raise InputError("nothing to retry yet")
        turn = self.turns[-1]
        messages = list(self.messages[:-1]) if self.messages[-1]["role"] == "assistant" else list(self.messages)
        start = max(a["nth"] for a in turn["replies"]) + 1
        alt = self._generate(messages, start, on_token, on_discard)
        turn["replies"].append(alt)
        self._choose(turn, len(turn["replies"]) - 1)
        self._log("retry", turn=len(self.turns), alternative=len(turn["replies"]))
        self._rebuild()
        return turn

    def alt(self, n: int) -> dict:
        """Pick alternative reply n (1-based) of the last turn."""
        if not self.turns:
            raise InputError("no reply to choose from yet")
        turn = self.turns[-1]
        if not 1 <= n <= len(turn["replies"]):
            raise InputError(f"/alt takes 1..{len(turn['replies'])}")
        self._choose(turn, n - 1)
        self._log("alt", turn=len(self.turns), alternative=n)
        self._rebuild()
        return turn

    def undo(self) -> dict | None:
        """Drop the last exchange (kept in the transcript under 'dropped')."""
        if not self.turns:
            return None
        turn = self.turns.pop()
        self.dropped.append(turn)
        self._log("undo", turn=len(self.turns) + 1)
        self._rebuild()
        return turn

    def edit(self, line: str, on_token=None, on_discard=None) -> dict:
        """Rewrite the last user turn and ask again; the old exchange is kept under 'dropped'."""
        if not self.turns:
            raise InputError("no turn of yours to edit yet")
        old = self.turns.pop()
        self._rebuild()
        try:
            turn = self.send(line, on_token, on_discard)
        except BaseException:
            self.turns.append(old)
            self._rebuild()
            raise
        self.dropped.append(old)
        self._log("edit", turn=len(self.turns), before=old["user"])
        return turn

    # -- transcripts ----------------------------------------------------------------------------
    def record(self) -> dict:
        return {"format": TRANSCRIPT_FORMAT, "model": self.model,
                "persona": {**self.persona.summary(), **dataclasses.asdict(self.persona)},
                "settings": {"max_new_tokens": self.max_new_tokens, "temperature": self.temperature,
                             "user_role": self.user_role, "hide_thoughts": self.hide_thoughts, **self.settings},
                "started": self.started, "saved": _now(), "resumed_from": self.resumed_from,
                "system_prompt": self.messages[0]["content"], "messages": self.messages, "turns": self.turns,
                "earlier": self.earlier, "dropped": self.dropped, "events": self.events,
                "usage": self.llm.usage.to_dict(),
                "config": self.llm.settings.public()}  # effective endpoint settings, keys masked

    def save(self, path: str) -> str:
        atomic_write_json(path, self.record())
        return path

    def has_content(self) -> bool:
        return bool(self.turns or self.earlier or self.dropped or self.events)

    @classmethod
    def from_transcript(cls, llm, data, where: str = "transcript", model: str | None = None) -> "ChatSession":
        """Continue a saved chat: same persona, settings and turns (everything else kept as it was)."""
        if not isinstance(data, dict):
            raise InputError(f"{where}: not a chat transcript (expected a JSON object)")
        p = data.get("persona")
        if not isinstance(p, dict) or not isinstance(p.get("prompt"), str) or not isinstance(p.get("name"), str):
            raise InputError(f"{where}: field 'persona' missing or without 'name'/'prompt' (saved by an older "
                             "chat.py? only transcripts that keep the persona can be resumed)")
        fields = {f.name: f for f in dataclasses.fields(Persona)}
        for k, v in p.items():
            want = fields[k].type if k in fields else None
            if want in ("str", "bool", "list", "dict") and not isinstance(v, {"str": str, "bool": bool, "list": list,
                                                                               "dict": dict}[want]):
                raise InputError(f"{where}: field 'persona.{k}' should be a {want}")
        persona = Persona(**{"source": "resumed", **{k: v for k, v in p.items() if k in fields}})
        s = data.get("settings") if isinstance(data.get("settings"), dict) else {}
        extra = {k: v for k, v in s.items() if k not in ("max_new_tokens", "temperature", "user_role",
                                                          "hide_thoughts")}
        if s.get("user_role") is not None and not isinstance(s.get("user_role"), str):
            raise InputError(f"{where}: field 'settings.user_role' should be a string")
        try:
            session = cls(llm, model or str(data.get("model") or ""), persona,
                          max_new_tokens=int(s.get("max_new_tokens", 128)), temperature=float(s.get("temperature", 0.7)),
                          user_role=s.get("user_role"), hide_thoughts=bool(s.get("hide_thoughts")), settings=extra)
        except (TypeError, ValueError, OverflowError):
            raise InputError(f"{where}: field 'settings' holds values of the wrong type") from None
        if not (0 <= session.temperature < float("inf")) or session.max_new_tokens < 1:
            raise InputError(f"{where}: field 'settings': temperature must be a finite number >= 0 and "
                             "max_new_tokens at least 1")
        for key in ("turns", "earlier", "dropped", "events"):
            value = data.get(key, [])
            if not isinstance(value, list):
                raise InputError(f"{where}: field '{key}' must be a list")
        for i, t in enumerate(data.get("turns", [])):
            if not isinstance(t, dict) or not isinstance(t.get("user"), str) or not isinstance(t.get("reply"), str):
                raise InputError(f"{where}: turns[{i}] needs 'user' and 'reply' strings")
            t.setdefault("user_text", t["user"])
            if not isinstance(t["user_text"], str):
                raise InputError(f"{where}: turns[{i}].user_text should be a string")
            reps = t.get("replies")
            if isinstance(reps, list) and reps and not all(
                    isinstance(r, dict) and isinstance(r.get("text"), str) and isinstance(r.get("nth"), int)
                    for r in reps):
                raise InputError(f"{where}: turns[{i}].replies need 'text' strings and 'nth' numbers")
            if isinstance(reps, list) and reps and not (isinstance(t.get("chosen"), int)
                                                        and 0 <= t["chosen"] < len(reps)):
                t["chosen"] = len(reps) - 1
            if not isinstance(t.get("replies"), list) or not t["replies"]:
                t["replies"] = [{"text": t["reply"], "nth": 0, "status": "stop"}]
                t["chosen"] = 0
        session.turns, session.earlier = data.get("turns", []), data.get("earlier", [])
        session.dropped, session.events = data.get("dropped", []), data.get("events", [])
        session.started = str(data.get("started") or session.started)
        session.resumed_from = [x for x in data.get("resumed_from") or [] if isinstance(x, str)] + [where]
        session._log("resume", source=where)
        session._rebuild()
        return session


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def default_transcript_path(out_dir: str, name: str) -> str:
    slug = re.sub(r"[^\w-]+", "_", name).strip("_")[:40] or "chat"
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    path = os.path.join(out_dir, f"{stamp}_{slug}.json")
    n = 1
    while os.path.exists(path):  # two sessions in the same second must not overwrite each other
        n += 1
        path = os.path.join(out_dir, f"{stamp}_{slug}_{n}.json")
    return path


def confined_save_path(arg: str, out_dir: str, anywhere: bool = False) -> str:
    """Where `/save PATH` may write: inside the transcript folder unless the user allowed anywhere.

    A relative PATH is taken inside out_dir; one that leaves it (absolute, '..', a symlink out) is
    refused with a one-line InputError (issue 19: a piped chat must not write where its text says).
    """
    path = os.path.expanduser(arg)
    if anywhere:
        return path
    if not path.endswith(".json"):
        path += ".json"
    base = os.path.realpath(out_dir)
    full = os.path.realpath(os.path.join(out_dir, path))
    if os.path.commonpath([base, full]) != base or full == base:
        raise InputError(f"/save {arg}: outside the transcript folder {out_dir} (give a name inside it, or start "
                         "chat.py with --save_anywhere)")
    return os.path.join(out_dir, os.path.relpath(full, base))


def _alternatives_line(turn: dict) -> str:
    n = len(turn["replies"])
    return f"(reply {turn['chosen'] + 1} of {n}; /alt N picks another)" if n > 1 else ""


def run(session: ChatSession, read_line: Callable[[str], str], out: TextIO = sys.stdout, err: TextIO = sys.stderr,
        interactive: bool = True, max_turns: int = 0, out_dir: str = os.path.join("exp", "chat"),
        save_anywhere: bool = False, transcript_path: str | None = None) -> int:
    """The read-reply loop. Ends on /exit, EOF, Ctrl-C at the prompt or max_turns.

    Ctrl-C while a reply streams stops that reply (kept, marked [stopped]) and returns to the prompt.
    The whole session (resets, alternatives, undone turns) is saved at the end to one transcript
    file; `/save PATH` writes a copy and does not move that file.
    """
    name = session.persona.name
    final_path = transcript_path

    def write(text):
        out.write(text)
        out.flush()

    def note(text):
        print(text, file=err)
        err.flush()

    def show(text: str, status: str = "stop") -> None:
        printer = ReplyPrinter(name, write, session.hide_thoughts)
        write(f"{name}: ")
        printer.feed(text)
        printer.close()
        write(" [stopped]\n" if status == "stopped" else "\n")

    def streamed(action: Callable[..., dict], *a):
        """Run a generating action; a terminal watches the reply arrive. Returns the turn or None."""
        state = {"printer": ReplyPrinter(name, write, session.hide_thoughts)}

        def on_token(piece):
            state["printer"].feed(piece)

        def on_discard():
            write("\n")
            note("(the stream broke off before its end; asking again)")
            state["printer"] = ReplyPrinter(name, write, session.hide_thoughts)
            write(f"{name}: ")

        write(f"{name}: ")
        try:
            turn = action(*a, on_token=on_token if interactive else None, on_discard=on_discard)
        except ReplyStopped:
            write("\n")
            note("(stopped before the reply began; nothing kept)")
            return None
        except KeyboardInterrupt:
            write("\n")
            note("(stopped)")
            return None
        except LLMError as e:
            write("\n")
            if not interactive:
                raise
            note(f"error: {e}")
            return None
        if not interactive:
            state["printer"].feed(turn["reply"])
        state["printer"].close()
        write(" [stopped]\n" if turn["status"] == "stopped" else "\n")
        if turn["status"] == "length":
            note(f"(the reply was cut at the length limit, --max_new_tokens {session.max_new_tokens})")
        if turn["status"] == "stopped":
            note("(reply stopped; kept as it is: /retry asks again, /undo drops it)")
        if interactive and "raw" in turn:
            note("(note: repeated text was trimmed from the kept history)")
        extra = _alternatives_line(turn)
        if extra:
            note(extra)
        return turn

    if session.persona.greet and not session.turns:
        show(session.persona.first_mes)
    elif session.turns and interactive:
        last = session.turns[-1]
        note(f"(resumed: {len(session.turns)} turns; your last line was: {last['user']})")
        show(last["reply"], last.get("status", "stop"))
    code = 0
    try:
        while not max_turns or len(session.turns) < max_turns:
            prompt = f"{session.user_role or 'You'}: " if interactive else ""
            try:
                line = read_line(prompt)
            except EOFError:
                if interactive:
                    write("\n")
                break
            line = line.strip()
            if not line:
                continue
            if line.lower() in EXIT_WORDS:
                break
            if not line.startswith("/"):
                streamed(session.send, line)
                continue
            cmd, _, arg = line.partition(" ")
            arg = arg.strip()
            try:
                if cmd == "/reset":
                    session.reset()
                    note("(conversation reset; earlier turns stay in the transcript)")
                    if session.persona.greet:
                        show(session.persona.first_mes)
                elif cmd == "/save":
                    if not arg:
                        final_path = final_path or default_transcript_path(out_dir, name)
                        note(f"saved: {session.save(final_path)}")
                    else:
                        note(f"saved: {session.save(confined_save_path(arg, out_dir, save_anywhere))}")
                elif cmd == "/retry":
                    if not session.turns:
                        raise InputError("nothing to retry yet")
                    streamed(session.retry)
                elif cmd == "/alt":
                    if not session.turns:
                        raise InputError("no reply to choose from yet")
                    if not arg:
                        for i, alt in enumerate(session.turns[-1]["replies"], 1):
                            mark = "*" if i - 1 == session.turns[-1]["chosen"] else " "
                            note(f"{mark}{i}: {alt['text']}")
                    else:
                        if not arg.isdigit():
                            raise InputError("/alt takes a number: /alt 2")
                        turn = session.alt(int(arg))
                        show(turn["reply"], turn["status"])
                elif cmd == "/undo":
                    turn = session.undo()
                    note(f"(undone: {turn['user']})" if turn else "(nothing to undo)")
                elif cmd == "/edit":
                    if not session.turns:
                        raise InputError("no turn of yours to edit yet")
                    if not arg:
                        note(f"(your last line: {session.turns[-1]['user']})")
                        arg = read_line("edit: " if interactive else "").strip()
                    if arg:
                        streamed(session.edit, arg)
                elif cmd == "/scene":
                    note(session.persona.scenario or "(no scene for this persona)")
                elif cmd == "/profile":
                    note(session.persona.profile or session.persona.description or "(no profile for this persona)")
                elif cmd == "/thoughts":
                    if arg not in ("on", "off"):
                        raise InputError("/thoughts on|off")
                    session.hide_thoughts = arg == "off"
                    note(f"(thoughts {'hidden on screen; the model still sees them' if arg == 'off' else 'shown'})")
                elif cmd == "/user":
                    session.set_user(arg)
                    note(f"(you speak as {session.user_role})" if session.user_role else "(you speak as yourself)")
                elif cmd == "/help":
                    note(COMMANDS_HELP)
                else:
                    note(f"unknown command {cmd}; {COMMANDS_HELP}")
            except InputError as e:
                note(f"error: {e}")
            except OutputError as e:
                note(f"error: {e}")
    except KeyboardInterrupt:
        write("\n")
        code = 0  # Ctrl-C at the prompt ends the chat; what was said is kept below
    except BudgetExceeded:
        _final_save(session, final_path, out_dir, err)
        raise
    _final_save(session, final_path, out_dir, err)
    return code


def _final_save(session: ChatSession, path: str | None, out_dir: str, err: TextIO) -> None:
    if session.turns or session.earlier or session.dropped:
        path = path or default_transcript_path(out_dir, session.persona.name)
        try:
            session.save(path)
        except OutputError as e:
            # The chat happened: it must not be lost because its folder cannot be written. It goes to
            # the temp folder, the error still ends the run (exit 2) and says where the chat went.
            import tempfile
            rescue = os.path.join(tempfile.gettempdir(), "coser-chat", os.path.basename(path))
            try:
                session.save(rescue)
            except OutputError:
                raise e from None
            raise OutputError(f"{e}; the transcript was saved to {rescue} instead") from None
        print(f"transcript: {path}", file=err)

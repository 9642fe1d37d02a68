"""One chat with a persona: history kept as GCA agents keep it, streamed replies, slash commands, transcripts."""
from __future__ import annotations

import datetime
import os
import re
import sys
from typing import Callable, TextIO

from .errors import BudgetExceeded, LLMError
from .io import atomic_write_json
from .persona import Persona
from .prompts import CONVERSATION_START
from .text import add_speaker_name, append_message, fix_repetition, own_segment

COMMANDS_HELP = "commands: /reset (start over), /save [path] (write the transcript), /exit (end; so do Ctrl-C and Ctrl-D)"
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


class ChatSession:
    """The message history one actor agent would hold, plus the settings that produced it."""

    def __init__(self, llm, model: str, persona: Persona, max_new_tokens: int = 128, temperature: float = 0.7,
                 user_role: str | None = None, hide_thoughts: bool = False, settings: dict | None = None):
        self.llm, self.model, self.persona = llm, model, persona
        self.max_new_tokens, self.temperature = max_new_tokens, temperature
        self.user_role, self.hide_thoughts = user_role, hide_thoughts
        self.settings = settings or {}
        self.started = _now()
        self.reset()

    def reset(self) -> None:
        self.messages = [{"role": "system", "content": self.persona.system_prompt(self.model)}]
        self.turns: list[dict] = []
        if self.persona.structured:
            self._update("user", CONVERSATION_START)
        if self.persona.greet:
            self._update("assistant", self.persona.first_mes)

    def _update(self, role: str, text: str) -> None:
        append_message(self.messages, role, text)

    def user_text(self, line: str) -> str:
        return prefix_speaker(line, self.user_role) if self.user_role else line

    def ask(self, line: str, on_token: Callable[[str], None] | None = None) -> str:
        """One user turn: the whole history goes out again (the cache makes replays free)."""
        before = list(self.messages)
        self._update("user", self.user_text(line))
        raw = ""
        try:
            for nth in range(EMPTY_RETRIES + 1):
                raw = self.llm.chat(self.model, self.messages, max_tokens=self.max_new_tokens, nth_generation=nth,
                                      temperature=self.temperature, stage="chat", on_token=on_token)
                if raw.strip():
                    break
        except BaseException:
            self.messages = before  # a failed or interrupted turn leaves no half-written history
            raise
        reply = postprocess(self.model, raw, self.persona.name)
        self._update("assistant", reply)
        self.turns.append({"user": line, "reply": reply, **({"raw": raw} if raw != reply else {})})
        return reply

    def record(self) -> dict:
        return {"model": self.model, "persona": self.persona.summary(),
                "settings": {"max_new_tokens": self.max_new_tokens, "temperature": self.temperature,
                             "user_role": self.user_role, "hide_thoughts": self.hide_thoughts, **self.settings},
                "started": self.started, "saved": _now(), "system_prompt": self.messages[0]["content"],
                "messages": self.messages, "turns": self.turns, "usage": self.llm.usage.to_dict(),
                "config": self.llm.settings.public()}  # effective endpoint settings, keys masked

    def save(self, path: str) -> str:
        atomic_write_json(path, self.record())
        return path


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


def run(session: ChatSession, read_line: Callable[[str], str], out: TextIO = sys.stdout, err: TextIO = sys.stderr,
        interactive: bool = True, max_turns: int = 0, out_dir: str = os.path.join("exp", "chat")) -> int:
    """The read-reply loop. Ends on /exit, EOF, Ctrl-C or max_turns; saves the transcript if anything was said."""
    name = session.persona.name
    prompt = f"{session.user_role or 'You'}: " if interactive else ""
    saved_path = None

    def write(text):
        out.write(text)
        out.flush()

    if session.persona.greet:
        printer = ReplyPrinter(name, write, session.hide_thoughts)
        write(f"{name}: ")
        printer.feed(session.persona.first_mes)
        printer.close()
        write("\n")
    code = 0
    try:
        while not max_turns or len(session.turns) < max_turns:
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
            if line.startswith("/"):
                cmd, _, arg = line.partition(" ")
                if cmd == "/reset":
                    session.reset()
                    print("(conversation reset)", file=err)
                elif cmd == "/save":
                    saved_path = session.save(arg.strip() or saved_path or default_transcript_path(out_dir, name))
                    print(f"saved: {saved_path}", file=err)
                elif cmd == "/help":
                    print(COMMANDS_HELP, file=err)
                else:
                    print(f"unknown command {cmd}; {COMMANDS_HELP}", file=err)
                continue
            printer = ReplyPrinter(name, write, session.hide_thoughts)
            write(f"{name}: ")
            try:
                # A terminal sees the reply as it is generated; a script gets the repaired reply.
                reply = session.ask(line, on_token=printer.feed if interactive else None)
                if not interactive:
                    printer.feed(reply)
                elif "raw" in session.turns[-1]:
                    print("\n(note: repeated text was trimmed from the kept history)", file=err)
            except LLMError as e:
                write("\n")
                if not interactive:
                    raise
                print(f"error: {e}", file=err)
                continue
            printer.close()
            write("\n")
    except KeyboardInterrupt:
        write("\n")
        code = 0  # Ctrl-C ends the chat; what was said is kept below
    except BudgetExceeded:
        _final_save(session, saved_path, out_dir, err)
        raise
    _final_save(session, saved_path, out_dir, err)
    return code


def _final_save(session: ChatSession, saved_path: str | None, out_dir: str, err: TextIO) -> None:
    if session.turns:
        path = session.save(saved_path or default_transcript_path(out_dir, session.persona.name))
        print(f"transcript: {path}", file=err)

"""Talk with a book character (or any persona) on any configured model; offline by default.

  python chat.py                                                    # type a system prompt, then chat
  python chat.py --book_data data/final --character Iago            # persona from the book's profile
  printf 'Who goes there?\n' | python chat.py --book_data data/final --character Iago   # scripted
  python chat.py --test_file data/test/test_set.json --sample 3 --character "Harry Potter"
  python chat.py --book_data data/final --character Iago --export_card iago.json       # SillyTavern card
  python chat.py --card iago.json

In a session: /reset, /save [path], /exit (Ctrl-C and Ctrl-D end it too). Transcripts go to exp/chat/.
"""
from __future__ import annotations

import argparse
import os
import signal
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from coser import cli  # noqa: E402
from coser.config import LOCAL_MODEL, is_local  # noqa: E402
from coser.errors import ConfigError, InputError  # noqa: E402
from coser.io import atomic_write_json, read_text  # noqa: E402

TYPED_PROMPT_ASK = "Role-play system prompt (one line): "


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Chat with a CoSER persona: a book character, a test-set role, a card "
                                            "or a system prompt of your own.",
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n")[1])
    who = p.add_argument_group("persona (pick one; none = type a system prompt)")
    who.add_argument("--book_data", metavar="PATH", help="folder of final book files (data/final) or one such file")
    who.add_argument("--character", metavar="NAME", help="character to play (with --book_data or --test_file)")
    who.add_argument("--book", metavar="TITLE", help="book to look in when the character's name is in several")
    who.add_argument("--scenario", metavar="TEXT", help="set the scene (default: the character's first scene in the book)")
    who.add_argument("--test_file", metavar="PATH", help="a test set (data/test/test_set.json) to step into")
    who.add_argument("--sample", type=int, default=0, metavar="I", help="test item index (default %(default)s)")
    who.add_argument("--system_prompt", metavar="TEXT", help="a system prompt used verbatim (original characters)")
    who.add_argument("--system_file", metavar="PATH", help="read the verbatim system prompt from a file")
    who.add_argument("--card", metavar="PATH", help="play a Character Card V2 (JSON, or a PNG card)")
    who.add_argument("--name", metavar="NAME", help="label for a --system_prompt/--system_file persona")
    p.add_argument("--user_role", metavar="NAME", help="speak as this character: your lines are prefixed 'NAME: '")
    p.add_argument("--wo_thought", action="store_true", help="ask for speech and actions only, no [thoughts]")
    p.add_argument("--export_card", metavar="PATH", help="write the book character as a SillyTavern Character Card V2 "
                                                          "JSON and exit")
    gen = p.add_argument_group("generation")
    gen.add_argument("--model", default=LOCAL_MODEL, help="model name (default: %(default)s, the embedded offline model)")
    gen.add_argument("--max_new_tokens", type=int, default=128, help="reply length cap (default %(default)s)")
    gen.add_argument("--temperature", type=float, default=0.7, help="sampling temperature (default %(default)s)")
    gen.add_argument("--max_turns", type=int, default=0, help="end after this many replies (default: no limit)")
    gen.add_argument("--hide_thoughts", action="store_true", help="show only speech and (actions), not [thoughts]")
    p.add_argument("--out_dir", default=os.path.join("exp", "chat"), help="transcript folder (default %(default)s)")
    cli.add_common_args(p, workers=False)
    return p


def pick_persona(args, read_line):
    from coser import persona as P

    chosen = [f for f in ("book_data", "test_file", "system_prompt", "system_file", "card") if getattr(args, f)]
    if len(chosen) > 1:
        raise InputError("choose one persona source: " + ", ".join("--" + c for c in chosen) + " were all given")
    if args.export_card and not args.book_data:
        raise InputError("--export_card needs --book_data and --character")
    if args.character and not (args.book_data or args.test_file):
        raise InputError("--character needs --book_data (a book's characters) or --test_file")
    if args.book_data:
        if not args.character:
            raise InputError("--book_data needs --character NAME")
        return P.build_book_persona(args.book_data, args.character, args.book, args.scenario, args.user_role,
                                    args.model, args.wo_thought)
    if args.test_file:
        return P.build_test_persona(args.test_file, args.sample, args.character, args.model, args.wo_thought)
    if args.card:
        return P.card_persona(args.card, args.user_role, args.wo_thought)
    if args.system_prompt is not None:
        if not args.system_prompt.strip():
            raise InputError("--system_prompt is empty")
        return P.raw_persona(args.system_prompt, "system_prompt", args.name)
    if args.system_file:
        text = read_text(args.system_file, "--system_file")
        if not text.strip():
            raise InputError(f"{args.system_file}: --system_file is empty")
        return P.raw_persona(text, "system_file", args.name)
    try:
        typed = read_line(TYPED_PROMPT_ASK)
    except KeyboardInterrupt:
        return None  # changed their mind: leave quietly
    except EOFError:
        typed = ""
    if not typed.strip():
        raise InputError("no system prompt given (type one, or use --book_data/--character, --system_prompt, --card)")
    return P.raw_persona(typed.strip(), "typed", args.name)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.max_new_tokens < 1:
        raise InputError("--max_new_tokens must be at least 1")
    if args.temperature < 0:
        raise InputError("--temperature must be 0 or more")
    if args.max_turns < 0:
        raise InputError("--max_turns must be 0 (no limit) or more")
    interactive = sys.stdin.isatty()
    if interactive:
        # Started from a script's background job, SIGINT arrives ignored and Ctrl-C would do nothing;
        # at a terminal it must end the chat (and save the transcript).
        signal.signal(signal.SIGINT, signal.default_int_handler)
        try:
            import readline  # noqa: F401  (line editing and history for input())
        except ImportError:
            pass

    def read_line(prompt: str) -> str:
        if interactive:
            return input(prompt)
        line = sys.stdin.readline()
        if not line:
            raise EOFError
        return line.rstrip("\n")

    persona = pick_persona(args, read_line)
    if persona is None:
        print(file=sys.stderr)
        return 0
    if args.export_card:
        from coser.persona import to_card

        atomic_write_json(args.export_card, to_card(persona))
        print(f"card: {args.export_card}", file=sys.stderr)
        return 0

    from coser.chatsession import ChatSession, COMMANDS_HELP, run

    llm = cli.setup(args)
    if not is_local(args.model) and not llm.settings.has_remote_key():
        # Say so before anyone types a line, not after.
        raise ConfigError(f"--model {args.model} needs an API key: set api_key in config.json or OPENAI_API_KEY "
                          "(or use --model local, the embedded offline model)")
    session = ChatSession(llm, args.model, persona, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                          user_role=args.user_role, hide_thoughts=args.hide_thoughts,
                          settings={"max_turns": args.max_turns, "wo_thought": args.wo_thought})
    if interactive:
        where = f" from {persona.book}" if persona.book else ""
        print(f"Chatting with {persona.name}{where} on model {args.model}. {COMMANDS_HELP}", file=sys.stderr)
    return run(session, read_line, interactive=interactive, max_turns=args.max_turns, out_dir=args.out_dir)


if __name__ == "__main__":
    cli.main(main)

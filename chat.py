"""Talk with a book character (or any persona) on any configured model; offline when nothing is configured.

  python chat.py --list --search iago                                # who can be played (books, characters)
  python chat.py --character Iago --show_profile                     # book data: data/final or the published files
  python chat.py --book_data data/final --character Iago             # persona from the book's profile
  printf 'Who goes there?\n' | python chat.py --character Iago        # scripted
  python chat.py --test_file data/test/test_set.json --sample 3 --character "Harry Potter"
  python chat.py --character Iago --export_card iago.png             # SillyTavern/RisuAI card (V2 + V3 in a PNG)
  python chat.py --card iago.png
  python chat.py --resume exp/chat/20250101-120000_Iago.json          # continue a saved chat

In a session: /retry, /alt N, /undo, /edit, /reset, /scene, /profile, /thoughts on|off, /user NAME, /save [name],
/help, /exit. Ctrl-C during a reply stops it; Ctrl-C at the prompt or Ctrl-D ends the chat. Transcripts go to exp/chat/.
"""
from __future__ import annotations

import argparse
import os
import signal
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from coser import cli  # noqa: E402
from coser import config as coser_config  # noqa: E402
from coser.config import LOCAL_MODEL, is_local  # noqa: E402
from coser.errors import ConfigError, InputError  # noqa: E402
from coser.io import read_json, read_text  # noqa: E402

TYPED_PROMPT_ASK = "Role-play system prompt (one line): "


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Chat with a CoSER persona: a book character, a test-set role, a card "
                                            "or a system prompt of your own.",
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n")[1])
    who = p.add_argument_group("persona (pick one; none = type a system prompt)")
    who.add_argument("--book_data", metavar="PATH", help="folder of final book files or one such file (default: "
                                                         "data/final, else the published ../shared/coser-data/final)")
    who.add_argument("--character", metavar="NAME", help="character to play (with --book_data or --test_file)")
    who.add_argument("--book", metavar="TITLE", help="book to look in when the character's name is in several")
    who.add_argument("--scenario", metavar="TEXT", help="set the scene (default: the character's first scene in the book)")
    who.add_argument("--test_file", metavar="PATH", help="a test set (data/test/test_set.json) to step into")
    who.add_argument("--sample", type=int, default=0, metavar="I", help="test item index (default %(default)s)")
    who.add_argument("--system_prompt", metavar="TEXT", help="a system prompt used verbatim (original characters)")
    who.add_argument("--system_file", metavar="PATH", help="read the verbatim system prompt from a file")
    who.add_argument("--card", metavar="PATH", help="play a Character Card V1/V2/V3 (JSON or PNG)")
    who.add_argument("--name", metavar="NAME", help="label for a --system_prompt/--system_file persona")
    who.add_argument("--resume", metavar="TRANSCRIPT", help="continue a saved chat (its persona and settings)")
    find = p.add_argument_group("finding characters")
    find.add_argument("--list", action="store_true", help="list books and their characters (utterances, "
                                                          "conversations), best first, and exit")
    find.add_argument("--search", metavar="TEXT", help="with --list: only books or characters whose name has TEXT")
    find.add_argument("--show_profile", action="store_true", help="print the character's profile and scene first")
    p.add_argument("--user_role", metavar="NAME", help="speak as this character: your lines are prefixed 'NAME: '")
    p.add_argument("--wo_thought", action="store_true", help="ask for speech and actions only, no [thoughts]")
    p.add_argument("--export_card", metavar="PATH", help="write the character (book or --card) as a Character Card "
                   "and exit: PATH.png embeds V2 ('chara') and V3 ('ccv3'); PATH.json is --card_spec JSON")
    p.add_argument("--card_spec", choices=("v2", "v3"), default="v2", help="JSON card spec (default %(default)s)")
    p.add_argument("--save_anywhere", action="store_true", help="let /save PATH write outside --out_dir")
    gen = p.add_argument_group("generation")
    gen.add_argument("--model", default=None, help="model name (default: the configured default model; the embedded "
                                                    "offline model 'local' when no key or models are configured)")
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
    if args.export_card and not (args.book_data or args.character or args.card):
        raise InputError("--export_card needs --character (with --book_data) or --card")
    if args.character and not args.test_file and not args.book_data:
        args.book_data = P.default_book_data()
    if args.book_data:
        if not args.character:
            raise InputError("--book_data needs --character NAME (or --list to see who can be played)")
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


def resolve_model(args, settings) -> str:
    """--model, else the configured default model; 'local' only when nothing is configured."""
    if args.model:
        return args.model
    pick = getattr(coser_config, "configured_default_model", None)
    model = pick(settings) if pick is not None else LOCAL_MODEL
    if is_local(model):
        cli.notice("no API key or models configured: chatting with the embedded offline model 'local' "
                   "(configure one in config.json, or pass --model)")
    return model


def print_list(args) -> int:
    from coser.persona import default_book_data, list_characters

    book_data = args.book_data or default_book_data()
    books = list_characters(book_data, args.search)
    if not books:
        print(f"no book or character matches {args.search!r} in {book_data}" if args.search
              else f"{book_data}: no characters", file=sys.stderr)
        return 1
    show = None if args.search else 10
    for b in books:
        chars = b["characters"]
        print(f"{b['book']}  ({len(chars)} character{'s' if len(chars) != 1 else ''})")
        width = max(len(c["name"]) for c in chars[:show])
        for c in chars[:show]:
            print(f"  {c['name']:<{width}}  {c['utterances']:>4} utterances  {c['conversations']:>3} conversations")
        if show and len(chars) > show:
            print(f"  ... and {len(chars) - show} more (--search NAME to see them)")
    print(f"\nchat with one: python chat.py --book_data {book_data} --character NAME", file=sys.stderr)
    return 0


def export_card(args) -> int:
    from coser import cards
    from coser.persona import default_book_data

    if args.card:
        data = cards.load_card(args.card)[1]
    else:
        data, notices = cards.book_card(args.book_data or default_book_data(), args.character, args.book,
                                        thoughtless=args.wo_thought)
        for n in notices:
            cli.notice(n)
    cards.write_card(args.export_card, data, args.card_spec)
    kind = "PNG (V2 'chara' + V3 'ccv3')" if args.export_card.lower().endswith(".png") else args.card_spec.upper()
    print(f"card: {args.export_card} ({kind})", file=sys.stderr)
    return 0


def show_profile(persona, err=sys.stderr) -> None:
    where = f" ({persona.book})" if persona.book else ""
    print(f"== {persona.name}{where} ==", file=err)
    if persona.profile or persona.description:
        print(persona.profile or persona.description, file=err)
    if persona.scenario:
        print(f"\n== Scene ==\n{persona.scenario}", file=err)
    print(file=err)


def main(argv=None) -> int:
    if "--web" in (sys.argv[1:] if argv is None else argv):  # the web app (python -m coser.web) takes the other flags
        from coser.web.app import main as web_main
        return web_main([a for a in (sys.argv[1:] if argv is None else argv) if a != "--web"])
    args = build_parser().parse_args(argv)
    if args.max_new_tokens < 1:
        raise InputError("--max_new_tokens must be at least 1")
    if not args.temperature >= 0 or args.temperature == float("inf"):
        raise InputError("--temperature must be a number, 0 or more")
    if args.max_turns < 0:
        raise InputError("--max_turns must be 0 (no limit) or more")
    if args.search and not args.list:
        raise InputError("--search goes with --list")
    if args.list:
        return print_list(args)
    if args.resume and any(getattr(args, f) for f in ("book_data", "test_file", "system_prompt", "system_file",
                                                      "card", "character", "export_card")):
        raise InputError("--resume continues a saved chat with its own persona: drop the persona flags")
    if args.export_card:
        if args.card and (args.book_data or args.character):
            raise InputError("--export_card: give --card or --character, not both")
        if not (args.card or args.character):
            raise InputError("--export_card needs --character (with --book_data) or --card")
        return export_card(args)
    interactive = sys.stdin.isatty()
    if interactive:
        # Started from a script's background job, SIGINT arrives ignored and Ctrl-C would do nothing;
        # at a terminal it must stop a reply or end the chat (and save the transcript).
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

    from coser.chatsession import ChatSession, COMMANDS_HELP, run

    llm = cli.setup(args)
    resumed = None
    if args.resume:
        resumed = read_json(args.resume, "chat transcript")
    args.model = args.model or (str(resumed.get("model") or "") if isinstance(resumed, dict) else "") \
        or resolve_model(args, llm.settings)
    if not is_local(args.model):
        # Say so before anyone types a line, not after (a models[...] entry may bring its own endpoint and key).
        from coser.endpoints import key_setting, resolve

        if not resolve(llm.settings, args.model).usable(coser_config.PLACEHOLDER_PREFIXES):
            raise ConfigError(f"--model {args.model} needs an API key: set {key_setting(llm.settings, args.model)} "
                              "(or use --model local, the embedded offline model)")
    if resumed is not None:
        session = ChatSession.from_transcript(llm, resumed, args.resume, model=args.model)
        persona = session.persona
    else:
        persona = pick_persona(args, read_line)
        if persona is None:
            print(file=sys.stderr)
            return 0
        session = ChatSession(llm, args.model, persona, max_new_tokens=args.max_new_tokens,
                              temperature=args.temperature, user_role=args.user_role,
                              hide_thoughts=args.hide_thoughts,
                              settings={"max_turns": args.max_turns, "wo_thought": args.wo_thought})
    if args.show_profile:
        show_profile(persona)
    if interactive:
        where = f" from {persona.book}" if persona.book else ""
        print(f"Chatting with {persona.name}{where} on model {args.model}. {COMMANDS_HELP}", file=sys.stderr)
    return run(session, read_line, interactive=interactive, max_turns=args.max_turns, out_dir=args.out_dir,
               save_anywhere=args.save_anywhere)


if __name__ == "__main__":
    cli.main(main)

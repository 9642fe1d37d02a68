"""Personas for chat.py: who the model plays, built from book data, a test item, a raw prompt or a card.

A book or test-set persona gets the evaluation's actor prompt (METHOD 3.3 fixed template, 4.3
agent construction), because that is the prompt layout CoSER models are evaluated with.
Character Card V2 (SillyTavern's "chara_card_v2") import/export lets the same character move
between this tool and the role-play front ends people already use.
"""
from __future__ import annotations

import dataclasses
import difflib
import os
import random
from string import Template

from .errors import InputError
from .io import read_json
from .prompts import get_character_prompt, output_format
from .text import remove_inner_thoughts

# Appended to every actor prompt in GCA agent construction (METHOD 4.3); wording is ours.
CONCISE_RULE = ("Talk the way people actually talk: briefly and to the point, not in long speeches. "
                "Keep each reply under 60 words.")
# Models of the llama/step families were told to prefix their own name (METHOD 4.3).
NAME_PREFIX_RULE = Template("Begin your reply with \"$name: \" and speak only as $name, never for anyone else.")
DEFAULT_SCENARIO = Template("$character is approached by $other, who wants to talk.")
NO_NAME_USER = "someone"

# A card with no system prompt of its own is played through this layout (same sections as
# the fixed template, plus the card's example dialogue).
CARD_PROMPT = Template("You are playing $name.\n\n===$name's Profile===\n$description\n\n$scenario_part"
                       "$examples_part===Requirements===\n$output_format\n\n")
CARD_SCENARIO = Template("===Current Scenario===\n$scenario\n\n")
CARD_EXAMPLES = Template("===Example Dialogue===\n$examples\n\n")
CARD_CREATOR_NOTES = Template("Built by CoSER chat.py from the CoSER book data of \"$book\". Thoughts are written "
                              "in [square brackets] (hidden from others), actions in (parentheses).")


@dataclasses.dataclass
class Persona:
    name: str
    prompt: str                     # the role-play system prompt, before chat-only additions
    source: str                     # book | test | card | system_prompt | typed
    book: str = ""
    scenario: str = ""
    description: str = ""           # short description (book plot entry / card personality)
    profile: str = ""               # the profile text placed in the prompt
    first_mes: str = ""
    alternate_greetings: list = dataclasses.field(default_factory=list)
    mes_example: str = ""
    structured: bool = True         # False: a raw prompt used verbatim, as the reference chat.py did
    greet: bool = False             # open the chat with first_mes (cards); a book line out of context would not fit
    origin: dict = dataclasses.field(default_factory=dict)
    card: dict = dataclasses.field(default_factory=dict)  # an imported card's data, kept as read (re-export)

    def system_prompt(self, model: str) -> str:
        """The system message actually sent (GCA agent construction for structured personas)."""
        if not self.structured:
            return self.prompt
        text = self.prompt.strip("\n") + "\n\n" + CONCISE_RULE + "\n\n"
        if model.lower().startswith(("llama", "step")):
            text += NAME_PREFIX_RULE.substitute(name=self.name) + "\n\n"
        return text

    def summary(self) -> dict:
        return {"name": self.name, "source": self.source, "book": self.book, "scenario": self.scenario,
                **({"origin": self.origin} if self.origin else {})}


# ---- looking things up ---------------------------------------------------------------------------
def _close(word: str, options, n: int = 5) -> list[str]:
    options = list(dict.fromkeys(options))
    lower = {o.lower(): o for o in options}
    hits = [lower[m] for m in difflib.get_close_matches(word.lower(), list(lower), n=n, cutoff=0.6)]
    hits += [o for o in options if word.lower() in o.lower() and o not in hits]
    return hits[:n]


def _match_name(word: str, options) -> list[str]:
    """Exact, then case-insensitive, then case-insensitive substring matches."""
    options = list(options)
    if word in options:
        return [word]
    for test in (lambda o: o.lower() == word.lower(), lambda o: word.lower() in o.lower()):
        hits = [o for o in options if test(o)]
        if hits:
            return hits
    return []


def book_files(book_data: str) -> list[tuple[str, str]]:
    """(book name, path) for a final-book folder or a single final-book file."""
    if not os.path.exists(book_data):
        raise InputError(f"{book_data}: --book_data not found (a folder of final book files, e.g. data/final)")
    if os.path.isfile(book_data):
        return [(os.path.splitext(os.path.basename(book_data))[0], book_data)]
    out = sorted((name[:-5], os.path.join(book_data, name)) for name in os.listdir(book_data)
                 if name.endswith(".json") and not name.startswith("."))
    if not out:
        raise InputError(f"{book_data}: no .json book files in this folder")
    return out


def default_book_data() -> str:
    """data/final when present, else the published book files (../shared/coser-data/final), from here or the repo."""
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for base in (os.curdir, repo):
        for parts in (("data", "final"), (os.pardir, "shared", "coser-data", "final")):
            path = os.path.join(base, *parts)
            if os.path.isdir(path):
                return os.path.normpath(path) if base == os.curdir else os.path.relpath(path)
    return os.path.join("data", "final")


def list_characters(book_data: str, search: str | None = None) -> list[dict]:
    """Books and their characters with utterance and conversation counts, best first.

    search matches a book title or a character name (case-insensitive); books rank by their
    best character, characters by utterances, then conversations.
    """
    files = book_files(book_data)
    out = []
    for name, path in files:
        try:
            data = load_book(path)
        except InputError:
            if len(files) == 1:
                raise
            continue  # other JSON in the folder (test sets, run records)
        needle = (search or "").lower()
        book_hit = bool(needle) and needle in name.lower()
        chars = []
        for cname, entry in data["character_datasets"].items():
            if not isinstance(entry, dict) or cname == "Environment":
                continue
            if needle and not book_hit and needle not in cname.lower():
                continue
            utter = len([u for u in entry.get("utterances") or [] if isinstance(u, dict)])
            convs = len([c for c in entry.get("conversations") or [] if isinstance(c, dict)])
            chars.append({"name": cname, "utterances": utter, "conversations": convs})
        if not chars:
            continue
        chars.sort(key=lambda c: (-c["utterances"], -c["conversations"], c["name"]))
        out.append({"book": name, "path": path, "characters": chars})
    out.sort(key=lambda b: (-b["characters"][0]["utterances"], b["book"]))
    return out


def load_book(path: str) -> dict:
    data = read_json(path, "final book file")
    if not isinstance(data, dict) or not isinstance(data.get("character_datasets"), dict):
        raise InputError(f"{path}: field 'character_datasets' missing: not a final book file (data/final/*.json)")
    if not isinstance(data.get("plots"), list):
        raise InputError(f"{path}: field 'plots' missing or not a list")
    return data


def find_character(book_data: str, character: str, book: str | None = None) -> tuple[str, dict, str]:
    """(book name, book data, exact character name); one-line errors list close matches."""
    files = book_files(book_data)
    if book:
        names = _match_name(book, [b for b, _ in files])
        if not names:
            near = _close(book, [b for b, _ in files])
            raise InputError(f"--book {book!r} not found in {book_data}"
                             + (f"; close matches: {', '.join(near)}" if near else ""))
        files = [(b, p) for b, p in files if b in names]
    books = {}
    for name, path in files:
        if len(files) > 1:
            # A folder may hold other JSON (test sets, run records): only final books count.
            try:
                books[name] = load_book(path)
            except InputError:
                continue
        else:
            books[name] = load_book(path)
    if not books:
        raise InputError(f"{book_data}: no final book files (with 'character_datasets') found")
    found = []
    for name, data in books.items():
        for hit in _match_name(character, data["character_datasets"]):
            found.append((name, data, hit))
    exact = [f for f in found if f[2] == character] or [f for f in found if f[2].lower() == character.lower()]
    found = exact or found
    if not found:
        every = [c for d in books.values() for c in d["character_datasets"]]
        near = _close(character, every)
        where = f"--book {book!r}" if book else book_data
        raise InputError(f"character {character!r} not found in {where}"
                         + (f"; close matches: {', '.join(near)}" if near else "; no close matches"))
    if len({f[2] for f in found}) > 1:
        names = sorted({f[2] for f in found})
        more = f" and {len(names) - 8} more" if len(names) > 8 else ""
        raise InputError(f"character {character!r} is ambiguous: {', '.join(names[:8])}{more}; give the full name")
    if len(found) > 1:
        raise InputError(f"character {found[0][2]!r} appears in {len(found)} books; pick one with --book: "
                         + " | ".join(f[0] for f in found))
    return found[0]


# ---- book personas ------------------------------------------------------------------------------
def _plot_description(entry: dict, i_p) -> str:
    plots = [p for p in entry.get("plots") or [] if isinstance(p, dict)]
    for p in plots:
        if p.get("i_p") == i_p and p.get("description"):
            return str(p["description"])
    for p in plots:
        if p.get("description"):
            return str(p["description"])
    return ""


def involved_profile(description: str, profile: str) -> str:
    """METHOD 4.3 step 2: description, a blank line, then the profile."""
    text = profile.strip("\n")
    if description:
        text = description.strip("\n") + "\n\n" + text
    return text.strip(" \n")


def _conversation(data: dict, i_p, i_c) -> dict | None:
    try:
        conv = data["plots"][i_p]["conversation"][i_c]
    except (IndexError, KeyError, TypeError):
        return None
    return conv if isinstance(conv, dict) else None


def _features(conv: dict, character: str) -> bool:
    people = [k.get("name") for k in conv.get("key_characters") or [] if isinstance(k, dict)]
    people += [d.get("character") for d in conv.get("dialogues") or [] if isinstance(d, dict)]
    return character in people


def book_scene(data: dict, character: str) -> dict:
    """The character's first conversation in the book: scenario, motivation, plot summary, indices."""
    entry = data["character_datasets"][character]
    for conv_entry in entry.get("conversations") or []:
        if not isinstance(conv_entry, dict):
            continue
        i_p, i_c = conv_entry.get("i_p"), conv_entry.get("i_c")
        conv = _conversation(data, i_p, i_c)
        if conv is None or not conv.get("scenario") or not _features(conv, character):
            continue  # a stale back-reference (METHOD 6: unfiltered plots saved) must not pick a foreign scene
        return {"scenario": str(conv["scenario"]),
                # Code-produced files say 'motivation', the published ones 'thought' (METHOD 1.6).
                "motivation": str(conv_entry.get("motivation") or conv_entry.get("thought") or ""),
                "summary": str(data["plots"][i_p].get("summary") or ""), "i_p": i_p, "i_c": i_c}
    return {"scenario": "", "motivation": "", "summary": "", "i_p": None, "i_c": None}


def _utterance_lines(data: dict, character: str) -> list[tuple[str, str, str]]:
    """(previous speaker, previous message, own message) for the character's utterances, in book order."""
    out = []
    for u in data["character_datasets"][character].get("utterances") or []:
        if not isinstance(u, dict) or not u.get("message"):
            continue
        conv = _conversation(data, u.get("i_p"), u.get("i_c"))
        prev_name, prev_msg = "", ""
        i_u = u.get("i_u")
        if conv is not None and isinstance(i_u, int) and i_u > 0:
            dialogues = conv.get("dialogues") or []
            if i_u - 1 < len(dialogues) and isinstance(dialogues[i_u - 1], dict):
                prev = dialogues[i_u - 1]
                prev_name = str(prev.get("character") or prev.get("name") or "")
                prev_msg = str(prev.get("message") or "")
        out.append((prev_name, prev_msg, str(u["message"])))
    return out


def example_dialogue(data: dict, character: str, n: int = 3) -> str:
    """Card-style example exchanges taken from the book: another speaker's line, then the character's."""
    blocks = []
    for prev_name, prev_msg, own in _utterance_lines(data, character):
        if not prev_msg or prev_name in ("", character):
            continue
        # Others' thoughts are invisible to the character; its own stay, to show the format.
        other = prev_msg if prev_name == "Environment" else remove_inner_thoughts(prev_msg)
        blocks.append(f"<START>\n{prev_name}: {other}\n{{{{char}}}}: {own}")
        if len(blocks) == n:
            break
    return "\n".join(blocks)


def greetings(data: dict, character: str, n: int = 4) -> list[str]:
    """Openers from the book: the character's first line in each of its conversations, thoughts removed."""
    seen, out = set(), []
    for u in data["character_datasets"][character].get("utterances") or []:
        if not isinstance(u, dict) or not u.get("message"):
            continue
        key = (u.get("i_p"), u.get("i_c"))
        if key in seen:
            continue
        seen.add(key)
        text = remove_inner_thoughts(str(u["message"]))
        if text:
            out.append(text)
        if len(out) == n:
            break
    return out


def build_book_persona(book_data: str, character: str, book: str | None = None, scenario: str | None = None,
                       user_role: str | None = None, model: str = "", thoughtless: bool = False) -> Persona:
    """The GCA actor prompt for a character of a final book file (either layout)."""
    book_name, data, name = find_character(book_data, character, book)
    entry = data["character_datasets"][name]
    if not isinstance(entry, dict):
        raise InputError(f"{book_data}: character_datasets[{name!r}] is not an object")
    scene = book_scene(data, name)
    if scenario:
        # A new scene: the book's motivation belonged to the old one.
        scene = {**scene, "scenario": scenario, "motivation": ""}
    if not scene["scenario"]:
        scene["scenario"] = DEFAULT_SCENARIO.substitute(character=name, other=user_role or NO_NAME_USER)
    description = _plot_description(entry, scene["i_p"])
    profile = involved_profile(description, str(entry.get("profile") or ""))
    others = {name: profile}
    if user_role and user_role != name:
        other_hits = _match_name(user_role, data["character_datasets"])
        if user_role in other_hits or len(other_hits) == 1:
            other = user_role if user_role in other_hits else other_hits[0]
            o_entry = data["character_datasets"][other]
            others[user_role] = involved_profile(_plot_description(o_entry, scene["i_p"]),
                                                 str(o_entry.get("profile") or ""))
    prompt = get_character_prompt(book_name, name, profile, scene["summary"], scene["scenario"], scene["motivation"],
                                  thoughtless=thoughtless, other_character_profiles=others,
                                  exclude_plot_summary=True, fixed_template=True,
                                  add_output_example="coser" not in model.lower(), rng=random.Random(0))
    from .cards import checked_greetings

    openers = checked_greetings(data, name)[0]
    return Persona(name=name, prompt=prompt, source="book", book=book_name, scenario=scene["scenario"],
                   description=description, profile=profile, first_mes=openers[0] if openers else "",
                   alternate_greetings=openers[1:], mes_example=example_dialogue(data, name),
                   origin={"book_data": book_data, "i_p": scene["i_p"], "i_c": scene["i_c"]})


# ---- test-set personas --------------------------------------------------------------------------
def build_test_persona(test_file: str, sample: int, character: str | None, model: str = "",
                       thoughtless: bool = False) -> Persona:
    """Step into test item `sample` as `character`, with the prompt GCA simulation gives that actor."""
    items = read_json(test_file, "test set")
    if not isinstance(items, list) or not items:
        raise InputError(f"{test_file}: expected a non-empty JSON list of test items")
    if not 0 <= sample < len(items):
        raise InputError(f"{test_file}: --sample {sample} out of range (0..{len(items) - 1})")
    item = items[sample]
    where = f"{test_file}: item {sample}"
    if not isinstance(item, dict):
        raise InputError(f"{where}: not an object")
    for key in ("scenario", "book", "plot"):
        if key not in item:
            raise InputError(f"{where}: field '{key}' missing")
    profiles = item.get("character_profiles") or {}
    if not isinstance(profiles, dict):
        raise InputError(f"{where}: field 'character_profiles' should be an object of name -> profile")
    for c, text in profiles.items():
        if text is not None and not isinstance(text, str):
            raise InputError(f"{where}: field 'character_profiles.{c}' should be str, got {type(text).__name__}")
    speaking = item.get("speaking_characters_w_env") or []
    if not isinstance(speaking, list) or not all(isinstance(c, str) for c in speaking):
        raise InputError(f"{where}: field 'speaking_characters_w_env' should be a list of names")
    speakers = [c for c in speaking if c != "Environment"]
    plot = item["plot"] if isinstance(item["plot"], dict) else {}
    plot_chars = {k.get("name"): k for k in plot.get("key_characters") or [] if isinstance(k, dict)}
    candidates = list(dict.fromkeys(speakers + list(profiles)))
    if not character:
        raise InputError(f"{where}: --character is required with --test_file; choose from: {', '.join(candidates)}")
    hits = _match_name(character, candidates)
    if len(hits) != 1:
        near = hits or _close(character, candidates)
        raise InputError(f"{where}: character {character!r} not in this item"
                         + (f"; close matches: {', '.join(near)}" if near else f"; choose from: {', '.join(candidates)}"))
    name = hits[0]

    def involved(c):
        desc = plot_chars.get(c, {}).get("description") or ""
        return involved_profile(str(desc), str(profiles.get(c, "")))

    involved_profiles = {c: involved(c) for c in speakers if involved(c)}
    motivation = ""
    for k in item.get("key_characters") or []:
        if isinstance(k, dict) and k.get("name") == name:
            # The evaluator reads only 'motivation'; chat also takes the published 'thought'.
            motivation = str(k.get("motivation") or k.get("thought") or "")
            break
    profile = involved_profiles.get(name, "")
    prompt = get_character_prompt(str(item["book"]), name, profile, str(plot.get("summary") or ""),
                                  str(item["scenario"]), motivation, thoughtless=thoughtless,
                                  other_character_profiles=involved_profiles, exclude_plot_summary=True,
                                  fixed_template=True, add_output_example="coser" not in model.lower(),
                                  rng=random.Random(0))
    return Persona(name=name, prompt=prompt, source="test", book=str(item["book"]), scenario=str(item["scenario"]),
                   description=str(plot_chars.get(name, {}).get("description") or ""), profile=profile,
                   origin={"test_file": test_file, "sample": sample, "i_p": item.get("i_p"), "i_c": item.get("i_c")})


def raw_persona(prompt: str, source: str, name: str = "") -> Persona:
    """A system prompt used verbatim (original characters, any format)."""
    return Persona(name=name or "Character", prompt=prompt, source=source, structured=False)


# ---- Character Card V2 ---------------------------------------------------------------------------
def to_card(persona: Persona, spec: str = "v2") -> dict:
    """A Character Card (V2 or V3) for a persona: built from the book for book personas (coser.cards)."""
    from .cards import book_card, card_dict, tidy

    if persona.card:
        return card_dict(persona.card, spec)
    if persona.source == "book" and persona.origin.get("book_data"):
        return card_dict(book_card(persona.origin["book_data"], persona.name, persona.book or None)[0], spec)
    data = {"name": persona.name, "description": tidy(persona.profile or persona.prompt),
            "personality": tidy(persona.description) if persona.profile else "", "scenario": tidy(persona.scenario),
            "first_mes": tidy(persona.first_mes), "mes_example": tidy(persona.mes_example),
            "creator_notes": CARD_CREATOR_NOTES.substitute(book=persona.book) if persona.book else "",
            "system_prompt": "", "post_history_instructions": "",
            "alternate_greetings": list(persona.alternate_greetings),
            "tags": ["CoSER", persona.book] if persona.book else ["CoSER"], "creator": "CoSER chat.py",
            "character_version": "1.0", "extensions": {"coser": {"source": persona.source, **persona.origin}}}
    return card_dict(data, spec)


def read_card(path: str) -> dict:
    """The card's data fields (V2/V3 'data' object, or a V1 card's fields), from JSON or PNG."""
    from .cards import load_card

    return load_card(path)[1]


def _macros(text: str, name: str, user: str) -> str:
    for k, v in (("{{char}}", name), ("<BOT>", name), ("{{user}}", user), ("<USER>", user), ("{{original}}", "")):
        text = text.replace(k, v)
    return text


def card_persona(path: str, user_role: str | None = None, thoughtless: bool = False) -> Persona:
    """Play a card as front ends do: its profile, scenario and examples, under its system prompt if any.

    A card's `system_prompt` replaces only our requirements section (as SillyTavern's main prompt
    does); the profile and scene are still given, so a card that keeps them apart is played whole.
    """
    data = read_card(path)
    name = data["name"].strip()
    user = user_role or "User"
    fill = lambda key: _macros(str(data.get(key) or ""), name, user).strip()  # noqa: E731
    description = "\n\n".join(x for x in (fill("description"), fill("personality")) if x)
    prompt = CARD_PROMPT.substitute(
        name=name, description=description,
        scenario_part=CARD_SCENARIO.substitute(scenario=fill("scenario")) if fill("scenario") else "",
        examples_part=CARD_EXAMPLES.substitute(examples=fill("mes_example")) if fill("mes_example") else "",
        output_format=fill("system_prompt") or output_format(thoughtless))
    ext = data.get("extensions") if isinstance(data.get("extensions"), dict) else {}
    book = str((ext.get("coser") or {}).get("book") or "") if isinstance(ext.get("coser"), dict) else ""
    return Persona(name=name, prompt=prompt, source="card", book=book, scenario=fill("scenario"),
                   description=fill("personality"), profile=fill("description"), first_mes=fill("first_mes"),
                   alternate_greetings=[_macros(g, name, user) for g in data.get("alternate_greetings") or []],
                   mes_example=fill("mes_example"), greet=bool(fill("first_mes")), origin={"card": path},
                   card=data)

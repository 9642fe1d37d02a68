"""Character Card V2/V3 (SillyTavern, RisuAI) for CoSER book characters: build, write as JSON or PNG, read.

A card built here puts each piece of the book data in the field front ends expect, once:
`description` the profile, `personality` the character's one-line description, `scenario` the
first scene and the character's motivation in it, `first_mes`/`alternate_greetings` the
character's own opening lines (checked against the speaker in the book's dialogue),
`mes_example` book exchanges as `{{user}}:`/`{{char}}:`, `system_prompt` only the CoSER
output rules, and `character_book` a lorebook of the plots the character took part in, keyed by
the names and places each mentions. PNG cards carry the JSON base64-encoded in tEXt chunks:
`chara` (V2) and `ccv3` (V3), as SillyTavern writes them.

API: book_card(...) -> (data, notices); card_dict(data, spec); write_card(path, data, spec);
load_card(path) -> (spec, data). `data` is the card's inner `data` object (V3 field set).
"""
from __future__ import annotations

import base64
import copy
import json
import os
import re
import struct
import tempfile
import zlib

from .errors import InputError, OutputError
from .io import read_json, write_problem
from .persona import CONCISE_RULE, book_scene, find_character, _conversation, _plot_description
from .prompts import output_format
from .text import remove_inner_thoughts

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
V2_FIELDS = ("name", "description", "personality", "scenario", "first_mes", "mes_example", "creator_notes",
             "system_prompt", "post_history_instructions", "alternate_greetings", "character_book", "tags",
             "creator", "character_version", "extensions")
V3_ONLY_FIELDS = ("assets", "nickname", "creator_notes_multilingual", "source", "group_only_greetings",
                  "creation_date", "modification_date")
TEXT_FIELDS = ("name", "description", "personality", "scenario", "first_mes", "mes_example", "creator_notes",
               "system_prompt", "post_history_instructions", "creator", "character_version")
CARD_SYSTEM_PROMPT = ("You are {{char}} from \"$book\". Stay in character and speak only as {{char}}, never for "
                      "{{user}}.\n\n$rules\n\n$concise")
CARD_CREATOR_NOTES = ("Built by CoSER chat.py from the CoSER book data of \"$book\". Thoughts are written in "
                      "[square brackets] (hidden from others), actions in (parentheses). The lorebook holds the "
                      "plots $name took part in.")
_BLANK_RUNS = re.compile(r"\n[ \t]*\n(?:[ \t]*\n)+")
_CAPITAL = re.compile(r"\b[A-Z][a-z'’]+(?:\s+(?:of|de|the|upon)?\s*[A-Z][a-z'’]+)*")
_NOT_PLACES = {"The", "A", "An", "He", "She", "They", "His", "Her", "Their", "It", "In", "On", "At", "As", "After",
               "Before", "When", "While", "With", "This", "That", "These", "Those", "But", "And", "Meanwhile",
               "Later", "Then", "Sir", "Lady", "Lord", "Act", "Scene", "Chapter", "I", "Mr", "Mrs", "Miss",
               "Despite", "During", "Upon", "Through", "Although", "However", "Once", "Having", "Both", "Each"}


def tidy(text: str) -> str:
    """No runs of blank lines, no trailing spaces on lines, no blank start or end."""
    text = "\n".join(line.rstrip() for line in str(text or "").replace("\r\n", "\n").split("\n"))
    return _BLANK_RUNS.sub("\n\n", text).strip("\n")


# ---- building a card from a book ------------------------------------------------------------------
def _own_name_spoken(speech: str, name: str) -> bool:
    """True when a line addresses the speaker by their own name ('That thou, Iago, ...'): likely misattributed."""
    parts = [p for p in re.split(r"\s+", name) if len(p) > 2]
    return any(re.search(rf"\b{re.escape(p)}\b", speech) for p in parts)


def checked_greetings(data: dict, character: str, n: int = 4) -> tuple[list[str], list[str]]:
    """The character's first line in each conversation, if the dialogue agrees on the speaker; plus notices."""
    seen, out, notices = set(), [], []
    for u in data["character_datasets"][character].get("utterances") or []:
        if not isinstance(u, dict) or not u.get("message"):
            continue
        key = (u.get("i_p"), u.get("i_c"))
        if key in seen:
            continue
        seen.add(key)
        speech = tidy(remove_inner_thoughts(str(u["message"])))
        if not speech:
            continue
        conv = _conversation(data, u.get("i_p"), u.get("i_c"))
        i_u = u.get("i_u")
        said_by = None
        if conv is not None and isinstance(i_u, int) and 0 <= i_u < len(conv.get("dialogues") or []):
            d = conv["dialogues"][i_u]
            said_by = d.get("character") if isinstance(d, dict) else None
        where = f"plot {u.get('i_p')}, conversation {u.get('i_c')}"
        if said_by is not None and said_by != character:
            notices.append(f"greeting skipped ({where}): the dialogue gives this line to {said_by}")
            continue
        if _own_name_spoken(speech, character):
            notices.append(f"greeting skipped ({where}): {character} is addressed by name in it, so the line "
                           "is probably another speaker's")
            continue
        out.append(speech)
        if len(out) == n:
            break
    return out, notices


def card_examples(data: dict, character: str, n: int = 3) -> str:
    """Book exchanges as card examples: the other speaker as {{user}}, the character as {{char}}."""
    blocks = []
    for u in data["character_datasets"][character].get("utterances") or []:
        if not isinstance(u, dict) or not u.get("message"):
            continue
        conv = _conversation(data, u.get("i_p"), u.get("i_c"))
        i_u = u.get("i_u")
        if conv is None or not isinstance(i_u, int) or i_u < 1:
            continue
        dialogues = conv.get("dialogues") or []
        if i_u >= len(dialogues) or not isinstance(dialogues[i_u - 1], dict):
            continue
        prev, own = dialogues[i_u - 1], dialogues[i_u]
        prev_name = prev.get("character")
        if prev_name in (None, "", "Environment", character) or not isinstance(own, dict) \
                or own.get("character") != character:
            continue
        other = tidy(remove_inner_thoughts(str(prev.get("message") or "")))
        mine = tidy(str(u["message"]))
        if other and mine:
            blocks.append(f"<START>\n{{{{user}}}}: {other}\n{{{{char}}}}: {mine}")
        if len(blocks) == n:
            break
    return "\n".join(blocks)


def _mentions(text: str, names: list[str], own: str) -> list[str]:
    keys = []
    for other in names:
        if other != own and other != "Environment" and re.search(rf"\b{re.escape(other)}\b", text):
            keys.append(other)
    covered = " ".join(keys + [own])
    for m in _CAPITAL.finditer(text):
        before = text[:m.start()].rstrip()
        if not before or before.endswith((".", "!", "?", ":", ";", "\"", "“")):
            continue  # a capital at a sentence start says nothing
        word = re.sub(r"['’]s$", "", m.group(0).strip())
        if word in _NOT_PLACES or word.split()[0] in _NOT_PLACES or word in covered or len(word) < 4 \
                or any(k in word for k in keys + [own]):
            continue
        if word not in keys:
            keys.append(word)
    return keys[:10]


def lorebook(data: dict, character: str, book: str) -> dict:
    """A character_book: one entry per plot the character is in (its summary and their experience)."""
    entry = data["character_datasets"][character]
    names = sorted(data["character_datasets"], key=len, reverse=True)
    entries = []
    for p in entry.get("plots") or []:
        if not isinstance(p, dict) or not isinstance(p.get("i_p"), int):
            continue
        i_p = p["i_p"]
        plot = data["plots"][i_p] if 0 <= i_p < len(data["plots"]) and isinstance(data["plots"][i_p], dict) else {}
        summary, experience = tidy(plot.get("summary") or ""), tidy(p.get("experience") or "")
        content = tidy("\n\n".join(x for x in (summary, f"{character}'s part: {experience}" if experience else "") if x))
        if not content:
            continue
        keys = _mentions(f"{summary} {experience}", names, character)
        if not keys:
            continue  # an entry without keys would never fire
        title = tidy(plot.get("chapter") or "")
        if title.lower() in ("", "none", "null"):
            title = f"Plot {i_p}"
        entries.append({"keys": keys, "content": content, "extensions": {}, "enabled": True,
                        "insertion_order": len(entries), "case_sensitive": False, "use_regex": False,
                        "constant": False, "name": title[:80], "priority": 10, "id": len(entries),
                        "comment": f"{book}: {title[:80]}", "selective": False, "secondary_keys": [],
                        "position": "after_char"})
    return {"name": f"{character} in {book}", "description": f"What {character} lived through in {book}.",
            "scan_depth": 4, "token_budget": 1024, "recursive_scanning": False, "extensions": {}, "entries": entries}


def book_card(book_data: str, character: str, book: str | None = None,
              thoughtless: bool = False) -> tuple[dict, list[str]]:
    """The card data (V3 field set) for a book character, and notices about skipped greetings."""
    book_name, data, name = find_character(book_data, character, book)
    entry = data["character_datasets"][name]
    if not isinstance(entry, dict):
        raise InputError(f"{book_data}: character_datasets[{name!r}] is not an object")
    scene = book_scene(data, name)
    scenario = tidy(scene["scenario"])
    if scene["motivation"]:
        scenario = tidy(f"{scenario}\n\n{{{{char}}}}'s state of mind: {scene['motivation']}")
    openers, notices = checked_greetings(data, name)
    from string import Template

    card = {
        "name": name,
        "description": tidy(entry.get("profile") or ""),
        "personality": tidy(_plot_description(entry, scene["i_p"])),
        "scenario": scenario,
        "first_mes": openers[0] if openers else "",
        "mes_example": card_examples(data, name),
        "creator_notes": Template(CARD_CREATOR_NOTES).substitute(book=book_name, name=name),
        "system_prompt": tidy(Template(CARD_SYSTEM_PROMPT).substitute(
            book=book_name, rules=output_format(thoughtless), concise=CONCISE_RULE)),
        "post_history_instructions": "",
        "alternate_greetings": openers[1:],
        "character_book": lorebook(data, name, book_name),
        "tags": ["CoSER", book_name],
        "creator": "CoSER chat.py",
        "character_version": "1.0",
        "extensions": {"coser": {"book": book_name, "character": name, "i_p": scene["i_p"], "i_c": scene["i_c"]}},
        "assets": [{"type": "icon", "uri": "ccdefault:", "name": "main", "ext": "png"}],
        "group_only_greetings": [],
    }
    return card, notices


# ---- the two specs --------------------------------------------------------------------------------
def _book_v2(book: dict | None) -> dict | None:
    if not isinstance(book, dict):
        return book
    out = copy.deepcopy(book)
    for e in out.get("entries") or []:
        if isinstance(e, dict) and e.get("use_regex") is False:
            e.pop("use_regex")  # V3-only; a V2 reader would not know it
    return out


def card_dict(data: dict, spec: str = "v2") -> dict:
    """The whole card: {'spec', 'spec_version', 'data'} for spec 'v2' or 'v3'."""
    if spec == "v3":
        d = copy.deepcopy(data)
        d.setdefault("assets", [{"type": "icon", "uri": "ccdefault:", "name": "main", "ext": "png"}])
        d.setdefault("group_only_greetings", [])
        book = d.get("character_book")
        for e in (book.get("entries") or []) if isinstance(book, dict) else []:
            if isinstance(e, dict):
                e.setdefault("use_regex", False)  # required in V3 entries
        return {"spec": "chara_card_v3", "spec_version": "3.0", "data": d}
    if spec != "v2":
        raise InputError(f"card spec must be v2 or v3, got {spec!r}")
    d = {k: copy.deepcopy(v) for k, v in data.items() if k not in V3_ONLY_FIELDS}
    if "character_book" in d:
        d["character_book"] = _book_v2(d["character_book"])
        if d["character_book"] is None:
            d.pop("character_book")
    return {"spec": "chara_card_v2", "spec_version": "2.0", "data": d}


# ---- PNG ------------------------------------------------------------------------------------------
def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def _text_chunk(key: str, card: dict) -> bytes:
    payload = base64.b64encode(json.dumps(card, ensure_ascii=False).encode("utf-8"))
    return _chunk(b"tEXt", key.encode("latin-1") + b"\0" + payload)


def portrait(name: str, size: int = 256) -> bytes:
    """A plain generated image (an RGB gradient tinted by the name) as PNG image chunks."""
    seed = zlib.crc32(name.encode("utf-8"))
    base = ((seed >> 16) & 0xFF, (seed >> 8) & 0xFF, seed & 0xFF)
    rows = []
    for y in range(size):
        shade = 0.55 + 0.45 * (1 - y / size)
        pixel = bytes(int(c * shade) for c in base)
        rows.append(b"\0" + pixel * size)
    ihdr = struct.pack(">IIBBBBB", size, size, 8, 2, 0, 0, 0)
    return _chunk(b"IHDR", ihdr), _chunk(b"IDAT", zlib.compress(b"".join(rows), 9))


def png_bytes(data: dict) -> bytes:
    """A PNG card with both chunks: 'chara' (V2) and 'ccv3' (V3)."""
    ihdr, idat = portrait(str(data.get("name") or "card"))
    return (PNG_SIGNATURE + ihdr + _text_chunk("chara", card_dict(data, "v2"))
            + _text_chunk("ccv3", card_dict(data, "v3")) + idat + _chunk(b"IEND", b""))


def png_text_chunks(raw: bytes, where: str = "PNG") -> dict[str, bytes]:
    if not raw.startswith(PNG_SIGNATURE):
        raise InputError(f"{where}: not a PNG file")
    pos, found = 8, {}
    while pos + 8 <= len(raw):
        length, kind = struct.unpack(">I4s", raw[pos:pos + 8])
        body = raw[pos + 8:pos + 8 + length]
        if kind == b"tEXt" and b"\0" in body:
            key, _, value = body.partition(b"\0")
            found[key.decode("latin-1")] = value
        if kind == b"IEND":
            break
        pos += 12 + length
    return found


def _write_bytes(path: str, blob: bytes) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".png", dir=folder)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(blob)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
    except OSError as e:
        raise OutputError(f"{path}: cannot write: {write_problem(e)}") from None


def write_card(path: str, data: dict, spec: str = "v2") -> str:
    """A .png path gets a PNG card (both chunks); anything else the JSON of the given spec."""
    if path.lower().endswith(".png"):
        _write_bytes(path, png_bytes(data))
    else:
        from .io import atomic_write_json

        atomic_write_json(path, card_dict(data, spec))
    return path


# ---- reading --------------------------------------------------------------------------------------
def load_card(path: str) -> tuple[str, dict]:
    """(spec 'v1'|'v2'|'v3', data) from a JSON or PNG card; the data object is kept as written."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise InputError(f"{path}: --card file not found") from None
    except OSError as e:
        raise InputError(f"{path}: cannot read --card ({e.strerror})") from None
    if raw.startswith(PNG_SIGNATURE):
        chunks = png_text_chunks(raw, path)
        for key in ("ccv3", "chara"):
            if key in chunks:
                try:
                    card = json.loads(base64.b64decode(chunks[key], validate=False).decode("utf-8"))
                except (ValueError, UnicodeDecodeError, RecursionError):
                    raise InputError(f"{path}: PNG text chunk '{key}' is not base64 JSON") from None
                break
        else:
            raise InputError(f"{path}: PNG has no character card ('chara' or 'ccv3' text chunk)")
    else:
        card = read_json(path, "character card")
    if not isinstance(card, dict):
        raise InputError(f"{path}: a character card must be a JSON object")
    if "spec" in card:
        spec = {"chara_card_v2": "v2", "chara_card_v3": "v3"}.get(card["spec"])
        if spec is None:
            raise InputError(f"{path}: field 'spec' is {card['spec']!r}, expected 'chara_card_v2' or 'chara_card_v3'")
        data = card.get("data")
        if not isinstance(data, dict):
            raise InputError(f"{path}: field 'data' missing or not an object")
    else:
        spec = "v1"  # V1: the six fields sit at the top level
        data = {k: card.get(k, "") for k in ("name", "description", "personality", "scenario", "first_mes",
                                             "mes_example")}
        data.update({"creator_notes": "", "system_prompt": "", "post_history_instructions": "",
                     "alternate_greetings": [], "tags": [], "creator": "", "character_version": "",
                     "extensions": {}})
    name = data.get("name")
    if not isinstance(name, str) or not name.strip():
        raise InputError(f"{path}: field 'data.name' missing or empty")
    for key in TEXT_FIELDS:
        if data.get(key) is not None and not isinstance(data[key], str):
            raise InputError(f"{path}: field 'data.{key}' must be a string")
    for key in ("alternate_greetings", "tags"):
        if data.get(key) is not None and not (isinstance(data[key], list)
                                             and all(isinstance(x, str) for x in data[key])):
            raise InputError(f"{path}: field 'data.{key}' must be a list of strings")
    if data.get("extensions") is not None and not isinstance(data["extensions"], dict):
        raise InputError(f"{path}: field 'data.extensions' must be an object")
    return spec, data

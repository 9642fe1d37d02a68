"""Character Cards V2/V3 (SillyTavern, RisuAI): export from the published books as JSON and PNG, import V1/V2/V3,
round trips. Field lists are written here from the public specs, not taken from the code under test."""
import base64
import json
import re
import struct
import zlib

import pytest

from coser.cards import load_card, png_text_chunks
from coser.errors import InputError
from tests.conftest import run_script, shared_path

CHAT = "chat.py"

# Character Card V2 (github.com/malfoyslastname/character-card-spec-v2): data fields and their JSON types.
V2_DATA = {"name": str, "description": str, "personality": str, "scenario": str, "first_mes": str,
           "mes_example": str, "creator_notes": str, "system_prompt": str, "post_history_instructions": str,
           "alternate_greetings": list, "tags": list, "creator": str, "character_version": str, "extensions": dict}
V2_OPTIONAL = {"character_book": dict}
V2_BOOK = {"extensions": dict, "entries": list}
V2_BOOK_OPTIONAL = {"name": str, "description": str, "scan_depth": int, "token_budget": int,
                    "recursive_scanning": bool}
V2_ENTRY = {"keys": list, "content": str, "extensions": dict, "enabled": bool, "insertion_order": int}
V2_ENTRY_OPTIONAL = {"case_sensitive": bool, "name": str, "priority": int, "id": int, "comment": str,
                     "selective": bool, "secondary_keys": list, "constant": bool, "position": str}
# Character Card V3 (github.com/kwaroran/character-card-spec-v3): V2's fields plus these.
V3_DATA = {**V2_DATA, "group_only_greetings": list}
V3_OPTIONAL = {**V2_OPTIONAL, "assets": list, "nickname": str, "creator_notes_multilingual": dict, "source": list,
               "creation_date": int, "modification_date": int}
V3_ENTRY = {**V2_ENTRY, "use_regex": bool}


def _check(obj, required, optional, where):
    for k, t in required.items():
        assert k in obj, f"{where}: required field {k} missing"
        assert isinstance(obj[k], t), f"{where}: {k} should be {t.__name__}"
    for k, t in optional.items():
        if k in obj:
            assert isinstance(obj[k], t), f"{where}: {k} should be {t.__name__}"
    extra = set(obj) - set(required) - set(optional)
    assert not extra, f"{where}: fields outside the spec: {extra}"


def validate(card, spec):
    if spec == "v2":
        assert card["spec"] == "chara_card_v2" and card["spec_version"] == "2.0"
        data_req, data_opt, entry_req = V2_DATA, V2_OPTIONAL, V2_ENTRY
    else:
        assert card["spec"] == "chara_card_v3" and card["spec_version"] == "3.0"
        data_req, data_opt, entry_req = V3_DATA, V3_OPTIONAL, V3_ENTRY
    assert set(card) == {"spec", "spec_version", "data"}
    d = card["data"]
    _check(d, data_req, data_opt, f"{spec} data")
    assert all(isinstance(x, str) for x in d["alternate_greetings"] + d["tags"])
    if "character_book" in d:
        _check(d["character_book"], V2_BOOK, V2_BOOK_OPTIONAL, f"{spec} character_book")
        for e in d["character_book"]["entries"]:
            _check(e, entry_req, V2_ENTRY_OPTIONAL, f"{spec} entry")
            assert e["keys"] and all(isinstance(k, str) for k in e["keys"])
            assert e.get("position", "before_char") in ("before_char", "after_char")
    for a in d.get("assets", []):
        assert set(a) >= {"type", "uri", "name", "ext"}


def png_cards(path):
    chunks = png_text_chunks(path.read_bytes(), str(path))
    return {k: json.loads(base64.b64decode(v).decode("utf-8")) for k, v in chunks.items()}


def png_is_wellformed(raw):
    """Every chunk's CRC is right, IHDR comes first and IEND last (what image viewers check)."""
    assert raw[:8] == b"\x89PNG\r\n\x1a\n"
    pos, kinds = 8, []
    while pos < len(raw):
        length, kind = struct.unpack(">I4s", raw[pos:pos + 8])
        body = raw[pos + 8:pos + 8 + length]
        (crc,) = struct.unpack(">I", raw[pos + 8 + length:pos + 12 + length])
        assert crc == zlib.crc32(kind + body) & 0xFFFFFFFF
        kinds.append(kind)
        pos += 12 + length
    assert kinds[0] == b"IHDR" and kinds[-1] == b"IEND" and b"IDAT" in kinds


def test_png_card_of_a_published_character_round_trips_and_validates(tmp_path):
    final = shared_path("final")
    png, again = tmp_path / "iago.png", tmp_path / "again.png"
    r = run_script([CHAT, "--book_data", final, "--character", "Iago", "--export_card", png], timeout=120)
    assert r.returncode == 0, r.stderr
    assert "note: greeting skipped (plot 0, conversation 0)" in r.stderr  # the line that is Roderigo's in the play
    png_is_wellformed(png.read_bytes())
    cards = png_cards(png)
    assert set(cards) == {"chara", "ccv3"}
    validate(cards["chara"], "v2")
    validate(cards["ccv3"], "v3")
    # import, then export again: the same card, byte for byte
    r = run_script([CHAT, "--card", png, "--export_card", again], timeout=120)
    assert r.returncode == 0, r.stderr
    assert png_cards(again) == cards and again.read_bytes() == png.read_bytes()
    spec, data = load_card(str(png))
    assert spec == "v3" and data == cards["ccv3"]["data"]

    d = cards["chara"]["data"]
    profile = d["description"]
    assert profile and profile[:300] not in d["system_prompt"] and profile[:300] not in d["scenario"]
    assert d["personality"] not in d["system_prompt"] and "===" not in d["system_prompt"]
    for key in ("description", "scenario", "system_prompt", "mes_example", "first_mes", "creator_notes"):
        assert "\n\n\n" not in d[key], key
    blocks = d["mes_example"].split("<START>\n")[1:]
    assert blocks and all(re.fullmatch(r"\{\{user\}\}: [^\n]+\n\{\{char\}\}: [^\n]+\n?", b) for b in blocks)
    assert "Roderigo:" not in d["mes_example"]
    assert d["first_mes"] and not d["first_mes"].startswith("Tush, never tell me")
    book = d["character_book"]
    entries = book["entries"]
    assert len(entries) >= 5 and any("Cyprus" in e["keys"] for e in entries)
    assert all("Iago" not in e["keys"] for e in entries) and any("Desdemona" in e["keys"] for e in entries)
    assert all(e["content"] and "\n\n\n" not in e["content"] for e in entries)
    # greetings are lines the dialogue gives to Iago himself
    othello = json.loads(open(f"{final}/Othello.json", encoding="utf-8").read())
    iago_lines = [x["message"] for p in othello["plots"] for c in p["conversation"] for x in c["dialogues"]
                  if x["character"] == "Iago"]
    for g in [d["first_mes"], *d["alternate_greetings"]]:
        assert any(g in line for line in iago_lines), g


@pytest.mark.parametrize("spec", ["v2", "v3"])
def test_json_cards_validate_and_round_trip(tmp_path, spec):
    out, again = tmp_path / "c.json", tmp_path / "again.json"
    r = run_script([CHAT, "--book_data", shared_path("final"), "--character", "Hermione Granger", "--book",
                    "Harry Potter and the Goblet of Fire", "--export_card", out, "--card_spec", spec], timeout=120)
    assert r.returncode == 0, r.stderr
    card = json.loads(out.read_text(encoding="utf-8"))
    validate(card, spec)
    r = run_script([CHAT, "--card", out, "--export_card", again, "--card_spec", spec], timeout=120)
    assert r.returncode == 0, r.stderr
    assert json.loads(again.read_text(encoding="utf-8")) == card


def test_import_v1_v2_v3_json_and_png_keeps_unknown_extensions(tmp_path):
    ext = {"depth_prompt": {"prompt": "x", "depth": 4}, "someone_elses": [1, {"a": None}]}
    v1 = {"name": "Mara", "description": "Keeps the lamp.", "personality": "wary", "scenario": "Night.",
          "first_mes": "Who is there?", "mes_example": "<START>\n{{user}}: Hi\n{{char}}: Go away."}
    v2 = {"spec": "chara_card_v2", "spec_version": "2.0", "data": {**v1, "extensions": ext, "creator_notes": "",
          "system_prompt": "", "post_history_instructions": "", "alternate_greetings": [], "tags": ["t"],
          "creator": "me", "character_version": "2"}}
    v3 = {"spec": "chara_card_v3", "spec_version": "3.0", "data": {**v2["data"], "group_only_greetings": [],
          "nickname": "M", "assets": [{"type": "icon", "uri": "ccdefault:", "name": "main", "ext": "png"}]}}
    for name, card in (("v1", v1), ("v2", v2), ("v3", v3)):
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(card), encoding="utf-8")
        spec, data = load_card(str(path))
        assert spec == name and data["name"] == "Mara" and data["first_mes"] == "Who is there?"
        png = tmp_path / f"{name}.png"
        r = run_script([CHAT, "--card", path, "--export_card", png], timeout=120)
        assert r.returncode == 0, r.stderr
        back = png_cards(png)
        validate(back["chara"], "v2")
        validate(back["ccv3"], "v3")
        if name != "v1":
            assert back["chara"]["data"]["extensions"] == ext and back["ccv3"]["data"]["extensions"] == ext
        assert load_card(str(png))[1]["mes_example"] == v1["mes_example"]
    assert png_cards(tmp_path / "v3.png")["ccv3"]["data"]["nickname"] == "M"
    # a PNG with only the V2 chunk (older SillyTavern) imports too
    payload = base64.b64encode(json.dumps(v2).encode())
    body = b"chara\0" + payload
    chunk = struct.pack(">I4s", len(body), b"tEXt") + body + struct.pack(">I", zlib.crc32(b"tEXt" + body))
    only_v2 = tmp_path / "old.png"
    only_v2.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk + struct.pack(">I4sI", 0, b"IEND", zlib.crc32(b"IEND")))
    assert load_card(str(only_v2)) == ("v2", v2["data"])
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + struct.pack(">I4sI", 0, b"IEND", 0))
    with pytest.raises(InputError, match="bad.png: PNG has no character card"):
        load_card(str(bad))
    r = run_script([CHAT, "--card", bad, "--export_card", tmp_path / "z.png"], timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr and "bad.png" in r.stderr

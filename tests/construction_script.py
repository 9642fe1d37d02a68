"""A scripted 'LLM' for construction tests: answers each prompt kind from the text it was sent.

Extraction replies quote real sentences of the chunk in the prompt (so anchoring works on
real Othello text); every other chunk ends with a truncated plot that the next chunk
continues, so carry-over and merging are exercised. Deterministic: same prompt, same reply.
"""
import ast
import json
import re
import zlib

from data_construction.extract import split_sentences

CHUNK_HEAD = "==Chunk of Book Content==\n"
TRUNC_HEAD = "\n\n==Truncated plot from previous chunk (to be finished)==\n"
SPEAKERS = {"IAGO": "Iago", "RODERIGO": "Roderigo", "BRABANTIO": "Brabantio", "OTHELLO": "Othello",
            "CASSIO": "Michael Cassio", "DESDEMONA": "Desdemona", "DUKE": "Duke of Venice"}


def user_text(body):
    return body["messages"][-1]["content"]


def kind(body):
    text = user_text(body)
    if CHUNK_HEAD in text:
        return "extract"
    if "===Input Conversation and Background===" in text:
        return "enhance"
    if "named characters" in text:
        return "names"
    if "===Profile===" in text:
        return "profile"
    return "other"


def _good_sentences(chunk):
    return [s.strip() for s in split_sentences(chunk) if len(s.strip()) > 25 and not s.strip().startswith("[")]


def _dialogues(chunk):
    out = []
    for line in chunk.split("\n"):
        m = re.match(r"\s*([A-Z]{3,})\.\s+(.{10,})", line)
        if m and m.group(1) in SPEAKERS:
            name = SPEAKERS[m.group(1)]
            if m.group(1) == "IAGO" and len(out) % 4 == 0:
                name = "IAGO"   # an alias the name normalization must map
            out.append({"character": name, "message": f"[I must speak.] {m.group(2).strip()} (gestures)"})
    out.append({"character": "Environment", "message": "The night wind moves along the street."})
    return out[:12]


def extraction_reply(body):
    text = user_text(body)
    chunk = text.split(CHUNK_HEAD, 1)[1].split(TRUNC_HEAD, 1)[0]
    truncated = text.split(TRUNC_HEAD, 1)[1].strip()
    sents = _good_sentences(chunk)
    if len(sents) < 4:
        return json.dumps({"chapter_beginnings": [], "plots": [], "next_chunk_start": None})
    dialogues = _dialogues(chunk)
    speakers = sorted({d["character"] for d in dialogues if d["character"] != "Environment"}) or ["Iago"]
    tag = zlib.crc32(chunk.encode()) % 1000

    def plot(first, last, state, summary):
        return {"chapter_title": "Act I", "first_sentence": first, "last_sentence": last, "prominence": 60,
                "summary": summary,
                "key_characters": [{"name": n, "description": f"{n} as the play has it.", "experience": "Speaks."}
                                   for n in speakers],
                "conversation": [{"scenario": f"Scene {tag}: a street at night in Venice near the house",
                                  "topic": "the news", "key_characters": [{"name": n, "motivation": "to be heard"}
                                                                          for n in speakers],
                                  "dialogues": dialogues}],
                "state": state}

    plots = []
    if truncated != "None":
        old = json.loads(truncated)
        for p in old:
            plots.append(plot(sents[0], sents[1], "finished", p["summary"]))
    ends_truncated = zlib.crc32(chunk.encode()) % 2 == 0
    plots.append(plot(sents[2], sents[-3], "finished",
                      f"Storyline {tag}: Iago works on Roderigo and the others in the night streets"))
    if ends_truncated:
        plots.append(plot(sents[-2], sents[-1], "truncated",
                          f"Unfinished storyline {tag}: a quarrel that continues into the next part"))
        nxt = None
    else:
        nxt = sents[-2]
    return json.dumps({"chapter_beginnings": [{"beginning_sentence": sents[0]}], "plots": plots,
                       "next_chunk_start": nxt})


def enhance_reply(body):
    text = user_text(body)
    names = ast.literal_eval(re.search(r"exactly these characters: (\[.*\])", text).group(1))
    return json.dumps({"scenario": "An enriched scenario: night, torches, a shuttered house.",
                       "key_characters": [{"name": n, "motivation": f"{n} wants to be believed."} for n in names]})


def names_reply(body):
    names = ast.literal_eval(user_text(body).split("===Input===\n", 1)[1].strip())
    official = sorted({n.title() if n.isupper() else n for n in names if n != "Environment"})
    mapping = {n: (n.title() if n.isupper() else n) for n in names}
    mapping["Environment"] = "Environment"      # the reference crashed on this
    return json.dumps({"named_characters": official, "to_official_name": mapping})


def profile_reply(body):
    name = re.search(r"profile of (.+?) from", user_text(body)).group(1)
    return f"Here it is.\n===Profile===\n{name} is a figure of the play, seen through the given plots."


def respond(body):
    k = kind(body)
    if k == "extract":
        return extraction_reply(body)
    if k == "enhance":
        return enhance_reply(body)
    if k == "names":
        return names_reply(body)
    if k == "profile":
        return profile_reply(body)
    return "ok"

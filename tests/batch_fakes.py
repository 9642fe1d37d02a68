"""A synthetic simulation file and a judge whose replies are pure functions of the request, for batch tests.

Some judge replies at temperature 0 are not JSON, and so are the repair replies, so those cases need
the reference protocol's regeneration (temperature 1): three batch rounds in all.
"""
import hashlib
import json

from tests.gca_fakes import judge_dimension, kind

NAMES = ["Ann", "Bob"]
FIX_PREFIX = "The text below was meant to be a JSON object"


def simulation_record(i: int) -> dict:
    book = f"Book {i % 3}"
    circ = {"scenario": f"Scene {i} by the river.", "book": book, "i_p": i, "i_c": 0,
            "dialogues": [{"character": "Ann", "message": f"[She is wary {i}] Hello, Bob {i}."},
                          {"character": "Bob", "message": "(nods) Good day to you."}],
            "speaking_characters_w_env": NAMES + ["Environment"], "major_characters": NAMES,
            "plot": {"summary": f"Ann and Bob meet at the river, take {i}.", "i_p": i},
            "character_profiles": {n: f"{n} is a person of the river." for n in NAMES}}
    sim = [{"role": "Ann", "content": f"Ann: [I must be careful] Good day, Bob. It is day {i}."},
           {"role": "Environment", "content": "The river rises."},
           {"role": "Bob", "content": f"Bob: (bows) Well met, Ann, on day {i}."}]
    return {"book_title": book, "i_p": i, "i_c": 0, "circumstance": circ, "simulation": sim,
            "involved_character_profiles": dict(circ["character_profiles"])}


def write_simulation(path, n: int) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump([simulation_record(i) for i in range(n)], f)


def _h(text: str) -> int:
    return int(hashlib.sha256(text.encode()).hexdigest()[:8], 16)


def judge(bad_every: int = 5):
    """Responder: a valid flaw list, except that one request in bad_every at temperature 0 gets prose
    (and its repair request prose again), so that case is regenerated at temperature 1."""
    def reply(body):
        msgs = body["messages"]
        if msgs[-1]["content"].startswith(FIX_PREFIX):
            return "Sorry, I cannot fix that."
        if kind(body) != "judge":
            return "ok"
        dim = judge_dimension(body)
        h = _h(msgs[-1]["content"] + dim)
        if bad_every and body.get("temperature") == 0 and h % bad_every == 0:
            # Distinct per request (so are the repair requests), and letters only: no JSON value inside.
            tag = "".join(chr(97 + (h >> (5 * k)) % 26) for k in range(4))
            return f"The acting was fine overall, I think, says {tag}."
        flaws = [{"instance": f"flaw {k}", "type": dim, "severity": 1 + (h >> k) % 4} for k in range(h % 3)]
        return json.dumps({dim: {"flaws": flaws}})
    return reply


def config(path, price_in: float = 2.5, price_out: float = 10.0) -> None:
    """A config.json with gpt-4o prices (the key and URL come from the environment)."""
    with open(path, "w", encoding="utf-8") as f:
        json.dump({"prices": {"gpt-4o": {"input": price_in, "output": price_out}}}, f)

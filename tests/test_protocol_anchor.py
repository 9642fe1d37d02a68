"""PROTOCOL 10.3's anchor skips pieces that cannot win; it must pick exactly what scoring every piece picks."""
import difflib
import random

from coser.protocol import core


def full_scan(sentence, chunk):
    """The specification as written: score every piece in order, keep the first of the highest."""
    if sentence is None or sentence == "None":
        return None
    best, best_score = None, -1.0
    for piece in core.split_sentences(chunk):
        score = difflib.SequenceMatcher(None, sentence, piece).ratio()
        if score > best_score:
            best, best_score = piece, score
    return best if best_score >= 0.6 else None


def test_anchor_matches_the_full_scan():
    from tests.test_faults import play_text

    text = play_text(400, seed=3) + "\nShort. Short. Short!\n\n\n" + "A line, repeated.\nA line, repeated.\n"
    rng = random.Random(5)
    for k in range(300):
        start = rng.randrange(0, len(text) - 200)
        chunk = text[start:start + rng.choice([120, 600, 4000])]
        pieces = core.split_sentences(chunk)
        sentence = rng.choice(pieces)
        kind = k % 6
        if kind == 1:
            sentence = sentence[: len(sentence) // 2]
        elif kind == 2:
            sentence = sentence.upper()
        elif kind == 3:
            sentence = "".join(c for c in sentence if rng.random() > 0.25)
        elif kind == 4:
            sentence = rng.choice(["", " ", "\n", ".", "A line, repeated.", None, "None"])
        elif kind == 5:
            sentence = sentence + " " + rng.choice(pieces)
        assert core.anchor(sentence, chunk) == full_scan(sentence, chunk), (sentence, chunk)

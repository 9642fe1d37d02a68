"""Deterministic fake replies for the GCA tests: every reply is a pure function of the request."""
import json
import re
from http.server import BaseHTTPRequestHandler

import pytest

from tests.fakeserver import Fault

DIMS = ["Storyline Consistency", "Anthropomorphism", "Character Fidelity", "Storyline Quality"]


@pytest.fixture(autouse=True)
def _no_nagle(monkeypatch):
    """The fake server writes headers and body separately; with Nagle on, each reply waits ~40 ms
    for a delayed ACK. Turning it off here keeps these tests fast (same fix belongs in fakeserver)."""
    monkeypatch.setattr(BaseHTTPRequestHandler, "disable_nagle_algorithm", True, raising=False)


def system_of(body):
    msgs = body.get("messages") or []
    return msgs[0]["content"] if msgs else ""


def kind(body):
    s = system_of(body)
    if "literary critic" in s:
        return "judge"
    if "predict who acts next" in s:
        return "nsp"
    if "role-playing game" in s:
        return "env"
    return "actor"


def actor_name(body):
    m = re.match(r"You are playing (.+?), a character from", system_of(body))
    return m.group(1) if m else "?"


def judge_dimension(body):
    s = system_of(body)
    return next(d for d in DIMS if f"simulated conversation on {d}," in s)


def nsp_candidates(body):
    m = re.search(r"Answer with one name from this list: (\[.*?\])\.", system_of(body))
    return eval(m.group(1)) if m else []  # the list repr written by get_nsp_prompt


def last_speaker(body):
    for m in reversed(body["messages"][1:]):
        if m["role"] == "user" and ":" in m["content"]:
            return m["content"].split("\n\n")[-1].split(":")[0].strip()
    return ""


def responder(nsp=None, actor=None, judge=None):
    """A responder: defaults rotate speakers, give thoughtful actor lines and a small flaw list."""
    def reply(body):
        k = kind(body)
        n = len(body["messages"])
        if k == "judge":
            if judge is not None:
                return judge(body)
            dim = judge_dimension(body)
            return json.dumps({dim: {"flaws": [{"instance": "too polite", "type": dim, "severity": 2}]}})
        if k == "nsp":
            if nsp is not None:
                return nsp(body)
            cands = nsp_candidates(body)
            pick = cands[(n // 2) % len(cands)]
            if pick == last_speaker(body):
                pick = cands[(n // 2 + 1) % len(cands)]
            return f"1. Reasoning: it is their turn\n2. Next Speaker: {pick}"
        if k == "env":
            return f"(the wind rises, step {n})"
        if actor is not None:
            return actor(body)
        name = actor_name(body)
        return f"[secret of {name} {n}] (steps forward) I speak as {name}, turn {n}."
    return reply


__all__ = ["_no_nagle", "responder", "kind", "actor_name", "judge_dimension", "Fault", "DIMS"]

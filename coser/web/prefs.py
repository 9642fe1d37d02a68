"""Human preferences: votes as JSON lines, win rates with Wilson intervals, judge-vs-human agreement."""
from __future__ import annotations

import json
import math
import os


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a proportion k/n."""
    if n == 0:
        return (0.0, 1.0)
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def read_votes(pref_dir: str) -> list[dict]:
    votes = []
    if not os.path.isdir(pref_dir):
        return votes
    for name in sorted(os.listdir(pref_dir)):
        if not name.endswith(".jsonl"):
            continue
        with open(os.path.join(pref_dir, name), encoding="utf-8") as f:
            for line in f:
                try:
                    v = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a torn last line of an interrupted write
                if isinstance(v, dict) and isinstance(v.get("candidates"), list) and len(v["candidates"]) == 2:
                    votes.append(v)
    return votes


def win_rates(votes: list[dict]) -> dict:
    """Per model: wins over decisive votes (ties counted apart), with 95% Wilson intervals; and per pair."""
    models: dict[str, dict] = {}
    pairs: dict[tuple, dict] = {}
    for v in votes:
        a, b = (str(c.get("label") or c.get("model")) for c in v["candidates"])
        winner = v.get("winner")
        key = tuple(sorted((a, b)))
        pair = pairs.setdefault(key, {"a": key[0], "b": key[1], "a_wins": 0, "b_wins": 0, "ties": 0})
        for m in (a, b):
            models.setdefault(m, {"model": m, "wins": 0, "losses": 0, "ties": 0})
        if winner in (a, b) and a != b:
            loser = b if winner == a else a
            models[winner]["wins"] += 1
            models[loser]["losses"] += 1
            pair["a_wins" if winner == key[0] else "b_wins"] += 1
        else:
            models[a]["ties"] += 1
            if b != a:
                models[b]["ties"] += 1
            pair["ties"] += 1
    for m in models.values():
        n = m["wins"] + m["losses"]
        m["decisive"] = n
        m["win_rate"] = m["wins"] / n if n else None
        m["ci95"] = list(wilson(m["wins"], n))
    for p in pairs.values():
        n = p["a_wins"] + p["b_wins"]
        p["a_win_rate"] = p["a_wins"] / n if n else None
        p["ci95"] = list(wilson(p["a_wins"], n))
    return {"votes": len(votes), "models": sorted(models.values(), key=lambda m: -(m["win_rate"] or 0)),
            "pairs": list(pairs.values())}


def judge_agreement(llm, votes: list[dict], judges: list[str], load_record, protocol: str = "reference") -> list[dict]:
    """Per judge, over the scene votes: how often the judge prefers the scene the person preferred.

    The judge's preference is the higher GCA score (coser.judge.judge_case, the evaluation's own judge,
    through the shared client and cache, so judging again costs nothing). Counted apart, never as
    agreement or disagreement: human ties, judge ties (equal scores), failed judgments and votes whose
    scene files are gone. load_record(candidate) -> the simulation record of one side."""
    from ..errors import InputError
    from ..judge import judge_case

    scene_votes = [v for v in votes if v.get("kind") == "scene"]
    rows = []
    for judge in judges:
        row = {"judge": judge, "scene_votes": len(scene_votes), "decisive": 0, "agree": 0, "human_ties": 0,
               "judge_ties": 0, "failed": 0, "missing": 0}
        for v in scene_votes:
            labels = [c.get("label") for c in v["candidates"]]
            if v.get("winner") not in labels:
                row["human_ties"] += 1
                continue
            try:
                records = [load_record(c) for c in v["candidates"]]
            except InputError:
                row["missing"] += 1
                continue
            scores = [judge_case(llm, rec, judge, int((c.get("settings") or {}).get("continue_from") or 0),
                                 protocol=protocol).get("score")
                      for c, rec in zip(v["candidates"], records)]
            if None in scores:
                row["failed"] += 1
            elif scores[0] == scores[1]:
                row["judge_ties"] += 1
            else:
                row["decisive"] += 1
                row["agree"] += labels[0 if scores[0] > scores[1] else 1] == v["winner"]
        n = row["decisive"]
        row["agreement"] = row["agree"] / n if n else None
        row["ci95"] = list(wilson(row["agree"], n))
        rows.append(row)
    return rows

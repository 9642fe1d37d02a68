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


def _files(folder: str, suffix: str) -> list[str]:
    """The paths of a folder's files with this ending, by name; none when the folder is absent."""
    if not os.path.isdir(folder):
        return []
    return [os.path.join(folder, n) for n in sorted(os.listdir(folder)) if n.endswith(suffix)]


def read_votes(pref_dir: str) -> list[dict]:
    votes = []
    for path in _files(pref_dir, ".jsonl"):
        with open(path, encoding="utf-8") as f:
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


class NoScore(LookupError):
    """No score for this side: its scene file is gone, or no evaluation file judged that very scene."""


def agreement(votes: list[dict], judges: list[str], score) -> list[dict]:
    """Per judge, over the scene votes: how often the judge prefers the scene the person preferred.

    The judge prefers the side with the higher GCA score; score(judge, candidate) gives it (None: the
    judgment failed; NoScore: none to be had). Counted apart, never as agreement or disagreement: the
    person's ties, the judge's ties (equal scores), failed judgments and sides without a score."""
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
                scores = [score(judge, c) for c in v["candidates"]]
            except NoScore:
                row["missing"] += 1
                continue
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


def _record(load_record, candidate: dict) -> dict:
    from ..errors import InputError

    try:
        return load_record(candidate)
    except InputError:  # the scene file is gone or damaged
        raise NoScore() from None


def judge_scorer(llm, load_record, protocol: str):
    """Scores by judging the voted scene now: coser.judge.judge_case, the evaluation's own judge, through
    the shared client and cache (judging a scene again costs nothing)."""
    from ..judge import judge_case

    def score(judge: str, candidate: dict):
        record = _record(load_record, candidate)
        continue_from = int((candidate.get("settings") or {}).get("continue_from") or 0)
        return judge_case(llm, record, judge, continue_from, protocol=protocol).get("score")
    return score


def evaluation_files(eval_dir: str) -> list[dict]:
    """The evaluation files of gca_evaluation/main.py in a folder that carry a run spec (ours)."""
    out = []
    for path in _files(eval_dir, ".json"):
        try:
            with open(path, encoding="utf-8") as f:
                ev = json.load(f)
        except (OSError, ValueError):
            continue  # not ours to judge: an unreadable file is simply not a source
        if isinstance(ev, dict) and isinstance(ev.get("cases"), dict) and isinstance(ev.get("spec"), dict) \
                and isinstance(ev.get("judge_model"), str):
            out.append(ev)
    return out


def _same_setting(eval_spec: dict, scene_spec: dict) -> bool:
    """An evaluation's simulation ran the scene's setting: protocol, actor/env/nsp (name and endpoint), settings."""
    roles_e, roles_s = eval_spec.get("roles") or {}, scene_spec.get("roles") or {}
    return (eval_spec.get("protocol") == scene_spec.get("protocol")
            and all(roles_e.get(r) == roles_s.get(r) for r in ("actor", "env", "nsp"))
            and (eval_spec.get("settings") or {}) == (scene_spec.get("settings") or {}))


def file_scorer(evaluations: list[dict], load_record):
    """Scores read from existing evaluation files: the case of an evaluation whose setting is the scene's
    and whose judged simulation is this very scene (same turns), so no judge is called."""
    from ..judge import case_messages

    def score(judge: str, candidate: dict):
        record = _record(load_record, candidate)
        spec = record.get("spec") or {}
        key = f"{record['book_title']}-{record['i_p']}-{record['i_c']}"
        for ev in evaluations:
            case = ev["cases"].get(key)
            if ev["judge_model"] != judge or not isinstance(case, dict) or not _same_setting(ev["spec"], spec):
                continue
            if case.get("simulation") == case_messages(record, ev["spec"].get("protocol", "reference"))[0]:
                return case.get("score")
        raise NoScore()
    return score

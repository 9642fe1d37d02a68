"""Build a small exp/ folder in the published shape from the shared simulations + synthetic critiques."""
import json
import os
import random
import shutil

from coser import metrics
from coser.text import remove_inner_thoughts

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_SIM = os.path.join(REPO_ROOT, "..", "shared", "coser-data", "exp", "simulation")
SETTINGS = ["test_set_gpt-4o", "test_set_gpt-4o_rag=expr3_conv1", "test_set_gpt-4o-mini_rag=expr3_conv1"]
FLAW_TYPES = {"Storyline Consistency": ["Storyline Consistency"],
              "Anthropomorphism": ["Self-identity", "Emotional Depth"],
              "Character Fidelity": ["Character Language", "Personality & Behavior"],
              "Storyline Quality": ["Flow & Progression", "Logical Consistency"]}


def _strip(text, role):
    return text if role == "Environment" else remove_inner_thoughts(text, eval_mode=True)


def judge_case(rec, rng, fail=False):
    """A published-shape case: real simulation/metrics, synthetic flaws quoting real lines."""
    sim = [{"role": m["role"], "content": _strip(m["content"], m["role"])}
           for m in rec["simulation"] if m["role"] != "NSP"]
    ref = [{"character": d["character"], "message": _strip(d["message"], d["character"])}
           for d in rec["circumstance"]["dialogues"]]
    sim_str = metrics.simulation_string(sim)
    case = {"simulation": sim, "simulation_str": sim_str}
    if fail:
        # The shape gca_evaluation/judge.py writes for a judge that never returned valid JSON.
        crit = {"Storyline Consistency": {"flaws": None, "score": None}}
        crit.update(metrics.bleu_rouge(metrics.reference_string(ref), sim_str))
        case.update(score=None, critique=crit, failed=True, failures=[
            {"dimension": "Storyline Consistency", "fail_to_parse_response": "I cannot produce JSON for this.",
             "reason": "unparseable after 6 attempts", "attempts": 6}])
        return case
    actor_rounds = sum(1 for m in sim if m["role"] != "Environment")
    lines = [ln for m in sim if m["role"] != "Environment" for ln in m["content"].split("\n") if len(ln) > 40]
    crit = {}
    for dim, types in FLAW_TYPES.items():
        flaws = []
        for _ in range(rng.randint(1, 3)):
            line = rng.choice(lines)
            words = line.split()
            start = rng.randrange(max(1, len(words) - 6))
            quote = " ".join(words[start:start + 6])
            flaws.append({"instance": f'The line "{quote}" does not fit the scene.',
                          "type": rng.choice(types), "severity": rng.randint(1, 5)})
        crit[dim] = {"flaws": flaws, "score": metrics.dimension_score(flaws, actor_rounds)}
    crit.update(metrics.bleu_rouge(metrics.reference_string(ref), sim_str))
    case["score"] = metrics.case_score({d: crit[d]["score"] for d in metrics.DIMENSIONS})
    case["critique"] = crit
    return case


def build_exp(root, judge_of=lambda setting: "gpt-4o", repeats=1, fail_one=False):
    """Write root/simulation/*.json (copies of the shared files) and root/evaluation/*.json.

    judge_of(setting) gives the top-level judge_model, or None to leave it out.
    """
    os.makedirs(os.path.join(root, "simulation"), exist_ok=True)
    os.makedirs(os.path.join(root, "evaluation"), exist_ok=True)
    for si, setting in enumerate(SETTINGS):
        src = os.path.join(SHARED_SIM, setting + ".json")
        shutil.copy(src, os.path.join(root, "simulation", setting + ".json"))
        with open(src, encoding="utf-8") as f:
            records = json.load(f)
        judge = judge_of(setting)
        for rep in range(repeats):
            rng = random.Random(f"{setting}|{judge}|{rep}")
            cases = {}
            for ri, rec in enumerate(records):
                key = f"{rec['book_title']}-{rec['i_p']}-{rec['i_c']}"
                cases[key] = judge_case(rec, rng, fail=fail_one and si == 0 and ri == 2 and rep == 0)
            data = {"scores": {k: v for k, v in metrics.aggregate(cases).items() if k not in ("n", "failed")},
                    "cases": cases}
            if judge:
                data["judge_model"] = judge
            name = setting + (f"-repeat={rep}" if rep else "")
            with open(os.path.join(root, "evaluation", name + ".json"), "w", encoding="utf-8") as f:
                json.dump(data, f, ensure_ascii=False, indent=2)
    return root


HOSTILE = ('<script>window.pwned = 1</script><img src="x" onerror="window.pwned2 = 1">'
           '</p></div><b class="inj">bold?</b>')


def make_hostile(root, setting=SETTINGS[0], key_index=0):
    """Put markup into a simulation line, a flaw instance and a flaw type of one case; returns the case key."""
    path = os.path.join(root, "evaluation", setting + ".json")
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    key = sorted(data["cases"])[key_index]
    case = data["cases"][key]
    case["simulation"][1]["content"] += "\n" + HOSTILE
    crit = case["critique"]["Anthropomorphism"]
    crit["flaws"].append({"instance": "speaks like an assistant " + HOSTILE, "type": HOSTILE, "severity": 0})
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, ensure_ascii=False, indent=2)
    return key


def add_spec(root, setting, judge, test_hash, actor, protocol="reference", drop_keys=0, retrieval=None):
    """Give one evaluation file a spec (the shape main.py writes) and optionally drop some samples."""
    path = os.path.join(root, "evaluation", setting + ".json")
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    for key in sorted(data["cases"])[:drop_keys]:
        del data["cases"][key]
    data["spec"] = {"roles": {"actor": {"model": actor}, "judge": {"model": judge}}, "protocol": protocol,
                    "retrieval": retrieval,
                    "test_set": {"hash": test_hash, "path": "data/test/test_set.json"}}
    data.pop("judge_model", None)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, ensure_ascii=False, indent=2)

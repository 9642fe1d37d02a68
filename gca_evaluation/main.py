"""GCA evaluation: simulate held-out scenes with the model under test, then judge them.

    python gca_evaluation/main.py --test_file data/test/test_set.json --actor_model gpt-4o --judge_model gpt-4o
    python gca_evaluation/main.py --actor_model local --judge_model local --env_model local --nsp_model local --limit 2

Writes exp/simulation/{test stem}_{actor setting}.json and exp/evaluation/{same}.json (METHOD 4.1);
repeats 1 and 2 (--nth_exp 1, 2 or -1) get a "-repeat=N" suffix. Finished samples are checkpointed,
so a killed run resumes where it stopped without repeating an LLM call.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from coser import cli  # noqa: E402
from coser.errors import InputError  # noqa: E402
from coser.io import atomic_write_json, read_json  # noqa: E402
from coser.pool import map_ordered  # noqa: E402
from gca_evaluation import judge as J  # noqa: E402
from gca_evaluation.retrieval import MODES, Embedder, Retrievers  # noqa: E402
from gca_evaluation.simulation import sample_key, sample_rng, simulate  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Given-Circumstance Acting evaluation: multi-agent simulation of "
                                "test scenes with the actor model, then LLM judging on four dimensions plus "
                                "BLEU / ROUGE-L against the book's dialogue.")
    p.add_argument("--test_file", default="data/test/test_set.json", help="test set (default %(default)s)")
    p.add_argument("--book_data", default="data/final", help="final book files, used for retrieval")
    p.add_argument("--actor_model", default="gpt-4o", help="model under test (character agents)")
    p.add_argument("--judge_model", default="gpt-4o", help="critic model")
    p.add_argument("--env_model", default="gpt-4o", help="Environment agent model")
    p.add_argument("--nsp_model", default="gpt-4o-mini", help="next-speaker predictor model")
    p.add_argument("--continue_from", type=int, default=0, help="replay the book's first N turns")
    p.add_argument("--wo_thought", action="store_true", help="thoughtless actor prompts")
    p.add_argument("--retrieval", default=None, type=lambda v: None if v == "None" else v, choices=[None, *MODES],
                   help="retrieval-augmented actors: corpus and k per mode as in the paper (default: off)")
    p.add_argument("--regenerate", action="store_true", help="ignore an existing simulation (and evaluation) file")
    p.add_argument("--reevaluate", action="store_true", help="ignore an existing evaluation file")
    p.add_argument("--nth_exp", type=int, default=0, help="experiment id; -1 runs ids 0, 1, 2")
    p.add_argument("--limit", type=int, default=None, metavar="N", help="only the first N samples")
    p.add_argument("--use_motivation", action="store_true",
                   help="give actors their motivation (`motivation`, or `thought` in the published test set); "
                        "off by default, as in the published runs, for comparable numbers")
    p.add_argument("--seed", type=int, default=42, help="seed of per-sample random choices (default %(default)s)")
    p.add_argument("--exp_dir", default="exp", help="output root (default %(default)s)")
    cli.add_common_args(p)
    return p


# ---- inputs -------------------------------------------------------------------------------
_FIELDS = {"scenario": str, "dialogues": list, "speaking_characters_w_env": list, "major_characters": list,
           "plot": dict, "character_profiles": dict, "book": str, "i_p": int, "i_c": int}


def validate_item(path: str, i: int, item) -> None:
    """One-line InputError naming the sample and the field."""
    where = f"{path}: sample {i}"
    if not isinstance(item, dict):
        raise InputError(f"{where}: expected an object, got {type(item).__name__}")
    for field, kind in _FIELDS.items():
        if field not in item:
            raise InputError(f"{where}: missing field '{field}'")
        if not isinstance(item[field], kind) or (kind is int and isinstance(item[field], bool)):
            raise InputError(f"{where}: field '{field}' should be {kind.__name__}, got {type(item[field]).__name__}")
    where = f"{where} ({item['book']}-{item['i_p']}-{item['i_c']})"
    for j, u in enumerate(item["dialogues"]):
        if not isinstance(u, dict) or not isinstance(u.get("character"), str) or not isinstance(u.get("message"), str):
            raise InputError(f"{where}: field 'dialogues[{j}]' needs string 'character' and 'message'")
    for c in item["major_characters"]:
        if c not in item["character_profiles"]:
            raise InputError(f"{where}: field 'character_profiles' has no profile for major character {c!r}")
    if not isinstance(item["plot"].get("summary", ""), str):
        raise InputError(f"{where}: field 'plot.summary' should be a string")


def load_test_set(path: str, limit: int | None) -> list[dict]:
    if not os.path.exists(path):
        raise InputError(f"{path}: test file not found")
    data = read_json(path)
    if not isinstance(data, list):
        raise InputError(f"{path}: expected a JSON list of test samples")
    data = data[:limit] if limit is not None else data
    for i, item in enumerate(data):
        validate_item(path, i, item)
    return data


_RECORD_FIELDS = ("book_title", "i_p", "i_c", "circumstance", "simulation", "involved_character_profiles")


def load_simulation(path: str) -> list[dict]:
    """A simulation file (ours or the reference's), checked record by record."""
    data = read_json(path)
    if not isinstance(data, list):
        raise InputError(f"{path}: expected a JSON list of simulation records")
    for i, rec in enumerate(data):
        for field in _RECORD_FIELDS:
            if not isinstance(rec, dict) or field not in rec:
                raise InputError(f"{path}: record {i}: missing field '{field}'")
        validate_item(path + f" record {i} circumstance", i, rec["circumstance"])
    return data


def item_key(book, i_p, i_c) -> str:
    """The reference's case key, as in evaluation files: {book}-{i_p}-{i_c}."""
    return f"{book}-{i_p}-{i_c}"


def reusable_records(sim_path: str, wanted: list[str], test_file: str) -> list[dict]:
    """The records of an existing simulation file for these samples, in test-file order.

    Output names come from the test file's stem (as in the reference), so two test files called
    test_set.json share them: a file that lacks some of the samples belongs to another test file
    (or a smaller --limit) and is never silently scored in their place.
    """
    records = load_simulation(sim_path)
    by_key = {item_key(r["book_title"], r["i_p"], r["i_c"]): r for r in records}
    missing = [k for k in wanted if k not in by_key]
    if missing:
        raise InputError(f"{sim_path}: lacks {len(missing)} of the {len(wanted)} samples of {test_file} "
                         f"(e.g. {missing[0]!r}); it was written for another test file of the same name or a "
                         "smaller --limit: pass --regenerate to replace it (cached calls are not repeated) or "
                         "--exp_dir to keep both")
    return [by_key[k] for k in wanted]


# ---- paths and checkpoints ----------------------------------------------------------------
def run_name(test_file: str, actor_model: str, retrieval: str | None, nth_exp: int) -> str:
    stem = os.path.basename(test_file)
    stem = stem[:-len(".json")] if stem.endswith(".json") else stem
    setting = actor_model.replace("/", "_") + (f"_rag={retrieval}" if retrieval else "")
    return f"{stem}_{setting}" + (f"-repeat={nth_exp}" if nth_exp > 0 else "")


def _fingerprint(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, ensure_ascii=False).encode()).hexdigest()[:16]


class Checkpoints:
    """One JSON file per finished sample; a file from different inputs or settings is ignored."""

    def __init__(self, directory: str):
        self.dir = directory

    def _path(self, i: int) -> str:
        return os.path.join(self.dir, f"{i:05d}.json")

    def get(self, i: int, fp: str):
        path = self._path(i)
        if not os.path.exists(path):
            return None
        try:
            with open(path, encoding="utf-8") as f:
                saved = json.load(f)
        except (OSError, json.JSONDecodeError):
            return None  # a torn checkpoint is redone, never trusted
        return saved.get("value") if saved.get("fingerprint") == fp else None

    def put(self, i: int, fp: str, value) -> None:
        # Another process running the same job may finish and remove this folder mid-write:
        # the checkpoint is then simply written again into a fresh folder.
        for attempt in range(3):
            try:
                return atomic_write_json(self._path(i), {"fingerprint": fp, "value": value})
            except FileNotFoundError:
                if attempt == 2:
                    raise

    def clear(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)
        try:
            os.rmdir(os.path.dirname(self.dir))  # only succeeds once no other run has checkpoints there
        except OSError:
            pass


class TaggedLLM:
    """Separates a repeat's generations from run 0's in the cache (the reference used a new cache file)."""

    def __init__(self, llm, tag: str):
        self.llm, self.tag = llm, tag
        self.settings = llm.settings

    def chat(self, model, messages, **kw):
        return self.llm.chat(model, messages, cache_tag=self.tag, **kw)

    def chat_retry(self, model, messages, max_retry: int = 5, **kw):
        for nth in range(max_retry + 1):
            text = self.chat(model, messages, nth_generation=nth, **kw)
            if text.strip():
                return text
        return ""


# ---- stages -------------------------------------------------------------------------------
def run_simulation(llm, args, items: list[dict], sim_path: str, nth_exp: int) -> list[dict]:
    ck = Checkpoints(os.path.join(os.path.dirname(sim_path), ".partial", os.path.basename(sim_path)[:-5]))
    retr = None
    if args.retrieval:
        embedder = Embedder(llm.settings) if llm.settings.embedding_model else None
        retr = Retrievers(args.book_data, args.retrieval, embedder)
    settings = {k: getattr(args, k) for k in ("actor_model", "env_model", "nsp_model", "continue_from",
                                               "wo_thought", "retrieval", "use_motivation", "seed")}

    def one(pair):
        i, item = pair
        fp = _fingerprint(item, settings, nth_exp)
        rec = ck.get(i, fp)
        if rec is None:
            rec = simulate(llm, item, args, sample_rng(args.seed, item), retr.for_item(item) if retr else None)
            ck.put(i, fp, rec)
        return rec

    records = map_ordered(one, list(enumerate(items)), args.num_workers, desc="simulation")
    atomic_write_json(sim_path, records)
    ck.clear()
    return records


def run_judging(llm, args, records: list[dict], eval_path: str) -> dict:
    ck = Checkpoints(os.path.join(os.path.dirname(eval_path), ".partial", os.path.basename(eval_path)[:-5]))

    def one(pair):
        i, rec = pair
        fp = _fingerprint(rec, args.judge_model, args.continue_from)
        case = ck.get(i, fp)
        if case is None:
            case = J.judge_case(llm, rec, args.judge_model, args.continue_from)
            ck.put(i, fp, case)
        return case

    cases_list = map_ordered(one, list(enumerate(records)), args.num_workers, desc="judging")
    cases = {}
    for rec, case in zip(records, cases_list):
        cases[item_key(rec["book_title"], rec["i_p"], rec["i_c"])] = case
    scores, _, _ = J.aggregate(cases)
    # Beyond the reference's {scores, cases}: who judged, so runs under different judges never mix.
    evaluation = {"scores": scores, "cases": cases, "judge_model": args.judge_model}
    atomic_write_json(eval_path, evaluation)
    ck.clear()
    return evaluation


def run_experiment(llm, args, items: list[dict], nth_exp: int) -> tuple[str, dict]:
    name = run_name(args.test_file, args.actor_model, args.retrieval, nth_exp)
    sim_path = os.path.join(args.exp_dir, "simulation", name + ".json")
    eval_path = os.path.join(args.exp_dir, "evaluation", name + ".json")
    run_llm = TaggedLLM(llm, f"repeat={nth_exp}") if nth_exp > 0 else llm
    wanted = [item_key(it["book"], it["i_p"], it["i_c"]) for it in items]
    if os.path.exists(eval_path) and not (args.regenerate or args.reevaluate):
        evaluation = read_json(eval_path)
        judged_by = evaluation.get("judge_model") if isinstance(evaluation, dict) else None
        if judged_by is not None and judged_by != args.judge_model:
            raise InputError(f"{eval_path} was judged by {judged_by}, not {args.judge_model}: scores of different "
                             "judges are not comparable; pass --reevaluate to judge again")
        cases = evaluation.get("cases") if isinstance(evaluation, dict) else None
        if isinstance(cases, dict) and set(wanted) <= set(cases):
            print(f"reusing {eval_path}", file=sys.stderr)
            return eval_path, evaluation
    if os.path.exists(sim_path) and not args.regenerate:
        records = reusable_records(sim_path, wanted, args.test_file)
        print(f"reusing {sim_path}", file=sys.stderr)
    else:
        records = run_simulation(run_llm, args, items, sim_path, nth_exp)
    return eval_path, run_judging(run_llm, args, records, eval_path)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.limit is not None and args.limit < 1:
        raise InputError("--limit must be at least 1")
    if args.continue_from < 0:
        raise InputError("--continue_from must be >= 0")
    if args.nth_exp < -1:
        raise InputError("--nth_exp must be -1 (runs 0, 1, 2) or a non-negative id")
    items = load_test_set(args.test_file, args.limit)
    if args.retrieval:
        if not os.path.isdir(args.book_data):
            raise InputError(f"{args.book_data}: --book_data directory not found (needed by --retrieval)")
        missing = sorted({it["book"] for it in items} - {f[:-5] for f in os.listdir(args.book_data)
                                                          if f.endswith(".json")})
        if missing:
            cli.notice(f"no file in {args.book_data} for {len(missing)} book(s) (e.g. {missing[0]!r}): "
                       "their actors run without retrieval")
    llm = cli.setup(args)
    ids = [0, 1, 2] if args.nth_exp == -1 else [args.nth_exp]
    results = [run_experiment(llm, args, items, n) for n in ids]
    print(J.summary(results, args.judge_model, llm.usage))
    cli.finish(args.exp_dir, args, "gca_evaluation", extra={"outputs": [p for p, _ in results]})
    return 0


if __name__ == "__main__":
    cli.main(main)

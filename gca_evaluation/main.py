"""GCA evaluation: simulate held-out scenes with the model under test, then judge them.

    python gca_evaluation/main.py --test_file data/test/test_set.json --actor_model gpt-4o --judge_model gpt-4o
    python gca_evaluation/main.py --actor_model local --judge_model local --env_model local --nsp_model local --limit 2

Writes exp/simulation/{test stem}_{actor setting}.json and exp/evaluation/{same}.json (METHOD 4.1);
repeats 1 and 2 (--nth_exp 1, 2 or -1) get a "-repeat=N" suffix. Every file carries its run spec
(coser/runspec.py); any setting other than the reference's default gets a "_spec=HASH" suffix.
Finished samples are checkpointed, so a killed run resumes where it stopped without repeating an LLM call.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from coser import batch, cli  # noqa: E402
from coser.errors import InputError  # noqa: E402
from coser.io import atomic_write_json, read_json  # noqa: E402
from coser.pool import fan_out, map_ordered, task_threads  # noqa: E402
from coser import runspec as RS  # noqa: E402
from gca_evaluation import judge as J  # noqa: E402
from gca_evaluation.retrieval import MODES, Embedder, Retrievers  # noqa: E402
from gca_evaluation.simulation import sample_key, sample_rng, sim_settings, simulate  # noqa: E402


DEFAULT_JUDGE = "gpt-4o"
# The reference's default setting: results under it keep the reference's file names.
REFERENCE_DEFAULTS = {"env": "gpt-4o", "nsp": "gpt-4o-mini", "judge": DEFAULT_JUDGE,
                      "settings": {"continue_from": 0, "wo_thought": False, "use_motivation": False, "seed": 42,
                                   }}


def _retrieval_mode(value: str):
    if value in ("None", "none", "off", ""):
        return None  # the reference's spelling of "no retrieval"
    if value not in MODES:
        raise argparse.ArgumentTypeError(f"invalid mode {value!r} (choose from {', '.join(MODES)}, or off)")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Given-Circumstance Acting evaluation: multi-agent simulation of "
                                "test scenes with the actor model, then LLM judging on four dimensions plus "
                                "BLEU / ROUGE-L against the book's dialogue.")
    p.add_argument("--test_file", default="data/test/test_set.json", help="test set (default %(default)s)")
    p.add_argument("--book_data", default="data/final",
                   help="final book files, used for retrieval (default %(default)s)")
    p.add_argument("--simulation_file", default=None, metavar="PATH",
                   help="judge this existing simulation file (ours or the reference's) instead of simulating; "
                        "no test file needed (default: simulate the test set)")
    p.add_argument("--actor_model", default="gpt-4o", help="model under test (character agents) (default %(default)s)")
    p.add_argument("--judge_model", action="append", default=None, metavar="MODEL[,MODEL...]",
                   help="critic model; a comma list or a repeated flag judges every simulation with each judge, "
                        f"each in its own file (default {DEFAULT_JUDGE})")
    p.add_argument("--env_model", default="gpt-4o", help="Environment agent model (default %(default)s)")
    p.add_argument("--nsp_model", default="gpt-4o-mini", help="next-speaker predictor model (default %(default)s)")
    p.add_argument("--continue_from", type=int, default=0, help="replay the book's first N turns (default %(default)s)")
    p.add_argument("--wo_thought", action="store_true", help="thoughtless actor prompts (default off)")
    p.add_argument("--retrieval", default=None, type=_retrieval_mode, metavar="{" + ",".join(MODES) + "}",
                   help="retrieval-augmented actors: corpus and k per mode as in the paper (default: off)")
    p.add_argument("--regenerate", action="store_true",
                   help="simulate again even if a simulation of this spec exists (default off)")
    p.add_argument("--reevaluate", action="store_true",
                   help="judge again even if an evaluation of this spec exists (default off)")
    p.add_argument("--repeats", type=int, default=None, metavar="N",
                   help="run repeat ids 0..N-1 (the paper uses 3) (default: one run, id --nth_exp)")
    p.add_argument("--nth_exp", type=int, default=0, help="repeat id; -1 is an alias of --repeats 3 (default %(default)s)")
    p.add_argument("--limit", type=int, default=None, metavar="N", help="only the first N samples (default: all)")
    p.add_argument("--sample_ids", default=None, metavar="KEY,...",
                   help="only these samples, by key {book}-{i_p}-{i_c} (default: all)")
    p.add_argument("--sample", type=int, default=None, metavar="N",
                   help="a random subset of N samples, drawn with --sample_seed (default: all)")
    p.add_argument("--sample_seed", type=int, default=0, help="seed of --sample's draw (default %(default)s)")
    p.add_argument("--use_motivation", action="store_true",
                   help="give actors their motivation (`motivation`, or `thought` in the published test set); "
                        "off by default, as in the published runs, for comparable numbers")
    p.add_argument("--seed", type=int, default=42, help="seed of per-sample random choices (default %(default)s)")
    p.add_argument("--exp_dir", default="exp", help="output root (default %(default)s)")
    p.add_argument("--protocol", choices=["reference", "fixed"], default="reference",
                   help="GCA protocol: 'reference' reproduces the reference implementation, 'fixed' is this "
                        "toolkit's improved one (README 'Compatibility / protocols') (default %(default)s)")
    cli.add_common_args(p)
    batch.add_args(p, "the judge calls")
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
        if c not in item["speaking_characters_w_env"]:
            raise InputError(f"{where}: major character {c!r} is missing from field 'speaking_characters_w_env'")
    for c, profile in item["character_profiles"].items():
        if profile is not None and not isinstance(profile, str):
            raise InputError(f"{where}: field 'character_profiles.{c}' should be str, got {type(profile).__name__}")
    if not isinstance(item["plot"].get("summary", ""), str):
        raise InputError(f"{where}: field 'plot.summary' should be a string")


def load_test_set(path: str, limit: int | None) -> list[dict]:
    if not os.path.exists(path):
        raise InputError(f"{path}: test file not found")
    data = read_json(path)
    if not isinstance(data, list):
        raise InputError(f"{path}: expected a JSON list of test samples")
    seen: dict[str, int] = {}
    for i, item in enumerate(data):
        if isinstance(item, dict) and all(k in item for k in ("book", "i_p", "i_c")):
            key = item_key(item["book"], item["i_p"], item["i_c"])
            if key in seen:
                raise InputError(f"{path}: samples {seen[key]} and {i} have the same key {key!r} "
                                 "(book, i_p, i_c): each sample must be unique")
            seen[key] = i
    data = data[:limit] if limit is not None else data
    for i, item in enumerate(data):
        validate_item(path, i, item)
    return data


def select_items(path: str, items: list[dict], sample_ids: str | None, sample: int | None,
                 sample_seed: int) -> list[dict]:
    """--sample_ids (in the order given) and/or --sample N (a seeded draw, kept in test-file order)."""
    import random
    if sample_ids:
        by_key = {item_key(it["book"], it["i_p"], it["i_c"]): it for it in items}
        wanted = [k.strip() for k in sample_ids.split(",") if k.strip()]
        unknown = [k for k in wanted if k not in by_key]
        if unknown:
            raise InputError(f"--sample_ids: {unknown[0]!r} is not a sample of {path}")
        items = [by_key[k] for k in dict.fromkeys(wanted)]
    if sample is not None:
        if sample < 1:
            raise InputError("--sample must be at least 1")
        if sample < len(items):
            chosen = sorted(random.Random(sample_seed).sample(range(len(items)), sample))
            items = [items[i] for i in chosen]
    return items


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
        check_record(f"{path}: record {i}", rec)
        validate_item(path + f" record {i} circumstance", i, rec["circumstance"])
        circ = rec["circumstance"]
        if rec["i_p"] != circ["plot"].get("i_p", rec["i_p"]) or rec["i_c"] != circ["i_c"]:
            raise InputError(f"{path}: record {i}: i_p/i_c do not match its circumstance")
    return data


def check_record(where: str, rec: dict) -> None:
    """The fields judging reads, with the types it reads them as."""
    if not isinstance(rec["book_title"], str):
        raise InputError(f"{where}: field 'book_title' should be a string")
    for key in ("i_p", "i_c"):
        if isinstance(rec[key], bool) or not isinstance(rec[key], int):
            raise InputError(f"{where}: field '{key}' should be a whole number")
    sim = rec["simulation"]
    if not isinstance(sim, list):
        raise InputError(f"{where}: field 'simulation' should be a list of turns")
    for j, m in enumerate(sim):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise InputError(f"{where}: field 'simulation[{j}]' needs string 'role' and 'content'")
    profiles = rec["involved_character_profiles"]
    if not isinstance(profiles, dict) or not all(isinstance(v, str) for v in profiles.values()):
        raise InputError(f"{where}: field 'involved_character_profiles' should be an object of name -> profile")


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


# Checkpoints live in the core (shared with construction); kept importable from here.
Checkpoints = RS.Checkpoints
_fingerprint = RS.fingerprint


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

    def reject(self, model, messages, **kw):
        self.llm.reject(model, messages, cache_tag=self.tag, **kw)


# ---- stages -------------------------------------------------------------------------------
# A run is a set of output files: per repeat a simulation file, and per judge an evaluation file of
# it. Each sample is one task that simulates its scene and then judges it at once (every judge and
# dimension together), so judging overlaps the simulation of other samples and the repeats run side
# by side; the calls in flight are bounded in coser/llm.py (--num_workers, and max_connections per
# endpoint), not by the number of tasks. A file is written as soon as its last sample is done.


class EvalJob:
    """One evaluation file: reused as it is, or judged sample by sample (checkpointed)."""

    def __init__(self, judge: str, path: str, spec: dict, evaluation: dict | None = None):
        self.judge, self.path, self.spec, self.evaluation = judge, path, spec, evaluation
        self.ck = Checkpoints(os.path.join(os.path.dirname(path), ".partial", os.path.basename(path)[:-5]))
        self.cases: dict[int, dict] = {}
        self.t0 = time.monotonic()


class SimJob:
    """One simulation file (reused records, or simulated sample by sample) and its evaluation files."""

    def __init__(self, llm, args, path: str, spec: dict, nth_exp: int, items: list[dict] | None = None,
                 records: list[dict] | None = None):
        self.llm, self.args, self.path, self.spec, self.nth_exp = llm, args, path, spec, nth_exp
        self.items, self.records = items, records
        self.evals: list[EvalJob] = []
        self.out: dict[int, dict] = {}
        self.t0 = time.monotonic()
        self.retr = None
        if records is None:
            self.ck = Checkpoints(os.path.join(os.path.dirname(path), ".partial", os.path.basename(path)[:-5]))
            if args.retrieval:
                embedder = Embedder(llm.settings) if llm.settings.embedding_model else None
                self.retr = Retrievers(args.book_data, args.retrieval, embedder)
            self.settings = {k: getattr(args, k) for k in ("actor_model", "env_model", "nsp_model", "continue_from",
                                                           "wo_thought", "retrieval", "use_motivation", "seed")}
            self.settings["protocol"] = getattr(args, "protocol", "reference")   # checkpoints never mix protocols

    def __len__(self) -> int:
        return len(self.records if self.records is not None else self.items)

    def record(self, i: int) -> dict:
        """Sample i's simulation record: reused, checkpointed, or simulated now."""
        if self.records is not None:
            return self.records[i]
        item = self.items[i]
        fp = _fingerprint(item, self.settings, self.nth_exp)
        rec = self.ck.get(i, fp)
        if not isinstance(rec, dict) or rec.get("failed"):  # a failed sample is never final: asked again
            rec = simulate(self.llm, item, self.args, sample_rng(self.args.seed, item),
                           self.retr.for_item(item) if self.retr else None)
            self.ck.put(i, fp, rec)
        return rec

    def write(self) -> list[dict]:
        records = [self.out[i] for i in range(len(self))]
        # every record carries the run spec (the file stays the reference's list of records)
        records = [{**r, "spec": self.spec} for r in records]
        atomic_write_json(self.path, records)
        self.ck.clear()
        return records


def judge_record(llm, args, ev: EvalJob, i: int, rec: dict, log=None, parallel: bool = False) -> dict:
    """Sample i's case in ev's evaluation: checkpointed, or judged now (dimensions at once if parallel)."""
    rec = {k: v for k, v in rec.items() if k != "spec"}
    fp = _fingerprint(rec, ev.judge, args.continue_from, getattr(args, "protocol", "reference"))
    case = ev.ck.get(i, fp)
    if not isinstance(case, dict) or case.get("failed"):
        case = J.judge_case(llm, rec, ev.judge, args.continue_from, protocol=getattr(args, "protocol", "reference"),
                            parallel=parallel)
        if log is not None and isinstance(case, dict) and case.get("failed"):
            log.warning("judge %s failed on %s: %s", ev.judge, item_key(rec["book_title"], rec["i_p"], rec["i_c"]),
                        case.get("failures") or "unreadable reply")
        ev.ck.put(i, fp, case)
    return case


def write_evaluation(args, ev: EvalJob, records: list[dict]) -> dict:
    """The evaluation file from every sample's case, in input order."""
    cases = {}
    for i, rec in enumerate(records):
        cases[item_key(rec["book_title"], rec["i_p"], rec["i_c"])] = ev.cases[i]
    scores, _, _ = J.aggregate(cases)
    # Beyond the reference's {scores, cases}: who judged, so runs under different judges never mix.
    evaluation = {"scores": scores, "cases": cases, "judge_model": ev.judge,
                  "protocol": getattr(args, "protocol", "reference")}
    if ev.spec is not None:
        evaluation.update(spec=ev.spec, spec_hash=RS.spec_hash(ev.spec))
    atomic_write_json(ev.path, evaluation)
    ev.ck.clear()
    ev.evaluation = evaluation
    return evaluation


def run_jobs(jobs: list[SimJob], args, record, judge_inline: bool | None = None) -> list[tuple]:
    """Produce every file of these jobs; returns (simulation path, judge, evaluation path, evaluation) per
    evaluation, in job and judge order.

    judge_inline=False simulates everything first and then judges file by file (run_judging): the
    place for a judging step that must see all records at once (e.g. a batch API)."""
    if judge_inline is None:
        judge_inline = not batch.enabled(args)   # batch mode judges file by file, after the simulations
    parallel = args.num_workers > 1
    log = record.log if record is not None else None
    tasks = [(job, i) for job in jobs for i in range(len(job))
             if job.records is None or (judge_inline and any(ev.evaluation is None for ev in job.evals))]

    def task(pair):
        job, i = pair
        rec = job.record(i)
        todo = [ev for ev in job.evals if ev.evaluation is None] if judge_inline else []
        cases = fan_out([lambda ev=ev: judge_record(job.llm, args, ev, i, rec, log, parallel) for ev in todo],
                        parallel)
        return rec, list(zip(todo, cases))

    def done(k, result):
        job, i = tasks[k]
        rec, cases = result
        job.out[i] = rec
        if job.records is None and len(job.out) == len(job):
            job.records = job.write()
            record.add(job.spec, job.path, seconds=time.monotonic() - job.t0)
        for ev, case in cases:
            ev.cases[i] = case
            if len(ev.cases) == len(job):
                write_evaluation(args, ev, job.records)
                record.add(ev.spec, ev.path, seconds=time.monotonic() - ev.t0)

    map_ordered(task, tasks, task_threads(args.num_workers, len(tasks)), desc="samples", on_result=done)
    results = []
    for job in jobs:
        for ev in job.evals:
            if ev.evaluation is None:   # not judged inline
                ev.evaluation = batch.run_stage(
                    getattr(job.llm, "llm", job.llm),   # the client itself under a repeat's cache tag
                    lambda: run_judging(job.llm, args, job.records, ev.path, ev.judge, ev.spec, log, ev),
                    batch.state_path(args.exp_dir, os.path.basename(ev.path)[:-5]), args, f"judge {ev.judge}")
                record.add(ev.spec, ev.path, seconds=time.monotonic() - ev.t0)
            results.append((job.path, ev.judge, ev.path, ev.evaluation))
    return results


def run_judging(llm, args, records: list[dict], eval_path: str, judge: str | None = None,
                spec: dict | None = None, log=None, ev: EvalJob | None = None) -> dict:
    """Judge one file's records, sample by sample (checkpointed), and write its evaluation file."""
    ev = ev or EvalJob(judge or args.judge_model, eval_path, spec)
    parallel = args.num_workers > 1

    def one(pair):
        i, rec = pair
        return judge_record(llm, args, ev, i, rec, log, parallel)

    # Batch mode: a case whose judge calls wait in a batch is pending, and no file is written yet.
    cases = batch.check(map_ordered(batch.deferrable(one), list(enumerate(records)), args.num_workers,
                                    desc="judging"))
    for i, case in enumerate(cases):
        ev.cases[i] = case
    return write_evaluation(args, ev, records)


def is_reference_default(spec: dict) -> bool:
    """The reference's default setting (any actor, retrieval and repeat): reference file names."""
    roles, st = spec.get("roles") or {}, spec.get("settings") or {}
    if spec.get("protocol", "reference") != "reference":
        return False
    for role in ("env", "nsp", "judge"):
        if role in roles and (roles[role] or {}).get("model") != REFERENCE_DEFAULTS[role]:
            return False
    return all(st.get(k, v) == v for k, v in REFERENCE_DEFAULTS["settings"].items())


def evaluation_spec(llm, sim_spec: dict, judge: str, args) -> dict:
    spec = json.loads(json.dumps(sim_spec))
    spec["stage"] = "evaluation"
    spec.setdefault("roles", {})["judge"] = RS.role_info(llm, judge)
    spec.setdefault("settings", {})["continue_from"] = args.continue_from
    spec["toolkit"] = RS.toolkit_info()
    return spec


def _reference_eval_ok(judge: str, wanted: list[str]):
    def ok(path: str) -> bool:
        ev = read_json(path)
        if not isinstance(ev, dict) or not isinstance(ev.get("cases"), dict):
            return False
        if ev.get("judge_model", DEFAULT_JUDGE) != judge:
            return False
        return set(wanted) <= set(ev["cases"])
    return ok


def _redo_failed(path: str, what: str) -> bool:
    """A result of this spec with failed samples or cases is done again: finished ones come back from
    the cache at no cost, failed ones are asked again (their rejected replies are never served)."""
    data = read_json(path)
    entries = data.get("cases", {}).values() if isinstance(data, dict) and isinstance(data.get("cases"), dict) \
        else data if isinstance(data, list) else []
    failed = sum(1 for e in entries if isinstance(e, dict) and e.get("failed"))
    if failed:
        cli.notice(f"{path}: {failed} failed {what}{'s' if failed != 1 else ''}: asking again (finished ones "
                   "come from the cache)")
    return failed > 0


def plan_judging(llm, args, job: SimJob, sim_spec: dict, wanted: list[str], eval_base: str, judges: list[str],
                 record) -> None:
    """Per judge, the evaluation file of job's simulation: reused when its spec matches, else to judge."""
    sim_path = job.path
    for judge in judges:
        spec = evaluation_spec(llm, sim_spec, judge, args)
        default = is_reference_default(spec) and (sim_spec.get("source") == RS.REFERENCE_FILE
                                                 or os.path.basename(sim_path) == os.path.basename(eval_base))
        path, state = RS.choose_path(eval_base, spec, default, _reference_eval_ok(judge, wanted))
        if state == "reuse" and not (args.regenerate or args.reevaluate) and _redo_failed(path, "case"):
            state = "redo"
        if state == "reuse" and not (args.regenerate or args.reevaluate):
            print(f"reusing {path}", file=sys.stderr)
            record.log.info("reused %s (judge %s)", path, judge)
            job.evals.append(EvalJob(judge, path, spec, read_json(path)))
            record.add(spec, path, reused=True)
        else:
            if state in ("reuse", "redo") and RS.file_spec(read_json(path)) is None:
                path = RS.suffixed(eval_base, spec)  # never overwrite the reference's file
            spec["simulation_file"] = os.path.relpath(sim_path, args.exp_dir)  # relative to the exp folder
            job.evals.append(EvalJob(judge, path, spec))
        if path != eval_base:
            print(f"evaluation ({judge}): {path} (spec {RS.spec_hash(spec)})", file=sys.stderr)


def plan_experiment(llm, args, items: list[dict], nth_exp: int, judges: list[str] | None = None,
                    record=None) -> SimJob:
    """Repeat nth_exp's simulation file (reused when its spec matches, else to simulate) and its evaluations."""
    judges = judges or [args.judge_model]
    name = run_name(args.test_file, args.actor_model, args.retrieval, nth_exp)
    sim_base = os.path.join(args.exp_dir, "simulation", name + ".json")
    run_llm = TaggedLLM(llm, f"repeat={nth_exp}") if nth_exp > 0 else llm
    wanted = [item_key(it["book"], it["i_p"], it["i_c"]) for it in items]
    roles = {"actor": args.actor_model, "env": args.env_model, "nsp": args.nsp_model}
    sim_spec = RS.build_spec("simulation", llm, roles, sim_settings(args, nth_exp),
                             RS.test_set_info(args.test_file, items, wanted), getattr(args, "protocol", "reference"))

    def reference_sim_ok(path: str) -> bool:
        try:
            reusable_records(path, wanted, args.test_file)
            return True
        except InputError:
            return False

    sim_path, state = RS.choose_path(sim_base, sim_spec, is_reference_default(sim_spec), reference_sim_ok)
    if state == "reuse" and not args.regenerate and _redo_failed(sim_path, "sample"):
        state = "redo"
    if state == "reuse" and not args.regenerate:
        records = reusable_records(sim_path, wanted, args.test_file)
        print(f"reusing {sim_path}", file=sys.stderr)
        record.log.info("reused %s", sim_path)
        got = RS.file_spec(records[0]) if records else None
        if got is None:  # a file of the reference implementation: loaded, and marked as such
            sim_spec = dict(sim_spec, source=RS.REFERENCE_FILE, simulation_file=os.path.basename(sim_path))
        record.add(got or sim_spec, sim_path, reused=True)
        job = SimJob(run_llm, args, sim_path, sim_spec, nth_exp, records=records)
    else:
        if state in ("reuse", "redo") and RS.file_spec((read_json(sim_path) or [{}])[0]) is None:
            sim_path = RS.suffixed(sim_base, sim_spec)  # never overwrite the reference's file
        job = SimJob(run_llm, args, sim_path, sim_spec, nth_exp, items=items)
    if sim_path != sim_base:
        print(f"simulation: {sim_path} (spec {RS.spec_hash(sim_spec)})", file=sys.stderr)
    eval_base = os.path.join(args.exp_dir, "evaluation", os.path.basename(sim_path))
    if sim_path != sim_base:  # a suffixed simulation: its evaluations start from the reference name
        eval_base = os.path.join(args.exp_dir, "evaluation", name + ".json")
    plan_judging(llm, args, job, sim_spec, wanted, eval_base, judges, record)
    return job


def simulation_file_spec(path: str, records: list[dict]) -> dict:
    """The spec of a simulation file; for the reference's files (no spec), one naming the file and its samples."""
    got = RS.file_spec(records[0]) if records else None
    if got is not None:
        return got
    items = [r["circumstance"] for r in records]
    keys = [item_key(r["book_title"], r["i_p"], r["i_c"]) for r in records]
    return {"spec_version": RS.SPEC_VERSION, "stage": "simulation", "source": RS.REFERENCE_FILE,
            "simulation_file": os.path.basename(path), "simulation_hash": RS.content_hash(records),
            "protocol": "reference", "roles": {}, "settings": {},
            "test_set": RS.test_set_info(None, items, keys)}


def judge_simulation_file(llm, args, judges: list[str], record) -> list[tuple]:
    path = args.simulation_file
    if not os.path.isfile(path):
        raise InputError(f"{path}: --simulation_file not found")
    records = load_simulation(path)
    keys = [item_key(r["book_title"], r["i_p"], r["i_c"]) for r in records]
    seen: dict[str, int] = {}
    for i, k in enumerate(keys):
        if k in seen:
            raise InputError(f"{path}: records {seen[k]} and {i} have the same key {k!r}")
        seen[k] = i
    if args.sample_ids or args.sample is not None or args.limit is not None:
        items = select_items(path, [dict(r["circumstance"], book=r["book_title"], i_p=r["i_p"], i_c=r["i_c"])
                                    for r in records], args.sample_ids, args.sample, args.sample_seed)
        chosen = {item_key(it["book"], it["i_p"], it["i_c"]) for it in items}
        records = [r for r, k in zip(records, keys) if k in chosen][:args.limit]
    sim_spec = simulation_file_spec(path, records)
    if args.limit is not None or args.sample_ids or args.sample is not None:
        sim_spec = json.loads(json.dumps(sim_spec))
        sub = [item_key(r["book_title"], r["i_p"], r["i_c"]) for r in records]
        sim_spec["test_set"] = RS.test_set_info(sim_spec.get("test_set", {}).get("path"),
                                                [r["circumstance"] for r in records], sub)
        sim_spec["simulation_hash"] = RS.content_hash([{k: v for k, v in r.items() if k != "spec"} for r in records])
    wanted = [item_key(r["book_title"], r["i_p"], r["i_c"]) for r in records]
    record.add(sim_spec, path, reused=True)
    eval_base = os.path.join(args.exp_dir, "evaluation", os.path.basename(path))
    job = SimJob(llm, args, path, sim_spec, 0, records=records)
    plan_judging(llm, args, job, sim_spec, wanted, eval_base, judges, record)
    return run_jobs([job], args, record)


def agreement_table(results: list[tuple], judges: list[str]) -> str:
    """With two or more judges: Kendall tau and Spearman rho between their rankings of the settings,
    Pearson r of per-case averages, and each judge's mean score."""
    from coser import stats
    by = {(sim, judge): ev for sim, judge, _, ev in results}
    sims = list(dict.fromkeys(sim for sim, _, _, _ in results))

    def f(x):
        return "-" if x is None or x != x else f"{x:.3f}"

    lines = ["Judge agreement (settings ranked by avg; per-case averages paired across judges)",
             "judge A  judge B  kendall_tau  spearman_rho  pearson_cases  n_settings  n_cases"]
    rows = []
    for i, a in enumerate(judges):
        for b in judges[i + 1:]:
            sa, sb = [], []
            ca, cb = [], []
            for sim in sims:
                ea, eb = by.get((sim, a)), by.get((sim, b))
                if not ea or not eb:
                    continue
                va, vb = ea["scores"].get("avg"), eb["scores"].get("avg")
                if va is not None and vb is not None:
                    sa.append(va)
                    sb.append(vb)
                pa, pb = J.per_sample(ea, "avg"), J.per_sample(eb, "avg")
                for k in pa.keys() & pb.keys():
                    ca.append(pa[k])
                    cb.append(pb[k])
            rows.append([a, b, f(stats.kendall_tau(sa, sb)), f(stats.spearman_rho(sa, sb)), f(stats.pearson(ca, cb)),
                         str(len(sa)), str(len(ca))])
    means = []
    for j in judges:
        vals = [ev["scores"].get("avg") for sim, judge, _, ev in results if judge == j]
        vals = [v for v in vals if v is not None]
        means.append(f"{j}: {f(sum(vals) / len(vals)) if vals else '-'}")
    table = [lines[1].split("  ")] + rows
    widths = [max(len(r[c]) for r in table) for c in range(len(table[0]))]
    out = [lines[0]] + ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in table]
    out.append("mean avg score per judge: " + "; ".join(means))
    return "\n".join(out)


def parse_judges(values: list[str] | None) -> list[str]:
    judges = []
    for v in values or []:
        for j in v.split(","):
            if j.strip() and j.strip() not in judges:
                judges.append(j.strip())
    return judges


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    judges = parse_judges(args.judge_model)
    if args.judge_model is not None and not judges:
        raise InputError("--judge_model: no model named")
    explicit_judge = bool(judges)
    if not judges:
        judges = [DEFAULT_JUDGE]
    for action in parser._actions:  # the first judge goes through the common no-key fallback as a plain flag
        if action.dest == "judge_model":
            action.default = DEFAULT_JUDGE if not explicit_judge else None
    args.judge_model = judges[0]
    if args.limit is not None and args.limit < 1:
        raise InputError("--limit must be at least 1")
    if args.continue_from < 0:
        raise InputError("--continue_from must be >= 0")
    if args.nth_exp < -1:
        raise InputError("--nth_exp must be -1 (runs 0, 1, 2) or a non-negative id")
    if args.repeats is not None and args.repeats < 1:
        raise InputError("--repeats must be at least 1")
    items = None
    if args.simulation_file is None:
        items = load_test_set(args.test_file, None if (args.sample_ids or args.sample) else args.limit)
        items = select_items(args.test_file, items, args.sample_ids, args.sample, args.sample_seed)[:args.limit]
    if args.retrieval and items is not None:
        if not os.path.isdir(args.book_data):
            raise InputError(f"{args.book_data}: --book_data directory not found (needed by --retrieval)")
        missing = sorted({it["book"] for it in items} - {f[:-5] for f in os.listdir(args.book_data)
                                                          if f.endswith(".json")})
        if missing:
            cli.notice(f"no file in {args.book_data} for {len(missing)} book(s) (e.g. {missing[0]!r}): "
                       "their actors run without retrieval")
    llm = cli.setup(args)
    judges[0] = args.judge_model  # may have fallen back to the embedded model
    lock = RS.DirLock(args.exp_dir).acquire()
    record = None
    try:
        record = RS.RunRecord(args.exp_dir, "gca_evaluation")
        if args.simulation_file is not None:
            results = judge_simulation_file(llm, args, judges, record)
        else:
            ids = list(range(args.repeats)) if args.repeats else ([0, 1, 2] if args.nth_exp == -1 else [args.nth_exp])
            # Every repeat at once: their samples are independent tasks of one run.
            results = run_jobs([plan_experiment(llm, args, items, n, judges, record) for n in ids], args, record)
        for j in judges:
            mine = [(p, ev) for _, judge, p, ev in results if judge == j]
            print(J.summary(mine, j, llm.usage if j == judges[-1] and len(judges) == 1 else None))
        if len(judges) > 1:
            print(agreement_table(results, judges))
            t = llm.usage.totals()
            print(f"LLM calls: {t['calls']}, cache hits: {t['cache_hits']}")
        cli.finish(args.exp_dir, args, "gca_evaluation", extra={"outputs": [p for _, _, p, _ in results]})
        record.save(llm)
    except BaseException as e:
        if record is not None:
            record.log.error("stopped: %s", str(e) or type(e).__name__)
            try:
                record.save(llm, status="stopped")
            except Exception:  # noqa: BLE001 - the original error is the one to report
                pass
        raise
    finally:
        lock.release()
    return 0


if __name__ == "__main__":
    cli.main(main)

"""A broad probe of hostile inputs across every script (issue 19): config and environment values,
flags, test sets, books, final files, evaluation files, transcripts, cards and unusable outputs.

Each case must end with exit code 2, an error line naming the file, line or field, and no traceback.
The cases run in one child process (tests/probe_runner.py executes each script's real `__main__`,
as `python script.py ...` would), so 100+ cases cost one interpreter start, not 100+.
"""
import json
import os
import re
import subprocess
import sys

import pytest

from tests.conftest import PYTHON, REPO, TEST_KEY
from tests.fakeserver import FakeServer
from tests.test_faults import gca_respond, gca_test_set

GCA = os.path.join(REPO, "gca_evaluation", "main.py")
REPORT = os.path.join(REPO, "gca_evaluation", "report.py")
CONSTRUCT = os.path.join(REPO, "data_construction", "main.py")
TRANSFORM = os.path.join(REPO, "data_construction", "transform.py")
CHAT = os.path.join(REPO, "chat.py")
# An error line: ours ("error: ..."), or argparse's ("PROG: error: ...", PROG possibly "python -m coser.web").
ERROR_LINE = re.compile(r"^(error: |stopped: |(python -m )?\S+: error: )")
DEEP = "[" * 50_000
HUGE = "9" * 5000


class Probe:
    """Builds the cases: files under one scratch folder, argv, and what the error line must name."""

    def __init__(self, root):
        self.root = str(root)
        self.cases = []
        self.ok_test = self.write("ok.json", json.dumps(gca_test_set(2)))
        self.books = self.write("books.jsonl", json.dumps({"title": "T", "author": "A", "content": "Some text. " * 50})
                                + "\n")

    def path(self, name):
        return os.path.join(self.root, name)

    def write(self, name, text, binary=False):
        path = self.path(name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb" if binary else "w", **({} if binary else {"encoding": "utf-8"})) as f:
            f.write(text)
        return path

    def add(self, id, argv, expect, env=None, stdin=""):
        self.cases.append({"id": id, "argv": [str(a) for a in argv], "expect": expect, "env": env or {},
                           "stdin": stdin, "cwd": self.root})


def config_cases(p):
    bad = {
        "attempts_1e400": ('{"max_attempts": 1e400}', ["max_attempts"]),
        "attempts_nan": ('{"max_attempts": NaN}', ["max_attempts"]),
        "attempts_neg_inf": ('{"max_attempts": -Infinity}', ["max_attempts"]),
        "attempts_zero": ('{"max_attempts": 0}', ["max_attempts"]),
        "attempts_fraction": ('{"max_attempts": 2.5}', ["max_attempts"]),
        "attempts_string": ('{"max_attempts": "6"}', ["max_attempts"]),
        "attempts_bool": ('{"max_attempts": true}', ["max_attempts"]),
        "attempts_huge_int": ('{"max_attempts": ' + HUGE + '}', ["too many digits"]),
        "timeout_negative": ('{"timeout": -1}', ["timeout"]),
        "timeout_zero": ('{"timeout": 0}', ["timeout"]),
        "timeout_abc": ('{"timeout": "abc"}', ["timeout"]),
        "timeout_nan": ('{"timeout": NaN}', ["timeout"]),
        "timeout_inf": ('{"timeout": Infinity}', ["timeout"]),
        "timeout_null": ('{"timeout": null}', ["timeout"]),
        "timeout_1e300": ('{"timeout": 1e300}', ["timeout", "at most"]),
        "retry_cap_1e300": ('{"retry_cap": 1e300}', ["retry_cap"]),
        "models_timeout_1e300": ('{"models": {"x": {"timeout": 1e300}}}', ["timeout"]),
        "retry_base_negative": ('{"retry_base": -3}', ["retry_base"]),
        "retry_cap_nan": ('{"retry_cap": NaN}', ["retry_cap"]),
        "n_ctx_1e400": ('{"local_n_ctx": 1e400}', ["local_n_ctx"]),
        "max_tokens_zero": ('{"local_max_tokens": 0}', ["local_max_tokens"]),
        "repeat_penalty_zero": ('{"local_repeat_penalty": 0}', ["local_repeat_penalty"]),
        "structured_maybe": ('{"structured_output": "maybe"}', ["structured_output"]),
        "structured_bool": ('{"structured_output": true}', ["structured_output"]),
        "prices_nan": ('{"prices": {"m": {"input": NaN, "output": 1}}}', ["prices"]),
        "prices_negative": ('{"prices": {"m": {"input": -1, "output": 1}}}', ["prices"]),
        "prices_list": ('{"prices": []}', ["prices"]),
        "prices_entry_string": ('{"prices": {"m": "cheap"}}', ["prices"]),
        "base_url_words": ('{"base_url": "not a url"}', ["base_url"]),
        "base_url_ftp": ('{"base_url": "ftp://host/v1"}', ["base_url"]),
        "base_url_bad_port": ('{"base_url": "http://host:99999/v1"}', ["base_url"]),
        "base_url_number": ('{"base_url": 8000}', ["base_url"]),
        "embedding_url_words": ('{"embedding_base_url": "::::"}', ["embedding_base_url"]),
        "models_list": ('{"models": []}', ["models"]),
        "models_timeout_nan": ('{"models": {"x": {"timeout": NaN}}}', ["timeout"]),
        "models_conn_1e400": ('{"models": {"x": {"max_connections": 1e400}}}', ["max_connections"]),
        "models_conn_zero": ('{"models": {"x": {"max_connections": 0}}}', ["max_connections"]),
        "models_url_words": ('{"models": {"x": {"base_url": "nope"}}}', ["base_url"]),
        "models_url_list_bad": ('{"models": {"x": {"base_url": ["http://a/v1", 3]}}}', ["base_url"]),
        "models_unknown_key": ('{"models": {"x": {"base_ulr": "http://a/v1"}}}', ["base_ulr"]),
        "models_structured": ('{"models": {"x": {"structured_output": "sometimes"}}}', ["structured_output"]),
        "models_prices_nan": ('{"models": {"x": {"prices": {"input": NaN, "output": 1}}}}', ["prices"]),
        "cache_dir_empty": ('{"cache_dir": ""}', ["cache_dir"]),
        "api_key_number": ('{"api_key": 5}', ["api_key"]),
        "top_list": ("[1, 2]", ["object"]),
        "top_null": ("null", ["object"]),
        "top_number": ("1e400", ["object"]),
        "deep": (DEEP, ["nested too deeply"]),
        "truncated": ('{"timeout": ', ["JSON"]),
    }
    # Spread over the scripts that read a config: each must refuse it the same way.
    scripts = [["-m", "coser.llm", "--model", "gpt-4o-mini", "hi"],
               [GCA, "--test_file", p.ok_test, "--exp_dir", p.path("exp")],
               [CONSTRUCT, "--input", p.books, "--output_dir", p.path("out")],
               [CHAT, "--model", "gpt-4o-mini", "--system_prompt", "You are X.", "--out_dir", p.path("chat")]]
    for i, (name, (text, expect)) in enumerate(sorted(bad.items())):
        cfg = p.write(f"config/{name}.json", text)
        argv = scripts[i % len(scripts)]
        p.add(f"config-{name}", argv + ["--config", cfg], [f"{name}.json", *expect], stdin="hello\n")
    p.write("config/not_utf8.json", b'{"api_key": "\xff\xfe"}', binary=True)
    p.add("config-not-utf8", ["-m", "coser.llm", "--config", p.path("config/not_utf8.json"), "hi"],
          ["not_utf8.json", "UTF-8"])
    os.makedirs(p.path("config/a_folder"), exist_ok=True)
    p.add("config-is-dir", [GCA, "--test_file", p.ok_test, "--config", p.path("config/a_folder")],
          ["a_folder", "directory"])
    p.add("config-missing", [GCA, "--test_file", p.ok_test, "--config", p.path("config/absent.json")],
          ["absent.json", "not found"])


def env_cases(p):
    diag = ["-m", "coser.llm", "--model", "gpt-4o-mini", "hi"]
    for name, value, expect in [("COSER_TIMEOUT", "abc", "abc"), ("COSER_TIMEOUT", "nan", "finite"),
                                ("COSER_TIMEOUT", "inf", "finite"), ("COSER_TIMEOUT", "-5", "COSER_TIMEOUT"),
                                ("COSER_TIMEOUT", "0", "COSER_TIMEOUT"), ("COSER_TIMEOUT", "1e300", "at most"),
                                ("COSER_RETRY_BASE", "xyz", "xyz"),
                                ("COSER_RETRY_BASE", "-1", "COSER_RETRY_BASE"),
                                ("OPENAI_BASE_URL", "garbage", "OPENAI_BASE_URL"),
                                ("OPENAI_BASE_URL", "http://[::1/v1", "OPENAI_BASE_URL")]:
        p.add(f"env-{name}-{value}", diag, [expect], env={name: value})
    p.add("env-timeout-gca", [GCA, "--test_file", p.ok_test, "--exp_dir", p.path("exp")], ["COSER_TIMEOUT"],
          env={"COSER_TIMEOUT": "1e400"})


def flag_cases(p):
    gca = [GCA, "--test_file", p.ok_test, "--exp_dir", p.path("exp")]
    for flag, value in [("--max_cost", "nan"), ("--max_cost", "inf"), ("--max_cost", "-1"), ("--max_cost", "abc"),
                        ("--num_workers", "0"), ("--num_workers", "-2"), ("--num_workers", "x"), ("--limit", "0"),
                        ("--limit", "-1"), ("--sample", "0"), ("--repeats", "0"), ("--nth_exp", "-2"),
                        ("--continue_from", "-1"), ("--retrieval", "bogus"), ("--protocol", "bogus"),
                        ("--sample_ids", "No Book-1-0"), ("--seed", "1.5"), ("--judge_model", ",")]:
        p.add(f"gca-flag{flag}={value}", gca + [flag, value], [flag if flag != "--sample_ids" else "No Book-1-0"])
    chat = [CHAT, "--model", "gpt-4o-mini", "--system_prompt", "You are X.", "--out_dir", p.path("chat")]
    for flag, value in [("--temperature", "nan"), ("--temperature", "inf"), ("--temperature", "-0.5"),
                        ("--max_new_tokens", "0"), ("--max_turns", "-1"), ("--max_cost", "nan"),
                        ("--sample", "x")]:
        p.add(f"chat-flag{flag}={value}", chat + [flag, value], [flag], stdin="hello\n")
    diag = ["-m", "coser.llm", "--model", "gpt-4o-mini"]
    for flag, value in [("--max_tokens", "0"), ("--max_tokens", "-5"), ("--nth_generation", "-1"),
                        ("--max_cost", "NaN")]:
        p.add(f"diag-flag{flag}={value}", diag + [flag, value, "hi"], [flag])
    con = [CONSTRUCT, "--input", p.books, "--output_dir", p.path("out")]
    for flag, value in [("--chunk_size", "0"), ("--chunk_size", "-9"), ("--limit_chunks", "-1"),
                        ("--num_workers", "0"), ("--max_cost", "nan"), ("--protocol", "maybe")]:
        p.add(f"construct-flag{flag}={value}", con + [flag, value], [flag])
    os.makedirs(p.path("final_ok/final"), exist_ok=True)
    for flag, value in [("--seed", "-1"), ("--seed", str(2 ** 32)), ("--seed", "1e3"), ("--test_per_split", "-1")]:
        p.add(f"transform-flag{flag}={value}", [TRANSFORM, "--dir", p.path("final_ok"), flag, value], [flag])
    web = ["-m", "coser.web", "--book_data", p.path("final_ok/final")]
    for flag, value in [("--port", "abc"), ("--port", "-1"), ("--port", "70000"), ("--temperature", "nan"),
                        ("--max_new_tokens", "0"), ("--num_workers", "0"), ("--max_cost", "nan")]:
        p.add(f"web-flag{flag}={value}", web + [flag, value], [flag])
    # An empty model name must not silently become the embedded model.
    p.add("gca-actor-model-empty", gca + ["--actor_model", ""], ["--actor_model", "empty"])
    p.add("gca-env-model-blank", gca + ["--env_model", " "], ["--env_model", "empty"])
    p.add("construct-model-empty", con + ["--model", ""], ["--model", "empty"])
    p.add("diag-model-empty", ["-m", "coser.llm", "--model", "", "hi"], ["--model", "empty"])
    p.add("chat-model-empty", chat + ["--model", ""], ["--model", "empty"], stdin="hello\n")
    p.add("web-book-data-missing", ["-m", "coser.web", "--book_data", p.path("nowhere")], ["nowhere"])


def items_cases(p):
    def variant(name, mutate):
        """mutate edits the items in place (returns None) or returns a replacement: text or JSON data."""
        items = gca_test_set(2)
        out = mutate(items)
        return p.write(f"tests/{name}.json", out if isinstance(out, str) else json.dumps(items if out is None else out))

    def drop(i, *path):
        def m(items):
            d = items[i]
            for k in path[:-1]:
                d = d[k]
            del d[path[-1]]
        return m

    def set_(i, key, value):
        def m(items):
            items[i][key] = value
        return m

    cases = {
        "profile_number": (lambda it: it[1]["character_profiles"].update(Tomas=42), ["character_profiles.Tomas"]),
        "profile_list": (lambda it: it[0]["character_profiles"].update(Mara=["a"]), ["character_profiles.Mara"]),
        "profiles_list_top": (set_(1, "character_profiles", ["Tomas"]), ["'character_profiles'"]),
        "major_not_speaking": (set_(0, "speaking_characters_w_env", ["Tomas", "Environment"]),
                               ["speaking_characters_w_env"]),
        "major_without_profile": (drop(0, "character_profiles", "Mara"), ["character_profiles"]),
        "i_p_bool": (set_(0, "i_p", True), ["'i_p'"]),
        "i_p_string": (set_(1, "i_p", "3"), ["'i_p'"]),
        "i_c_float": (set_(1, "i_c", 0.5), ["'i_c'"]),
        "book_number": (set_(0, "book", 7), ["'book'"]),
        "dialogues_string": (set_(0, "dialogues", "hello"), ["'dialogues'"]),
        "dialogue_no_message": (lambda it: it[0]["dialogues"].append({"character": "Mara"}), ["dialogues[6]"]),
        "dialogue_number": (lambda it: it[1]["dialogues"].insert(0, 5), ["dialogues[0]"]),
        "profiles_list": (set_(0, "character_profiles", []), ["'character_profiles'"]),
        "plot_list": (set_(0, "plot", []), ["'plot'"]),
        "plot_summary_number": (lambda it: it[0]["plot"].update(summary=3), ["plot.summary"]),
        "scenario_missing": (drop(1, "scenario"), ["'scenario'"]),
        "majors_string": (set_(0, "major_characters", "Mara"), ["'major_characters'"]),
        "duplicate": (lambda it: it + [it[0]], ["samples 0 and 2"]),
        "item_number": (lambda it: [1, 2], ["sample 0"]),
        "top_object": (lambda it: {"items": it}, ["list"]),
        "top_null": (lambda it: "null", ["list"]),
        "empty_file": (lambda it: "", ["empty"]),
        "deep": (lambda it: DEEP, ["nested too deeply"]),
        "huge_int": (lambda it: '[{"i_p": ' + HUGE + "}]", ["too many digits"]),
        "truncated": (lambda it: json.dumps(it)[:-40], ["JSON"]),
    }
    for name, (mutate, expect) in sorted(cases.items()):
        path = variant(name, mutate)
        p.add(f"testset-{name}", [GCA, "--test_file", path, "--exp_dir", p.path("exp")], [f"{name}.json", *expect])
    p.write("tests/not_utf8.json", b'[{"book": "\xff"}]', binary=True)
    p.add("testset-not-utf8", [GCA, "--test_file", p.path("tests/not_utf8.json")], ["not_utf8.json", "UTF-8"])
    p.add("testset-is-dir", [GCA, "--test_file", p.path("tests")], ["tests"])
    chat_bad = p.path("tests/profile_number.json")
    p.add("chat-testset-profile-number", [CHAT, "--test_file", chat_bad, "--sample", "1", "--character", "Tomas",
                                          "--model", "gpt-4o-mini"], ["profile_number.json"])
    p.add("chat-testset-profiles-list", [CHAT, "--test_file", p.path("tests/profiles_list_top.json"), "--sample", "1",
                                         "--character", "Tomas", "--model", "gpt-4o-mini"], ["character_profiles"])
    p.add("chat-testset-sample-out-of-range", [CHAT, "--test_file", p.ok_test, "--sample", "99", "--character",
                                               "Mara", "--model", "gpt-4o-mini"], ["--sample"])
    p.add("chat-testset-deep", [CHAT, "--test_file", p.path("tests/deep.json"), "--character", "Mara",
                                "--model", "gpt-4o-mini"], ["deep.json", "nested too deeply"])


def simulation_file_cases(p):
    item = gca_test_set(1)[0]

    def record(**over):
        rec = {"book_title": item["book"], "i_p": item["i_p"], "i_c": item["i_c"], "circumstance": item,
               "simulation": [{"role": "Mara", "content": "hi"}], "involved_character_profiles": {"Mara": "p"}}
        rec.update(over)
        return [rec]

    variants = {"simulation_string": (record(simulation="text"), "'simulation'"),
                "turn_number": (record(simulation=[5]), "simulation[0]"),
                "content_number": (record(simulation=[{"role": "Mara", "content": 5}]), "simulation[0]"),
                "profiles_list": (record(involved_character_profiles=["x"]), "involved_character_profiles"),
                "profile_number": (record(involved_character_profiles={"Mara": 3}), "involved_character_profiles"),
                "i_p_mismatch": (record(i_p=99), "i_p"),
                "i_p_bool": (record(i_p=False), "'i_p'"),
                "title_number": (record(book_title=5), "'book_title'"),
                "record_number": ([3], "record 0"),
                "top_object": ({"records": []}, "list"),
                "duplicate": (record() + record(), "records 0 and 1")}
    for name, (data, field) in sorted(variants.items()):
        path = p.write(f"sims/{name}.json", json.dumps(data))
        p.add(f"simfile-{name}", [GCA, "--simulation_file", path, "--exp_dir", p.path("exp")], [f"{name}.json", field])
    deep = gca_test_set(1)
    deep[0]["plot"]["extra"] = json.loads("[" * 300 + "]" * 300)   # parses, but deeper than any CoSER file
    path = p.write("tests/deep300.json", json.dumps(deep))
    p.add("testset-deep300", [GCA, "--test_file", path], ["deep300.json", "nested too deeply"])


def book_cases(p):
    lines = {
        "title_number": '{"title": 5, "author": "A", "content": "x y z"}',
        "content_list": '{"title": "T", "author": "A", "content": ["x"]}',
        "author_missing": '{"title": "T", "content": "words here"}',
        "line_list": "[1, 2, 3]",
        "deep": DEEP,
        "huge_int": '{"title": "T", "author": "A", "content": "x", "n": ' + HUGE + "}",
        "title_dots": '{"title": "..", "author": "A", "content": "Some words."}',
        "title_null": '{"title": null, "author": "A", "content": "Some words."}',
        "cut": '{"title": "T", "author": "A", "content": "Some wo',
    }
    for name, line in sorted(lines.items()):
        path = p.write(f"books/{name}.jsonl", line + "\n")
        p.add(f"books-{name}", [CONSTRUCT, "--input", path, "--output_dir", p.path("out"), "--dry_run"],
              [f"{name}.jsonl", "line 1"])
    p.write("books/not_utf8.jsonl", b'{"title": "\xff", "author": "A", "content": "x"}\n', binary=True)
    p.add("books-not-utf8", [CONSTRUCT, "--input", p.path("books/not_utf8.jsonl"), "--dry_run"],
          ["not_utf8.jsonl", "UTF-8"])
    p.add("books-input-dir", [CONSTRUCT, "--input", p.path("books"), "--dry_run"], ["books"])
    p.write("occupied", "a file, not a folder\n")
    p.add("construct-output-is-file", [CONSTRUCT, "--input", p.books, "--output_dir", p.path("occupied"),
                                       "--dry_run"], ["occupied"])


def final_cases(p):
    finals = {
        "top_list": "[1]",
        "plots_string": '{"plots": "none", "character_datasets": {}}',
        "split_string": '{"plots": [], "character_datasets": {}, "split_plot_index": "x"}',
        "datasets_list": '{"plots": [], "character_datasets": []}',
        "deep": DEEP,
        "huge_int": '{"plots": [], "split_plot_index": ' + HUGE + "}",
        "empty": "",
    }
    for name, text in sorted(finals.items()):
        p.write(f"finals/{name}/final/Book.json", text)
        p.add(f"transform-final-{name}", [TRANSFORM, "--dir", p.path(f"finals/{name}")], ["Book.json"])
        p.add(f"chat-final-{name}", [CHAT, "--book_data", p.path(f"finals/{name}/final/Book.json"), "--character",
                                     "Iago", "--model", "gpt-4o-mini"], ["Book.json"])


def report_cases(p):
    def ev(name, text, binary=False, fname=None):
        folder = p.path(f"reports/{name}")
        p.write(os.path.join(folder, "evaluation", fname or "test_set_m.json"), text, binary=binary) \
            if not binary else None
        if binary:
            os.makedirs(os.path.join(folder, "evaluation"), exist_ok=True)
            with open(os.path.join(folder, "evaluation").encode() + b"/" + fname, "wb") as f:
                f.write(text)
        return folder

    case = {"simulation": [], "simulation_str": "", "score": 50.0,
            "critique": {d: {"flaws": [], "score": 50.0} for d in ("Storyline Consistency", "Anthropomorphism",
                                                                   "Character Fidelity", "Storyline Quality")}}
    good = {"scores": {"avg": 50.0}, "cases": {"B-0-0": case}}
    bad = {
        "scores_string": dict(good, scores={"avg": "high", "bleu": "x"}),
        "scores_list": dict(good, scores=[1, 2]),
        "score_string": dict(good, cases={"B-0-0": dict(case, score="fifty")}),
        "dim_score_string": dict(good, cases={"B-0-0": dict(case, critique={**case["critique"],
                                                                             "Anthropomorphism": {"flaws": [],
                                                                                                  "score": "x"}})}),
        "bleu_string": dict(good, cases={"B-0-0": dict(case, critique={**case["critique"], "bleu": "n/a"})}),
        "cases_list": dict(good, cases=[case]),
        "case_number": dict(good, cases={"B-0-0": 3}),
        "flaws_string": dict(good, cases={"B-0-0": dict(case, critique={**case["critique"], "Anthropomorphism":
                                                                         {"flaws": "many", "score": 3}})}),
        "severity_object": dict(good, cases={"B-0-0": dict(case, critique={**case["critique"], "Anthropomorphism":
                                                                            {"flaws": [{"severity": {"a": 1}}],
                                                                             "score": 3}})}),
        "spec_string": dict(good, spec="yes"),
        "judge_number": dict(good, judge_model=5),
        "simulation_string": dict(good, cases={"B-0-0": dict(case, simulation="text")}),
    }
    for name, data in sorted(bad.items()):
        folder = ev(name, json.dumps(data))
        p.add(f"report-{name}", [REPORT, "--exp_dir", folder], ["test_set_m.json"])
    for name, text in [("deep", DEEP), ("huge_int", '{"cases": {}, "n": ' + HUGE + "}"), ("top_list", "[]"),
                       ("cut", json.dumps(good)[:-5])]:
        folder = ev(name, text)
        p.add(f"report-{name}", [REPORT, "--exp_dir", folder], ["test_set_m.json"])
    folder = ev("name_not_utf8", json.dumps(good).encode(), binary=True, fname=b"test_set_\xff.json")
    p.add("report-name-not-utf8", [REPORT, "--exp_dir", folder], ["test_set_"])
    # Hand-edited run records beside the evaluations: ignored where they make no sense, never a crash.
    folder = ev("odd_run_records", json.dumps({"cases": good["cases"]}))
    p.write("reports/odd_run_records/run_gca_evaluation.json",
            '{"flags": {"judge_model": "j", "actor_model": "m", "test_file": 7}}')
    p.write("reports/odd_run_records/evaluation/zz_case_number.json", json.dumps(bad["case_number"]))
    p.add("report-odd-run-records-then-bad-case", [REPORT, "--exp_dir", folder], ["zz_case_number.json"])
    p.add("report-no-folder", [REPORT, "--exp_dir", p.path("reports/absent")], ["absent"])
    ok = ev("out_blocked", json.dumps(good))
    p.add("report-out-is-file", [REPORT, "--exp_dir", ok, "--out", p.path("occupied")], ["occupied"])


def chat_cases(p):
    base = [CHAT, "--model", "gpt-4o-mini", "--out_dir", p.path("chat")]
    transcripts = {"deep": DEEP, "list": "[]", "persona_string": '{"persona": "Iago"}',
                   "turns_string": '{"persona": {"name": "I", "prompt": "p"}, "turns": "x"}',
                   "settings_nan": '{"persona": {"name": "I", "prompt": "p"}, "settings": {"temperature": NaN}}',
                   "settings_huge": '{"persona": {"name": "I", "prompt": "p"}, "settings": {"max_new_tokens": 1e400}}',
                   "turn_number": '{"persona": {"name": "I", "prompt": "p"}, "turns": [3]}'}
    for name, text in sorted(transcripts.items()):
        path = p.write(f"transcripts/{name}.json", text)
        p.add(f"chat-resume-{name}", base + ["--resume", path], [f"{name}.json"])
    p.write("cards/noise.png", b"\x89PNG\r\n\x1a\nnot really a png", binary=True)
    p.add("chat-card-noise", base + ["--card", p.path("cards/noise.png")], ["noise.png"])
    p.write("cards/wrong.json", '{"spec": "chara_card_v2", "data": {"name": 5}}')
    p.add("chat-card-wrong-types", base + ["--card", p.path("cards/wrong.json")], ["wrong.json"])
    p.add("chat-card-dir", base + ["--card", p.path("cards")], ["cards"])
    p.add("chat-card-missing", base + ["--card", p.path("cards/absent.png")], ["absent.png"])
    p.write("prompts/not_utf8.txt", b"\xff\xfe you are", binary=True)
    p.add("chat-system-file-not-utf8", base + ["--system_file", p.path("prompts/not_utf8.txt")], ["not_utf8.txt"])
    p.add("chat-system-file-dir", base + ["--system_file", p.path("prompts")], ["prompts"])
    p.add("chat-out-dir-is-file", [CHAT, "--model", "gpt-4o-mini", "--system_prompt", "You are X.", "--out_dir",
                                   p.path("occupied")], ["occupied"], stdin="Who goes there?\n")
    p.add("chat-export-into-file", [CHAT, "--card", p.path("cards/wrong.json"), "--export_card",
                                    p.path("occupied/card.json")], ["wrong.json"])


@pytest.fixture(scope="module")
def server():
    s = FakeServer(responder=gca_respond).start()
    yield s
    s.stop()


def build_cases(root):
    p = Probe(root)
    for make in (config_cases, env_cases, flag_cases, items_cases, simulation_file_cases, book_cases, final_cases,
                 report_cases, chat_cases):
        make(p)
    return p.cases


def run_probe(cases, server, tmp_path):
    env = dict(os.environ, OPENAI_BASE_URL=server.base_url, OPENAI_API_KEY=TEST_KEY,
               COSER_CACHE_DIR=str(tmp_path / ".cache"), COSER_RETRY_BASE="0.01", COSER_TIMEOUT="5",
               PYTHONPATH=REPO, TMPDIR=str(tmp_path))
    with open(tmp_path / "cases.json", "w", encoding="utf-8") as f:
        json.dump(cases, f)
    subprocess.run([PYTHON, os.path.join(REPO, "tests", "probe_runner.py"), str(tmp_path / "cases.json"),
                    str(tmp_path / "results.json")], env=env, cwd=str(tmp_path), timeout=600, check=True)
    with open(tmp_path / "results.json", encoding="utf-8") as f:
        return {r["id"]: r for r in json.load(f)}


def problems(case, result) -> str | None:
    err = result["stderr"]
    if "Traceback" in err or "Traceback" in result["stdout"]:
        return "traceback:\n" + err[-1500:]
    if result["code"] != 2:
        return f"exit {result['code']} (want 2):\n{err[-800:]}"
    lines = [ln for ln in err.splitlines() if ERROR_LINE.match(ln)]
    if not lines:
        return "no error line:\n" + err[-800:]
    if not any(all(e in ln for e in case["expect"]) for ln in lines):
        return f"no error line names {case['expect']}:\n" + "\n".join(lines)
    return None


def test_probe_of_hostile_inputs(server, tmp_path):
    cases = build_cases(tmp_path / "inputs")
    assert len(cases) >= 100, len(cases)
    results = run_probe(cases, server, tmp_path)
    bad = {c["id"]: problems(c, results[c["id"]]) for c in cases}
    bad = {k: v for k, v in bad.items() if v}
    assert not bad, f"{len(bad)} of {len(cases)} cases:\n\n" + "\n\n".join(f"[{k}] {v}" for k, v in bad.items())
    # Only the chat whose transcript folder is blocked talks to the model (then its save fails).
    sent = server.chat_requests()
    assert all(b["messages"][-1]["content"] == "Who goes there?" for b in sent), "a hostile input reached the model"
    assert "the transcript was saved to" in results["chat-out-dir-is-file"]["stderr"]


if __name__ == "__main__":  # list the cases: python tests/test_probe.py
    import tempfile
    for c in build_cases(tempfile.mkdtemp()):
        print(c["id"], " ".join(os.path.basename(a) for a in c["argv"][:3]), file=sys.stdout)

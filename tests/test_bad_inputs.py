"""The bad-input corpus (tests/data/bad/): every case exits non-zero with a one-line error that names
the file/line/field, prints no traceback, and leaves no half-written output behind.

Each case runs the real script as a subprocess from a scratch folder, against the fake server
where an LLM is involved. Corpus files are read in place; cases that need a folder layout
(final/*.json) copy the corpus file into tmp_path.
"""
import json
import os
import re
import shutil

import pytest

from tests import construction_script as S
from tests.conftest import run_script
from tests.fakeserver import Fault
from tests.test_faults import GCA_ARGS, gca_respond, write_gca_test_set

BAD = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "bad")
CONSTRUCT = "data_construction/main.py"
TRANSFORM = "data_construction/transform.py"
GCA = "gca_evaluation/main.py"
REPORT = "gca_evaluation/report.py"
CHAT = "chat.py"
DIAG = ["-m", "coser.llm"]
UNREACHABLE = "http://127.0.0.1:9/v1"   # discard port: nothing listens, connections are refused

GOOD_BOOK = {"title": "Good Book", "author": "Anon",
             "content": "The lamp was lit at dusk. Mara spoke first. Tomas answered her slowly. They waited."}
ERROR_LINE = re.compile(r"^(error: |stopped: |\S+: error: )")


def bad(name):
    return os.path.join(BAD, name)


def write_good_books(tmp):
    path = os.path.join(tmp, "good.jsonl")
    with open(path, "w", encoding="utf-8") as f:
        f.write(json.dumps(GOOD_BOOK) + "\n")
    return path


def write_huge_line(tmp):
    """A 3 MB books line cut before its closing quote: generated here so the repo stays small."""
    path = os.path.join(tmp, "huge.jsonl")
    with open(path, "w", encoding="utf-8") as f:
        f.write('{"title": "Huge", "author": "Anon", "content": "' + "word " * 600_000 + "\n")
    return path


def put_final(tmp, name):
    """A data root whose final/ holds one corpus file as Book.json."""
    os.makedirs(os.path.join(tmp, "d", "final"))
    shutil.copy(bad(name), os.path.join(tmp, "d", "final", "Book.json"))


def put_simulation(tmp, name):
    """A valid test set {tmp}/ok.json whose existing simulation file (reused by GCA) is a corpus file."""
    os.makedirs(os.path.join(tmp, "exp", "simulation"))
    shutil.copy(bad(name), os.path.join(tmp, "exp", "simulation", "ok_fake-actor.json"))


def put_evaluation(tmp, name):
    os.makedirs(os.path.join(tmp, "exp", "evaluation"))
    shutil.copy(bad(name), os.path.join(tmp, "exp", "evaluation", "broken_run.json"))


def chat(*extra):
    return [CHAT, "--model", "gpt-4o-mini", "--out_dir", "{tmp}/chat", *extra]


def gca(test_file, *extra):
    return [GCA, "--test_file", test_file, *GCA_ARGS, "--exp_dir", "{tmp}/exp", *extra]


def judge_down(body):
    if body.get("model") == "fake-judge":
        return Fault.http(503, message="judge overloaded")
    return gca_respond(body)


def not_found_404(body):
    if body.get("model") == "no-such-model":
        return Fault.http(404, message="The model `no-such-model` does not exist")
    return gca_respond(body) if body["messages"][0]["role"] == "system" else S.respond(body)


# id -> dict(argv, expect: substrings of one error line, env overrides (None = unset), final: corpus file to
# place as {tmp}/d/final/Book.json, responder, xfail: why the script still fails this case)
CASES = {
    # ---- books JSONL (construction) ----
    "books-truncated-line": dict(argv=[CONSTRUCT, "--input", bad("books_truncated_line.jsonl"), "--dry_run"],
                                 expect=["books_truncated_line.jsonl", "line 2", "JSON"]),
    "books-title-not-string": dict(argv=[CONSTRUCT, "--input", bad("books_title_not_string.jsonl")],
                                   expect=["books_title_not_string.jsonl", "line 1", "'title'"]),
    "books-content-list": dict(argv=[CONSTRUCT, "--input", bad("books_content_list.jsonl")],
                               expect=["line 1", "'content'"]),
    "books-empty-file": dict(argv=[CONSTRUCT, "--input", bad("books_empty.jsonl")],
                             expect=["books_empty.jsonl"]),
    "books-empty-file-dry-run": dict(argv=[CONSTRUCT, "--input", bad("books_empty.jsonl"), "--dry_run"],
                                     expect=["books_empty.jsonl"],
    ),
    "books-blank-lines-only": dict(argv=[CONSTRUCT, "--input", bad("books_blank_lines_only.jsonl")],
                                   expect=["books_blank_lines_only.jsonl"]),
    "books-whitespace-content": dict(argv=[CONSTRUCT, "--input", bad("books_whitespace_content.jsonl")],
                                     expect=["line 1", "'content'"]),
    "books-huge-line": dict(argv=[CONSTRUCT, "--input", "{huge}"], expect=["huge.jsonl", "line 1", "JSON"]),
    "books-non-utf8": dict(argv=[CONSTRUCT, "--input", bad("books_non_utf8.jsonl")],
                           expect=["books_non_utf8.jsonl", "line 1", "UTF-8"]),
    "books-missing-author": dict(argv=[CONSTRUCT, "--input", bad("books_missing_author.jsonl")],
                                 expect=["line 1", "'author'"]),
    "books-line-not-object": dict(argv=[CONSTRUCT, "--input", bad("books_not_object.jsonl")],
                                  expect=["line 1", "object"]),
    "books-title-dots-only": dict(argv=[CONSTRUCT, "--input", bad("books_title_dots_only.jsonl")],
                                  expect=["line 1", "'title'"]),
    "books-duplicate-sanitized-titles": dict(argv=[CONSTRUCT, "--input", bad("books_duplicate_sanitized.jsonl"),
                                                   "--dry_run"],
                                             expect=["line 2", "line 1", "'title'"]),
    "books-missing-file": dict(argv=[CONSTRUCT, "--input", "{tmp}/nope.jsonl"], expect=["nope.jsonl", "not found"]),
    "books-input-is-dir": dict(argv=[CONSTRUCT, "--input", "{tmp}"], expect=["directory"]),
    # ---- final book files (transform) ----
    "final-not-json": dict(argv=[TRANSFORM, "--dir", "{tmp}/d"], final="final_not_json.json",
                           expect=["Book.json", "line", "JSON"]),
    "final-empty": dict(argv=[TRANSFORM, "--dir", "{tmp}/d"], final="final_empty.json",
                        expect=["Book.json", "empty"]),
    "final-missing-plots": dict(argv=[TRANSFORM, "--dir", "{tmp}/d"], final="final_missing_plots.json",
                                expect=["Book", "plots"],
),
    "final-wrong-types": dict(argv=[TRANSFORM, "--dir", "{tmp}/d"], final="final_wrong_types.json",
                              expect=["Book", "plots"],
),
    "final-top-level-list": dict(argv=[TRANSFORM, "--dir", "{tmp}/d"], final="final_list_top.json",
                                 expect=["Book.json", "object"]),
    "final-negative-split": dict(argv=[TRANSFORM, "--dir", "{tmp}/d"],
                                 final="final_negative_split.json",
                                 expect=["Book.json", "'split_plot_index'"]),
    "final-non-utf8": dict(argv=[TRANSFORM, "--dir", "{tmp}/d"], final="final_non_utf8.json",
                           expect=["Book.json", "UTF-8"]),
    "final-dir-missing": dict(argv=[TRANSFORM, "--dir", "{tmp}/nowhere"], expect=["nowhere", "not found"]),
    # ---- GCA test sets ----
    "testset-not-a-list": dict(argv=gca(bad("testset_not_list.json")), expect=["testset_not_list.json", "list"]),
    "testset-missing-field": dict(argv=gca(bad("testset_missing_scenario.json")),
                                  expect=["testset_missing_scenario.json", "sample 1", "'scenario'"]),
    "testset-speaker-without-profile": dict(argv=gca(bad("testset_speaker_without_profile.json")),
                                            expect=["sample 1", "'character_profiles'", "Tomas"]),
    "testset-dialogue-not-object": dict(argv=gca(bad("testset_dialogue_not_object.json")),
                                        expect=["sample 0", "dialogues[2]"]),
    "testset-i_p-string": dict(argv=gca(bad("testset_ip_string.json")), expect=["sample 0", "'i_p'"]),
    "testset-truncated": dict(argv=gca(bad("testset_truncated.json")), expect=["testset_truncated.json", "JSON"]),
    "testset-empty": dict(argv=gca(bad("testset_empty.json")), expect=["testset_empty.json", "empty"]),
    "testset-non-utf8": dict(argv=gca(bad("testset_non_utf8.json")), expect=["testset_non_utf8.json", "UTF-8"]),
    "testset-missing-file": dict(argv=gca("{tmp}/absent_test.json"), expect=["absent_test.json", "not found"]),
    # (with non-default env/nsp models a run never reads the reference-named file: judge it explicitly)
    "gca-existing-simulation-corrupt": dict(argv=gca("{tmp}/ok.json", "--simulation_file",
                                                     "{tmp}/exp/simulation/ok_fake-actor.json"),
                                            sim="simulation_corrupt.json",
                                            expect=["ok_fake-actor.json", "JSON"]),
    "gca-limit-zero": dict(argv=gca("{tmp}/ok.json", "--limit", "0"), expect=["--limit"]),
    "gca-unknown-judge-404": dict(argv=[GCA, "--test_file", "{tmp}/ok.json", "--exp_dir", "{tmp}/exp",
                                        "--actor_model", "fake-actor", "--env_model", "fake-env",
                                        "--nsp_model", "fake-nsp", "--judge_model", "no-such-model"],
                                  responder=not_found_404, expect=["no-such-model", "404"]),
    "gca-unreachable-base-url": dict(argv=gca("{tmp}/ok.json", "--config", bad("config_max_attempts_2.json")),
                                     env={"OPENAI_BASE_URL": UNREACHABLE, "COSER_TIMEOUT": "1"},
                                     expect=["127.0.0.1:9", "2 attempts"]),
    "gca-judge-endpoint-down": dict(argv=gca("{tmp}/ok.json", "--config", bad("config_max_attempts_2.json")),
                                    responder=judge_down, expect=["fake-judge", "503"]),
    # ---- config files ----
    "config-not-json": dict(argv=[*DIAG, "--config", bad("config_not_json.json"), "hi"],
                            expect=["config_not_json.json", "line 3", "JSON"]),
    "config-wrong-type": dict(argv=[CONSTRUCT, "--input", "{good}", "--config", bad("config_timeout_string.json")],
                              expect=["config_timeout_string.json", "'timeout'"]),
    "config-bad-prices": dict(argv=[*DIAG, "--config", bad("config_prices_bad.json"), "hi"],
                              expect=["config_prices_bad.json", "prices", "gpt-4o-mini"]),
    "config-top-level-list": dict(argv=[*DIAG, "--config", bad("config_list_top.json"), "hi"],
                                  expect=["config_list_top.json", "object"]),
    "config-placeholder-key-remote-model": dict(
        argv=[CONSTRUCT, "--input", "{good}", "--config", bad("config_placeholder_key.json"), "--model", "gpt-4o-mini"],
        env={"OPENAI_API_KEY": None, "OPENAI_BASE_URL": None}, expect=["api_key", "OPENAI_API_KEY"]),
    "config-placeholder-key-diagnostic": dict(
        argv=[*DIAG, "--config", bad("config_placeholder_key.json"), "--model", "gpt-4o-mini", "hi"],
        env={"OPENAI_API_KEY": None, "OPENAI_BASE_URL": None}, expect=["api_key"]),
    "config-missing-path": dict(argv=[CONSTRUCT, "--input", "{good}", "--config", "{tmp}/absent.json"],
                                expect=["absent.json", "not found"]),
    # ---- CLI flags and endpoints ----
    "unknown-model-404": dict(argv=[CONSTRUCT, "--input", "{good}", "--model", "no-such-model"],
                              responder=not_found_404, expect=["no-such-model", "404"]),
    "unknown-model-404-diagnostic": dict(argv=[*DIAG, "--model", "no-such-model", "hi"], responder=not_found_404,
                                         expect=["no-such-model", "404"]),
    "wrong-key-401": dict(argv=[CONSTRUCT, "--input", "{good}", "--model", "gpt-4o-mini"],
                          responder=lambda body: Fault.http(401, message="Incorrect API key provided"),
                          expect=["gpt-4o-mini", "401"]),
    "unreachable-base-url": dict(argv=[CONSTRUCT, "--input", "{good}", "--model", "gpt-4o-mini",
                                       "--config", bad("config_max_attempts_2.json")],
                                 env={"OPENAI_BASE_URL": UNREACHABLE, "COSER_TIMEOUT": "1"},
                                 expect=["gpt-4o-mini", "127.0.0.1:9", "2 attempts"]),
    "unreachable-base-url-diagnostic": dict(argv=[*DIAG, "--model", "gpt-4o-mini", "--config",
                                                  bad("config_max_attempts_2.json"), "hi"],
                                            env={"OPENAI_BASE_URL": UNREACHABLE, "COSER_TIMEOUT": "1"},
                                            expect=["gpt-4o-mini", "127.0.0.1:9", "2 attempts"]),
    "negative-num-workers": dict(argv=[CONSTRUCT, "--input", "{good}", "--num_workers", "-3"],
                                 expect=["--num_workers"]),
    "zero-chunk-size": dict(argv=[CONSTRUCT, "--input", "{good}", "--chunk_size", "0"], expect=["--chunk_size"]),
    "non-integer-flag": dict(argv=[CONSTRUCT, "--input", "{good}", "--num_workers", "many"],
                             expect=["--num_workers", "invalid int"]),
    "unknown-book-selected": dict(argv=[CONSTRUCT, "--input", "{good}", "--books", "Hamlet", "--dry_run"],
                                  expect=["--books", "Hamlet"]),
    "transform-negative-test-count": dict(argv=[TRANSFORM, "--dir", "{tmp}/d", "--test_per_split", "-1"],
                                          final="final_negative_split.json",
                                          expect=["--test_per_split"]),
}


def _fill(arg, tmp, good, huge):
    return arg.replace("{tmp}", tmp).replace("{good}", good).replace("{huge}", huge)


def assert_no_half_written(root, placed=()):
    """Every JSON/JSONL file under root parses and no atomic-write temp file is left over."""
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if d != ".cache"]
        for name in files:
            path = os.path.join(folder, name)
            assert not name.startswith(".tmp-"), f"leftover temp file {path}"
            if name.endswith(".json"):
                if path in placed:
                    continue    # a corpus file the case put there itself
                with open(path, encoding="utf-8") as f:
                    json.load(f)
            elif name.endswith(".jsonl") and folder != root:
                with open(path, encoding="utf-8") as f:
                    for line in f:
                        if line.strip():
                            json.loads(line)


def check_one_line_error(result, expect):
    assert result.returncode != 0, f"exit 0\nstdout: {result.stdout[-2000:]}\nstderr: {result.stderr[-2000:]}"
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    assert "Traceback" not in result.stdout
    errors = [line for line in result.stderr.splitlines() if ERROR_LINE.match(line)]
    assert errors, f"no error line in stderr:\n{result.stderr[-2000:]}"
    matching = [line for line in errors if all(e in line for e in expect)]
    assert matching, f"no error line names {expect}:\n" + "\n".join(errors)
    return matching[0]


def run_case(case, fake_server, llm_env, tmp_path):
    tmp = str(tmp_path)
    good = write_good_books(tmp)
    huge = write_huge_line(tmp) if any("{huge}" in a for a in case["argv"]) else ""
    if case.get("final"):
        put_final(tmp, case["final"])
    if case.get("sim"):
        put_simulation(tmp, case["sim"])
    if case.get("evaluation"):
        put_evaluation(tmp, case["evaluation"])
    write_gca_test_set(os.path.join(tmp, "ok.json"), n=2)
    fake_server.set_responder(case.get("responder") or (gca_respond if case["argv"][0] == GCA else S.respond))
    env = dict(llm_env)
    for k, v in (case.get("env") or {}).items():
        if v is None:
            env.pop(k, None)
        else:
            env[k] = v
    argv = [_fill(a, tmp, good, huge) for a in case["argv"]]
    if argv[0] == CONSTRUCT:
        argv += ["--output_dir", os.path.join(tmp, "out")]
    return run_script(argv, env=env, cwd=tmp, timeout=120, input="")


@pytest.mark.parametrize("case_id", sorted(CASES))
def test_bad_input(case_id, fake_server, llm_env, tmp_path, request):
    case = CASES[case_id]
    if case.get("xfail"):
        request.applymarker(pytest.mark.xfail(strict=True, reason=case["xfail"]))
    result = run_case(case, fake_server, llm_env, tmp_path)
    check_one_line_error(result, case["expect"])
    placed = {os.path.join(str(tmp_path), "d", "final", "Book.json"),
              os.path.join(str(tmp_path), "exp", "simulation", "ok_fake-actor.json"),
              os.path.join(str(tmp_path), "exp", "evaluation", "broken_run.json")}
    assert_no_half_written(str(tmp_path), placed)


def test_corpus_size():
    """The issue asks for at least 25 cases; every corpus file belongs to some case."""
    assert len(CASES) >= 25
    used = " ".join(" ".join(c["argv"]) for c in CASES.values())
    used += " ".join(c.get(k, "") for c in CASES.values() for k in ("final", "sim", "evaluation"))
    unused = sorted(n for n in os.listdir(BAD) if n not in used)
    # The path-like titles are valid input and have their own test below.
    assert unused == ["README.md", "books_path_titles.jsonl"], unused


def test_path_like_titles_stay_inside_output_dir(fake_server, llm_env, tmp_path):
    """'../escape', 'a/b', '/etc/passwd' are sanitized to file names inside the output folder, not errors."""
    fake_server.set_responder(S.respond)
    work = tmp_path / "work"
    work.mkdir()
    out = work / "out"
    r = run_script([CONSTRUCT, "--input", bad("books_path_titles.jsonl"), "--output_dir", out,
                    "--model", "gpt-4o-mini", "--num_workers", "2"], env=llm_env, cwd=work, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Traceback" not in r.stderr
    written = sorted(os.path.relpath(os.path.join(d, f), out) for d, _, fs in os.walk(out) for f in fs)
    finals = [w for w in written if w.startswith("final" + os.sep)]
    assert len(finals) == 4, written
    assert all(os.sep not in f[len("final" + os.sep):] and ".." not in f for f in finals), finals
    # Nothing escaped: the scratch folder holds only out/ and the cache.
    assert sorted(os.listdir(work)) == [".cache", "out"] or sorted(os.listdir(work)) == ["out"]
    assert sorted(os.listdir(tmp_path)) == ["work"] or set(os.listdir(tmp_path)) <= {"work", ".cache"}
    assert_no_half_written(str(out))

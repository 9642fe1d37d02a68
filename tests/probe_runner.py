"""Run many invocations of the real scripts in one child process (tests/test_probe.py).

    python tests/probe_runner.py CASES.json RESULTS.json

Each case is {"argv": [script.py | "-m", module, args...], "cwd", "env": {name: value | null}, "stdin"}.
A case runs the script's own `__main__` code, as `python script.py args` would, with its stdout and
stderr redirected at the file-descriptor level; an exception that escapes is printed the way the
interpreter prints it (a traceback), so a probe sees exactly what a user would. Starting Python and
importing the toolkit once per batch instead of once per case keeps 100+ cases fast.
"""
import json
import os
import runpy
import signal
import sys
import tempfile
import traceback

CASE_SECONDS = 30


class _CaseTimeout(BaseException):
    pass


def _on_alarm(signum, frame):
    raise _CaseTimeout()


def _capture(fd: int, path: str):
    saved = os.dup(fd)
    target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.dup2(target, fd)
    os.close(target)
    return saved


def run_case(case: dict, scratch: str) -> dict:
    out_path, err_path = os.path.join(scratch, "out"), os.path.join(scratch, "err")
    env_before = dict(os.environ)
    cwd_before = os.getcwd()
    argv_before, stdin_before = sys.argv, sys.stdin
    for k, v in (case.get("env") or {}).items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    sys.stdout.flush()
    sys.stderr.flush()
    saved = (_capture(1, out_path), _capture(2, err_path))
    stdin_path = os.path.join(scratch, "in")
    with open(stdin_path, "w", encoding="utf-8") as f:
        f.write(case.get("stdin") or "")
    sys.stdin = open(stdin_path, encoding="utf-8")
    code = None
    try:
        os.chdir(case["cwd"])
        argv = case["argv"]
        signal.alarm(CASE_SECONDS)
        if argv[0] == "-m":
            sys.argv = [argv[1], *argv[2:]]
            runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
        else:
            sys.argv = list(argv)
            runpy.run_path(argv[0], run_name="__main__")
        code = 0
    except SystemExit as e:
        if isinstance(e.code, int) or e.code is None:
            code = e.code or 0
        else:
            print(e.code, file=sys.stderr)
            code = 1
    except _CaseTimeout:
        print(f"probe: case still running after {CASE_SECONDS} s", file=sys.stderr)
        code = "timeout"
    except BaseException:  # noqa: BLE001 - printed as the interpreter would print it
        traceback.print_exc()
        code = 1
    finally:
        signal.alarm(0)
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        except Exception:  # noqa: BLE001
            pass
        sys.stdin.close()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        os.close(saved[0])
        os.close(saved[1])
        os.chdir(cwd_before)
        sys.argv, sys.stdin = argv_before, stdin_before
        os.environ.clear()
        os.environ.update(env_before)
    with open(out_path, encoding="utf-8", errors="replace") as f:
        stdout = f.read()
    with open(err_path, encoding="utf-8", errors="replace") as f:
        stderr = f.read()
    return {"id": case.get("id"), "code": code, "stdout": stdout[-4000:], "stderr": stderr[-4000:]}


def main() -> None:
    cases_path, results_path = sys.argv[1], sys.argv[2]
    with open(cases_path, encoding="utf-8") as f:
        cases = json.load(f)
    signal.signal(signal.SIGALRM, _on_alarm)
    results = []
    with tempfile.TemporaryDirectory() as scratch:
        for case in cases:
            results.append(run_case(case, scratch))
    with open(results_path, "w", encoding="utf-8") as f:
        json.dump(results, f)


if __name__ == "__main__":
    main()

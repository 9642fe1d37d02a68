"""The real embedded model (SmolLM2-135M via llama-cpp-python), offline.

Every test that loads the model does so in a child process: a backend that dies by a signal (SIGILL on a CPU
it was not built for) then fails these tests with a message, and the rest of the suite still runs and reports.
"""
import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from coser import backend
from tests.conftest import PYTHON, REPO, run_script

needs_backend = pytest.mark.skipif(
    subprocess.run([PYTHON, "-c", "import importlib.util,sys; sys.exit(importlib.util.find_spec('llama_cpp') is None)"]
                   ).returncode != 0, reason="llama-cpp-python not installed (run `make venv`)")


def run_child(code: str, tmp_path, timeout=600) -> dict:
    """Run `code` in a fresh interpreter; a crash becomes a test failure that says what happened."""
    env = dict(os.environ, PYTHONPATH=REPO, COSER_CACHE_DIR=str(tmp_path))
    r = subprocess.run([PYTHON, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=timeout,
                       env=env, cwd=str(tmp_path))
    if r.returncode != 0:
        pytest.fail(backend.explain_failure(r.returncode, r.stderr) + "\n" + r.stderr[-2000:])
    return json.loads(r.stdout.strip().splitlines()[-1])


@needs_backend
def test_local_model_answers_and_caches(tmp_path):
    out = run_child("""
        import json
        from coser.cache import Cache
        from coser.config import Settings
        from coser.llm import LLM
        llm = LLM(Settings(cache_dir="."), cache=Cache("c.sqlite"))
        msgs = [{"role": "system", "content": "You are Hamlet."}, {"role": "user", "content": "Hello"}]
        a = llm.chat("local", msgs, max_tokens=40)
        b = llm.chat("local", msgs, max_tokens=40)
        print(json.dumps({"a": a, "b": b, "hits": llm.usage.totals()["cache_hits"]}))
    """, tmp_path)
    assert isinstance(out["a"], str) and out["a"].strip()
    assert out["b"] == out["a"] and out["hits"] == 1


@needs_backend
def test_local_model_schema_constrained_json(tmp_path):
    out = run_child("""
        import json
        from coser.cache import Cache
        from coser.config import Settings
        from coser.jsonio import get_json
        from coser.llm import LLM
        llm = LLM(Settings(cache_dir="."), cache=Cache("c.sqlite"))
        schema = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
                  "required": ["name", "age"]}
        v = get_json(llm, "local", "Describe Hamlet as JSON with his name and age.", schema=schema, max_tokens=60,
                     validate=lambda v: v if isinstance(v.get("age"), int) and isinstance(v.get("name"), str) else None)
        print(json.dumps({"value": v if isinstance(v, dict) else repr(v)}))
    """, tmp_path)
    assert isinstance(out["value"], dict) and set(out["value"]) >= {"name", "age"}


@needs_backend
def test_diagnostic_offline(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "COSER_CACHE_DIR": str(tmp_path), "HOME": str(tmp_path)}
    r = run_script(["-m", "coser.llm", "--model", "local", "--max_tokens", "30", "Say hello as Hamlet"], env=env,
                   cwd=tmp_path)
    assert r.returncode == 0, backend.explain_failure(r.returncode, r.stderr)
    assert r.stdout.strip()
    r = run_script(["-m", "coser.llm", "--model", "local", "--max_tokens", "30", "--json", "Say hello as Hamlet"],
                   env=env, cwd=tmp_path)
    assert json.loads(r.stdout)["cached"] is True


@needs_backend
def test_installed_backend_is_the_portable_build():
    """What CI checks: llama.cpp reports exactly the portable baseline, whatever CPU built it."""
    r = run_script(["-m", "coser.backend", "verify"])
    assert r.returncode == 0, r.stderr
    if backend.machine() == "x86_64":
        info = backend.system_info()
        assert info.get("AVX2") == "1" and info.get("AVX512", "0") == "0" and info.get("AMX_INT8", "0") == "0", info


def _sigill_backend(tmp_path) -> str:
    """A stand-in llama_cpp package whose import dies by SIGILL, as a native AMX build does on a faulting CPU."""
    pkg = tmp_path / "fakebackend" / "llama_cpp"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("import os, signal\nos.kill(os.getpid(), signal.SIGILL)\n")
    return str(tmp_path / "fakebackend")


def test_crashing_backend_is_a_clear_error_not_a_bare_sigill(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "COSER_CACHE_DIR": str(tmp_path / "cache"),
           "PYTHONPATH": os.pathsep.join([_sigill_backend(tmp_path), REPO])}
    r = subprocess.run([PYTHON, "-m", "coser.llm", "--model", "local", "Say hello as Hamlet"], env=env,
                       capture_output=True, text=True, timeout=120, cwd=str(tmp_path))
    assert r.returncode == 2, (r.returncode, r.stderr)
    err = r.stderr.strip()
    assert "SIGILL" in err and "coser.backend install --force" in err
    assert "Illegal instruction" not in err and "Traceback" not in err and "Fatal Python error" not in err
    assert len(err.splitlines()) == 1


def test_setup_check_reports_the_signal_by_name(tmp_path):
    env = dict(os.environ, HOME=str(tmp_path), PYTHONPATH=os.pathsep.join([_sigill_backend(tmp_path), REPO]))
    r = subprocess.run([PYTHON, "-m", "coser.backend", "check"], env=env, capture_output=True, text=True,
                       timeout=120, cwd=REPO)
    assert r.returncode == 1
    assert "died with SIGILL" in r.stderr and "Rebuild it portably" in r.stderr


def test_explain_failure_names_signals():
    msg = backend.explain_failure(-int(signal.SIGILL))
    assert "SIGILL" in msg and backend.REBUILD in msg
    assert "SIGSEGV" in backend.explain_failure(128 + int(signal.SIGSEGV))
    assert "exit 1" in backend.explain_failure(1, "boom\nImportError: no module")


def test_portable_flags_never_native():
    flags = backend.cmake_flags()
    assert "-DGGML_NATIVE=OFF" in flags
    if backend.machine() == "x86_64":
        assert "-DGGML_AVX2=ON" in flags and "-DGGML_AMX_INT8=OFF" in flags and "-DGGML_AVX512=OFF" in flags
    # the wheel folder names the flags it was built with, so a wheel built otherwise is never picked up
    assert backend.wheel_dir().rsplit("-", 1)[-1] != ""

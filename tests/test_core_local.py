"""The real embedded model (SmolLM2-135M via llama-cpp-python), offline."""
import json

import pytest

from coser.cache import Cache
from coser.config import Settings
from coser.jsonio import get_json
from coser.llm import LLM
from tests.conftest import run_script

pytest.importorskip("llama_cpp", reason="llama-cpp-python not installed (run `make venv`)")


def test_local_model_answers_and_caches(tmp_path):
    llm = LLM(Settings(cache_dir=str(tmp_path)), cache=Cache(str(tmp_path / "c.sqlite")))
    text = llm.chat("local", [{"role": "system", "content": "You are Hamlet."}, {"role": "user", "content": "Hello"}],
                    max_tokens=40)
    assert isinstance(text, str) and text.strip()
    assert llm.chat("local", [{"role": "system", "content": "You are Hamlet."}, {"role": "user", "content": "Hello"}],
                    max_tokens=40) == text
    assert llm.usage.totals()["cache_hits"] == 1


def test_local_model_schema_constrained_json(tmp_path):
    llm = LLM(Settings(cache_dir=str(tmp_path)), cache=Cache(str(tmp_path / "c.sqlite")))
    schema = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
              "required": ["name", "age"]}
    out = get_json(llm, "local", "Describe Hamlet as JSON with his name and age.", schema=schema, max_tokens=60,
                   validate=lambda v: v if isinstance(v.get("age"), int) and isinstance(v.get("name"), str) else None)
    assert isinstance(out, dict) and set(out) >= {"name", "age"}


def test_diagnostic_offline(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "COSER_CACHE_DIR": str(tmp_path), "HOME": str(tmp_path)}
    r = run_script(["-m", "coser.llm", "--model", "local", "--max_tokens", "30", "Say hello as Hamlet"], env=env,
                   cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip()
    r = run_script(["-m", "coser.llm", "--model", "local", "--max_tokens", "30", "--json", "Say hello as Hamlet"],
                   env=env, cwd=tmp_path)
    assert json.loads(r.stdout)["cached"] is True

import os
import subprocess
import sys

import pytest

from tests.fakeserver import FakeServer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(REPO, "..", "shared", "coser-data")
PYTHON = sys.executable
TEST_KEY = "sk-test-FAKE-KEY-0123456789abcdef"


def shared_path(*parts):
    """A file of the published CoSER data, or skip when the shared folder is absent (a fresh clone)."""
    path = os.path.join(SHARED, *parts)
    if not os.path.exists(path):
        pytest.skip(f"shared CoSER data not present: {os.path.normpath(path)}")
    return path


@pytest.fixture
def fake_server():
    server = FakeServer().start()
    yield server
    server.stop()


@pytest.fixture
def llm_env(fake_server, tmp_path):
    env = dict(os.environ)
    env.update({
        "OPENAI_BASE_URL": fake_server.base_url,
        "OPENAI_API_KEY": TEST_KEY,
        "COSER_CACHE_DIR": str(tmp_path / ".cache"),
        "COSER_RETRY_BASE": "0.01",
        "COSER_TIMEOUT": "5",
        "PYTHONPATH": REPO,
        "PYTHONUNBUFFERED": "1",
    })
    return env


def run_script(args, env=None, cwd=None, timeout=300, input=None):
    """Run `python <args...>` (a script path relative to the repo, or -m module) as a user would."""
    args = [str(a) for a in args]
    env = dict(os.environ if env is None else env)
    env.setdefault("PYTHONPATH", REPO)
    if args and args[0].endswith(".py") and not os.path.isabs(args[0]):
        args[0] = os.path.join(REPO, args[0])
    return subprocess.run([PYTHON, *args], env=env, cwd=cwd or REPO, timeout=timeout, input=input,
                          capture_output=True, text=True)


@pytest.fixture
def make_llm(fake_server, tmp_path):
    """Build a production LLM client pointed at the fake server, with its cache under tmp_path."""
    from coser.cache import Cache
    from coser.config import Settings
    from coser.llm import LLM

    def build(max_in_flight=8, use_cache=True, **overrides):
        s = Settings(api_key=TEST_KEY, base_url=fake_server.base_url, retry_base=0.01, timeout=5,
                     cache_dir=str(tmp_path / ".cache"))
        for k, v in overrides.items():
            setattr(s, k, v)
        cache = Cache(str(tmp_path / ".cache" / "llm_cache.sqlite")) if use_cache else None
        return LLM(s, cache=cache, max_in_flight=max_in_flight, use_cache=use_cache)

    return build

"""The embedded model's backend (llama-cpp-python), built portably and proved before use.

    python -m coser.backend install   # build (once per machine kind) and install the portable wheel
    python -m coser.backend check     # load the embedded model in a child process and generate a few tokens
    python -m coser.backend verify    # the installed build used the portable baseline (what CI checks)
    python -m coser.backend flags     # the CMake arguments used on this machine

Why: `pip install llama-cpp-python` compiles llama.cpp for the build host's CPU (GGML_NATIVE). On a CPU that
reports AMX, that build runs AMX tile instructions which some hypervisors fault on (SIGILL), and a wheel built on
one machine is reused on the next through pip's cache, which is keyed by the source archive, not by the flags.
So the project builds its own wheel with native detection off and a fixed instruction-set baseline, keeps it
in a folder named after the version, architecture and flags, and installs only from there.

This module uses the standard library only: it runs before the requirements are installed.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import platform
import shlex
import signal
import subprocess
import sys
import tempfile

VERSION = "0.3.36"
PACKAGE = "llama-cpp-python"

# Every current x86-64 server runs AVX2/FMA/F16C/BMI2 (Haswell, 2013; every AMD Zen). AVX-512 and AMX stay off:
# many CPUs lack them, and AMX faults under some hypervisors even where the CPU reports it.
_X86_FLAGS = ["-DGGML_NATIVE=OFF", "-DGGML_AVX=ON", "-DGGML_AVX2=ON", "-DGGML_FMA=ON", "-DGGML_F16C=ON",
              "-DGGML_BMI2=ON", "-DGGML_AVX512=OFF", "-DGGML_AVX512_VBMI=OFF", "-DGGML_AVX512_VNNI=OFF",
              "-DGGML_AVX512_BF16=OFF", "-DGGML_AVX_VNNI=OFF", "-DGGML_AMX_TILE=OFF", "-DGGML_AMX_INT8=OFF",
              "-DGGML_AMX_BF16=OFF"]
# arm64: the compiler's armv8-a baseline (NEON), which every arm64 server runs; no SVE, no dotprod/i8mm guesses.
_ARM_FLAGS = ["-DGGML_NATIVE=OFF", "-DGGML_CPU_ARM_ARCH=armv8-a"]
_COMMON = ["-DGGML_CCACHE=OFF", "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF"]

# What llama.cpp reports for a portable x86-64 build: these features must be exactly so.
X86_EXPECTED = {"AVX": "1", "AVX2": "1", "F16C": "1", "FMA": "1", "AVX512": "0", "AMX_INT8": "0"}


def machine() -> str:
    m = platform.machine().lower()
    return {"amd64": "x86_64", "arm64": "aarch64"}.get(m, m)


def cmake_flags() -> list[str]:
    m = machine()
    if m == "x86_64":
        return _X86_FLAGS + _COMMON
    if m == "aarch64":
        return _ARM_FLAGS + _COMMON
    return ["-DGGML_NATIVE=OFF"] + _COMMON


def wheel_dir() -> str:
    """Where the portable wheel lives: outside the repo (a fresh clone reuses it), named by what built it."""
    key = hashlib.sha256(" ".join([VERSION, machine(), sys.version.split()[0], *cmake_flags()]).encode()).hexdigest()[:12]
    root = os.environ.get("COSER_WHEEL_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "coser-toolkit", "wheels")
    return os.path.join(root, f"llama_cpp_python-{VERSION}-{machine()}-py{sys.version_info[0]}{sys.version_info[1]}-{key}")


def _find_wheel(folder: str) -> str | None:
    if not os.path.isdir(folder):
        return None
    for name in sorted(os.listdir(folder)):
        if name.startswith("llama_cpp_python-") and name.endswith(".whl"):
            return os.path.join(folder, name)
    return None


def _pip(*args: str) -> None:
    cmd = [sys.executable, "-m", "pip", "--disable-pip-version-check", *args]
    r = subprocess.run(cmd)
    if r.returncode != 0:
        raise SystemExit(f"error: {' '.join(shlex.quote(a) for a in cmd[1:])} failed (exit {r.returncode})")


def install(force: bool = False) -> str:
    """Build the portable wheel unless this machine kind already has one, then install exactly that file."""
    folder = wheel_dir()
    wheel = None if force else _find_wheel(folder)
    if wheel is None:
        flags = cmake_flags()
        print(f"building {PACKAGE}=={VERSION} portably (no native CPU detection; about 5 minutes on 2 cores)\n"
              f"  CMAKE_ARGS={' '.join(flags)}", flush=True)
        os.makedirs(os.path.dirname(folder), exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=".build-", dir=os.path.dirname(folder))
        env = dict(os.environ, CMAKE_ARGS=" ".join(flags), FORCE_CMAKE="1")
        env.pop("PIP_FIND_LINKS", None)
        # --no-cache-dir: never take a wheel pip built earlier with other flags, and never store this one there.
        cmd = [sys.executable, "-m", "pip", "--disable-pip-version-check", "wheel", "--no-cache-dir", "--no-deps",
               "--no-binary", PACKAGE, "-w", tmp, f"{PACKAGE}=={VERSION}"]
        r = subprocess.run(cmd, env=env)
        built = _find_wheel(tmp)
        if r.returncode != 0 or built is None:
            raise SystemExit(f"error: building {PACKAGE} failed (exit {r.returncode}); a C/C++ compiler and cmake "
                             "are needed (Debian: apt-get install build-essential cmake)")
        with open(os.path.join(tmp, "BUILD_FLAGS"), "w") as f:
            f.write(" ".join(flags) + "\n")
        if os.path.isdir(folder):
            import shutil
            shutil.rmtree(folder)
        os.replace(tmp, folder)
        wheel = _find_wheel(folder)
    else:
        print(f"reusing the portable {PACKAGE} wheel: {os.path.basename(wheel)}", flush=True)
    _pip("install", "--quiet", "--force-reinstall", "--no-deps", wheel)
    # Its dependencies from the index (never llama-cpp-python itself, which would be rebuilt from source).
    _pip("install", "--quiet", "numpy>=1.26", "typing-extensions>=4.5", "diskcache>=5.6.1", "jinja2>=2.11.3")
    return wheel


def system_info() -> dict[str, str]:
    """llama.cpp's own report of the CPU features it was compiled with, read in a child process."""
    code = "import llama_cpp,sys; sys.stdout.write(llama_cpp.llama_print_system_info().decode())"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    if r.returncode != 0:
        raise SystemExit(f"error: cannot read llama.cpp's system info (exit {r.returncode}): "
                         f"{(r.stderr.strip().splitlines() or [''])[-1]}")
    info: dict[str, str] = {}
    for part in r.stdout.replace("|", "\n").splitlines():
        if "=" in part:
            k, _, v = part.partition("=")
            info[k.strip()] = v.strip()
    return info


def verify() -> list[str]:
    """Problems with the installed build (empty when it is the portable baseline)."""
    info = system_info()
    problems = []
    if machine() == "x86_64":
        for k, want in X86_EXPECTED.items():
            got = info.get(k, "0")
            if got != want:
                problems.append(f"{k} = {got} (the portable build has {want})")
        for k, v in info.items():
            if k.startswith(("AMX", "AVX512")) and v != "0":
                problems.append(f"{k} = {v} (the portable build has 0)")
    else:
        for k, v in info.items():
            if k in ("SVE", "SVE2", "SME") and v != "0":
                problems.append(f"{k} = {v} (the portable build has 0)")
    return sorted(set(problems))


REBUILD = "python -m coser.backend install --force   (or: rm -rf .venv && make venv)"

_CHECK_CODE = """
import sys
from coser import local
text, _, n = local.complete([{"role": "user", "content": "Say hello."}], max_tokens=4, temperature=0.0, seed=0,
                            n_ctx=512)
sys.stdout.write(f"ok {n}")
"""


def check(timeout: float = 300) -> tuple[bool, str]:
    """Load the embedded model in a child process and generate a few tokens; never crash this process."""
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, COSER_BACKEND_PROBE="child",
               PYTHONPATH=os.pathsep.join(p for p in [os.environ.get("PYTHONPATH", ""), repo] if p))
    try:
        r = subprocess.run([sys.executable, "-c", _CHECK_CODE], capture_output=True, text=True, timeout=timeout,
                           env=env, cwd=repo)
    except subprocess.TimeoutExpired:
        return False, f"the embedded model did not answer within {timeout:.0f} s"
    if r.returncode == 0 and r.stdout.startswith("ok"):
        return True, r.stdout.strip()
    return False, explain_failure(r.returncode, r.stderr)


def _probe_key() -> str | None:
    """What the proof of a working backend is tied to: the installed llama_cpp files and the model file."""
    import importlib.util
    spec = importlib.util.find_spec("llama_cpp")
    if spec is None or not spec.origin:
        return None
    parts = [sys.executable]
    pkg = os.path.dirname(spec.origin)
    for root, _dirs, files in os.walk(pkg):
        for name in sorted(files):
            if name.endswith((".so", ".dylib", ".dll")) or name == "__init__.py":
                st = os.stat(os.path.join(root, name))
                parts.append(f"{os.path.relpath(os.path.join(root, name), pkg)}:{st.st_size}:{int(st.st_mtime)}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def ensure_runs() -> None:
    """Before the embedded model is loaded in this process, prove once (per install) that it runs in a child.

    A backend that dies by a signal (SIGILL from CPU instructions this machine cannot run) would otherwise take
    the whole script down with a bare "Illegal instruction"; here it becomes a one-paragraph error instead.
    """
    if os.environ.get("COSER_BACKEND_PROBE") == "child":
        return
    key = _probe_key()
    if key is None:
        return  # not installed: the caller reports that
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    marker = os.path.join(root, "coser-toolkit", f"backend-ok-{key}")
    if os.path.exists(marker):
        return
    ok, msg = check()
    if not ok:
        from .errors import ConfigError
        raise ConfigError(msg)
    try:
        os.makedirs(os.path.dirname(marker), exist_ok=True)
        with open(marker, "w") as f:
            f.write(msg + "\n")
    except OSError:
        pass  # an unwritable cache only means the proof is repeated next time


def explain_failure(returncode: int, stderr: str = "") -> str:
    """One paragraph: what failed, the likely cause, the command that fixes it."""
    if returncode < 0 or returncode > 128:
        num = -returncode if returncode < 0 else returncode - 128
        try:
            name = signal.Signals(num).name
        except ValueError:
            name = f"signal {num}"
        cause = ("the llama.cpp build uses CPU instructions this machine cannot run (a native build from another "
                 "machine, or AMX/AVX-512 kernels)" if name in ("SIGILL", "SIGBUS", "SIGSEGV")
                 else "the backend crashed")
        return (f"the embedded model's backend (llama-cpp-python) died with {name} while loading or generating. "
                f"Likely cause: {cause}. Rebuild it portably: {REBUILD}. Remote models (--model NAME with a "
                "configured endpoint) do not need it.")
    last = (stderr.strip().splitlines() or ["(no output)"])[-1]
    return (f"the embedded model failed to run (exit {returncode}): {last}. If llama-cpp-python is missing or "
            f"broken, rebuild it: {REBUILD}.")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m coser.backend", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("install", help="build once per machine kind and install the portable wheel")
    p.add_argument("--force", action="store_true", help="rebuild even if a portable wheel exists")
    sub.add_parser("check", help="run the embedded model once in a child process")
    sub.add_parser("verify", help="fail unless the installed build is the portable baseline")
    sub.add_parser("flags", help="print the CMake arguments for this machine")
    a = ap.parse_args(argv)
    if a.cmd == "flags":
        print(" ".join(cmake_flags()))
        return 0
    if a.cmd == "install":
        install(force=a.force)
        return 0
    if a.cmd == "verify":
        problems = verify()
        if problems:
            print("error: the installed llama-cpp-python is not the portable build: " + "; ".join(problems)
                  + f". Rebuild: {REBUILD}", file=sys.stderr)
            return 1
        print(f"portable llama.cpp build on {machine()}: ok")
        return 0
    ok, msg = check()
    if not ok:
        print("\nerror: " + msg + "\n", file=sys.stderr)
        return 1
    print(f"embedded model check: ok ({msg.split()[-1]} tokens)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

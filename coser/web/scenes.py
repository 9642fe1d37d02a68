"""Live GCA scenes for the web app: coser.scene.simulate in a worker thread, its events sent as SSE.

A scene runs through the engine, prompts, client and cache that gca_evaluation/main.py uses, so a
finished scene is the record that script writes for the item under the same settings (the record of
its `--sample_ids KEY` run, spec included). A person may speak for one character: the engine asks them
instead of that actor agent, and the spec says so, so such a scene never passes for the model's.
"""
from __future__ import annotations

import os
import queue
import re
import threading
import time
import uuid
from types import SimpleNamespace

from .. import runspec as RS
from ..errors import CoserError, InputError
from ..io import atomic_write_json, read_json
from ..retrieval import MODES
from ..scene import sample_rng, simulate, simulation_spec

PROTOCOLS = ("reference", "fixed")
# gca_evaluation/main.py's defaults for the settings a request may leave out.
DEFAULTS = {"protocol": "reference", "continue_from": 0, "seed": 42, "wo_thought": False, "use_motivation": False}
HUMAN_WAIT = 1800  # seconds a scene waits for the person's line before it gives up


class SceneStopped(CoserError):
    """The viewer left (or never answered): the scene ends at the next turn boundary."""


def _int_field(body: dict, key: str, minimum: int | None = None) -> int:
    value = body.get(key)
    if value in (None, ""):
        return DEFAULTS[key]
    if isinstance(value, bool) or not (isinstance(value, int) or (isinstance(value, str) and
                                                                  re.fullmatch(r"-?\d+", value.strip()))):
        raise InputError(f"field '{key}' must be a whole number")
    value = int(value)
    if minimum is not None and value < minimum:
        raise InputError(f"field '{key}' must be at least {minimum}")
    return value


def scene_options(body: dict, default_model: str, check_model) -> SimpleNamespace:
    """The simulation settings of a request (gca_evaluation/main.py's flags), checked field by field."""
    retrieval = body.get("retrieval") or None
    if retrieval is not None and retrieval not in MODES:
        raise InputError(f"field 'retrieval' must be one of {', '.join(MODES)} (or empty: none)")
    models = {}
    for role in ("actor_model", "env_model", "nsp_model"):
        value = body.get(role)
        if value is not None and not isinstance(value, str):
            raise InputError(f"field '{role}' must be a model name")
        models[role] = check_model(value or default_model)
    protocol = body.get("protocol") or DEFAULTS["protocol"]
    if protocol not in PROTOCOLS:
        raise InputError(f"field 'protocol' must be one of {', '.join(PROTOCOLS)}")
    flags = {}
    for key in ("wo_thought", "use_motivation"):
        value = body.get(key, DEFAULTS[key])
        if not isinstance(value, bool):
            raise InputError(f"field '{key}' must be true or false")
        flags[key] = value
    return SimpleNamespace(**models, **flags, protocol=protocol, retrieval=retrieval,
                           continue_from=_int_field(body, "continue_from", 0), seed=_int_field(body, "seed"))


def settings_of(opts: SimpleNamespace) -> dict:
    return {k: getattr(opts, k) for k in ("actor_model", "env_model", "nsp_model", "protocol", "continue_from",
                                          "wo_thought", "use_motivation", "retrieval", "seed")}


class SceneRun:
    """One live scene: the engine in a thread, its events handed to `put`, a person's lines via say()."""

    def __init__(self, llm, item: dict, opts: SimpleNamespace, test_file: str | None, human: str | None = None,
                 retrievers=None):
        speakers = [c for c in item["speaking_characters_w_env"] if c != "Environment"]
        if human and human not in speakers:
            raise InputError(f"field 'human': {human!r} does not speak in this item (choose from "
                             f"{', '.join(speakers)})")
        self.id = uuid.uuid4().hex
        self.llm, self.item, self.opts, self.test_file, self.human = llm, item, opts, test_file, human or None
        self.retrievers = retrievers  # coser.retrieval.Retrievers of opts.retrieval's mode, when set
        self.lines: queue.Queue = queue.Queue()
        self.stopped = threading.Event()
        self.waiting = False
        self.record: dict | None = None

    def say(self, text: str) -> None:
        if not self.waiting:
            raise InputError("it is not your turn in this scene")
        self.lines.put(text)

    def stop(self) -> None:
        self.stopped.set()

    def run(self, put) -> dict:
        def on_event(kind, payload):
            # Stop only between turns: raising inside a stream would look like a broken connection
            # to the client, which asks again.
            if kind in ("speak", "turn") and self.stopped.is_set():
                raise SceneStopped("scene stopped")
            put(kind, payload)

        def human_turn(character, state):
            if character != self.human:
                return None
            self.waiting = True
            put("your_turn", {"round": state["round"], "character": character})
            deadline = time.monotonic() + HUMAN_WAIT
            try:
                while True:
                    try:
                        return self.lines.get(timeout=0.5)
                    except queue.Empty:
                        if self.stopped.is_set() or time.monotonic() > deadline:
                            raise SceneStopped("scene stopped while waiting for your line") from None
            finally:
                self.waiting = False

        databases = self.retrievers.for_item(self.item) if self.retrievers is not None else None
        record = simulate(self.llm, self.item, self.opts, sample_rng(self.opts.seed, self.item), databases,
                          on_event, human_turn)
        spec = simulation_spec(self.llm, self.opts, self.test_file, [self.item])
        if self.human:
            spec["settings"]["human"] = self.human  # another spec (and hash) than the model's own scene
        self.record = {**record, "spec": spec}
        return self.record


def save_scene(scene_dir: str, record: dict) -> str:
    """The record as a one-record simulation file (gca_evaluation/main.py --simulation_file judges it)."""
    key = f"{record['book_title']}-{record['i_p']}-{record['i_c']}"
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", key)[:80] + "_" + RS.spec_hash(record["spec"])
    if record["spec"]["settings"].get("human"):
        name += "_" + uuid.uuid4().hex[:8]  # a person's scenes differ run to run
    path = os.path.join(scene_dir, name + ".json")
    atomic_write_json(path, [record])
    return path


def load_scene(scene_dir: str, name) -> dict:
    """A saved scene by file name, confined to the scene folder."""
    if not isinstance(name, str) or not name.endswith(".json") or os.path.basename(name) != name:
        raise InputError("scene file must be a .json file name in the scene folder")
    data = read_json(os.path.join(scene_dir, name), "scene")
    if not isinstance(data, list) or len(data) != 1 or not isinstance(data[0], dict):
        raise InputError(f"{name}: not a one-record scene file")
    return data[0]


def side_labels(a: dict, b: dict) -> list[str]:
    """Labels telling two settings apart: the actor model, plus each other setting where they differ."""
    diff = [k for k in a if k != "actor_model" and a[k] != b.get(k)]
    if not diff and a["actor_model"] == b["actor_model"]:
        raise InputError("the two sides have the same settings: change a model or a setting of one side")
    return [s["actor_model"] + (" (" + ", ".join(f"{k}={s[k]}" for k in diff) + ")" if diff else "")
            for s in (a, b)]

"""The app's scene endpoints: a live scene (SSE), a person's line in it, a blind replay of one scene
under two settings, and judge-vs-human agreement over the scene votes."""
from __future__ import annotations

import asyncio
import os
import random
import uuid
from concurrent.futures import ThreadPoolExecutor

from ..errors import InputError
from ..scene import sample_key
from .prefs import agreement as agreement_rows
from .prefs import evaluation_files, file_scorer, judge_scorer, read_votes
from .scenes import PROTOCOLS, SceneRun, load_scene, save_scene, scene_options, settings_of, side_labels
from .sse import event_stream


def _start_event(item: dict, index: int) -> dict:
    return {"key": sample_key(item), "test_item": index, "book": item["book"], "scenario": item["scenario"],
            "speakers": list(item["speaking_characters_w_env"])}


def scene_routes(state, body_of, guarded) -> list:
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    def options(body: dict):
        return scene_options(body, state.args.model, state.check_model)

    def saved(record: dict) -> str:
        return save_scene(state.args.scene_dir, record)

    def new_run(item: dict, opts, human: str | None = None) -> SceneRun:
        return SceneRun(state.llm, item, opts, state.library.test_file, human, state.retrievers(opts.retrieval))

    async def scene(request):
        """POST /api/scene: play one test item live; every turn streams, then `done` with the record."""
        body = await body_of(request)
        item = state.library.item(body.get("test_item"))
        opts = options(body)
        human = body.get("human") or None
        if human is not None and not isinstance(human, str):
            raise InputError("field 'human' must be a character name")
        run = new_run(item, opts, human)
        state.scenes[run.id] = run

        def work(put):
            put("start", {"scene": run.id, "human": human, "settings": settings_of(opts),
                          **_start_event(item, int(body["test_item"]))})
            record = run.run(put)
            put("done", {"record": record, "saved": saved(record)})

        def close():
            run.stop()
            state.scenes.pop(run.id, None)

        return event_stream(work, close)

    async def say(request):
        """POST /api/scene/say: the person's line for the character they play, when it is their turn."""
        body = await body_of(request)
        run = state.scenes.get(str(body.get("scene") or ""))
        if run is None:
            raise InputError("field 'scene': unknown or finished scene")
        message = body.get("message")
        if not isinstance(message, str) or not message.strip():
            raise InputError("field 'message' is empty")
        run.say(message.strip())
        return JSONResponse({"ok": True})

    async def compare_scene(request):
        """POST /api/compare_scene: one test item simulated under settings `a` and `b` side by side,
        sides shuffled and settings hidden until the vote (POST /api/vote with the pair)."""
        body = await body_of(request)
        item = state.library.item(body.get("test_item"))
        sides = []
        for name in ("a", "b"):
            if not isinstance(body.get(name), dict):
                raise InputError(f"field '{name}' must be an object of scene settings")
            sides.append(options(body[name]))
        settings = [settings_of(o) for o in sides]
        labels = side_labels(*settings)
        runs = [new_run(item, o) for o in sides]
        order = [0, 1]
        random.shuffle(order)
        side_of = {order[0]: "left", order[1]: "right"}
        pid = uuid.uuid4().hex
        start = _start_event(item, int(body["test_item"]))

        def work(put):
            def tagged(i):  # the engine's events, marked with their (shuffled) side
                return lambda kind, data: put(kind, {**data, "side": side_of[i]})

            put("start", {"pair": pid, **start})
            with ThreadPoolExecutor(2) as pool:
                futures = [pool.submit(run.run, tagged(i)) for i, run in enumerate(runs)]
                try:
                    records = [f.result() for f in futures]
                except BaseException:
                    for run in runs:
                        run.stop()
                    raise
            candidates = [{"model": s["actor_model"], "label": label, "settings": s, "simulation": r["simulation"],
                           "scene_file": os.path.basename(saved(r))}
                          for s, label, r in zip(settings, labels, records)]
            state.pairs[pid] = {"kind": "scene", "candidates": candidates, "order": order, "settings": {},
                                "item": {"test_file": state.library.test_file, "test_item": start["test_item"],
                                         "key": start["key"]},
                                "turn": {"scene": "whole", "rounds": [len(r["simulation"]) for r in records]}}
            put("done", {"pair": pid})

        def close():
            for run in runs:
                run.stop()

        return event_stream(work, close)

    async def agreement(request):
        """POST /api/agreement: per judge, how often it prefers the scene the person preferred in the scene
        votes. source 'judge' (default): judge both scenes now with each of `judges` (coser.judge, the GCA
        judge); 'files': read the scores from existing evaluation files of those very scenes (--eval_dir)."""
        body = await body_of(request)
        source = body.get("source") or "judge"
        if source not in ("judge", "files"):
            raise InputError("field 'source' must be judge or files")
        protocol = body.get("protocol") or "reference"
        if protocol not in PROTOCOLS:
            raise InputError(f"field 'protocol' must be one of {', '.join(PROTOCOLS)}")

        def load(candidate):
            return load_scene(state.args.scene_dir, candidate.get("scene_file"))

        votes = await asyncio.to_thread(read_votes, state.args.pref_dir)
        if source == "files":
            evaluations = await asyncio.to_thread(evaluation_files, state.args.eval_dir)
            judges = list(dict.fromkeys(ev["judge_model"] for ev in evaluations))
            score = file_scorer(evaluations, load)
        else:
            judges = body.get("judges") or state.args.judges or state.args.model
            if isinstance(judges, str):
                judges = [j.strip() for j in judges.split(",") if j.strip()]
            if not isinstance(judges, list) or not judges or not all(isinstance(j, str) for j in judges):
                raise InputError("field 'judges' must be a model name, a comma list or a list of names")
            judges = [state.check_model(j) for j in dict.fromkeys(judges)]
            score = judge_scorer(state.llm, load, protocol)
        rows = await asyncio.to_thread(agreement_rows, votes, judges, score)
        return JSONResponse({"source": source, "protocol": protocol if source == "judge" else None, "judges": rows})

    return [Route("/api/scene", guarded(scene), methods=["POST"]),
            Route("/api/scene/say", guarded(say), methods=["POST"]),
            Route("/api/compare_scene", guarded(compare_scene), methods=["POST"]),
            Route("/api/agreement", guarded(agreement), methods=["POST"])]

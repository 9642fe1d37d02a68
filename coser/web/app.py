"""The web app: Browse (books, characters, cards), Chat (streamed over SSE), Scene (a live GCA simulation),
Compare (blind votes on one turn or a whole scene) and Preferences (win rates, judge-vs-human agreement).

Every LLM call goes through the process-wide coser.llm.LLM built by coser.cli.setup, so the app shares
the scripts' settings, cache and usage accounting. Chats are coser.chatsession.ChatSession objects and
are saved in chat.py's transcript format after every change.
"""
from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import random
import sys
import threading
import uuid

from .. import cli
from ..chatsession import ChatSession, ReplyStopped, default_transcript_path
from ..config import LOCAL_MODEL, is_local
from ..errors import CoserError, InputError
from ..io import read_json
from ..persona import build_book_persona, build_test_persona, default_book_data
from .library import SEARCH_LIMIT, Library
from .scene_api import scene_routes
from .sse import event_stream
from .prefs import read_votes, wilson, win_rates  # noqa: F401  (wilson: part of the module's API)

STATIC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")
DEFAULT_PORT = 8765
CHOICES = ("left", "right", "tie")


# ---- the app ------------------------------------------------------------------------------------
class State:
    def __init__(self, args, llm, library: Library):
        self.args, self.llm, self.library = args, llm, library
        self.sessions: dict[str, dict] = {}
        self.pairs: dict[str, dict] = {}
        self.scenes: dict = {}  # live scenes by id (coser/web/scenes.py), while their stream is open
        self._retrievers: dict = {}
        self.lock = threading.Lock()
        self.vote_lock = threading.Lock()

    def models(self) -> list[str]:
        names = [self.args.model] + [m.strip() for m in self.args.models.split(",")]
        configured = getattr(self.llm.settings, "models", None)
        if isinstance(configured, dict):
            names += [n for n in configured if not any(c in n for c in "*?[")]  # globs are not names
        elif isinstance(configured, list):
            names += [str(m.get("name") if isinstance(m, dict) else m) for m in configured]
        names += list(self.llm.settings.prices)
        names.append(LOCAL_MODEL)
        return list(dict.fromkeys(n for n in names if n))

    def retrievers(self, mode: str | None):
        """One coser.retrieval.Retrievers per mode over --book_data, built on first use, as the script builds it."""
        if mode is None:
            return None
        from ..retrieval import Embedder, Retrievers

        if not self.args.book_data or not os.path.isdir(self.args.book_data):
            raise InputError("field 'retrieval' needs a --book_data folder of final book files")
        with self.lock:
            if mode not in self._retrievers:
                embedder = Embedder(self.llm.settings) if self.llm.settings.embedding_model else None
                self._retrievers[mode] = Retrievers(self.args.book_data, mode, embedder)
            return self._retrievers[mode]

    def check_model(self, model: str) -> str:
        model = (model or self.args.model).strip()
        from ..config import PLACEHOLDER_PREFIXES
        from ..endpoints import resolve

        if not is_local(model) and not resolve(self.llm.settings, model).usable(PLACEHOLDER_PREFIXES):
            raise InputError(f"model {model!r} needs an API key (config.json api_key or OPENAI_API_KEY); "
                             "or pick 'local', the embedded offline model")
        return model

    def persona(self, body: dict, model: str):
        if body.get("test_item") is not None and body.get("test_item") != "":
            if not self.library.test_file:
                raise InputError("no --test_file given to the web app")
            try:
                sample = int(body["test_item"])
            except (TypeError, ValueError):
                raise InputError("field 'test_item' must be a number") from None
            return build_test_persona(self.library.test_file, sample, str(body.get("character") or ""), model,
                                      bool(body.get("wo_thought")))
        book, name = str(body.get("book") or ""), str(body.get("character") or "")
        self.library.entry(book, name)
        return build_book_persona(self.args.book_data, name, book, str(body.get("scenario") or "") or None,
                                  str(body.get("user_role") or "") or None, model, bool(body.get("wo_thought")))

    def session(self, sid) -> dict:
        s = self.sessions.get(str(sid or ""))
        if s is None:
            raise InputError("unknown chat session (the app was restarted? start the chat again)")
        return s

    def save(self, s: dict) -> str:
        session = s["session"]
        if session.has_content():
            s["path"] = s["path"] or default_transcript_path(self.args.out_dir, session.persona.name)
            session.save(s["path"])
        return s["path"] or ""


def _number(body: dict, key: str, default, kind):
    try:
        return kind(body.get(key, default) if body.get(key) not in (None, "") else default)
    except (TypeError, ValueError):
        raise InputError(f"field '{key}' must be a number") from None


def build_app(state: State):
    from starlette.applications import Starlette
    from starlette.responses import FileResponse, JSONResponse, Response
    from starlette.routing import Mount, Route
    from starlette.staticfiles import StaticFiles

    def error(msg: str, status: int = 400) -> JSONResponse:
        return JSONResponse({"error": msg}, status_code=status)

    async def body_of(request) -> dict:
        try:
            body = await request.json()
        except (ValueError, UnicodeDecodeError):
            raise InputError("request body is not JSON") from None
        if not isinstance(body, dict):
            raise InputError("request body must be a JSON object")
        return body

    def guarded(fn):
        async def handler(request):
            try:
                return await fn(request)
            except CoserError as e:
                return error(str(e))
        return handler

    async def index(request):
        return FileResponse(os.path.join(STATIC, "index.html"))

    async def books(request):
        return JSONResponse({"books": state.library.book_list(), "test_file": bool(state.library.test_file),
                             "skipped": state.library.skipped})

    async def characters(request):
        return JSONResponse({"characters": state.library.search(request.query_params.get("q", ""))})

    async def character(request):
        q = request.query_params
        return JSONResponse(state.library.character(q.get("book", ""), q.get("name", "")))

    async def card(request):
        """The character's card, as chat.py exports it (coser.cards): ?format=v2 (default), v3 or png."""
        from .. import cards

        q = request.query_params
        fmt = q.get("format", "v2")
        if fmt not in ("v2", "v3", "png"):
            raise InputError("format must be v2, v3 or png")
        book, name = q.get("book", ""), q.get("name", "")
        state.library.entry(book, name)
        data, _notes = await asyncio.to_thread(cards.book_card, state.args.book_data, name, book)
        safe = "".join(ch if ch.isalnum() else "_" for ch in name)[:40] or "card"
        if fmt == "png":
            return Response(cards.png_bytes(data), media_type="image/png",
                            headers={"Content-Disposition": f'attachment; filename="{safe}.png"'})
        body = json.dumps(cards.card_dict(data, fmt), ensure_ascii=False, indent=2)
        return Response(body, media_type="application/json",
                        headers={"Content-Disposition": f'attachment; filename="{safe}.{fmt}.json"'})

    async def test_items(request):
        return JSONResponse({"items": state.library.test_items(request.query_params.get("q", ""))})

    async def models(request):
        judges = [j.strip() for j in state.args.judges.split(",") if j.strip()] or [state.args.model]
        from ..retrieval import MODES

        return JSONResponse({"models": state.models(), "default": state.args.model, "judges": judges,
                             "retrieval_modes": list(MODES)})

    async def new_session(request):
        body = await body_of(request)
        model = state.check_model(str(body.get("model") or ""))
        persona = await asyncio.to_thread(state.persona, body, model)
        session = ChatSession(state.llm, model, persona,
                              max_new_tokens=_number(body, "max_new_tokens", state.args.max_new_tokens, int),
                              temperature=_number(body, "temperature", state.args.temperature, float),
                              user_role=str(body.get("user_role") or "") or None,
                              settings={"wo_thought": bool(body.get("wo_thought")), "via": "web"})
        sid = uuid.uuid4().hex
        state.sessions[sid] = {"session": session, "path": None, "lock": threading.Lock()}
        return JSONResponse({"session": sid, **_session_view(session)})

    async def transcripts(request):
        out = state.args.out_dir
        names = sorted((n for n in os.listdir(out) if n.endswith(".json")), reverse=True) if os.path.isdir(out) else []
        return JSONResponse({"transcripts": names[:SEARCH_LIMIT]})

    async def resume(request):
        """Continue a transcript saved by chat.py or by this app (a file name inside --out_dir)."""
        body = await body_of(request)
        name = str(body.get("transcript") or "")
        if not name or os.path.basename(name) != name or not name.endswith(".json"):
            raise InputError("field 'transcript' must be the name of a .json file in the transcript folder")
        path = os.path.join(state.args.out_dir, name)
        data = await asyncio.to_thread(read_json, path, "chat transcript")
        model = str(body.get("model") or "") or None
        session = ChatSession.from_transcript(state.llm, data, where=path, model=model)
        state.check_model(session.model)
        sid = uuid.uuid4().hex
        state.sessions[sid] = {"session": session, "path": path, "lock": threading.Lock()}
        return JSONResponse({"session": sid, **_session_view(session)})

    async def chat(request):
        """One generating action (send / retry / edit) answered as server-sent events."""
        body = await body_of(request)
        s = state.session(body.get("session"))
        session = s["session"]
        action = str(body.get("action") or "send")
        message = str(body.get("message") or "").strip()
        if action in ("send", "edit") and not message:
            raise InputError("field 'message' is empty")
        if action not in ("send", "retry", "edit"):
            raise InputError(f"unknown action {action!r} (send, retry, edit)")
        if action != "send" and not session.turns:
            raise InputError(f"nothing to {action} yet")

        def work(put):
            if not s["lock"].acquire(blocking=False):
                put("error", {"message": "a reply is already being generated in this chat"})
                return
            try:
                kw = {"on_token": lambda piece: put("token", {"text": piece}),
                      "on_discard": lambda: put("discard", {})}
                if action == "send":
                    turn = session.send(message, **kw)
                elif action == "retry":
                    turn = session.retry(**kw)
                else:
                    turn = session.edit(message, **kw)
                path = state.save(s)
                put("done", {"turn": turn, "turns": len(session.turns), "transcript": path})
            except ReplyStopped:
                put("error", {"message": "stopped before the reply began"})
            finally:
                s["lock"].release()

        return event_stream(work)

    async def chat_edit(request):
        """undo / alt N / reset / save: the history changes without generating."""
        body = await body_of(request)
        s = state.session(body.get("session"))
        session = s["session"]
        op = str(body.get("op") or "")
        if op == "undo":
            session.undo()
        elif op == "alt":
            session.alt(_number(body, "n", 0, int))
        elif op == "reset":
            session.reset()
        elif op != "save":
            raise InputError(f"unknown op {op!r} (undo, alt, reset, save)")
        path = await asyncio.to_thread(state.save, s)
        return JSONResponse({"transcript": path, **_session_view(session)})

    async def compare(request):
        """Two models answer the same turn of a fresh chat; sides shuffled, models hidden until the vote."""
        body = await body_of(request)
        message = str(body.get("message") or "").strip()
        if not message:
            raise InputError("field 'message' is empty")
        model_a = state.check_model(str(body.get("model_a") or ""))
        model_b = state.check_model(str(body.get("model_b") or ""))
        persona_a = await asyncio.to_thread(state.persona, body, model_a)
        persona_b = await asyncio.to_thread(state.persona, body, model_b)
        max_new = _number(body, "max_new_tokens", state.args.max_new_tokens, int)
        temp = _number(body, "temperature", state.args.temperature, float)
        temps = (_number(body, "temperature_a", temp, float), _number(body, "temperature_b", temp, float))

        def answer(model, persona, temperature):
            session = ChatSession(state.llm, model, persona, max_new_tokens=max_new, temperature=temperature,
                                  user_role=str(body.get("user_role") or "") or None)
            return session.send(message)["reply"]

        texts = await asyncio.gather(asyncio.to_thread(answer, model_a, persona_a, temps[0]),
                                     asyncio.to_thread(answer, model_b, persona_b, temps[1]))
        # Two settings of one model are told apart by their label (model, plus the temperature when they differ).
        labels = [f"{m} (t={t:g})" if temps[0] != temps[1] else m for m, t in ((model_a, temps[0]), (model_b, temps[1]))]
        candidates = [{"model": model_a, "label": labels[0], "temperature": temps[0], "text": texts[0]},
                      {"model": model_b, "label": labels[1], "temperature": temps[1], "text": texts[1]}]
        order = [0, 1]
        random.shuffle(order)
        pid = uuid.uuid4().hex
        item = ({"test_file": state.library.test_file, "test_item": int(body["test_item"]),
                 "character": persona_a.name}
                if body.get("test_item") not in (None, "") else
                {"book": persona_a.book, "character": persona_a.name, "scenario": persona_a.scenario})
        state.pairs[pid] = {"item": item, "turn": {"user": message, "index": 0}, "candidates": candidates,
                            "order": order, "settings": {"max_new_tokens": max_new, "temperature": temp}}
        return JSONResponse({"pair": pid, "left": candidates[order[0]]["text"], "right": candidates[order[1]]["text"]})

    async def vote(request):
        body = await body_of(request)
        pair = state.pairs.get(str(body.get("pair") or ""))
        if pair is None:
            raise InputError("unknown or already voted comparison")
        choice = str(body.get("choice") or "")
        if choice not in CHOICES:
            raise InputError(f"field 'choice' must be one of {', '.join(CHOICES)}")
        state.pairs.pop(str(body.get("pair")), None)
        left, right = (pair["candidates"][i] for i in pair["order"])
        winner = left["label"] if choice == "left" else right["label"] if choice == "right" else None
        record = {"kind": pair.get("kind", "turn"), "item": pair["item"], "turn": pair["turn"],
                  "candidates": pair["candidates"],
                  "sides": {"left": left["label"], "right": right["label"]}, "choice": choice, "winner": winner,
                  "settings": pair["settings"],
                  "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
        path = os.path.join(state.args.pref_dir, datetime.date.today().isoformat() + ".jsonl")
        await asyncio.to_thread(_append_line, path, record, state.vote_lock)
        return JSONResponse({"saved": path, "left": left["label"], "right": right["label"], "winner": winner})

    async def preferences(request):
        votes = await asyncio.to_thread(read_votes, state.args.pref_dir)
        return JSONResponse(win_rates(votes))

    routes = [
        Route("/", index),
        Route("/api/books", guarded(books)),
        Route("/api/characters", guarded(characters)),
        Route("/api/character", guarded(character)),
        Route("/api/card", guarded(card)),
        Route("/api/test_items", guarded(test_items)),
        Route("/api/models", guarded(models)),
        Route("/api/session", guarded(new_session), methods=["POST"]),
        Route("/api/chat", guarded(chat), methods=["POST"]),
        Route("/api/transcripts", guarded(transcripts)),
        Route("/api/resume", guarded(resume), methods=["POST"]),
        Route("/api/chat/edit", guarded(chat_edit), methods=["POST"]),
        Route("/api/compare", guarded(compare), methods=["POST"]),
        Route("/api/vote", guarded(vote), methods=["POST"]),
        Route("/api/preferences", guarded(preferences)),
        *scene_routes(state, body_of, guarded),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    return Starlette(routes=routes)


def _session_view(session: ChatSession) -> dict:
    p = session.persona
    return {"name": p.name, "book": p.book, "scenario": p.scenario, "profile": p.profile, "model": session.model,
            "greeting": p.first_mes if p.greet else "",
            "turns": [{"user": t["user"], "reply": t["reply"], "status": t.get("status", "stop"),
                       "chosen": t.get("chosen", 0), "alternatives": len(t.get("replies") or [])}
                      for t in session.turns]}


def _append_line(path: str, record: dict, lock: threading.Lock) -> None:
    """One vote = one JSON line, written with a single append so a crash leaves at most a torn last line."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    line = (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")
    with lock:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            os.write(fd, line)
        finally:
            os.close(fd)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m coser.web",
                                description="Local web app: browse book characters, chat with them, watch a GCA "
                                            "scene live, compare models blind and collect preferences.")
    p.add_argument("--book_data", default=None, help="folder of final book files (default: data/final, else the "
                                                     "published ones, as chat.py)")
    p.add_argument("--test_file", default=None, help="a test set to step into (e.g. data/test/test_set.json)")
    p.add_argument("--model", default=None, help="default model in the pickers (default: the configured default "
                                                  "model, as chat.py; 'local' when nothing is configured)")
    p.add_argument("--models", default="", metavar="A,B,...",
                   help="more model names to offer in the pickers (besides --model, config.json's and 'local')")
    p.add_argument("--max_new_tokens", type=int, default=128, help="reply length cap (default %(default)s)")
    p.add_argument("--temperature", type=cli.non_negative_number, default=0.7,
                   help="sampling temperature (default %(default)s)")
    p.add_argument("--out_dir", default=os.path.join("exp", "chat"), help="chat transcripts (default %(default)s)")
    p.add_argument("--pref_dir", default=os.path.join("exp", "preferences"),
                   help="blind-comparison votes, JSONL (default %(default)s)")
    p.add_argument("--scene_dir", default=os.path.join("exp", "scenes"),
                   help="finished live scenes, one simulation file each (default %(default)s)")
    p.add_argument("--eval_dir", default=os.path.join("exp", "evaluation"),
                   help="gca_evaluation/main.py's evaluation files, read for judge-vs-human agreement "
                        "(default %(default)s)")
    p.add_argument("--judges", default="", metavar="A,B,...",
                   help="judge models for judge-vs-human agreement on the Preferences page (default: --model)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default %(default)s)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help="port (default %(default)s; 0 picks a free one)")
    cli.add_common_args(p, workers=True, workers_default=4)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if not 0 <= args.port <= 65535:
        raise InputError("--port must be 0..65535")
    if args.max_new_tokens < 1:
        raise InputError("--max_new_tokens must be at least 1")
    if args.book_data is None:
        args.book_data = default_book_data()
        book_data = args.book_data if os.path.exists(args.book_data) else None
        if book_data is None:
            cli.notice(f"no book data at {args.book_data}: Browse is empty (give --book_data)")
    elif not os.path.exists(args.book_data):
        raise InputError(f"{args.book_data}: --book_data not found")
    else:
        book_data = args.book_data
    library = Library(book_data, args.test_file)
    llm = cli.setup(args)
    if not args.model:
        from .. import config as coser_config

        pick = getattr(coser_config, "configured_default_model", None)
        args.model = pick(llm.settings) if pick is not None else LOCAL_MODEL
    state = State(args, llm, library)
    app = build_app(state)

    import socket

    import uvicorn

    sock = socket.socket(socket.AF_INET6 if ":" in args.host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((args.host, args.port))
    except OSError as e:
        raise InputError(f"cannot listen on {args.host}:{args.port} ({e.strerror})") from None
    sock.listen(128)  # connections queue from now on, so the printed URL works at once
    port = sock.getsockname()[1]
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: listening on {args.host}, beyond this machine; the app has no login, anyone who can "
              "reach it can use your models and keys' budget", file=sys.stderr)
    host = f"[{args.host}]" if ":" in args.host else args.host
    print(f"CoSER web app: http://{host}:{port}/  ({len(library.index)} characters in {len(library.books)} books"
          f"{', ' + str(len(library.items)) + ' test items' if library.items else ''}; Ctrl-C stops)", flush=True)
    config = uvicorn.Config(app, log_level="warning", access_log=False)
    server = uvicorn.Server(config)
    server.run(sockets=[sock])
    return 0

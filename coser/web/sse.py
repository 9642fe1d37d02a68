"""Server-sent events from a worker thread: blocking work (LLM calls) runs off the event loop."""
from __future__ import annotations

import asyncio
import json
import threading

from ..errors import CoserError


def event_stream(work, on_close=None):
    """Run work(put) in a thread; each put(kind, data) is one event, sent as it happens. The stream
    ends when work returns; an exception becomes a readable `error` event (never a traceback).
    on_close runs when the stream ends or the client goes away."""
    from starlette.responses import StreamingResponse

    loop = asyncio.get_running_loop()
    q: asyncio.Queue = asyncio.Queue()

    def put(kind, data):
        try:
            loop.call_soon_threadsafe(q.put_nowait, (kind, data))
        except RuntimeError:  # the server is shutting down: nobody is listening any more
            pass

    def run():
        try:
            work(put)
        except CoserError as e:
            put("error", {"message": str(e)})
        except Exception as e:  # noqa: BLE001  (the stream must end with a readable error)
            put("error", {"message": f"{type(e).__name__}: {e}"})
        finally:
            put(None, None)

    threading.Thread(target=run, daemon=True).start()

    async def events():
        try:
            while True:
                kind, data = await q.get()
                if kind is None:
                    break
                yield f"event: {kind}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n"
        finally:
            if on_close is not None:
                on_close()

    return StreamingResponse(events(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

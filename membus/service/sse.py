"""The change feed over Server-Sent Events.

Wire format, one SSE event per committed change::

    id: <change stream position>      (what Last-Event-ID / ?from= resume after)
    event: change
    data: <membus.Change as JSON>

The stream opens with ``event: open`` whose ``id`` is the concrete position it starts after (a
``$`` start is resolved to the current end first), so a client that reconnects with the last id it
saw, even before any change arrived, misses nothing. Comments (``: keepalive``) keep idle
connections open through proxies. If Redis fails mid-stream, the status is already sent, so the
error arrives as ``event: error`` with the usual error JSON, and the stream ends. The same happens
when the key that opened the stream stops being valid (``membus keys revoke`` or ``rotate``): the
key is checked again before every change and every ``recheck_s`` while idle, so a revoked key's
open stream ends within about that long, like its next request would be refused.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable

import anyio
import orjson
from redis.exceptions import ResponseError
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from membus.core.keys import TenantKeys
from membus.core.redis import REDIS_DOWN, Redis, unavailable
from membus.errors import InvalidInput, MembusError
from membus.service.wire import error_body
from membus.stream.feed import Change

_POSITION = re.compile(r"^(0|\$|\d{1,20}(-\d{1,20})?)$")


def check_start(start: str) -> str:
    if not _POSITION.fullmatch(start):
        raise InvalidInput(
            "start position must be '$' (now), '0' (the beginning) or a stream id like "
            f"'1700000000000-0', got {start[:40]!r}",
            [{"field": "from", "reason": "not a stream position"}],
        )
    return start


async def resolve_start(redis: Redis, tenant: str, start: str) -> str:
    """``$`` -> the id of the last change now, so the position can be handed to the client."""
    if start != "$":
        return start
    try:
        info = await redis.xinfo_stream(TenantKeys(tenant).changes)
        return str(info.get("last-generated-id") or "0-0")
    except ResponseError:  # no such stream yet: everything that comes is new
        return "0-0"
    except REDIS_DOWN as exc:
        raise unavailable(exc) from exc


def sse(event: str, data: bytes, id_: str | None = None) -> bytes:
    head = f"id: {id_}\n" if id_ is not None else ""
    return f"{head}event: {event}\ndata: ".encode() + data + b"\n\n"


class ChangeStream(Response):
    """A streaming response that pumps changes, sends keepalives and stops on disconnect.

    Written as a raw ASGI response (three tasks under one task group) rather than an async
    generator, because a generator cannot wait on two sources without leaking a task group
    across its ``yield``.
    """

    media_type = "text/event-stream"

    def __init__(
        self,
        changes: AsyncIterator[Change],
        start: str,
        keepalive_s: float,
        on_close: Callable[[], None] = lambda: None,
        still_valid: Callable[[], None] = lambda: None,
        recheck_s: float = 1.0,
    ) -> None:
        """``still_valid`` raises a ``MembusError`` once the caller may no longer read the
        stream (its key revoked); it is called before each change and every ``recheck_s``."""
        # not Response.__init__: it would declare "content-length: 0" for a body-less response
        self.status_code, self.background = 200, None
        self.raw_headers = [
            (b"content-type", b"text/event-stream; charset=utf-8"),
            (b"cache-control", b"no-cache"),
            (b"x-accel-buffering", b"no"),  # nginx: do not buffer the stream
        ]
        self.changes, self.start, self.keepalive_s, self.on_close = (
            changes,
            start,
            keepalive_s,
            on_close,
        )
        self.still_valid, self.recheck_s = still_valid, recheck_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        lock = anyio.Lock()
        gone = False

        async def emit(chunk: bytes) -> None:
            async with lock:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})

        async def pump(cancel: anyio.CancelScope) -> None:
            try:
                async for change in self.changes:
                    self.still_valid()  # a change never goes out on a revoked key
                    await emit(sse("change", change.model_dump_json().encode(), change.position))
            except MembusError as exc:
                await emit(sse("error", orjson.dumps(error_body(exc))))
            finally:
                aclose = getattr(self.changes, "aclose", None)
                if aclose is not None:
                    with anyio.CancelScope(shield=True):
                        await aclose()
            cancel.cancel()

        async def keepalive() -> None:
            while True:
                await anyio.sleep(self.keepalive_s)
                await emit(b": keepalive\n\n")

        async def recheck(cancel: anyio.CancelScope) -> None:
            # an idle stream on a revoked key must end too, not only a busy one
            while True:
                await anyio.sleep(self.recheck_s)
                try:
                    self.still_valid()
                except MembusError as exc:
                    await emit(sse("error", orjson.dumps(error_body(exc))))
                    cancel.cancel()
                    return

        async def disconnect(cancel: anyio.CancelScope) -> None:
            nonlocal gone
            while (await receive())["type"] != "http.disconnect":
                pass
            gone = True
            cancel.cancel()

        await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
        try:
            await emit(
                b"retry: 1000\n\n" + sse("open", orjson.dumps({"position": self.start}), self.start)
            )
            async with anyio.create_task_group() as tg:
                tg.start_soon(pump, tg.cancel_scope)
                tg.start_soon(keepalive)
                tg.start_soon(recheck, tg.cancel_scope)
                tg.start_soon(disconnect, tg.cancel_scope)
            if not gone:
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        except OSError:
            pass  # the client went away between two sends: nothing left to tell it
        finally:
            self.on_close()

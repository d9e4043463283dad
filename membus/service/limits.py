"""Limits that hold under abuse: body size, per-agent request rate, writer backpressure.

All three answer before any work is done: an oversized body is refused before it is parsed (and
before it is even read, when ``Content-Length`` says so), a request over its agent's rate before
it touches Redis, and a publish while writers lag before anything is added to the stream. So a
2xx still means exactly one thing: the event is in the stream.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from dataclasses import dataclass

import orjson
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from membus.core.keys import TenantKeys
from membus.core.redis import REDIS_DOWN, Redis, unavailable
from membus.service.wire import Backpressure, RateLimited, TooLarge, error_body
from membus.stream.ops import group_stats


class Limits(BaseModel):
    """Service limits; every one can be tuned per deployment."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_body_bytes: int = Field(default=1 << 20, ge=1024)
    # token bucket per agent: ``rate_per_s`` sustained, ``burst`` at once
    rate_per_s: float = Field(default=100.0, gt=0)
    burst: int = Field(default=200, ge=1)
    max_buckets: int = Field(default=100_000, ge=1)
    # publish is refused (503) while a tenant's writer group has this many entries unread
    # (lag) plus delivered-but-unacknowledged (pending)
    backlog_threshold: int = Field(default=100_000, ge=1)
    # how often the backlog is read from Redis per tenant; in between it is estimated
    backlog_check_s: float = Field(default=0.25, ge=0)
    backpressure_retry_after_s: float = Field(default=1.0, gt=0)
    sse_keepalive_s: float = Field(default=15.0, gt=0)


# -- body size --------------------------------------------------------------------------------


class BodyTooLarge(HTTPException):
    """Raised from ``receive`` mid-body. An HTTPException because FastAPI re-raises those from
    body parsing (anything else it turns into a 400); the app maps it to ``TooLarge``."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body exceeds {limit} bytes")
        self.limit = limit


class BodyLimit:
    """ASGI middleware: 413 when the body exceeds ``limit``, by header or as it streams in."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = 0
                if declared > self.limit:
                    await self._reject(send)
                    return
        seen = 0
        started = False

        async def counting_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise BodyTooLarge(self.limit)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except BodyTooLarge:
            if not started:
                await self._reject(send)

    async def _reject(self, send: Send) -> None:
        body = orjson.dumps(error_body(TooLarge(self.limit)))
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


# -- rate ---------------------------------------------------------------------------------------


@dataclass
class _Bucket:
    tokens: float
    at: float


class RateLimiter:
    """One token bucket per (tenant, agent), in process. Least recently seen buckets are
    dropped beyond ``max_buckets``; a dropped bucket comes back full, which only forgives."""

    def __init__(self, limits: Limits) -> None:
        self.rate, self.burst, self.max = limits.rate_per_s, float(limits.burst), limits.max_buckets
        self._buckets: OrderedDict[tuple[str, str], _Bucket] = OrderedDict()

    def take(self, tenant: str, agent: str, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        key = (tenant, agent)
        b = self._buckets.get(key)
        if b is None:
            b = self._buckets[key] = _Bucket(self.burst, now)
            if len(self._buckets) > self.max:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
            b.tokens = min(self.burst, b.tokens + (now - b.at) * self.rate)
            b.at = now
        if b.tokens < 1.0:
            wait = (1.0 - b.tokens) / self.rate
            raise RateLimited(
                f"agent {agent!r} exceeded {self.rate:g} requests/s (burst {self.burst:g})",
                retry_after_s=wait,
            )
        b.tokens -= 1.0


# -- backpressure -------------------------------------------------------------------------------


class BacklogGuard:
    """Refuses publishes while a tenant's writer group is behind (lag + pending).

    The backlog is read from Redis at most every ``backlog_check_s`` per tenant; in between,
    what this process published since is added, so one process cannot overshoot by much.
    """

    def __init__(self, redis: Redis, group: str, limits: Limits) -> None:
        self.redis, self.group = redis, group
        self.threshold, self.every = limits.backlog_threshold, limits.backlog_check_s
        self.retry_after_s = limits.backpressure_retry_after_s
        self._seen: dict[str, tuple[float, int]] = {}

    async def backlog(self, tenant: str) -> int:
        """Entries of the tenant's events stream the writer group has not acknowledged."""
        stream = TenantKeys(tenant).events
        try:
            for g in await group_stats(self.redis, stream):
                if g.group == self.group:
                    return g.lag + g.pending
            # no group yet: no writer has read anything, and nothing was trimmed (retention
            # keeps all of a stream without groups), so every entry is unread
            return int(await self.redis.xlen(stream))
        except REDIS_DOWN as exc:
            raise unavailable(exc) from exc

    async def admit(self, tenant: str, count: int) -> None:
        now = time.monotonic()
        seen = self._seen.get(tenant)
        if seen is None or now - seen[0] >= self.every:
            seen = (now, await self.backlog(tenant))
        if seen[1] >= self.threshold:
            self._seen[tenant] = seen
            raise Backpressure(
                f"writers are behind on tenant {tenant!r} ({seen[1]} entries unprocessed, "
                f"threshold {self.threshold}); nothing was published, retry later",
                retry_after_s=self.retry_after_s,
                reason="backpressure",
            )
        self._seen[tenant] = (seen[0], seen[1] + count)


def retry_after_header(seconds: float) -> str:
    """Retry-After takes whole seconds; never 0, which would invite an immediate retry storm."""
    return str(max(1, math.ceil(seconds)))

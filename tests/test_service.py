"""The HTTP service over the real embedded stack (real redis-server, Qdrant Edge, writer tasks).

Most tests drive the ASGI app in process; the change feed (SSE) runs under a real uvicorn server
on a free localhost port, since streaming needs a real connection.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx
import orjson
import pytest
import uvicorn
from starlette.types import ASGIApp

import membus
from membus.access.gate import Gate
from membus.access.policy import CasbinGate
from membus.access.watch import MemorySource
from membus.bus.api import Bus
from membus.core.config import MembusConfig, PolicyConfig, RankingConfig, RedisConfig, WorkerConfig
from membus.core.keys import TenantKeys
from membus.service.app import create_app
from membus.service.auth import ApiKeys, hash_key, new_key
from membus.service.limits import Limits
from membus.service.wire import error_from_body
from tests.redis_proc import free_port

# every hit, however weak: relevance and min_score are tests/test_relevance.py's subject
EVERY_HIT = RankingConfig(min_score=0)

pytestmark = pytest.mark.anyio

FAST = WorkerConfig(
    min_idle_ms=200, reclaim_every_s=0.2, max_deliveries=2, block_ms=50, tenants_refresh_s=0.1
)
ALICE, BOB = "alice-key-0123456789", "bob-key-0123456789"
ZED, OPS = "zed-key-0123456789", "ops-key-0123456789"
PROM = "prometheus-key-0123456789"
KEYS = ApiKeys.from_keys(
    {
        ALICE: ("acme", "alice"),
        BOB: ("acme", "bob"),
        ZED: ("other", "zed"),
        OPS: ("acme", "ops"),
        PROM: ("acme", "prometheus"),
    },
    operators=[OPS],
    scrapers=[PROM],
)


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@asynccontextmanager
async def opened(
    tmp_path: Path, redis_url: str, *, writers: int = 1, gate: Gate | None = None
) -> AsyncIterator[Bus]:
    cfg = MembusConfig(
        policy=PolicyConfig(mode="open"),
        redis=RedisConfig(url=redis_url),
        worker=FAST,
        writers=writers,
        ranking=EVERY_HIT,
    )
    async with membus.open(tmp_path, cfg, gate=gate) as bus:
        yield bus


@asynccontextmanager
async def service(
    tmp_path: Path,
    redis_url: str,
    limits: Limits | None = None,
    *,
    writers: int = 1,
    gate: Gate | None = None,
) -> AsyncIterator[tuple[Bus, httpx.AsyncClient]]:
    async with opened(tmp_path, redis_url, writers=writers, gate=gate) as bus:
        app = create_app(bus, KEYS, limits)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://membus") as http:
            yield bus, http


@asynccontextmanager
async def running(app: ASGIApp) -> AsyncIterator[str]:
    """A real uvicorn server on a free port, stopped (connections and all) on exit."""
    port = free_port()
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        log_config=None,
        lifespan="off",
        timeout_graceful_shutdown=1,
    )
    server = uvicorn.Server(config)
    async with anyio.create_task_group() as tg:
        tg.start_soon(server.serve)
        with anyio.fail_after(10):
            # uvicorn offers no started event to wait on
            while not server.started:  # noqa: ASYNC110
                await anyio.sleep(0.01)
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            server.should_exit = True


def error(resp: httpx.Response) -> dict[str, Any]:
    body: dict[str, Any] = resp.json()["error"]
    return body


@pytest.mark.slow
async def test_publish_drain_recall_over_http(tmp_path: Path, redis_url: str) -> None:
    """A 201 publish becomes a memory that recall over HTTP finds, attributed to the key's agent."""
    async with service(tmp_path, redis_url) as (bus, http):
        r = await http.post(
            "/v1/publish",
            json={
                "content": "The customer prefers email.",
                "scope": "team/support",
                "subject": "customer:42",
            },
            headers=auth(ALICE),
        )
        assert r.status_code == 201, r.text
        receipt = membus.Receipt.model_validate(r.json())
        assert (receipt.tenant, receipt.scope) == ("acme", "team/support")
        await bus.drain(10)
        r = await http.post(
            "/v1/recall",
            json={"query": "how to contact customer 42", "k": 3},
            headers={"X-API-Key": BOB},
        )
        assert r.status_code == 200, r.text
        hits = [membus.Hit.model_validate(h) for h in r.json()["hits"]]
        assert [h.memory.content for h in hits] == ["The customer prefers email."]
        assert hits[0].memory.agents == ["alice"]
        assert hits[0].memory.source_events == [receipt.event_id]


async def test_batch_publish_is_all_or_nothing(tmp_path: Path, redis_url: str) -> None:
    """A valid batch yields one receipt per draft; one bad draft rejects the batch, adds none."""
    async with service(tmp_path, redis_url, writers=0) as (bus, http):
        drafts = [{"content": f"note {i}", "scope": "team/a"} for i in range(3)]
        r = await http.post("/v1/publish/batch", json={"drafts": drafts}, headers=auth(ALICE))
        assert r.status_code == 201, r.text
        assert len(r.json()["receipts"]) == 3
        bad = [*drafts, {"content": "x", "scope": "team/../b"}]
        r = await http.post("/v1/publish/batch", json={"drafts": bad}, headers=auth(ALICE))
        assert r.status_code == 400
        assert error(r)["code"] == "invalid_input"
        assert await bus.redis.xlen(TenantKeys("acme").events) == 3


@pytest.mark.slow
async def test_missing_unknown_or_malformed_key_is_401(tmp_path: Path, redis_url: str) -> None:
    """No key, an unknown key, or a non-Bearer Authorization: 401 unauthenticated, nothing done."""
    async with service(tmp_path, redis_url, writers=0) as (bus, http):
        body = {"content": "x", "scope": "team/a"}
        for headers in ({}, auth("not-a-key-0123456789"), {"Authorization": f"Basic {ALICE}"}):
            r = await http.post("/v1/publish", json=body, headers=headers)
            assert r.status_code == 401, headers
            assert error(r)["code"] == "unauthenticated"
            assert r.headers["www-authenticate"].startswith("Bearer")
        assert await bus.redis.xlen(TenantKeys("acme").events) == 0
        r = await http.get("/v1/whoami", headers={"X-API-Key": ZED})
        assert r.json() == {"agent": "zed", "tenant": "other", "operator": False}


@pytest.mark.slow
async def test_identity_cannot_be_forged_through_the_body(tmp_path: Path, redis_url: str) -> None:
    """``agent``/``tenant`` in a body are refused; what is stored carries the key's identity,
    and another tenant's key sees none of it."""
    async with service(tmp_path, redis_url) as (bus, http):
        for forged in ({"agent": "mallory"}, {"tenant": "other"}):
            r = await http.post(
                "/v1/publish",
                json={"content": "x", "scope": "team/a", **forged},
                headers=auth(ALICE),
            )
            assert r.status_code == 400
            assert error(r)["code"] == "invalid_input"
            assert error(r)["problems"][0]["field"] == next(iter(forged))
        r = await http.post(
            "/v1/recall", json={"query": "x", "agent": "mallory"}, headers=auth(ALICE)
        )
        assert r.status_code == 400
        r = await http.post(
            "/v1/publish",
            json={"content": "only alice wrote this", "scope": "team/a"},
            headers=auth(ALICE),
        )
        assert r.status_code == 201
        await bus.drain(10)
        memories, _ = await bus.store.scroll("acme")
        assert [(m.tenant, m.agents) for m in memories] == [("acme", ["alice"])]
        r = await http.post("/v1/recall", json={"query": "alice wrote"}, headers=auth(ZED))
        assert r.json() == {"hits": []}


async def test_oversized_body_is_413_before_parsing(tmp_path: Path, redis_url: str) -> None:
    """By Content-Length or as a chunked body streams in: 413 too_large, nothing published."""
    async with service(tmp_path, redis_url, Limits(max_body_bytes=2048), writers=0) as (bus, http):
        big = {"content": "x" * 4000, "scope": "team/a"}
        r = await http.post("/v1/publish", json=big, headers=auth(ALICE))
        assert r.status_code == 413
        assert error(r)["code"] == "too_large"

        async def chunks() -> AsyncIterator[bytes]:
            yield b'{"content": "'
            for _ in range(10):
                yield b"y" * 500
            yield b'", "scope": "team/a"}'

        r = await http.post(
            "/v1/publish",
            content=chunks(),
            headers={**auth(ALICE), "content-type": "application/json"},
        )
        assert r.status_code == 413
        assert error(r)["code"] == "too_large"
        assert await bus.redis.xlen(TenantKeys("acme").events) == 0


async def test_rate_limit_is_per_agent_with_retry_after(tmp_path: Path, redis_url: str) -> None:
    """Past its burst an agent gets 429 rate_limited with Retry-After; other agents are not
    affected."""
    limits = Limits(rate_per_s=0.5, burst=2)
    async with service(tmp_path, redis_url, limits, writers=0) as (_bus, http):
        body = {"content": "x", "scope": "team/a"}
        codes = [
            (await http.post("/v1/publish", json=body, headers=auth(ALICE))).status_code
            for _ in range(2)
        ]
        assert codes == [201, 201]
        r = await http.post("/v1/publish", json=body, headers=auth(ALICE))
        assert r.status_code == 429
        assert error(r)["code"] == "rate_limited"
        assert int(r.headers["retry-after"]) >= 1
        r = await http.post("/v1/publish", json=body, headers=auth(BOB))
        assert r.status_code == 201


async def test_backpressure_refuses_publish_and_never_drops(tmp_path: Path, redis_url: str) -> None:
    """With no writer draining, publish turns 503 (Retry-After) at the threshold; every 201 is in
    the stream and the refused one is not."""
    limits = Limits(backlog_threshold=3, backlog_check_s=0, backpressure_retry_after_s=2)
    async with service(tmp_path, redis_url, limits, writers=0) as (bus, http):
        accepted = []
        for i in range(5):
            r = await http.post(
                "/v1/publish", json={"content": f"n{i}", "scope": "team/a"}, headers=auth(ALICE)
            )
            if r.status_code == 201:
                accepted.append(r.json()["event_id"])
            else:
                assert r.status_code == 503
                assert error(r)["code"] == "unavailable"
                assert error(r)["reason"] == "backpressure"
                assert r.headers["retry-after"] == "2"
        assert len(accepted) == 3
        entries: list[Any] = await bus.redis.xrange(TenantKeys("acme").events)  # type: ignore[assignment]
        assert len(entries) == 3
        assert all(eid in str(entries) for eid in accepted)


async def test_gate_denial_is_403_and_counted(tmp_path: Path, redis_url: str) -> None:
    """The bus's gate decides for the key's identity: 403 permission_denied names agent, action
    and scope; /metrics counts it and the audit trail (readable with admin) records it."""
    gate = CasbinGate(
        MemorySource(
            "p, alice, acme, team/*, publish|recall|subscribe, allow\n"
            "p, ops, acme, team/*, admin, allow\n"
        )
    )
    async with service(tmp_path, redis_url, writers=0, gate=gate) as (bus, http):
        body = {"content": "x", "scope": "team/a"}
        assert (await http.post("/v1/publish", json=body, headers=auth(ALICE))).status_code == 201
        r = await http.post("/v1/publish", json=body, headers=auth(BOB))
        assert r.status_code == 403
        e = error(r)
        assert (e["code"], e["agent"], e["action"], e["scope"]) == (
            "permission_denied",
            "bob",
            "publish",
            "team/a",
        )
        r = await http.get("/v1/changes", params={"scopes": "team/a"}, headers=auth(BOB))
        assert r.status_code == 403
        # policy reload is for operator keys only
        r = await http.post("/v1/admin/policy/reload", headers=auth(ALICE))
        assert r.status_code == 403
        r = await http.post("/v1/admin/policy/reload", headers=auth(OPS))
        assert r.status_code == 200 and r.json()["version"] >= 1
        text = (await http.get("/metrics", headers=auth(OPS))).text
        assert 'membus_permission_denials_total{action="publish",tenant="acme"} 1.0' in text
        # the audit trail over HTTP: admin on the scope, and both refusals are on it
        r = await http.get("/v1/audit", params={"scope": "team"}, headers=auth(ALICE))
        assert r.status_code == 403
        await bus.audit.flush()
        r = await http.get(
            "/v1/audit", params={"scope": "team", "decision": "deny"}, headers=auth(OPS)
        )
        assert r.status_code == 200, r.text
        denied = {(x["agent"], x["action"]) for x in r.json()["records"]}
        assert {("bob", "publish"), ("bob", "subscribe"), ("alice", "admin")} <= denied


@pytest.mark.slow
async def test_health_ready_and_metrics(tmp_path: Path, redis_url: str) -> None:
    """/healthz and /readyz answer; /metrics has lag/pending per group, DLQ size, rates and
    latency histograms."""
    async with service(tmp_path, redis_url) as (bus, http):
        assert (await http.get("/healthz")).json() == {"status": "ok"}
        assert (await http.get("/readyz")).json() == {"status": "ready"}
        await http.post(
            "/v1/publish", json={"content": "x", "scope": "team/a"}, headers=auth(ALICE)
        )
        await bus.drain(10)
        await http.post("/v1/recall", json={"query": "x"}, headers=auth(ALICE))
        r = await http.get("/metrics", headers=auth(OPS))
        assert r.status_code == 200
        for name in (
            'membus_stream_lag{group="writers",stream="events",tenant="acme"} 0.0',
            'membus_stream_pending{group="writers",stream="events",tenant="acme"} 0.0',
            'membus_dlq_size{tenant="acme"} 0.0',
            'membus_published_events_total{tenant="acme"} 1.0',
            # consolidation progress, from the streams themselves (counts every process)
            'membus_stream_entries_added_total{stream="changes",tenant="acme"} 1.0',
            'membus_stream_entries_added_total{stream="events",tenant="acme"} 1.0',
            'membus_recalls_total{tenant="acme"} 1.0',
            "membus_publish_seconds_bucket",
            "membus_recall_seconds_bucket",
            "membus_permission_denials_total",
            "membus_rate_limited_total",
            "membus_backpressure_rejections_total",
            'membus_http_requests_total{method="POST",route="/v1/publish",status="201"} 1.0',
            "membus_redis_up 1.0",
        ):
            assert name in r.text, name


async def test_metrics_need_an_operator_key(tmp_path: Path, redis_url: str) -> None:
    """/metrics names every tenant and its activity, so it is for operator keys only: no key,
    a wrong key, a key in the wrong header scheme and an ordinary agent's key (of this tenant or
    another) all get an error body that names no tenant; failed attempts are counted."""
    async with service(tmp_path, redis_url) as (_bus, http):
        await http.post("/v1/publish", json={"content": "x", "scope": "team/a"}, headers=auth(ZED))
        attempts: list[dict[str, str]] = [
            {},
            auth("not-a-key-0123456789"),
            {"Authorization": f"Basic {OPS}"},
            {"Authorization": "Bearer "},
            {"X-API-Key": OPS[:-1]},
        ]
        for headers in attempts:
            r = await http.get("/metrics", headers=headers)
            assert r.status_code == 401, headers
            assert error(r)["code"] == "unauthenticated"
            assert "membus_" not in r.text and "other" not in r.text
        for key in (ALICE, ZED):
            for headers in (auth(key), {"X-API-Key": key}):
                r = await http.get("/metrics", headers=headers)
                assert r.status_code == 403, key
                assert error(r)["code"] == "permission_denied"
                assert "membus_" not in r.text and 'tenant="other"' not in r.text
        # the operator scrapes, with either header, and sees every tenant
        for headers in (auth(OPS), {"X-API-Key": OPS}):
            r = await http.get("/metrics", headers=headers)
            assert r.status_code == 200
            assert 'membus_published_events_total{tenant="other"} 1.0' in r.text
            assert "membus_auth_failures_total 5.0" in r.text
            assert 'membus_permission_denials_total{action="admin",tenant="acme"} 2.0' in r.text


async def test_a_metrics_only_key_scrapes_and_does_nothing_else(
    tmp_path: Path, redis_url: str
) -> None:
    """The key a Prometheus server holds (``keys new --metrics-only``) reads /metrics; a thief
    who takes it from the scraper's config can neither act as an agent (publish, recall, feed,
    forget, access stats, whoami) nor use an operator's or admin's routes."""
    async with service(tmp_path, redis_url) as (bus, http):
        r = await http.get("/metrics", headers=auth(PROM))
        assert r.status_code == 200 and "membus_redis_up 1.0" in r.text
        attempts = [
            ("POST", "/v1/publish", {"content": "x", "scope": "agent/prometheus"}),
            ("POST", "/v1/publish/batch", {"drafts": [{"content": "x", "scope": "team/a"}]}),
            ("POST", "/v1/recall", {"query": "x"}),
            ("POST", "/v1/access", {"memory_ids": []}),
            ("POST", "/v1/forget", {"subject": "customer:1"}),
            ("POST", "/v1/admin/policy/reload", None),
            ("GET", "/v1/changes", None),
            ("GET", "/v1/audit?scope=team", None),
            ("GET", "/v1/whoami", None),
        ]
        for method, path, body in attempts:
            for headers in (auth(PROM), {"X-API-Key": PROM}):
                r = await http.request(method, path, json=body, headers=headers)
                assert r.status_code == 403, (path, r.text)
                assert error(r)["code"] == "permission_denied"
                assert "metrics-only" in error(r)["message"]
        assert await bus.redis.xlen(TenantKeys("acme").events) == 0


async def test_errors_are_typed_json(tmp_path: Path, redis_url: str) -> None:
    """Bad JSON, bad fields, unknown routes: the same {"error": {"code", "message"}} shape."""
    async with service(tmp_path, redis_url, writers=0) as (_bus, http):
        r = await http.post(
            "/v1/publish",
            content=b"{not json",
            headers={**auth(ALICE), "content-type": "application/json"},
        )
        assert r.status_code == 400 and error(r)["code"] == "invalid_input"
        r = await http.post("/v1/recall", json={"query": "x", "k": 0}, headers=auth(ALICE))
        assert r.status_code == 400 and error(r)["problems"][0]["field"] == "k"
        r = await http.post("/v1/recall", json={"query": "   "}, headers=auth(ALICE))
        assert r.status_code == 400 and "blank" in error(r)["message"]
        r = await http.get("/v1/changes", params={"from": "bogus"}, headers=auth(ALICE))
        assert r.status_code == 400 and error(r)["code"] == "invalid_input"
        r = await http.get("/v1/nope", headers=auth(ALICE))
        assert r.status_code == 404 and error(r)["code"] == "not_found"


@pytest.mark.slow
async def test_forget_over_http_within_the_callers_scopes(tmp_path: Path, redis_url: str) -> None:
    """POST /v1/forget erases by subject in the caller's tenant; recall no longer finds it."""
    async with service(tmp_path, redis_url) as (bus, http):
        for subject in ("customer:1", "customer:2"):
            await http.post(
                "/v1/publish",
                json={"content": f"about {subject}", "scope": "team/a", "subject": subject},
                headers=auth(ALICE),
            )
        await bus.drain(10)
        r = await http.post("/v1/forget", json={"subject": "customer:1"}, headers=auth(ALICE))
        assert r.status_code == 200, r.text
        assert r.json()["memories"] == 1
        r = await http.post(
            "/v1/recall", json={"query": "about customer", "k": 5}, headers=auth(ALICE)
        )
        assert [h["memory"]["subject"] for h in r.json()["hits"]] == ["customer:2"]


async def test_openapi_documents_every_endpoint(tmp_path: Path, redis_url: str) -> None:
    """OpenAPI lists the endpoints, both key schemes and the error model."""
    async with service(tmp_path, redis_url, writers=0) as (_bus, http):
        spec = (await http.get("/openapi.json")).json()
        assert {
            "/v1/publish",
            "/v1/publish/batch",
            "/v1/recall",
            "/v1/changes",
            "/v1/forget",
            "/v1/whoami",
            "/v1/audit",
            "/healthz",
            "/readyz",
            "/metrics",
        } <= set(spec["paths"])
        schemes = spec["components"]["securitySchemes"]
        assert {s["type"] for s in schemes.values()} == {"http", "apiKey"}
        publish = spec["paths"]["/v1/publish"]["post"]
        assert {"400", "401", "403", "413", "429", "503"} <= set(publish["responses"])
        assert "ErrorResponse" in spec["components"]["schemas"]


def test_keys_file_holds_only_digests(tmp_path: Path) -> None:
    """A keys file names digests; the secret authenticates, a near miss does not."""
    secret = new_key()
    path = tmp_path / "keys.json"
    path.write_text(
        f'{{"keys": [{{"sha256": "{hash_key(secret)}", "agent": "a1", "tenant": "t1"}}]}}'
    )
    keys = ApiKeys.from_file(path)
    assert secret not in path.read_text()
    assert keys.authenticate(secret).identity == membus.Identity(tenant="t1", agent="a1")
    with pytest.raises(membus.MembusError, match="unknown API key"):
        keys.authenticate(secret[:-1] + ("A" if secret[-1] != "A" else "B"))


# -- the change feed over a real connection ------------------------------------------------------


async def read_events(resp: httpx.Response, changes: int) -> list[tuple[str, str, str]]:
    """(event, id, data) until ``changes`` change events arrived."""
    out: list[tuple[str, str, str]] = []
    cur: dict[str, str] = {}
    with anyio.fail_after(10):
        async for line in resp.aiter_lines():
            if not line:
                if "data" in cur:
                    out.append((cur.get("event", "message"), cur.get("id", ""), cur["data"]))
                cur = {}
                if sum(e == "change" for e, _, _ in out) == changes:
                    return out
            elif not line.startswith(":"):
                name, _, value = line.partition(": ")
                cur[name] = value
    return out


@pytest.mark.slow
async def test_sse_follows_changes_and_resumes_from_a_position(
    tmp_path: Path, redis_url: str
) -> None:
    """The feed opens at a concrete position, delivers each change with its position as the SSE
    id, and resumes after a given id via Last-Event-ID or ?from= without loss or repeats."""
    async with opened(tmp_path, redis_url) as bus:
        app = create_app(bus, KEYS, Limits(sse_keepalive_s=0.2))
        async with running(app) as url, httpx.AsyncClient(base_url=url, headers=auth(ALICE)) as h:
            async with h.stream("GET", "/v1/changes", params={"scopes": "team/a"}) as resp:
                assert resp.headers["content-type"].startswith("text/event-stream")
                for i in range(2):
                    await h.post("/v1/publish", json={"content": f"c{i}", "scope": "team/a"})
                await h.post("/v1/publish", json={"content": "elsewhere", "scope": "team/b"})
                events = await read_events(resp, 2)
            assert events[0][0] == "open" and events[0][1] not in ("", "$")
            got = [membus.Change.model_validate_json(d) for e, _, d in events if e == "change"]
            assert [c.content for c in got] == ["c0", "c1"]
            assert [i for e, i, _ in events if e == "change"] == [c.position for c in got]

            await h.post("/v1/publish", json={"content": "c2", "scope": "team/a"})
            first = got[0].position
            assert first is not None
            for how in ({"headers": {"Last-Event-ID": first}}, {"params": {"from": first}}):
                params = {"scopes": "team/a", **how.get("params", {})}
                async with h.stream(
                    "GET", "/v1/changes", params=params, headers=how.get("headers")
                ) as resp:
                    events = await read_events(resp, 2)
                assert [
                    membus.Change.model_validate_json(d).content
                    for e, _, d in events
                    if e == "change"
                ] == ["c1", "c2"]


async def sse_events(resp: httpx.Response) -> AsyncIterator[tuple[str, str]]:
    """(event, data) of each SSE event with data, until the stream ends."""
    cur: dict[str, str] = {}
    async for line in resp.aiter_lines():
        if line:
            name, _, value = line.partition(": ")
            cur[name] = value
            continue
        if "data" in cur:
            yield cur.get("event", "message"), cur["data"]
        cur = {}


@pytest.mark.slow
async def test_a_revoked_key_loses_the_change_stream_it_opened(
    tmp_path: Path, redis_url: str
) -> None:
    """Attack: a key is revoked while its stream is open. Its next request is refused (the keys
    file is read again), and the stream it opened must not go on carrying changes: it ends with
    an ``unauthenticated`` error event, and nothing published afterwards reaches it, whether the
    stream was idle or busy when the key went."""
    keys_file = tmp_path / "keys.json"
    entries = [
        {"sha256": hash_key(ALICE), "agent": "alice", "tenant": "acme"},
        {"sha256": hash_key(BOB), "agent": "bob", "tenant": "acme"},
    ]
    keys_file.write_text(orjson.dumps({"keys": entries}).decode())
    keys = ApiKeys.from_file(keys_file)
    keys.reload_s = 0.05
    async with opened(tmp_path / "bus", redis_url) as bus:
        app = create_app(bus, keys, Limits(sse_keepalive_s=30))  # no keepalive in the window
        async with running(app) as url, httpx.AsyncClient(base_url=url) as h:
            events: list[tuple[str, str]] = []
            async with h.stream(
                "GET", "/v1/changes", params={"scopes": "team/a"}, headers=auth(BOB)
            ) as resp:
                body = {"content": "before the revocation", "scope": "team/a"}
                await h.post("/v1/publish", json=body, headers=auth(ALICE))
                stream = sse_events(resp)
                with anyio.fail_after(20):
                    async for event in stream:
                        events.append(event)
                        if event[0] == "change":
                            break
                    # bob's key goes while his stream is idle
                    keys_file.write_text(orjson.dumps({"keys": entries[:1]}).decode())
                    await anyio.sleep(0.2)
                    r = await h.get("/v1/whoami", headers=auth(BOB))
                    assert r.status_code == 401
                    body = {"content": "after the revocation", "scope": "team/a"}
                    await h.post("/v1/publish", json=body, headers=auth(ALICE))
                    events += [e async for e in stream]  # to its end: the stream must end
    contents = [orjson.loads(d)["content"] for e, d in events if e == "change"]
    assert contents == ["before the revocation"]
    assert events[-1][0] == "error"
    assert orjson.loads(events[-1][1])["error"]["code"] == "unauthenticated"


@pytest.mark.slow
async def test_recall_options_and_access_over_http(tmp_path: Path, redis_url: str) -> None:
    """working and as_of reach the bus; /v1/access answers only for memories the key's agent
    may recall."""
    gate = CasbinGate(MemorySource("p, *, acme, team/*, publish|recall, allow\n"))
    async with service(tmp_path, redis_url, writers=0, gate=gate) as (bus, http):
        body = {"content": "the fire drill is on tuesday", "scope": "team/safety"}
        assert (await http.post("/v1/publish", json=body, headers=auth(ALICE))).status_code == 201
        private = {"content": "alice: skip the fire drill", "scope": "agent/alice/notes"}
        assert (
            await http.post("/v1/publish", json=private, headers=auth(ALICE))
        ).status_code == 201
        q: dict[str, Any] = {"query": "fire drill", "k": 5}
        r = await http.post("/v1/recall", json=q, headers=auth(BOB))
        assert r.status_code == 200 and r.json()["hits"] == []  # nothing consolidated yet
        r = await http.post("/v1/recall", json={**q, "working": True}, headers=auth(BOB))
        hits = [membus.Hit.model_validate(h) for h in r.json()["hits"]]
        assert [(h.memory.content, h.working) for h in hits] == [
            ("the fire drill is on tuesday", True)
        ]
        past = {**q, "working": True, "as_of": "2020-01-01T00:00:00Z"}
        r = await http.post("/v1/recall", json=past, headers=auth(BOB))
        assert r.status_code == 200 and r.json()["hits"] == []
        r = await http.post("/v1/recall", json={**q, "working": "maybe"}, headers=auth(BOB))
        assert r.status_code == 400 and error(r)["code"] == "invalid_input"

    async with service(tmp_path, redis_url, writers=1, gate=gate) as (bus, http):
        await bus.drain(10)
        r = await http.post("/v1/recall", json={**q, "k": 5}, headers=auth(ALICE))
        ids = {h["memory"]["scope"]: h["memory"]["id"] for h in r.json()["hits"]}
        assert set(ids) == {"team/safety", "agent/alice/notes"}
        ask = {"memory_ids": list(ids.values())}
        r = await http.post("/v1/access", json=ask, headers=auth(ALICE))
        assert r.status_code == 200, r.text
        assert {m: a["count"] for m, a in r.json()["access"].items()} == dict.fromkeys(
            ids.values(), 1
        )
        r = await http.post("/v1/access", json=ask, headers=auth(BOB))
        assert set(r.json()["access"]) == {ids["team/safety"]}
        r = await http.post("/v1/access", json={"memory_ids": ["nope"]}, headers=auth(BOB))
        assert r.status_code == 400
        spec = (await http.get("/openapi.json")).json()
        assert "/v1/access" in spec["paths"]
        recall_body = spec["components"]["schemas"]["RecallRequest"]["properties"]
        assert {"as_of", "working"} <= set(recall_body)


@pytest.mark.slow
async def test_a_group_over_http_belongs_to_the_keys_agent(tmp_path: Path, redis_url: str) -> None:
    """Attack over HTTP: bob's key, with no grant on the team, opens ``?group=feed`` first and
    waits; alice opens the same ``?group=feed``; 20 team changes commit. Bob's stream joins bob's
    own group, so it can neither take nor acknowledge alice's deliveries: alice gets all 20. A
    group name spelling another agent's group is refused with 400."""
    gate = CasbinGate(MemorySource("p, alice, acme, team/*, publish|subscribe\n"))
    async with opened(tmp_path, redis_url, gate=gate) as bus:
        app = create_app(bus, KEYS, Limits(sse_keepalive_s=0.2))
        async with running(app) as url, httpx.AsyncClient(base_url=url) as h:
            params = {"group": "feed"}
            async with h.stream("GET", "/v1/changes", params=params, headers=auth(BOB)) as b:
                assert b.status_code == 200
                await anyio.sleep(0.3)  # bob's consumer is first in line
                team = {**params, "scopes": "team"}
                async with h.stream("GET", "/v1/changes", params=team, headers=auth(ALICE)) as a:
                    await anyio.sleep(0.3)
                    alice = bus.agent("alice", "acme")
                    for i in range(20):
                        await alice.publish(f"team change {i}", "team/ops")
                    events = await read_events(a, 20)
            got = [membus.Change.model_validate_json(d) for e, _, d in events if e == "change"]
            assert sorted(c.content or "" for c in got) == sorted(
                f"team change {i}" for i in range(20)
            )
            groups: Any = await bus.redis.xinfo_groups(TenantKeys("acme").changes)
            assert sorted(g["name"].split(":")[1] for g in groups) == ["alice", "bob"]
            r = await h.get("/v1/changes", params={"group": "alice:feed"}, headers=auth(BOB))
            assert r.status_code == 400 and "group" in error(r)["message"]


async def test_without_a_policy_http_refusals_say_how_to_grant(
    tmp_path: Path, redis_url: str
) -> None:
    """No policy (the default): alice's key may not publish into a shared scope nor read bob's
    private one; the 403 names the way to grant it, and the client's typed error keeps it."""
    cfg = MembusConfig(redis=RedisConfig(url=redis_url), worker=FAST, writers=0, ranking=EVERY_HIT)
    async with membus.open(tmp_path, cfg) as bus:
        app = create_app(bus, KEYS)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://membus") as http:
            r = await http.post(
                "/v1/publish", json={"content": "x", "scope": "team/a"}, headers=auth(ALICE)
            )
            assert r.status_code == 403
            body = error(r)
            assert "p, alice, acme, team/*, publish" in body["hint"]
            assert "MEMBUS_POLICY_MODE=open" in body["message"]
            rebuilt = error_from_body(403, r.json())
            assert isinstance(rebuilt, membus.PermissionDenied) and rebuilt.hint == body["hint"]
            r = await http.post(
                "/v1/recall",
                json={"query": "x", "scopes": ["agent/bob"]},
                headers=auth(ALICE),
            )
            assert r.status_code == 403 and "policies/README.md" in error(r)["hint"]
            r = await http.post(
                "/v1/publish", json={"content": "x", "scope": "agent/alice"}, headers=auth(ALICE)
            )
            assert r.status_code == 201

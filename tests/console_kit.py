"""What the console tests share: a tenant with a policy, its keys, signing in, parking an event."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx

import membus
from membus.access.policy import CasbinGate
from membus.access.signing import signed_fields
from membus.access.watch import MemorySource
from membus.bus.api import Bus
from membus.console import mount
from membus.core.config import MembusConfig, RedisConfig, WorkerConfig
from membus.core.envelope import Event
from membus.core.keys import TenantKeys
from membus.service.app import create_app
from membus.service.auth import ApiKeys
from membus.stream import dlq
from membus.stream.ops import ensure_group

FAST = WorkerConfig(
    min_idle_ms=200, reclaim_every_s=0.2, max_deliveries=2, block_ms=50, tenants_refresh_s=0.1
)
ALICE, BOB = "alice-console-key-0123456789", "bob-console-key-0123456789"
OPS, ZED = "ops-console-key-0123456789", "zed-console-key-0123456789"
PROM = "prom-console-key-0123456789"
KEYS = ApiKeys.from_keys(
    {
        ALICE: ("acme", "alice"),
        BOB: ("acme", "bob"),
        OPS: ("acme", "ops"),
        ZED: ("other", "zed"),
        PROM: ("acme", "prometheus"),
    },
    operators=[OPS, ZED],
    scrapers=[PROM],
)
# the team shares team/*; ops curates it; everyone's agent/<self> stays private (built in)
POLICY = """
p, role:team, acme, team/*, publish|recall|subscribe, allow
p, ops, acme, team/*, *, allow
g, alice, role:team, acme
g, bob, role:team, acme
g2, *, internal, acme
p, zed, other, team/*, *, allow
"""
REVOKE = "g, alice, role:team, acme"


def config(redis_url: str) -> MembusConfig:
    return MembusConfig(redis=RedisConfig(url=redis_url), worker=FAST, writers=1)


@asynccontextmanager
async def console_bus(tmp_path: Path, redis_url: str) -> AsyncIterator[Bus]:
    gate = CasbinGate(MemorySource(POLICY))
    async with membus.open(tmp_path, config(redis_url), gate=gate) as bus:
        yield bus


def console_app(bus: Bus) -> object:
    return create_app(bus, KEYS, mounts=[mount])


async def sign_in(http: httpx.AsyncClient, key: str) -> str:
    """Sign ``http`` in with ``key``; returns the session's CSRF token."""
    form = await http.get("/ui/login")
    nonce = re.search(r'name="nonce" value="([^"]+)"', form.text)
    assert nonce is not None, form.text
    r = await http.post("/ui/login", data={"key": key, "nonce": nonce[1]})
    assert r.status_code == 303, r.text
    return csrf_of((await http.get("/ui/memories")).text)


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found is not None, html
    return found[1]


async def park(bus: Bus, agent: str, scope: str, content: str) -> str:
    """A properly signed event of ``agent``, parked in the DLQ as if writers had given up on
    it (a replay commits it); returns its dead-letter id."""
    event = Event.build(tenant="acme", agent=agent, content=content, scope=scope)
    fields = signed_fields(event, await bus.keys.current("acme", agent))
    keys = TenantKeys("acme")
    group = bus.config.worker.group
    await ensure_group(bus.redis, keys.events, group)
    raw = {str(k): v.decode() if isinstance(v, bytes) else str(v) for k, v in fields.items()}
    await dlq.park(
        bus.redis, keys, keys.events, group, [("1-1", raw, "test: parked")], reason="poison"
    )
    [letter] = [d for d in await dlq.list_dead(bus.redis, "acme") if d.fields == raw]
    return letter.id

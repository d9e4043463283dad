"""Ids as users give them (e-mail, UUID, mixed case, any text), encoded injectively into names.

The promise under attack: an id chosen to collide with, contain or imitate another agent's
(encoded) name never reaches that agent's private scope, at the Python door and over HTTP.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

import membus
from membus.access.policy import CasbinGate
from membus.access.watch import MemorySource
from membus.bus.api import Bus
from membus.core.config import MembusConfig, RedisConfig, WorkerConfig
from membus.core.ids import MAX_ID_CHARS, decode_id, display_id, encode_id
from membus.errors import InvalidInput, PermissionDenied
from membus.service.app import create_app
from membus.service.auth import ApiKeys, KeyEntry
from membus.service.client import Client

NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
VICTIM = "Alice"
LONG = "alice@example.com/" + "a" * 200
# ids an attacker might pick to land on VICTIM's (or LONG's) private scope
ATTACKERS = [
    "alice",  # the victim's id in another case
    "ALICE",
    encode_id(VICTIM),  # the victim's encoded name, passed as an id
    f"agent/{encode_id(VICTIM)}",
    "x--_41_lice/..",
    "*",
    "..",
    "alice/*",
    "\u0410lice",  # Cyrillic capital A
    "Alice\u200b",  # a zero-width space after the name
    "Alic\u0435",  # Cyrillic e
    LONG[:-1] + "b",  # differs from a long id in its last character only
    LONG + "a",
]


def test_plain_names_stay_and_everything_else_is_escaped() -> None:
    assert encode_id("alice") == "alice"
    assert encode_id("550e8400-e29b-41d4-a716-446655440000") == (
        "550e8400-e29b-41d4-a716-446655440000"
    )
    assert encode_id("alice@example.com") == "x--alice_40_example_2e_com"
    assert encode_id("User-123") == "x--_55_ser-123"
    assert encode_id("a.b") != encode_id("a_b") and encode_id("a_b") == "a_b"
    # the reserved prefixes are escaped themselves: nobody can pass an encoded name as an id
    assert encode_id("x--abc") == "x--x--abc"
    assert encode_id("h--abc") == "x--h--abc"


@pytest.mark.slow
@given(st.text(min_size=1, max_size=80))
def test_every_id_encodes_to_a_name_that_decodes_back(value: str) -> None:
    """Injective: decoding gives back the very id (hashed names aside, see the next test)."""
    try:
        name = encode_id(value)
    except InvalidInput:
        return  # control characters, padding: refused, not mangled
    assert NAME.fullmatch(name)
    if not name.startswith("h--"):
        assert decode_id(name) == value and display_id(name) == value


def test_long_ids_hash_apart_and_near_misses_never_share_a_name() -> None:
    names = {encode_id(v) for v in [*ATTACKERS, VICTIM, LONG]}
    assert len(names) == len(ATTACKERS) + 2
    assert all(NAME.fullmatch(n) for n in names)
    long_name = encode_id(LONG)
    assert long_name.startswith("h--alice_40_example") and len(long_name) <= 64
    assert decode_id(long_name) is None and display_id(long_name) == long_name
    assert NAME.fullmatch(encode_id("\u00e9" * MAX_ID_CHARS))
    # non-canonical spellings decode to nobody: ``x--alice`` is not alice's name
    assert decode_id("x--alice") is None and decode_id("x--_041_") is None


@pytest.mark.parametrize(
    "bad", ["", " alice", "alice ", "al\x00ice", "a\nb", "x" * (MAX_ID_CHARS + 1), "\ud800"]
)
def test_unusable_ids_are_refused_with_the_field(bad: str) -> None:
    with pytest.raises(InvalidInput) as err:
        encode_id(bad, "agent")
    assert err.value.problems[0]["field"] == "agent"


FAST = WorkerConfig(min_idle_ms=200, reclaim_every_s=0.2, block_ms=50, tenants_refresh_s=30)


@asynccontextmanager
async def private_bus(tmp_path: Path, redis_url: str) -> AsyncIterator[Bus]:
    """The default gate: every agent reaches agent/<its own name> and nothing else."""
    cfg = MembusConfig(redis=RedisConfig(url=redis_url), worker=FAST)
    async with membus.open(tmp_path, cfg) as bus:
        yield bus


@pytest.mark.slow
@pytest.mark.anyio
async def test_look_alike_ids_cannot_reach_a_private_scope_at_the_door(
    tmp_path: Path, redis_url: str
) -> None:
    async with private_bus(tmp_path, redis_url) as bus:
        for victim_id in (VICTIM, LONG):
            victim = bus.agent(victim_id, "Acme Corp")
            r = await victim.publish("the safe code is 4711", wait=True)
            assert r.scope == f"agent/{victim.name}" and victim.id == victim_id
            assert r.tenant == "x--_41_cme_20__43_orp"
            [hit] = await victim.recall("safe code")
            assert hit.memory.agents == [victim.name]
            for attacker_id in ATTACKERS:
                attacker = bus.agent(attacker_id, "Acme Corp")
                assert attacker.name != victim.name
                assert await attacker.recall("safe code") == []
                for action in (
                    attacker.recall("safe code", scopes=[r.scope]),
                    attacker.publish("overwrite", r.scope),
                    attacker.forget(scope=r.scope),
                ):
                    with pytest.raises(PermissionDenied):
                        await action
            # the same id in another tenant spelling is another tenant
            assert await bus.agent(victim_id, "acme corp").recall("safe code") == []


@pytest.mark.slow
@pytest.mark.anyio
async def test_policy_lines_name_encoded_ids_and_match_no_look_alike(
    tmp_path: Path, redis_url: str
) -> None:
    """A policy written for alice@example.com's name grants exactly that id."""
    name = encode_id("alice@example.com")
    gate = CasbinGate(MemorySource(f"p, {name}, acme, team/*, publish|recall, allow\n"))
    cfg = MembusConfig(redis=RedisConfig(url=redis_url), worker=FAST, writers=0)
    async with membus.open(tmp_path, cfg, gate=gate) as bus:
        await bus.agent("alice@example.com", "acme").publish("shared", "team/x")
        for other in ("Alice@example.com", "alice@example.co", "alice_40_example_2e_com", name):
            with pytest.raises(PermissionDenied):
                await bus.agent(other, "acme").publish("shared", "team/x")


KEYS = {
    "victim-key-0123456789": ("acme", VICTIM),
    **{f"attacker-{i}-0123456789": ("acme", a) for i, a in enumerate(ATTACKERS)},
}


def test_keys_files_take_ids_and_act_as_their_encoding() -> None:
    entry = KeyEntry(sha256="0" * 64, agent="alice@example.com", tenant="User-123")
    who = entry.principal().identity
    assert (who.agent, who.tenant) == ("x--alice_40_example_2e_com", "x--_55_ser-123")
    with pytest.raises(ValueError, match="whitespace"):
        KeyEntry(sha256="0" * 64, agent="alice ", tenant="acme")


@pytest.mark.slow
@pytest.mark.anyio
async def test_look_alike_keys_cannot_reach_a_private_scope_over_http(
    tmp_path: Path, redis_url: str
) -> None:
    async with private_bus(tmp_path, redis_url) as bus:
        transport = httpx.ASGITransport(app=create_app(bus, ApiKeys.from_keys(KEYS)))
        async with Client("http://membus", "victim-key-0123456789", transport=transport) as v:
            r = await v.publish("the safe code is 4711", wait=True)
            assert r.scope == f"agent/{encode_id(VICTIM)}"
            assert (await v.whoami()).agent == encode_id(VICTIM)
        for i in range(len(ATTACKERS)):
            key = f"attacker-{i}-0123456789"
            async with Client("http://membus", key, transport=transport) as a:
                assert await a.recall("safe code") == []
                with pytest.raises(PermissionDenied):
                    await a.recall("safe code", scopes=[r.scope])
                with pytest.raises(PermissionDenied):
                    await a.publish("overwrite", r.scope)

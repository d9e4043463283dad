"""Event signing, key rotation/revocation and replay detection against a real redis-server.

Entries go through a real stream (XADD then XRANGE, decoded as writers decode them), so these
tests also protect "verify what is stored": no re-serialisation drift between sign and verify.
"""

from __future__ import annotations

import os
import secrets
import stat
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from ulid import ULID

from membus.access import merkle, signing
from membus.access.signing import (
    KeyRecord,
    KeyRegistry,
    LegacyKeyRecord,
    SignatureInvalid,
    SigningKey,
    authority_public_key,
    keys_key,
    load_master,
    sign,
    signed_entries,
    signed_fields,
    verify,
)
from membus.core.envelope import Event
from membus.core.keys import TenantKeys
from membus.core.redis import Redis, redis_client
from membus.errors import InvalidInput
from membus.stream.replay import ReplayGuard

pytestmark = pytest.mark.anyio
TENANT = "acme"


class Clock:
    def __init__(self) -> None:
        self.t = time.time()

    def __call__(self) -> float:
        return self.t


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = redis_client(redis_url)
    yield client
    await client.aclose()


@pytest.fixture
async def other_redis(redis_url: str) -> AsyncIterator[Redis]:
    """A second connection: stands in for another process sharing the Redis."""
    client = redis_client(redis_url)
    yield client
    await client.aclose()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def master() -> bytes:
    return secrets.token_bytes(32)


@pytest.fixture
def registry(redis: Redis, clock: Clock, master: bytes) -> KeyRegistry:
    """A door: signs with keys derived from ``master``, pins that master's authority."""
    authority = bytes.fromhex(authority_public_key(master))
    return KeyRegistry(redis, master=master, authority=authority, clock=clock)


def event(agent: str = "alice", content: str = "the build is green ✓ — café", **kw: Any) -> Event:
    return Event.build(tenant=TENANT, scope="team/a", agent=agent, content=content, **kw)


async def roundtrip(redis: Redis, fields: dict[Any, Any]) -> dict[str, str]:
    """XADD and read back, the way a writer sees the entry."""
    stream = TenantKeys(TENANT).events
    entry_id = await redis.xadd(stream, fields)
    entries: list[tuple[str, dict[str, str]]] = await redis.xrange(  # type: ignore[assignment]
        stream, min=entry_id, max=entry_id
    )
    [(_, stored)] = entries
    return stored


async def reason_of(fields: dict[str, str], registry: KeyRegistry) -> str:
    with pytest.raises(SignatureInvalid) as info:
        await verify(fields, Event.from_json(fields["e"]), registry)
    assert info.value.code == "signature_invalid"
    return info.value.reason


# -- sign / verify -----------------------------------------------------------------------------


async def test_signed_event_verifies_from_the_stream(redis: Redis, registry: KeyRegistry) -> None:
    e = event(metadata={"n": 1.5, "tags": ["ü", "x"]})
    key = await registry.current(TENANT, "alice")
    stored = await roundtrip(redis, signed_fields(e, key))
    assert stored["kid"] == key.kid
    await verify(stored, Event.from_json(stored["e"]), registry)
    # sign() gives the same fields for the bytes the bus XADDs itself
    assert sign(e, key) == {"kid": stored["kid"], "sig": stored["sig"]}


async def test_each_failure_names_its_reason(redis: Redis, registry: KeyRegistry) -> None:
    """Tampering, foreign keys, unknown/revoked keys and missing signatures are told apart."""
    alice = await registry.current(TENANT, "alice")
    await registry.current(TENANT, "bob")
    good = await roundtrip(redis, signed_fields(event(), alice))

    def tampered(old: str, new: str) -> dict[str, str]:
        assert old in good["e"]
        return {**good, "e": good["e"].replace(old, new)}

    bob_event = event(agent="bob").to_json()
    alice_signs_for_bob = {"e": bob_event, "kid": alice.kid, "sig": alice.sign_bytes(bob_event)}
    forged_sig = {**good, "sig": Ed25519PrivateKey.generate().sign(good["e"].encode()).hex()}
    cases = {
        "content": tampered("green", "red"),
        "scope": tampered('"team/a"', '"team/b"'),
        "forged_sig": forged_sig,
        "foreign_key": await roundtrip(redis, alice_signs_for_bob),
        "unknown_kid": {**good, "kid": "00" * 8},
        "garbage_kid": {**good, "kid": "../../etc"},
        "unsigned": {"e": good["e"]},
        "empty_sig": {**good, "sig": ""},
        "non_ascii_sig": {**good, "sig": "é" * 64},
        "hmac_sized_sig": {**good, "sig": "ab" * 32},
    }
    reasons = {name: await reason_of(fields, registry) for name, fields in cases.items()}
    await registry.revoke(TENANT, "alice", alice.kid)
    reasons["revoked"] = await reason_of(good, registry)
    assert reasons == {
        "content": "bad_signature",
        "scope": "bad_signature",
        "forged_sig": "bad_signature",
        "foreign_key": "agent_mismatch",
        "unknown_kid": "unknown_key",
        "garbage_kid": "unknown_key",
        "unsigned": "unsigned",
        "empty_sig": "unsigned",
        "non_ascii_sig": "bad_signature",
        "hmac_sized_sig": "bad_signature",
        "revoked": "key_revoked",
    }


async def batch_from_the_stream(redis: Redis, key: SigningKey, n: int) -> list[dict[str, str]]:
    return [await roundtrip(redis, f) for f in signed_entries([event() for _ in range(n)], key)]


async def test_a_batch_verifies_entry_by_entry_with_one_signature_check(
    redis: Redis, registry: KeyRegistry, master: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Events published together share one signature per ``BATCH_MAX``; each entry verifies
    alone (a writer may see any part of a batch, in any order, after a redrive), and a writer
    checks each batch's signature once."""
    alice = await registry.current(TENANT, "alice")
    stored = await batch_from_the_stream(redis, alice, merkle.BATCH_MAX + 1)
    assert all("mp" in f for f in stored[:-1]) and "mp" not in stored[-1]  # the lone last one
    assert len({f["sig"] for f in stored}) == 2
    checks = []
    real = signing.Ed25519PublicKey

    class Counting:
        @staticmethod
        def from_public_bytes(public: bytes) -> Any:
            checks.append(public)
            return real.from_public_bytes(public)

    monkeypatch.setattr(signing, "Ed25519PublicKey", Counting)
    writer = KeyRegistry(redis, authority=bytes.fromhex(authority_public_key(master)))
    for fields in reversed(stored):
        await verify(fields, Event.from_json(fields["e"]), writer)
    # the batch of 16 once, the lone event once (the key record's certificate aside)
    assert checks.count(alice.public) == 2
    for fields in stored[3:5]:  # a writer that sees two entries of the batch, nothing else
        await verify(fields, Event.from_json(fields["e"]), KeyRegistry(redis))


async def test_a_batch_entry_tampered_with_is_refused_even_once_its_batch_verified(
    redis: Redis, registry: KeyRegistry
) -> None:
    """An attacker with Redis write access holds a valid batch: the remembered signature must
    not vouch for a changed event, another entry's proof, a proof dropped or junk, another
    batch's proof, or a key revoked since."""
    alice = await registry.current(TENANT, "alice")
    first = await batch_from_the_stream(redis, alice, 4)
    other = await batch_from_the_stream(redis, alice, 4)
    for fields in first + other:  # every signature now verified and remembered here
        await verify(fields, Event.from_json(fields["e"]), registry)
    good = first[1]
    cases = {
        "content": {**good, "e": good["e"].replace("green", "red")},
        "another entry's proof": {**good, "mp": first[2]["mp"]},
        "another batch's proof": {**good, "mp": other[1]["mp"]},
        "another batch's signature": {**good, "sig": other[1]["sig"]},
        "proof dropped": {k: v for k, v in good.items() if k != "mp"},
        "junk proof": {**good, "mp": "1.4.x.y"},
        "empty proof": {**good, "mp": ""},
    }
    reasons = {name: await reason_of(fields, registry) for name, fields in cases.items()}
    assert set(reasons.values()) == {"bad_signature"}, reasons
    await registry.revoke(TENANT, "alice", alice.kid)
    assert await reason_of(good, registry) == "key_revoked"


async def test_a_batch_holds_one_agents_events_only(registry: KeyRegistry) -> None:
    alice = await registry.current(TENANT, "alice")
    with pytest.raises(InvalidInput, match="cannot sign"):
        signed_entries([event(), event(agent="bob")], alice)


async def test_signing_with_another_agents_key_is_refused(registry: KeyRegistry) -> None:
    bob = await registry.current(TENANT, "bob")
    with pytest.raises(InvalidInput):
        sign(event(agent="alice"), bob)


async def test_key_material_stays_out_of_reprs_and_errors(
    redis: Redis, registry: KeyRegistry
) -> None:
    key = await registry.current(TENANT, "alice")
    record = await registry.record(TENANT, key.kid)
    assert record is not None and record.public == key.public
    secret_hex = key.private.private_bytes_raw().hex()
    err = SignatureInvalid("bad_signature", TENANT, "alice", key.kid)
    for text in (repr(key), str(key), repr(record), str(err), str(err.to_dict())):
        assert secret_hex not in text


async def test_redis_holds_public_keys_only(
    redis: Redis, registry: KeyRegistry, master: bytes
) -> None:
    """Whoever may HGETALL the registry learns nothing to sign with: every stored byte is a
    public key, a certificate or lifecycle data; the private key and the master appear nowhere
    in Redis, and a signature made with the stored public bytes as a key does not verify."""
    key = await registry.current(TENANT, "alice")
    await registry.rotate(TENANT, "alice")
    dump = repr(await redis.hgetall(keys_key(TENANT)))
    assert key.private.private_bytes_raw().hex() not in dump and master.hex() not in dump
    record = await registry.record(TENANT, key.kid)
    assert record is not None and len(record.public) == 32
    # the best a reader can do: treat the public bytes as a private key
    thief = SigningKey(
        TENANT, "alice", key.kid, Ed25519PrivateKey.from_private_bytes(record.public)
    )
    stored = await roundtrip(redis, signed_fields(event(), thief))
    assert await reason_of(stored, registry) == "bad_signature"


async def test_a_key_registered_by_a_redis_credential_is_not_certified(
    redis: Redis, registry: KeyRegistry, clock: Clock
) -> None:
    """The attack of someone holding a Redis credential that may HSET the registry: register a
    key pair of their own for alice (a new kid, or over her current kid) and sign with it. A
    registry pinned to the door's authority refuses both: the records carry no certificate of
    that authority (a certificate copied from another record does not cover the new key)."""
    real = await registry.current(TENANT, "alice")
    mine = Ed25519PrivateKey.generate()
    public = mine.public_key().public_bytes_raw()
    real_rec = await registry.record(TENANT, real.kid)
    assert real_rec is not None
    for kid in ("ab" * 8, real.kid):
        # copy the real certificate: it signs alice's real key, not this one
        forged = KeyRecord(kid, "alice", public, clock(), cert=real_rec.cert)
        await redis.hset(keys_key(TENANT), f"k:{kid}", forged.to_json())
        registry._forget(TENANT)  # as another process would see it once its cache expires
        stored = await roundtrip(
            redis, signed_fields(event(), SigningKey(TENANT, "alice", kid, mine))
        )
        assert await reason_of(stored, registry) == "uncertified_key"
        assert await registry.lookup(TENANT, "alice", kid) is None
    await redis.hset(keys_key(TENANT), "k:" + "cd" * 8, "not json")
    registry._forget(TENANT)
    junk = {"e": event().to_json().decode(), "kid": "cd" * 8, "sig": "00" * 64}
    assert await reason_of(junk, registry) == "uncertified_key"


async def test_junk_written_into_the_registry_does_not_stop_the_door(
    redis: Redis, registry: KeyRegistry
) -> None:
    """Whoever may HSET the registry writes junk over alice's current record and beside it: the
    door replaces her key and rotates as usual instead of failing every publish."""
    old = await registry.current(TENANT, "alice")
    await redis.hset(keys_key(TENANT), mapping={f"k:{old.kid}": "{junk", "k:" + "ab" * 8: "[]"})
    registry._forget(TENANT)
    new = await registry.current(TENANT, "alice")
    assert new.kid != old.kid
    stored = await roundtrip(redis, signed_fields(event(), new))
    await verify(stored, Event.from_json(stored["e"]), registry)
    assert (await registry.rotate(TENANT, "alice")).kid != new.kid


async def test_hmac_era_records_are_refused_with_a_clear_error(
    redis: Redis, registry: KeyRegistry
) -> None:
    """A registry written by membus before Ed25519 (a shared secret in field ``s``) is not used:
    events naming such a key are parked as ``legacy_key``, and the door refuses to sign with it
    (a Conflict saying what to do) instead of quietly signing with something Redis holds."""
    kid = "ef" * 8
    legacy = orjson.dumps({"a": "alice", "s": "11" * 32, "c": time.time(), "x": None, "r": None})
    await redis.hset(keys_key(TENANT), mapping={f"k:{kid}": legacy, "c:alice": kid})
    stored = await roundtrip(redis, {"e": event().to_json(), "kid": kid, "sig": "22" * 32})
    assert await reason_of(stored, registry) == "legacy_key"
    with pytest.raises(LegacyKeyRecord, match="HMAC secret stored in Redis"):
        await registry.current(TENANT, "alice")


async def test_master_file_is_created_owner_only_and_refused_when_readable(
    tmp_path: Path,
) -> None:
    """The master never goes to Redis: it lives in a file only its owner may read."""
    path = tmp_path / "data" / "signing.key"
    master = load_master(path)
    assert len(master) == 32 and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_master(path) == master  # stable across restarts: same keys, same authority
    os.chmod(path, 0o644)
    with pytest.raises(InvalidInput, match=r"signing\.master_file"):
        load_master(path)
    os.chmod(path, 0o600)
    path.write_text("too short")
    with pytest.raises(InvalidInput, match="64 hex digits"):
        load_master(path)


async def test_a_door_with_another_master_rotates_instead_of_signing_badly(
    redis: Redis, registry: KeyRegistry
) -> None:
    """A door restarted with a fresh master cannot derive the stored current key: it makes a new
    one (the old one keeps verifying through the grace), so its events still verify."""
    old = await registry.current(TENANT, "alice")
    other = KeyRegistry(redis)  # a random master of its own, pins nothing
    new = await other.current(TENANT, "alice")
    assert new.kid != old.kid
    stored = await roundtrip(redis, signed_fields(event(), new))
    await verify(stored, Event.from_json(stored["e"]), other)
    registry._forget(TENANT)
    before = await roundtrip(redis, signed_fields(event(content="before"), old))
    await verify(before, Event.from_json(before["e"]), registry)  # within the grace


# -- lifecycle -----------------------------------------------------------------------------------


async def test_current_key_is_stable_and_per_agent(registry: KeyRegistry) -> None:
    a1, a2 = await registry.current(TENANT, "alice"), await registry.current(TENANT, "alice")
    b = await registry.current(TENANT, "bob")
    assert a1.kid == a2.kid and a1.public == a2.public and a1.kid != b.kid
    assert await registry.lookup(TENANT, "alice", a1.kid) == a1.public
    assert await registry.lookup(TENANT, "bob", a1.kid) is None  # kid belongs to alice


async def test_processes_racing_to_create_a_key_agree_on_one(
    redis: Redis, other_redis: Redis
) -> None:
    master = secrets.token_bytes(32)  # doors sharing a Redis share the master
    regs = [KeyRegistry(r, master=master) for r in (redis, other_redis, redis)]
    keys: list[SigningKey] = []

    async def take(reg: KeyRegistry) -> None:
        keys.append(await reg.current(TENANT, "carol"))

    async with anyio.create_task_group() as tg:
        for reg in regs:
            tg.start_soon(take, reg)
    assert len(keys) == 3 and len({(k.kid, k.public) for k in keys}) == 1
    stored: dict[str, str] = await redis.hgetall(keys_key(TENANT))  # type: ignore[assignment]
    assert len([f for f in stored if f.startswith("k:")]) == 1


async def test_rotation_keeps_old_events_valid_through_grace(
    redis: Redis, registry: KeyRegistry, clock: Clock
) -> None:
    """Rotation without downtime: in-flight events verify until the grace ends, then fail."""
    old = await registry.current(TENANT, "alice")
    in_flight = await roundtrip(redis, signed_fields(event(), old))
    new = await registry.rotate(TENANT, "alice", grace_s=60)
    assert new.kid != old.kid
    assert (await registry.current(TENANT, "alice")).kid == new.kid
    after = await roundtrip(redis, signed_fields(event(content="after"), new))
    assert after["kid"] == new.kid

    clock.t += 59
    await verify(in_flight, Event.from_json(in_flight["e"]), registry)
    await verify(after, Event.from_json(after["e"]), registry)
    clock.t += 2
    assert await reason_of(in_flight, registry) == "key_expired"
    assert await registry.lookup(TENANT, "alice", old.kid) is None
    await verify(after, Event.from_json(after["e"]), registry)


async def test_rotation_prunes_tombstones_past_retention(
    redis: Redis, registry: KeyRegistry, clock: Clock
) -> None:
    first = await registry.current(TENANT, "alice")
    await registry.rotate(TENANT, "alice", grace_s=0)
    clock.t += registry.retain_s + 1
    await registry.rotate(TENANT, "alice", grace_s=0)
    assert await redis.hget(keys_key(TENANT), f"k:{first.kid}") is None


async def test_revoking_the_current_key_makes_a_new_one(registry: KeyRegistry) -> None:
    old = await registry.current(TENANT, "alice")
    await registry.revoke(TENANT, "alice", old.kid)
    new = await registry.current(TENANT, "alice")
    assert new.kid != old.kid and await registry.lookup(TENANT, "alice", old.kid) is None
    with pytest.raises(InvalidInput):
        await registry.revoke(TENANT, "bob", new.kid)  # not bob's key
    with pytest.raises(InvalidInput):
        await registry.revoke(TENANT, "alice", "nope")


async def eventually(check: Callable[[], Awaitable[bool]], within_s: float) -> float:
    start = time.monotonic()
    while not await check():
        assert time.monotonic() - start < within_s, f"not visible within {within_s}s"
        await anyio.sleep(0.05)
    return time.monotonic() - start


@pytest.mark.slow
async def test_another_process_sees_revocation_and_rotation_within_a_second(
    redis: Redis, other_redis: Redis
) -> None:
    master = secrets.token_bytes(32)
    here, there = KeyRegistry(redis, master=master), KeyRegistry(other_redis, master=master)
    key = await here.current(TENANT, "alice")
    stored = await roundtrip(redis, signed_fields(event(), key))
    await verify(stored, Event.from_json(stored["e"]), there)  # warms there's cache
    assert (await there.current(TENANT, "alice")).kid == key.kid

    await here.revoke(TENANT, "alice", key.kid)

    async def revoked() -> bool:
        try:
            await verify(stored, Event.from_json(stored["e"]), there)
        except SignatureInvalid as exc:
            return exc.reason == "key_revoked"
        return False

    assert await eventually(revoked, within_s=1.5) <= 1.5
    new = await here.rotate(TENANT, "alice")

    async def rotated() -> bool:
        return (await there.current(TENANT, "alice")).kid == new.kid

    await eventually(rotated, within_s=1.5)


# -- replay ------------------------------------------------------------------------------------


def ulid_at(seconds: float) -> str:
    return str(ULID.from_timestamp(seconds))


async def test_replay_guard_verdicts(redis: Redis) -> None:
    guard = ReplayGuard(redis, window_s=3600)
    eid = ulid_at(time.time())
    assert await guard.check(TENANT, eid, "1-0") == "new"
    assert await guard.check(TENANT, eid, "1-0") == "redelivery"  # reclaimed: process again
    assert await guard.check(TENANT, eid, "9-0") == "replay"  # same event, new entry
    assert await guard.check(TENANT, ulid_at(time.time() - 3700), "2-0") == "stale"
    assert await guard.check(TENANT, ulid_at(time.time() + 2 * 3600), "3-0") == "stale"
    key, _ = guard.slot(TENANT, eid)
    assert await redis.ttl(key) > 3600  # remembered at least until the event turns stale
    await guard.forget(TENANT, eid)  # an operator re-publishing from the DLQ
    assert await guard.check(TENANT, eid, "9-0") == "new"
    # the envelope admits ids whose timestamp overflows; they are outside every window
    assert await guard.check(TENANT, "8" + "Z" * 25, "1-0") == "stale"
    with pytest.raises(InvalidInput):
        guard.slot(TENANT, "not-a-ulid")


async def test_batch_check_is_ordered_and_matches_single_checks(redis: Redis) -> None:
    guard = ReplayGuard(redis, window_s=3600)
    seen, fresh, old = ulid_at(time.time() - 1800), ulid_at(time.time()), ulid_at(0)
    assert await guard.check(TENANT, seen, "1-0") == "new"
    verdicts = await guard.check_many(
        TENANT, [(seen, "1-0"), (fresh, "2-0"), (old, "3-0"), (fresh, "4-0"), (seen, "5-0")]
    )
    assert verdicts == ["redelivery", "new", "stale", "replay", "replay"]
    assert await guard.check_many(TENANT, [(old, "6-0")]) == ["stale"]
    assert await guard.check_many(TENANT, []) == []


async def test_racing_writers_never_see_their_own_entry_as_a_replay(
    redis: Redis, other_redis: Redis
) -> None:
    guards = [ReplayGuard(redis), ReplayGuard(other_redis)]

    async def race(eid: str, entry: str) -> list[str]:
        verdicts: list[str] = []

        async def one(g: ReplayGuard) -> None:
            verdicts.append(await g.check(TENANT, eid, entry))

        async with anyio.create_task_group() as tg:
            for g in guards * 2:
                tg.start_soon(one, g)
        return sorted(verdicts)

    for n in range(20):
        verdicts = await race(ulid_at(time.time()), f"{n}-0")
        assert verdicts == ["new", "redelivery", "redelivery", "redelivery"]


async def test_a_captured_signed_entry_reinjected_is_caught_as_replay(
    redis: Redis, registry: KeyRegistry
) -> None:
    """The signature stays valid on a copy; only the replay guard tells the copy apart."""
    guard = ReplayGuard(redis)
    fields = signed_fields(event(), await registry.current(TENANT, "alice"))
    stream = TenantKeys(TENANT).events
    first, copy = await redis.xadd(stream, fields), await redis.xadd(stream, fields)
    entries: list[tuple[str, dict[str, str]]] = await redis.xrange(stream)  # type: ignore[assignment]
    verdicts = []
    for entry_id, stored in entries:
        e = Event.from_json(stored["e"])
        await verify(stored, e, registry)
        verdicts.append((entry_id, await guard.check(TENANT, e.id, entry_id)))
    assert verdicts == [(first, "new"), (copy, "replay")]

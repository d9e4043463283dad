"""The permission layer end to end, through the real bus (real redis-server, Qdrant Edge, writer
tasks, casbin gate on policies/example.csv):

- forged and replayed events injected straight into Redis are parked, audited, never recalled;
- a revocation made in one process is obeyed by a recall in another within a second
  (``PROPAGATION_BOUND_S``), also while that process's writers are flooded;
- ``forget`` by subject erases every trace (committed, unconsumed, pending, dead-lettered) from
  every Redis key and store point, but only within the scopes the caller may forget in;
- redaction masks PII everywhere it travels outside the author's private scope;
- a recall of a forbidden scope and a publish into one are refused, and the refused publish
  leaves Redis untouched;
- (expected to fail, a known gap) a retraction by key withdraws only what its author may read.

tests/test_permission_props.py holds the property (zero leaks, full reachability) over random
policies.
"""

from __future__ import annotations

import queue
import re
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

import membus
from membus.access.audit import AuditLog, audit_key
from membus.access.policy import CasbinGate
from membus.access.redact import PiiRedactor
from membus.access.signing import KeyRecord, SigningKey, keys_key, signed_fields
from membus.access.watch import PROPAGATION_BOUND_S, MemorySource, PolicyWatcher, RedisSource
from membus.bus.api import Agent, Bus
from membus.bus.draft import Draft
from membus.core.config import MembusConfig, PolicyConfig, RankingConfig, RedisConfig, WorkerConfig
from membus.core.envelope import Event
from membus.core.keys import TenantKeys, tenants_key
from membus.core.redis import Redis, redis_client
from membus.errors import PermissionDenied
from membus.store.port import Memory, point_id
from membus.stream.dlq import list_dead
from membus.stream.feed import Change
from membus.writer.relevel import LEVELS_LAYOUT, levels_key
from tests.redis_proc import RedisProcess

# every hit, however weak: relevance and min_score are tests/test_relevance.py's subject
EVERY_HIT = RankingConfig(min_score=0)

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "policies" / "example.csv"
TENANT = "acme"
FAST = WorkerConfig(
    min_idle_ms=300, reclaim_every_s=0.3, max_deliveries=2, block_ms=20, tenants_refresh_s=0.05
)


def config(url: str, *, writers: int = 1, redact: list[str] | None = None) -> MembusConfig:
    return MembusConfig(
        redis=RedisConfig(url=url),
        worker=FAST,
        writers=writers,
        policy=PolicyConfig(file=EXAMPLE, redact_scopes=redact or []),
        ranking=EVERY_HIT,
    )


# -- looking at everything ------------------------------------------------------------------------


async def entries(
    redis: Redis, key: str, lo: str = "-", hi: str = "+"
) -> list[tuple[str, dict[str, str]]]:
    raw: Any = await redis.xrange(key, lo, hi)
    return [(str(i), dict(f)) for i, f in raw]


async def redis_items(redis: Redis) -> AsyncIterator[tuple[str, str, str | None, str]]:
    """Every key of the database, as (key, type, stream entry id or None, value as text):
    one item per stream entry (XRANGE), hash (HGETALL), set (SMEMBERS), sorted set (ZRANGE),
    list (LRANGE) or string (GET)."""
    async for raw_key in redis.scan_iter(count=1000):
        key = str(raw_key)
        kind = str(await redis.type(key))
        if kind == "stream":
            for entry_id, fields in await entries(redis, key):
                yield key, kind, str(entry_id), repr(fields)
            yield key, kind, None, repr(await redis.xinfo_groups(key))
            continue
        value: Any
        if kind == "hash":
            value = await redis.hgetall(key)
        elif kind == "set":
            value = sorted(await redis.smembers(key))
        elif kind == "zset":
            value = await redis.zrange(key, 0, -1, withscores=True)
        elif kind == "list":
            value = await redis.lrange(key, 0, -1)
        else:
            value = await redis.get(key)
        yield key, kind, None, repr(value)


async def redis_traces(redis: Redis, needle: str) -> list[str]:
    return [
        f"{key} ({kind}) {entry or ''}"
        async for key, kind, entry, text in redis_items(redis)
        if needle in key or needle in text
    ]


async def all_memories(bus: Bus) -> list[Memory]:
    """Every store point of every tenant that ever published (store.scroll per tenant)."""
    out: list[Memory] = []
    for tenant in sorted(await bus.redis.smembers(tenants_key())):
        offset: str | None = None
        while True:
            page, offset = await bus.store.scroll(str(tenant), 256, offset)
            out.extend(page)
            if offset is None:
                break
    assert len(out) == await bus.store.count(), "a tenant's points were not scrolled"
    return out


async def store_traces(bus: Bus, needle: str) -> list[str]:
    return [m.id for m in await all_memories(bus) if needle in m.model_dump_json()]


async def snapshot(redis: Redis, *, skip: set[str]) -> dict[tuple[str, str | None], str]:
    return {
        (key, entry): text async for key, _, entry, text in redis_items(redis) if key not in skip
    }


# -- 2. the stream is not trusted -----------------------------------------------------------------


def forge(event: Event, key: SigningKey) -> dict[str, Any]:
    """What someone holding ``key`` can XADD claiming any agent (signing.sign_raw refuses to)."""
    raw = event.to_json()
    return {"e": raw, "kid": key.kid, "sig": key.sign_bytes(raw)}


async def test_forged_and_replayed_events_are_parked_audited_and_never_recalled(
    redis_url: str, tmp_path: Path
) -> None:
    """Entries XADDed by someone with Redis access but no agent key: unsigned, signed with a
    wrong key, tampered after signing, signed with another agent's or an unknown key or with a
    key pair of the attacker's registered straight into the key registry (no certificate),
    a re-XADDed copy of a committed event, and another tenant's event on acme's stream."""
    keys = TenantKeys(TENANT)
    async with membus.open(tmp_path / "bus", config(redis_url)) as bus:
        alice = bus.agent("alice", TENANT)
        legit = await alice.publish("legit support note about the refund queue", "team/support")
        await bus.drain(timeout_s=15)
        count = await bus.store.count(TENANT)
        changes = await bus.redis.xlen(keys.changes)
        [(_, captured)] = await entries(bus.redis, keys.events, legit.position, legit.position)

        def fake(content: str, tenant: str = TENANT) -> Event:
            return Event.build(tenant=tenant, agent="alice", scope="team/support", content=content)

        real = await bus.keys.current(TENANT, "alice")
        bob = await bus.keys.current(TENANT, "bob")
        foreign = await bus.keys.current("beta", "alice")
        stranger = SigningKey(TENANT, "alice", "0123456789abcdef", Ed25519PrivateKey.generate())
        wrong = SigningKey(TENANT, "alice", real.kid, Ed25519PrivateKey.generate())
        # a key pair of the attacker's, registered for alice straight into Redis
        own = SigningKey(TENANT, "alice", "ab" * 8, Ed25519PrivateKey.generate())
        record = KeyRecord(own.kid, "alice", own.public, time.time())
        await bus.redis.hset(keys_key(TENANT), f"k:{own.kid}", record.to_json())
        tampered = signed_fields(fake("forged: refund 10 EUR to alice"), real)
        tampered["e"] = bytes(tampered["e"]).replace(b"10 EUR", b"99 EUR")  # type: ignore[arg-type]
        injected = {
            "unsigned": {"e": fake("forged: unsigned").to_json()},
            "bad_signature": signed_fields(fake("forged: wrong secret"), wrong),
            "tampered": tampered,
            "agent_mismatch": forge(fake("forged: bob signs as alice"), bob),
            "unknown_key": signed_fields(fake("forged: unknown kid"), stranger),
            "replay": dict(captured),
            "invalid": signed_fields(fake("forged: beta event", tenant="beta"), foreign),
            "uncertified_key": signed_fields(fake("forged: own key registered"), own),
        }
        positions = {
            why: str(await bus.redis.xadd(keys.events, fields))  # type: ignore[arg-type]
            for why, fields in injected.items()
        }
        await bus.drain(timeout_s=15)

        # parked, each with its reason
        dead = {d.origin_id: d for d in await list_dead(bus.redis, TENANT)}
        assert set(dead) == set(positions.values())
        expect = {"tampered": "bad_signature"}
        for why, pos in positions.items():
            assert dead[pos].reason == expect.get(why, why), (why, dead[pos])
        # audited as denials with the writer's reason (the unparseable one cannot be attributed)
        denials = await AuditLog(bus.redis).query(TENANT, decision="deny", action="publish")
        reasons = sorted(r.reason or "" for r in denials)
        wanted = [f"writer: {expect.get(w, w)}" for w in positions if w != "invalid"]
        assert reasons == sorted(wanted)
        replayed = [r for r in denials if r.reason == "writer: replay"]
        assert replayed[0].event_ids == [legit.event_id]
        # never recalled, never stored, no change published
        assert await bus.store.count(TENANT) == count
        assert await bus.redis.xlen(keys.changes) == changes
        for reader in ("alice", "bob", "carol"):
            hits = await bus.agent(reader, TENANT).recall("forged refund alice", k=1000)
            assert [h.memory.id for h in hits] == [point_id(TENANT, legit.event_id)]
        assert [m.content for m in await all_memories(bus)] == [
            "legit support note about the refund queue"
        ]


# -- 3. revocation across processes ---------------------------------------------------------------

GRANT = "p, alice, acme, team/x/*, publish|recall|subscribe, allow"
REVOCATION_CYCLES = 5
_REPORT = re.compile(r"(\d+) (\d+\.\d+)")


def _reader(stream: Any, lines: queue.Queue[str]) -> None:
    for raw in stream:
        lines.put(raw.decode(errors="replace").strip())


def _next_count(lines: queue.Queue[str], timeout_s: float) -> tuple[int, float]:
    deadline = time.monotonic() + timeout_s
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"process A reported nothing within {timeout_s}s")
        try:
            line = lines.get(timeout=left)
        except queue.Empty:
            continue
        m = _REPORT.fullmatch(line)  # its structlog lines share stdout: skip them
        if m:
            return int(m[1]), float(m[2])


def stop_process_a(proc: subprocess.Popen[bytes]) -> int:
    """Close process A's stdin (its signal to finish) and wait for its exit code."""
    assert proc.stdin is not None
    proc.stdin.close()
    try:
        return proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise


def start_process_a(
    url: str, path: Path, seed: Path, *, load: bool = False
) -> tuple[subprocess.Popen[bytes], queue.Queue[str]]:
    """tests/policy_proc.py in its own interpreter; its stdout lines arrive on the queue."""
    extra = ["load"] if load else []
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.policy_proc", url, str(path), str(seed), *extra],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=_reader, args=(proc.stdout, lines), daemon=True).start()
    return proc, lines


@pytest.mark.slow
async def test_revocation_in_one_process_is_obeyed_by_a_recall_in_another_within_a_second(
    redis_url: str, tmp_path: Path
) -> None:
    """Process A owns the embedded store and recalls every 50 ms; this process (B) only
    touches the shared policy in Redis: removes A's grant and announces the change."""
    seed = tmp_path / "seed.csv"
    seed.write_text(EXAMPLE.read_text() + GRANT + "\n")
    proc, lines = start_process_a(redis_url, tmp_path / "a", seed)
    redis: Redis = redis_client(redis_url)
    try:
        seen, _ = _next_count(lines, 60)
        assert seen == 1, "process A could not recall its team/x memory before the revocation"
        gate = CasbinGate(RedisSource(redis), watcher=PolicyWatcher(redis))
        revoked_at = time.time()
        await gate.remove_policy(GRANT)
        gone, observed_at = _next_count(lines, 5)
        delay = observed_at - revoked_at
        print(f"revocation obeyed by the other process after {delay * 1000:.0f} ms")
        assert gone == 0
        assert delay < PROPAGATION_BOUND_S
    finally:
        await redis.aclose()
        code = stop_process_a(proc)
    assert code == 0


@pytest.mark.slow
async def test_revocation_under_load_is_obeyed_within_the_documented_bound(
    redis_url: str, tmp_path: Path
) -> None:
    """The bound README and policies/README.md state, measured where it is hardest to keep:
    process A's writers ingest a continuous flood of events while it recalls, so the policy
    reload competes with them for its event loop and its GIL. Over several revoke/re-grant
    cycles, every recall A *starts* later than the bound after B's ``remove_policy`` was
    called no longer sees the revoked scope."""
    seed = tmp_path / "seed.csv"
    seed.write_text(EXAMPLE.read_text() + GRANT + "\n")
    proc, lines = start_process_a(redis_url, tmp_path / "a", seed, load=True)
    redis: Redis = redis_client(redis_url)
    delays: list[float] = []
    try:
        seen, _ = _next_count(lines, 60)
        assert seen == 1, "process A could not recall its team/x memory before the revocation"
        gate = CasbinGate(RedisSource(redis), watcher=PolicyWatcher(redis))
        await anyio.sleep(1.0)  # let the flood build a backlog first
        for _ in range(REVOCATION_CYCLES):
            revoked_at = time.time()
            await gate.remove_policy(GRANT)
            gone, observed_at = _next_count(lines, 10)
            assert gone == 0
            delays.append(observed_at - revoked_at)
            await gate.add_policy(GRANT)
            back, _ = _next_count(lines, 10)
            assert back == 1, "the re-grant was not obeyed"
    finally:
        await redis.aclose()
        code = stop_process_a(proc)
    assert code == 0
    published, committed = _load_report(lines)
    print(
        "revocation under load obeyed after "
        + ", ".join(f"{d * 1000:.0f}" for d in delays)
        + f" ms (bound {PROPAGATION_BOUND_S * 1000:.0f} ms); A published {published} events"
        + f" and committed {committed} memories meanwhile"
    )
    assert committed >= 500, "the writers were not under load"
    assert max(delays) < PROPAGATION_BOUND_S


def _load_report(lines: queue.Queue[str]) -> tuple[int, int]:
    while True:
        line = lines.get(timeout=5)
        if m := re.fullmatch(r"load (\d+) (\d+)", line):
            return int(m[1]), int(m[2])


# -- 4. erasure through the bus -------------------------------------------------------------------

CANARY = "zq-canary-51c0ffee"
SUBJECT = "customer-42"


def canary_draft(i: int, scope: str = "team/support") -> Draft:
    return Draft(
        content=f"{CANARY} asked for a refund, note {i}",
        scope=scope,
        subject=SUBJECT,
        metadata={"note": f"call back {CANARY}", "i": i},
    )


@pytest.mark.slow
async def test_forget_by_subject_leaves_no_trace_within_the_callers_scopes(
    redis_url: str, tmp_path: Path
) -> None:
    """carol (support lead) forgets a customer: committed memories, their events and change
    entries, a dead-lettered replay copy, an undelivered and a pending event all go; dana's
    note about the same customer in ``org`` (outside carol's forget grant) stays; alice (no
    forget right on team/support) is refused and erases nothing."""
    path, keys = tmp_path / "bus", TenantKeys(TENANT)
    async with membus.open(path, config(redis_url)) as bus:
        alice, bob = bus.agent("alice", TENANT), bus.agent("bob", TENANT)
        committed = await alice.publish_many([canary_draft(0), canary_draft(1)])
        await bob.publish_many([canary_draft(2, "team/support/tier1")])
        keeper = await alice.publish("ordinary queue note", "team/support", subject="other")
        outside = await bus.agent("dana", TENANT).publish(
            "org-wide: customer-42 is a key account", "org/accounts", subject=SUBJECT
        )
        await bus.drain(timeout_s=15)
        # a dead-lettered copy: the exact fields of a committed canary event, re-XADDed
        first = committed[0].position
        [(_, fields)] = await entries(bus.redis, keys.events, first, first)
        await bus.redis.xadd(keys.events, dict(fields))  # type: ignore[arg-type]
        await bus.drain(timeout_s=15)
        assert [d.reason for d in await list_dead(bus.redis, TENANT)] == ["replay"]
    async with membus.open(path, config(redis_url, writers=0)) as bus:
        alice, carol = bus.agent("alice", TENANT), bus.agent("carol", TENANT)
        await alice.publish_many([canary_draft(3), canary_draft(4)])  # no writer: unconsumed
        # one of them delivered to a consumer that dies without acknowledging
        await bus.redis.xreadgroup("writers", "ghost", {keys.events: ">"}, count=1)
        assert await redis_traces(bus.redis, CANARY)
        assert await store_traces(bus, CANARY)

        skip = {audit_key(TENANT)}
        before = await snapshot(bus.redis, skip=skip)
        with pytest.raises(PermissionDenied) as denied:
            await bus.forget(alice.identity, subject=SUBJECT, scope="team/support")
        assert (denied.value.agent, denied.value.action) == ("alice", "forget")
        assert denied.value.scope == "team/support"
        # without a scope alice may forget only in agent/alice: nothing of team/support goes
        report = await bus.forget(alice.identity, subject=SUBJECT)
        assert (report.memories, report.events, report.dlq) == (0, 0, 0)
        after = await snapshot(bus.redis, skip=skip)
        # the only change a refused/empty forget may leave: an AOF rewrite, no data
        assert after == before

        report = await bus.forget(carol.identity, subject=SUBJECT)
        assert report.memories == 3
        assert report.dlq == 1
        assert report.events >= 5  # 3 committed + 2 unconsumed stream entries
        assert report.pending >= 1
        assert await redis_traces(bus.redis, CANARY) == []
        assert await store_traces(bus, CANARY) == []
        left = {m.id for m in await all_memories(bus)}
        assert left == {point_id(TENANT, keeper.event_id), point_id(TENANT, outside.event_id)}
        await bus.audit.flush()
        forgets = await AuditLog(bus.redis).query(TENANT, action="forget", newest_first=False)
        assert [(r.agent, r.decision) for r in forgets] == [
            ("alice", "deny"),
            ("alice", "allow"),
            ("carol", "allow"),
        ]
        assert forgets[-1].result_count == 3
        assert forgets[0].scopes == ["team/support"]
    # a writer starting afterwards finds nothing to bring back
    async with membus.open(path, config(redis_url)) as bus:
        await bus.drain(timeout_s=15)
        assert await redis_traces(bus.redis, CANARY) == []
        assert await store_traces(bus, CANARY) == []
        assert await bus.store.count(TENANT) == 2


@pytest.mark.slow
async def test_agent_forget_is_the_documented_door(redis_url: str, tmp_path: Path) -> None:
    async with membus.open(tmp_path / "bus", config(redis_url)) as bus:
        carol = bus.agent("carol", TENANT)
        await carol.publish(f"{CANARY} lead note", "team/support", subject=SUBJECT)
        await bus.drain(timeout_s=15)
        report = await carol.forget(subject=SUBJECT)
        assert report.memories == 1
        assert await redis_traces(bus.redis, CANARY) == []


# -- 5. redaction ---------------------------------------------------------------------------------

EMAIL, CARD, PHONE = "jane.doe@example.com", "4111 1111 1111 1111", "+1 415 555 0132"
PII_TEXT = f"Customer Jane: mail {EMAIL}, card {CARD}, phone {PHONE}."


async def test_pii_is_masked_everywhere_outside_the_authors_private_scope(
    redis_url: str, tmp_path: Path
) -> None:
    assert [f.kind for f in PiiRedactor().findings(PII_TEXT)] == ["email", "card", "phone"]
    async with membus.open(tmp_path / "bus", config(redis_url, redact=["team"])) as bus:
        alice = bus.agent("alice", TENANT)
        extra: dict[str, Any] = {"subject": f"jane {EMAIL}", "metadata": {"contact": PHONE}}
        shared = await alice.publish(PII_TEXT, "team/support", **extra)
        private = await alice.publish(PII_TEXT, "agent/alice/notes", **extra)
        await bus.drain(timeout_s=15)

        [team] = await bus.store.get(TENANT, [point_id(TENANT, shared.event_id)])
        assert team.content == "Customer Jane: mail [email], card [card], phone [phone]."
        assert team.subject == "jane [email]"
        assert team.metadata == {"contact": "[phone]"}
        [mine] = await bus.store.get(TENANT, [point_id(TENANT, private.event_id)])
        assert (mine.content, mine.subject, mine.metadata) == (
            PII_TEXT,
            extra["subject"],
            extra["metadata"],
        )
        # what readers get: carol reads the team copy masked; alice her own copy as written
        [hit] = await bus.agent("carol", TENANT).recall("customer jane", k=10)
        assert hit.memory.id == team.id and EMAIL not in hit.memory.content
        own = await alice.recall("customer jane", k=10, scopes=["agent/alice"])
        assert [h.memory.content for h in own] == [PII_TEXT]

        # raw PII in Redis only where the private event and its memory travel (streams, ledger);
        # the team event (events stream, change feed, anything else) holds masks only
        private_ids = {private.event_id, mine.id}
        for key, kind, entry, text in [x async for x in redis_items(bus.redis)]:
            raw = [p for p in (EMAIL, CARD, PHONE, "4111111111111111") if p in text]
            if not raw:
                continue
            where = f"{key} ({kind}) {entry}: {raw}"
            # the consolidation ledger keeps the private event's text, in its private scope's slot
            in_ledger = kind == "hash" and ":slot:agent/alice/notes:" in key
            assert (kind == "stream" and entry is not None) or in_ledger, where
            assert any(i in text for i in private_ids), where
            assert shared.event_id not in text and team.id not in text, where
        events = await entries(bus.redis, TenantKeys(TENANT).events)
        shared_entry = [f for _, f in events if shared.event_id in f["e"]]
        assert len(shared_entry) == 1
        assert orjson.loads(shared_entry[0]["e"])["content"] == team.content


EVASIVE = (
    "Reach zqevader\uff20evasion-corp\uff0ecom or zqdodger (at) hidden-mail (dot) net; "
    "card 4539\u200b1488\u200b0343\u200b6467, \u7528\u6237@\u4f8b\u5b50\u3002\u5e7f\u544a."
)


@pytest.mark.slow
async def test_evasively_spelled_pii_never_reaches_redis_or_the_store(
    redis_url: str, tmp_path: Path
) -> None:
    """An agent that spells an address with a fullwidth at, spelled-out (at)/(dot), an IDN
    domain, or a card number with zero-width spaces into a redacted scope: the event in the
    stream, the change feed and the memory hold masks, and no Redis key or value holds the
    address parts (while alice's private note, which is not redacted, is found there: the scan
    can see content); neither do the store's files on disk."""
    needles = ("zqevader", "evasion-corp", "zqdodger", "hidden-mail", "\u4f8b\u5b50")
    async with membus.open(tmp_path / "bus", config(redis_url, redact=["team"])) as bus:
        alice = bus.agent("alice", TENANT)
        receipt = await alice.publish(EVASIVE, "team/support")
        await alice.publish("zqcontrol private note", "agent/alice/notes")
        await bus.drain(timeout_s=15)
        [memory] = await bus.store.get(TENANT, [point_id(TENANT, receipt.event_id)])
        assert memory.content == "Reach [email] or [email]; card [card], [email]."
        assert await redis_traces(bus.redis, "zqcontrol")  # the scan sees unredacted content
        for needle in needles:
            assert await redis_traces(bus.redis, needle) == [], needle
            assert await store_traces(bus, needle) == [], needle
    files = [f for f in (tmp_path / "bus").rglob("*") if f.is_file()]
    for needle in needles:
        assert not [f for f in files if needle.encode() in f.read_bytes()], needle


# -- 6. refusals ----------------------------------------------------------------------------------


async def test_recall_of_a_forbidden_scope_is_refused_by_name(
    redis_url: str, tmp_path: Path
) -> None:
    async with membus.open(tmp_path / "bus", config(redis_url)) as bus:
        carol = bus.agent("carol", TENANT)
        await carol.publish("leads only: reorg plan", "team/support-leads")
        await carol.publish("billing: refund limits", "team/support/billing")
        await bus.drain(timeout_s=15)
        for agent, scope in [
            ("bob", "team/support/billing"),  # the explicit deny inside his allowed subtree
            ("alice", "team/support-leads"),  # a sibling that only shares a name prefix
            ("alice", "agent/bob/handover"),  # someone else's private scope
        ]:
            with pytest.raises(PermissionDenied) as denied:
                await bus.agent(agent, TENANT).recall("plan", scopes=[scope])
            exc = denied.value
            assert (exc.agent, exc.action, exc.scope, exc.tenant) == (
                agent,
                "recall",
                scope,
                TENANT,
            )
            assert agent in str(exc) and "recall" in str(exc) and scope in str(exc)
        # a mix with a readable scope is narrowed, not refused, and leaks nothing
        hits = await bus.agent("alice", TENANT).recall(
            "plan", k=100, scopes=["team/support", "team/support-leads"]
        )
        assert all(h.memory.scope.startswith("team/support/") for h in hits)
        assert not any("leads only" in h.memory.content for h in hits)
        await bus.audit.flush()
        denials = await AuditLog(bus.redis).query(TENANT, action="recall", decision="deny")
        assert {(r.agent, r.scope) for r in denials} == {
            ("bob", "team/support/billing"),
            ("alice", "team/support-leads"),
            ("alice", "agent/bob/handover"),
        }


async def test_publish_to_a_forbidden_scope_is_refused_before_redis(
    redis_url: str, tmp_path: Path
) -> None:
    async with membus.open(tmp_path / "bus", config(redis_url)) as bus:
        alice, erin = bus.agent("alice", TENANT), bus.agent("erin", TENANT)
        await alice.publish("allowed note", "team/support")
        await bus.drain(timeout_s=15)
        await bus.audit.flush()
        skip = {audit_key(TENANT)}
        before = await snapshot(bus.redis, skip=skip)
        refusals: list[tuple[Agent, Callable[[], Awaitable[Any]]]] = [
            (alice, lambda: alice.publish("lead stuff", "team/support-leads/plan")),
            (alice, lambda: alice.publish("org news", "org")),
            (erin, lambda: erin.publish("hello", "team/support")),  # no key may be minted
            (
                alice,  # all or nothing: the allowed draft does not slip through either
                lambda: alice.publish_many(
                    [
                        Draft(content="fine", scope="team/support"),
                        Draft(content="not fine", scope="agent/bob/handover"),
                    ]
                ),
            ),
        ]
        for who, attempt in refusals:
            with pytest.raises(PermissionDenied) as denied:
                await attempt()
            assert (denied.value.agent, denied.value.action) == (who.name, "publish")
        assert await snapshot(bus.redis, skip=skip) == before
        assert not await bus.redis.hexists(keys_key(TENANT), "c:erin")
        await bus.audit.flush()
        denials = await AuditLog(bus.redis).query(TENANT, action="publish", decision="deny")
        assert sorted(r.scope for r in denials) == sorted(
            ["team/support-leads/plan", "org", "team/support", "agent/bob/handover"]
        )


# -- forget acts on what the caller may read (issue 15.5) -------------------------------------

READ_FENCE_POLICY = """\
p, role:staff, acme, team/x/*, publish|recall|subscribe, allow
p, curator, acme, team/x/*, forget, allow
p, blind, acme, team/x/*, forget, allow
p, role:dpo, acme, team/*, erase, allow
g, writer, role:staff, acme
g, curator, role:staff, acme
g, erin, role:dpo, acme
g2, *, internal, acme
g2, writer, restricted, acme
"""
HIDDEN = "zq-hidden-5b21"  # only in the restricted memory


async def aof_rewrites(redis: Redis) -> tuple[int, int, int]:
    """(rewrites done, one in progress, one scheduled): any BGREWRITEAOF shows in one of them."""
    info: Any = await redis.info("persistence")
    return (
        int(info["aof_rewrites"]),
        int(info["aof_rewrite_in_progress"]),
        int(info["aof_rewrite_scheduled"]),
    )


async def settled_aof(redis: Redis) -> tuple[int, int, int]:
    for _ in range(200):
        got = await aof_rewrites(redis)
        if got[1:] == (0, 0):
            return got
        await anyio.sleep(0.05)
    raise AssertionError("an AOF rewrite never finished")


@pytest.mark.slow
async def test_forget_erases_only_what_the_caller_may_read_unless_it_holds_erase(
    fresh_redis: RedisProcess, tmp_path: Path
) -> None:
    """An attacker with ``forget`` on a scope tries to erase (and so learn of) a restricted
    memory above its clearance, by subject and by guessing its id: it stays, and the report
    counts and names only the memory it could read. One with ``forget`` but no read grant
    learns nothing and costs nothing: no scan, no AOF rewrite. An agent with no right is
    refused without an AOF rewrite. A data-protection role (``erase``) erases it, readable or
    not. Forget's audit records say who asked and how many, never which ids."""
    csv = tmp_path / "policy.csv"
    csv.write_text(READ_FENCE_POLICY)
    cfg = MembusConfig(
        redis=RedisConfig(url=fresh_redis.url),
        worker=FAST,
        writers=1,
        policy=PolicyConfig(file=csv),
        ranking=EVERY_HIT,
    )
    async with membus.open(tmp_path / "bus", cfg) as bus:
        writer = bus.agent("writer", TENANT)
        seen = await writer.publish("customer-9 asked for a callback", "team/x", subject="c9")
        hidden = await writer.publish(
            f"customer-9 {HIDDEN} fraud case", "team/x/cases", subject="c9", label="restricted"
        )
        await bus.drain(timeout_s=15)
        seen_id, hidden_id = point_id(TENANT, seen.event_id), point_id(TENANT, hidden.event_id)
        before = await settled_aof(bus.redis)

        with pytest.raises(PermissionDenied):
            await bus.agent("nobody", TENANT).forget(subject="c9", scope="team/x")
        # blind reads only its own agent/blind: one scan finds nothing there, then it stops
        blind = bus.agent("blind", TENANT)
        for kwargs in ({"subject": "c9"}, {"memory_ids": [hidden_id, seen_id], "scope": "team/x"}):
            empty = await blind.forget(**kwargs)
            assert empty.memories == empty.events == empty.changes == empty.tombstones == 0
            assert (empty.memory_ids, empty.aof_rewrite) == ([], "skipped")
        curator = bus.agent("curator", TENANT)
        probe = await curator.forget(memory_ids=[hidden_id])  # guessed id, above clearance
        assert (probe.memories, probe.memory_ids, probe.aof_rewrite) == (0, [], "skipped")
        assert await aof_rewrites(bus.redis) == before  # nothing erased: no rewrite
        assert len(await bus.store.get(TENANT, [seen_id, hidden_id])) == 2

        report = await curator.forget(subject="c9")
        assert (report.memories, report.memory_ids) == (1, [seen_id])
        assert report.event_ids == [seen.event_id]
        assert report.changes == 1  # the readable memory's change, not the hidden one's
        assert report.aof_rewrite in ("started", "in_progress")
        [left] = await bus.store.get(TENANT, [seen_id, hidden_id])
        assert left.id == hidden_id

        dpo = await bus.agent("erin", TENANT).forget(subject="c9")
        assert (dpo.memories, dpo.memory_ids) == (1, [hidden_id])
        assert await redis_traces(bus.redis, HIDDEN) == []
        assert await store_traces(bus, HIDDEN) == []
        await bus.audit.flush()
        forgets = await AuditLog(bus.redis).query(TENANT, action="forget", newest_first=False)
        assert [(r.agent, r.decision, r.result_count) for r in forgets] == [
            ("nobody", "deny", None),
            ("blind", "allow", 0),
            ("blind", "allow", 0),
            ("curator", "allow", 0),
            ("curator", "allow", 1),
            ("erin", "allow", 1),
        ]
        assert all(r.memory_ids == [] and r.event_ids == [] for r in forgets)


@pytest.mark.slow
async def test_a_current_version_tells_a_reader_nothing_of_a_hidden_earlier_one(
    redis_url: str, tmp_path: Path
) -> None:
    """Issue 15.11, as a reader below the first version's label sees it through recall: the
    current value's ``created_at`` is its own time, not the hidden version's, and neither an
    ``as_of`` recall nor the feed gives the hidden version away."""
    csv = tmp_path / "policy.csv"
    csv.write_text(READ_FENCE_POLICY)
    cfg = MembusConfig(
        redis=RedisConfig(url=redis_url),
        worker=FAST,
        writers=1,
        policy=PolicyConfig(file=csv),
        ranking=EVERY_HIT,
    )
    async with membus.open(tmp_path / "bus", cfg) as bus:
        writer, curator = bus.agent("writer", TENANT), bus.agent("curator", TENANT)
        await writer.publish(
            f"tier gold {HIDDEN}", "team/x", subject="c1", key="tier", label="restricted"
        )
        await anyio.sleep(0.05)
        shown = await writer.publish("tier silver", "team/x", subject="c1", key="tier")
        await bus.drain(timeout_s=15)
        [hit] = await curator.recall("tier", scopes=["team/x"])
        assert hit.memory.content == "tier silver"
        [event] = [
            e
            for _, f in await entries(bus.redis, TenantKeys(TENANT).events)
            if (e := Event.from_json(f["e"])).id == shown.event_id
        ]
        assert hit.memory.created_at == event.created_at
        assert hit.memory.valid_from == hit.memory.created_at
        past = await curator.recall("tier", scopes=["team/x"], as_of=hit.memory.created_at)
        assert [h.memory.content for h in past] == ["tier silver"]
        seen: list[str] = []
        with anyio.move_on_after(0.5):
            async for change in curator.subscribe(["team/x"], start="0"):
                seen.append(change.model_dump_json())
        assert seen and not any(HIDDEN in c or "gold" in c for c in seen)


@pytest.mark.slow
async def test_a_readable_version_replaced_by_a_hidden_one_stays_current_to_its_readers(
    redis_url: str, tmp_path: Path
) -> None:
    """Issue 15.11, the rest: a version the curator may read is replaced by a restricted one.
    Probing as the curator (internal clearance): a plain recall still returns the readable
    version as current (open-ended, not history), ``as_of`` at every instant around the hidden
    version answers the same, and the feed read from the beginning holds the readable version's
    arrival only: nothing says that something replaced it, or when. The writer (restricted)
    sees the real history."""
    csv = tmp_path / "policy.csv"
    csv.write_text(READ_FENCE_POLICY)
    cfg = MembusConfig(
        redis=RedisConfig(url=redis_url),
        worker=FAST,
        writers=1,
        policy=PolicyConfig(file=csv),
        ranking=EVERY_HIT,
    )
    async with membus.open(tmp_path / "bus", cfg) as bus:
        writer, curator = bus.agent("writer", TENANT), bus.agent("curator", TENANT)
        shown = await writer.publish("tier silver", "team/x", subject="c1", key="tier")
        await bus.drain(timeout_s=15)
        await anyio.sleep(0.05)
        await writer.publish(
            f"tier gold {HIDDEN}", "team/x", subject="c1", key="tier", label="restricted"
        )
        await bus.drain(timeout_s=15)
        [now] = await curator.recall("tier", scopes=["team/x"])
        assert now.memory.id == point_id(TENANT, shown.event_id)
        assert (now.memory.valid_to, now.memory.history) == (None, False)
        [was] = await writer.recall("tier", scopes=["team/x"], as_of=now.memory.created_at)
        [cur] = await writer.recall("tier", scopes=["team/x"])
        real, hidden = was.memory, cur.memory
        assert (real.id, real.history) == (now.memory.id, True)
        assert real.valid_to == hidden.valid_from  # the writer sees when gold replaced silver
        assert HIDDEN in hidden.content
        step = (hidden.valid_from - real.valid_from) / 4
        for at in [real.valid_from + step * i for i in range(9)] + [None]:
            hits = await curator.recall("tier", scopes=["team/x"], as_of=at)
            assert [h.memory for h in hits] == [now.memory], at
        seen: list[Change] = []
        async for change in curator.subscribe(["team/x"], start="0", until_now=True):
            seen.append(change)
        assert [(c.op, c.memory_id) for c in seen] == [("upsert", now.memory.id)]
        assert not any(HIDDEN in c.model_dump_json() for c in seen)


@pytest.mark.slow
async def test_a_store_from_before_per_clearance_validity_is_rewritten_once(
    redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 15.11, migration: a store whose points an older membus wrote carries no
    per-clearance validity. Nothing of it vanishes (the writer still recalls its history), and
    the writers' maintenance rewrites its mixed-label keys from the ledger once, after which
    the curator's view is its own: the readable version is current again, and the feed told
    the curator nothing along the way."""
    csv = tmp_path / "policy.csv"
    csv.write_text(READ_FENCE_POLICY)
    cfg = MembusConfig(
        redis=RedisConfig(url=redis_url),
        worker=FAST,
        writers=1,
        policy=PolicyConfig(file=csv),
        ranking=EVERY_HIT,
    )
    with monkeypatch.context() as old_code:  # what a membus before this change wrote
        old_code.setattr(Memory, "_levels_payload", lambda self: {})
        async with membus.open(tmp_path / "bus", cfg) as bus:
            # keep this bus's own maintenance off the store while it plays the old code
            await bus.redis.set(levels_key(TENANT), LEVELS_LAYOUT)
            writer, curator = bus.agent("writer", TENANT), bus.agent("curator", TENANT)
            shown = await writer.publish("tier silver", "team/x", subject="c1", key="tier")
            await bus.drain(timeout_s=15)
            await anyio.sleep(0.05)
            await writer.publish(
                "tier gold", "team/x", subject="c1", key="tier", label="restricted"
            )
            await bus.drain(timeout_s=15)
            assert await curator.recall("tier", scopes=["team/x"]) == []  # the old trace
            await bus.redis.delete(levels_key(TENANT))  # the old code kept no marker
    async with membus.open(tmp_path / "bus", cfg) as bus:
        writer, curator = bus.agent("writer", TENANT), bus.agent("curator", TENANT)
        [cur] = await writer.recall("tier", scopes=["team/x"])
        assert cur.memory.content == "tier gold"
        for _ in range(75):  # the first maintenance round comes ~2 s after open
            if hits := await curator.recall("tier", scopes=["team/x"]):
                break
            await anyio.sleep(0.2)
        assert [h.memory.id for h in hits] == [point_id(TENANT, shown.event_id)]
        assert (hits[0].memory.valid_to, hits[0].memory.history) == (None, False)
        assert await bus.redis.get(levels_key(TENANT)) == LEVELS_LAYOUT
        seen = [c async for c in curator.subscribe(["team/x"], start="0", until_now=True)]
        assert [(c.op, c.memory_id) for c in seen] == [("upsert", hits[0].memory.id)]


# -- no policy: private by default ---------------------------------------------------------------


@pytest.mark.slow
async def test_without_a_policy_an_agents_own_scopes_are_private(
    redis_url: str, tmp_path: Path
) -> None:
    """Attack, with no policy configured: bob (and agents whose names prefix or extend alice's)
    try every door on alice's ``agent/alice/...`` scopes, and anyone tries a shared scope. Each
    refusal is ``PermissionDenied`` saying how to grant (a policy line, or the open mode); alice
    keeps every right in her own subtree; only an explicit open mode lets bob read her notes."""
    private = MembusConfig(redis=RedisConfig(url=redis_url), worker=FAST, ranking=EVERY_HIT)
    async with membus.open(tmp_path / "bus", private) as bus:
        alice, bob = bus.agent("alice", "acme"), bus.agent("bob", "acme")
        await alice.publish("alice: the customer prefers e-mail", "agent/alice/notes")
        await alice.publish("alice: restricted note", "agent/alice", label="restricted")
        await bus.drain(timeout_s=10)
        q = "customer prefers note"
        assert len(await alice.recall(q, k=10)) == 2  # every label: nobody else reads them
        assert len(await alice.recall(q, k=10, scopes=["agent/alice/notes"])) == 1
        assert await bob.recall(q, k=10) == []
        assert await bob.recall(q, k=10, working=True) == []
        for name in ("bob", "al", "alic", "alice-2", "alice2"):
            who = bus.agent(name, "acme")
            for call in (
                who.publish("bob writes into alice", "agent/alice/notes"),
                who.recall(q, scopes=["agent/alice/notes"]),
                who.recall(q, scopes=["agent/alice"], working=True),
                anext(who.subscribe(["agent/alice"])),
                who.forget(scope="agent/alice"),
            ):
                with pytest.raises(PermissionDenied, match="MEMBUS_POLICY_MODE=open"):
                    await call
        assert (await bob.forget(agent="alice")).memories == 0  # within his own scope: nothing
        for scope in ("team/support", "agent", "org"):
            with pytest.raises(PermissionDenied) as denied:
                await alice.publish("shared", scope)
            msg = str(denied.value)
            assert "p, alice, acme, team/*, publish" in msg and "policies/README.md" in msg
        assert len(await alice.recall(q, k=10)) == 2  # and alice's rights are intact
    opened = MembusConfig(
        redis=RedisConfig(url=redis_url), policy=PolicyConfig(mode="open"), ranking=EVERY_HIT
    )
    async with membus.open(tmp_path / "bus", opened) as bus:
        assert len(await bus.agent("bob", "acme").recall(q, k=10)) == 2


@pytest.mark.slow
@pytest.mark.parametrize("how", ["Agent.retract", "publish kind=retraction"])
async def test_a_retraction_withdraws_only_what_its_author_may_read(
    redis_url: str, tmp_path: Path, how: str
) -> None:
    """forget erases, within its scopes, only what the agent may also recall at its clearance
    (policies/README.md); withdrawing a fact by key must not reach further. Here mallory may
    publish, recall and forget in ``team/*`` at clearance public: her forget of ``team/x``
    leaves the owner's restricted fact alone, and so must her retraction of its key."""
    gate = CasbinGate(
        MemorySource(
            "p, owner, acme, team/*, *, allow\n"
            "p, mallory, acme, team/*, publish|recall|forget, allow\n"
            "g2, owner, restricted, acme\n"
        )
    )
    async with membus.open(tmp_path / "bus", config(redis_url), gate=gate) as bus:
        owner, mallory = bus.agent("owner", "acme"), bus.agent("mallory", "acme")
        fact = {"subject": "vault", "key": "code", "kind": "fact", "label": "restricted"}
        await owner.publish("the vault code is 1234", "team/x", **fact)
        await bus.drain(10)
        assert len(await owner.recall("vault code", k=10)) == 1
        # what she may read, she may still withdraw: a public fact of her scope goes
        await owner.publish("the lobby code is 5678", "team/x", subject="lobby", key="code")
        await bus.drain(10)
        assert len(await mallory.recall("lobby code", k=10)) == 1
        await mallory.retract(scope="team/x", subject="lobby", key="code")
        await bus.drain(10)
        assert not [
            h for h in await owner.recall("lobby code", k=10) if "lobby" in h.memory.content
        ]
        assert await mallory.recall("vault code", k=10) == []
        assert (await mallory.forget(scope="team/x")).memories == 0
        if how == "Agent.retract":
            await mallory.retract(scope="team/x", subject="vault", key="code")
        else:
            await mallory.publish(
                "retract vault code", "team/x", kind="retraction", subject="vault", key="code"
            )
        await bus.drain(10)
        assert len(await owner.recall("vault code", k=10)) == 1

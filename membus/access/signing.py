"""Event signing with rotating per-agent keys, and replay detection for the events stream.

The events stream is not trusted: anything that can XADD to Redis could write there. So the bus
signs each event with its agent's key (HMAC-SHA256 over the exact bytes stored in the ``"e"``
field) and a writer re-checks the signature before consolidating.

Keys live in one Redis hash per tenant, ``membus:{tenant}:keys``, so every writer can read them:

- ``k:<kid>`` -> JSON record ``{"a": agent, "s": secret hex, "c": created, "x": expires|null,
  "r": revoked|null}``. Kids are random and tenant-unique, so a kid names its owner and a
  signature made with another agent's key is told apart from an unknown one.
- ``c:<agent>`` -> the kid new events are signed with.

Rotation gives the old key an expiry instead of deleting it, so events signed just before a
rotation and still waiting in the stream verify until the grace ends (no downtime). Revocation
keeps a tombstone so verification can say "revoked" rather than "unknown". Times are wall-clock
seconds of the process that wrote them; grace periods dwarf ordinary clock skew.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Any, Final, Literal, TypeVar, cast

import orjson
from redis.exceptions import WatchError
from redis.typing import EncodableT, FieldT

from membus.core.envelope import Event, validate_name
from membus.core.keys import PREFIX
from membus.core.logs import get_logger
from membus.core.redis import REDIS_DOWN, Redis, unavailable
from membus.errors import Conflict, InvalidInput, MembusError

Clock = Callable[[], float]
T = TypeVar("T")
Reason = Literal[
    "unsigned", "unknown_key", "agent_mismatch", "key_revoked", "key_expired", "bad_signature"
]

DEFAULT_GRACE_S: Final = 24 * 3600.0
_KID = re.compile(r"[0-9a-f]{16,64}")
_SECRET_BYTES: Final = 32
_WATCH_RETRIES: Final = 20
_CACHE_MAX: Final = 10_000


def keys_key(tenant: str) -> str:
    """The tenant's key registry hash (same ``{tenant}`` hash tag as its streams)."""
    return f"{PREFIX}:{{{tenant}}}:keys"


class SignatureInvalid(MembusError):
    """An event's signature does not prove its agent wrote it; ``reason`` says why."""

    code = "signature_invalid"

    def __init__(self, reason: Reason, tenant: str, agent: str, kid: str | None) -> None:
        by = f" (kid {kid!r})" if kid else ""
        super().__init__(f"event of agent {agent!r} in tenant {tenant!r} rejected: {reason}{by}")
        self.reason: Reason = reason
        self.tenant, self.agent, self.kid = tenant, agent, kid

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "reason": self.reason}


@dataclass(frozen=True, slots=True)
class SigningKey:
    """A key to sign with. The secret never appears in repr/str (and so not in logs)."""

    tenant: str
    agent: str
    kid: str
    secret: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """One stored key with its lifecycle; ``state`` decides whether it still verifies."""

    kid: str
    agent: str
    secret: bytes = field(repr=False)
    created_at: float
    expires_at: float | None = None
    revoked_at: float | None = None

    def state(self, now: float) -> Literal["valid", "expired", "revoked"]:
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and now >= self.expires_at:
            return "expired"
        return "valid"

    def to_json(self) -> str:
        rec = {
            "a": self.agent,
            "s": self.secret.hex(),
            "c": self.created_at,
            "x": self.expires_at,
            "r": self.revoked_at,
        }
        return orjson.dumps(rec).decode()

    @classmethod
    def from_json(cls, kid: str, raw: str) -> KeyRecord:
        d = orjson.loads(raw)
        return cls(kid, d["a"], bytes.fromhex(d["s"]), d["c"], d.get("x"), d.get("r"))


class KeyRegistry:
    """Per-tenant agent keys in Redis, with a short in-process cache.

    ``cache_ttl_s`` bounds how long another process's rotation or revocation can go unseen here;
    this process's own rotate/revoke clear its cache at once.
    """

    def __init__(
        self,
        redis: Redis,
        *,
        cache_ttl_s: float = 1.0,
        retain_s: float = 7 * 24 * 3600.0,
        clock: Clock = time.time,
    ) -> None:
        self.redis = redis
        self.cache_ttl_s = cache_ttl_s
        self.retain_s = retain_s  # how long expired/revoked tombstones stay, for forensics
        self._clock = clock
        self._records: dict[tuple[str, str], tuple[float, KeyRecord | None]] = {}
        self._current: dict[tuple[str, str], tuple[float, SigningKey]] = {}
        self._log = get_logger("membus.signing")

    # -- signing side --------------------------------------------------------------------------

    async def current(self, tenant: str, agent: str) -> SigningKey:
        """The key to sign ``agent``'s events with; created on first use."""
        validate_name(tenant, "tenant")
        validate_name(agent, "agent")
        hit = self._current.get((tenant, agent))
        if hit is not None and time.monotonic() - hit[0] < self.cache_ttl_s:
            return hit[1]
        key = await self._transact(tenant, lambda pipe: self._current_tx(pipe, tenant, agent))
        self._remember_current(key)
        return key

    async def rotate(self, tenant: str, agent: str, grace_s: float = DEFAULT_GRACE_S) -> SigningKey:
        """Make a new current key; the old one keeps verifying for ``grace_s`` seconds.

        ``grace_s`` must cover how long an event may wait in the stream before a writer reads it,
        or events signed just before the rotation are parked as ``key_expired``.
        """
        validate_name(tenant, "tenant")
        validate_name(agent, "agent")
        if grace_s < 0:
            raise InvalidInput("grace_s must be >= 0")
        key = await self._transact(
            tenant, lambda pipe: self._rotate_tx(pipe, tenant, agent, grace_s)
        )
        self._forget(tenant)
        self._remember_current(key)
        self._log.info("keys.rotated", tenant=tenant, agent=agent, kid=key.kid, grace_s=grace_s)
        return key

    async def revoke(self, tenant: str, agent: str, kid: str) -> None:
        """Stop ``kid`` verifying now; if it was current, the next ``current`` makes a new key."""
        validate_name(tenant, "tenant")
        validate_name(agent, "agent")
        await self._transact(tenant, lambda pipe: self._revoke_tx(pipe, tenant, agent, kid))
        self._forget(tenant)
        self._log.warning("keys.revoked", tenant=tenant, agent=agent, kid=kid)

    # -- verifying side ------------------------------------------------------------------------

    async def record(self, tenant: str, kid: str) -> KeyRecord | None:
        """The stored record for ``kid`` whatever its state (None if never known or pruned)."""
        if not _KID.fullmatch(kid):
            return None
        hit = self._records.get((tenant, kid))
        if hit is not None and time.monotonic() - hit[0] < self.cache_ttl_s:
            return hit[1]
        try:
            raw = cast("str | None", await self.redis.hget(keys_key(tenant), f"k:{kid}"))
        except REDIS_DOWN as exc:
            raise unavailable(exc) from exc
        rec = KeyRecord.from_json(kid, raw) if raw is not None else None
        if len(self._records) >= _CACHE_MAX:  # forged kids must not grow the cache unbounded
            self._records.clear()
        # misses are cached too, so a flood of forged kids costs one lookup per kid per TTL
        self._records[(tenant, kid)] = (time.monotonic(), rec)
        return rec

    async def lookup(self, tenant: str, agent: str, kid: str) -> bytes | None:
        """The secret of ``agent``'s key ``kid`` if it may verify now (not expired/revoked)."""
        rec = await self.record(tenant, kid)
        if rec is None or rec.agent != agent or rec.state(self._clock()) != "valid":
            return None
        return rec.secret

    def now(self) -> float:
        return self._clock()

    # -- transactions --------------------------------------------------------------------------

    async def _transact(self, tenant: str, body: Callable[[Any], Awaitable[T]]) -> T:
        """Run ``body`` under WATCH on the tenant's hash, retrying when another process raced."""
        try:
            for _ in range(_WATCH_RETRIES):
                async with self.redis.pipeline(transaction=True) as pipe:
                    try:
                        await pipe.watch(keys_key(tenant))
                        return await body(pipe)
                    except WatchError:
                        continue
        except REDIS_DOWN as exc:
            raise unavailable(exc) from exc
        raise Conflict(f"key registry of tenant {tenant!r} kept changing; retry")

    async def _load(self, pipe: Any, tenant: str, kid: str | None) -> KeyRecord | None:
        if not kid:
            return None
        raw = await pipe.hget(keys_key(tenant), f"k:{kid}")
        return KeyRecord.from_json(kid, raw) if raw is not None else None

    def _new(self, tenant: str, agent: str) -> tuple[SigningKey, KeyRecord]:
        kid, secret = secrets.token_hex(8), secrets.token_bytes(_SECRET_BYTES)
        return SigningKey(tenant, agent, kid, secret), KeyRecord(kid, agent, secret, self._clock())

    async def _current_tx(self, pipe: Any, tenant: str, agent: str) -> SigningKey:
        hkey = keys_key(tenant)
        rec = await self._load(pipe, tenant, await pipe.hget(hkey, f"c:{agent}"))
        if rec is not None and rec.state(self._clock()) == "valid":
            await pipe.unwatch()
            return SigningKey(tenant, agent, rec.kid, rec.secret)
        key, new = self._new(tenant, agent)
        pipe.multi()
        pipe.hset(hkey, mapping={f"k:{key.kid}": new.to_json(), f"c:{agent}": key.kid})
        await pipe.execute()
        self._log.info("keys.created", tenant=tenant, agent=agent, kid=key.kid)
        return key

    async def _rotate_tx(self, pipe: Any, tenant: str, agent: str, grace_s: float) -> SigningKey:
        hkey = keys_key(tenant)
        now = self._clock()
        stored: dict[str, str] = await pipe.hgetall(hkey)
        old_kid = stored.get(f"c:{agent}")
        key, new = self._new(tenant, agent)
        updates = {f"k:{key.kid}": new.to_json(), f"c:{agent}": key.kid}
        if old_kid and f"k:{old_kid}" in stored:
            old = KeyRecord.from_json(old_kid, stored[f"k:{old_kid}"])
            until = now + grace_s
            if old.state(now) == "valid" and (old.expires_at is None or until < old.expires_at):
                updates[f"k:{old_kid}"] = replace(old, expires_at=until).to_json()
        # prune this agent's tombstones past retention; rotation is rare, so the scan is cheap
        dead = [f"k:{r.kid}" for r in _records_of(stored, agent) if self._prunable(r, now)]
        pipe.multi()
        pipe.hset(hkey, mapping=updates)
        if dead:
            pipe.hdel(hkey, *dead)
        await pipe.execute()
        return key

    async def _revoke_tx(self, pipe: Any, tenant: str, agent: str, kid: str) -> None:
        hkey = keys_key(tenant)
        rec = await self._load(pipe, tenant, kid if _KID.fullmatch(kid) else None)
        if rec is None or rec.agent != agent:
            await pipe.unwatch()
            raise InvalidInput(
                f"agent {agent!r} has no key {kid!r} in tenant {tenant!r}",
                [{"field": "kid", "reason": "unknown key for this agent"}],
            )
        current = await pipe.hget(hkey, f"c:{agent}")
        pipe.multi()
        if rec.revoked_at is None:
            pipe.hset(hkey, f"k:{kid}", replace(rec, revoked_at=self._clock()).to_json())
        if current == kid:
            pipe.hdel(hkey, f"c:{agent}")
        await pipe.execute()

    def _prunable(self, rec: KeyRecord, now: float) -> bool:
        ended = rec.revoked_at if rec.revoked_at is not None else rec.expires_at
        return ended is not None and ended < now - self.retain_s

    # -- cache ---------------------------------------------------------------------------------

    def _remember_current(self, key: SigningKey) -> None:
        if len(self._current) >= _CACHE_MAX:
            self._current.clear()
        self._current[(key.tenant, key.agent)] = (time.monotonic(), key)

    def _forget(self, tenant: str) -> None:
        for cache in (self._records, self._current):
            for k in [k for k in cache if k[0] == tenant]:
                del cache[k]


def _records_of(stored: dict[str, str], agent: str) -> list[KeyRecord]:
    out = []
    for f, raw in stored.items():
        if f.startswith("k:"):
            rec = KeyRecord.from_json(f[2:], raw)
            if rec.agent == agent:
                out.append(rec)
    return out


# -- sign / verify -----------------------------------------------------------------------------


def _mac(secret: bytes, raw: bytes) -> str:
    return hmac.new(secret, raw, hashlib.sha256).hexdigest()


def sign(event: Event, key: SigningKey) -> dict[str, str]:
    """The ``kid``/``sig`` stream fields to XADD beside ``"e": event.to_json()``."""
    return sign_raw(event, event.to_json(), key)


def sign_raw(event: Event, raw: bytes, key: SigningKey) -> dict[str, str]:
    """As ``sign`` when the caller already holds ``raw = event.to_json()`` (saves a dump)."""
    if key.tenant != event.tenant or key.agent != event.agent:
        raise InvalidInput(
            f"key of {key.tenant}/{key.agent} cannot sign an event of {event.tenant}/{event.agent}"
        )
    return {"kid": key.kid, "sig": _mac(key.secret, raw)}


def signed_fields(event: Event, key: SigningKey) -> dict[FieldT, EncodableT]:
    """The whole stream entry, typed for XADD: the bytes signed are the bytes stored."""
    raw = event.to_json()
    sig = sign_raw(event, raw, key)
    return {"e": raw, "kid": sig["kid"], "sig": sig["sig"]}


async def verify(fields: dict[str, str], event: Event, registry: KeyRegistry) -> None:
    """Raise ``SignatureInvalid`` unless ``fields`` carry a valid signature of ``event.agent``.

    ``event`` must be the parse of ``fields["e"]``; the MAC is checked over that stored string,
    re-encoded byte for byte (the client decodes with surrogateescape), never a re-serialisation.
    """
    kid, sig = fields.get("kid") or None, fields.get("sig")

    def fail(reason: Reason) -> SignatureInvalid:
        return SignatureInvalid(reason, event.tenant, event.agent, kid)

    if kid is None or not sig:
        raise fail("unsigned")
    rec = await registry.record(event.tenant, kid)
    if rec is None:
        raise fail("unknown_key")
    if rec.agent != event.agent:
        raise fail("agent_mismatch")
    state = rec.state(registry.now())
    if state == "revoked":
        raise fail("key_revoked")
    if state == "expired":
        raise fail("key_expired")
    raw = fields.get("e", "").encode("utf-8", "surrogateescape")
    expected = _mac(rec.secret, raw).encode()
    if not hmac.compare_digest(expected, sig.encode("utf-8", "surrogateescape")):
        raise fail("bad_signature")

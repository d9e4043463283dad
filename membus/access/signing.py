"""Event signing with rotating per-agent Ed25519 keys.

The events stream is not trusted: anything that can XADD to Redis could write there. So the bus
signs each event with its agent's private key (Ed25519 over the exact bytes stored in the ``"e"``
field) and a writer re-checks the signature with the public key before consolidating. Events
published together are signed up to ``merkle.BATCH_MAX`` at a time: the signature covers a
Merkle root and each entry carries its proof (``"mp"``, see ``membus/access/merkle.py``).

Private keys never reach Redis: each is derived (HKDF-SHA256) from a 32-byte master secret that
only the door (the process publishing for agents) holds, plus tenant, agent and kid, so the door
re-derives a key instead of storing it. Redis holds public keys only, one hash per tenant,
``membus:{tenant}:keys``, so every writer can read them:

- ``k:<kid>`` -> JSON record ``{"a": agent, "p": Ed25519 public key hex (32 bytes),
  "g": authority signature hex, "c": created, "x": expires|null, "r": revoked|null}``. Kids are
  random and tenant-unique, so a kid names its owner and a signature made with another agent's
  key is told apart from an unknown one.
- ``c:<agent>`` -> the kid new events are signed with.

Anyone holding a Redis credential that may HSET this hash could register a public key of their
own for any agent. So each record is certified: ``g`` is a signature, by an authority key also
derived from the master, over (tenant, kid, agent, public key). A writer given the authority's
public key (``SigningConfig.authority``, never read from Redis) parks events whose key is not
certified by it. Records of the HMAC era (field ``s``: a shared secret in Redis) are refused.

Rotation gives the old key an expiry instead of deleting it, so events signed just before a
rotation and still waiting in the stream verify until the grace ends (no downtime). Revocation
keeps a tombstone so verification can say "revoked" rather than "unknown". Times are wall-clock
seconds of the process that wrote them; grace periods dwarf ordinary clock skew.
"""

from __future__ import annotations

import builtins
import os
import re
import secrets
import stat
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Final, Literal, TypeVar, cast

import orjson
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from pydantic import BaseModel, ConfigDict
from redis.exceptions import WatchError
from redis.typing import EncodableT, FieldT

from membus.access import merkle
from membus.core.config import SigningConfig
from membus.core.envelope import Event, validate_name
from membus.core.keys import PREFIX
from membus.core.logs import get_logger
from membus.core.redis import REDIS_DOWN, Redis, unavailable
from membus.errors import Conflict, InvalidInput, MembusError

Clock = Callable[[], float]
T = TypeVar("T")
Reason = Literal[
    "unsigned",
    "unknown_key",
    "legacy_key",
    "uncertified_key",
    "agent_mismatch",
    "key_revoked",
    "key_expired",
    "bad_signature",
]

DEFAULT_GRACE_S: Final = 24 * 3600.0
_KID = re.compile(r"[0-9a-f]{16,64}")
MASTER_BYTES: Final = 32
MASTER_FILE: Final = "signing.key"  # in the data directory of ``membus.open``
_SALT: Final = b"membus/signing/v1"
_WATCH_RETRIES: Final = 20
_CACHE_MAX: Final = 10_000
_BATCHES_MAX: Final = 4096  # a writer reads a batch's entries together: a few suffice


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


class LegacyKeyRecord(Conflict):
    """The registry holds a key of the HMAC era (a shared secret stored in Redis)."""

    code = "legacy_key"

    def __init__(self, kid: str) -> None:
        super().__init__(
            f"key {kid!r} is an HMAC secret stored in Redis (membus before Ed25519 signing); "
            "it is refused: delete the tenant's membus:{tenant}:keys hash and let the door "
            "create Ed25519 keys (events still signed with old keys are parked as legacy_key)"
        )
        self.kid = kid


# -- master secret and key derivation -----------------------------------------------------------


def _hkdf(master: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=_SALT, info=info).derive(master)


def agent_private_key(master: bytes, tenant: str, agent: str, kid: str) -> Ed25519PrivateKey:
    """The private key of ``agent``'s key ``kid``: a pure function of the master secret, so the
    door re-derives it and never stores it. NUL separators: names cannot contain NUL."""
    info = b"\0".join([b"agent", tenant.encode(), agent.encode(), kid.encode()])
    return Ed25519PrivateKey.from_private_bytes(_hkdf(master, info))


def authority_private_key(master: bytes) -> Ed25519PrivateKey:
    """The key that certifies registry records (see the module docstring)."""
    return Ed25519PrivateKey.from_private_bytes(_hkdf(master, b"authority"))


def public_bytes(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def authority_public_key(master: bytes) -> str:
    """Hex of the authority's public key: what writers are configured with to pin the door."""
    return public_bytes(authority_private_key(master)).hex()


def parse_public_key(value: str, field_name: str = "signing.authority") -> bytes:
    try:
        raw = bytes.fromhex(value)
    except ValueError:
        raw = b""
    if len(raw) != 32:
        raise InvalidInput(
            f"{field_name}: must be an Ed25519 public key, 64 hex digits",
            [{"field": field_name, "reason": "not 64 hex digits"}],
        )
    return raw


def load_master(path: Path, *, create: bool = True) -> bytes:
    """The master secret in ``path`` (64 hex digits), created owner-only (0600) if missing.

    Refused when group or others may read it: a readable master lets anyone sign as any agent.
    """
    if create and not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another process created it first: read theirs
            pass
        else:
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_bytes(MASTER_BYTES).hex() + "\n")
    try:
        mode = path.stat().st_mode
        text = path.read_text().strip()
    except OSError as exc:
        raise InvalidInput(
            f"signing.master_file: cannot read {path}: {exc.strerror}",
            [{"field": "signing.master_file", "reason": str(exc.strerror)}],
        ) from None
    if stat.S_IMODE(mode) & 0o077:
        raise InvalidInput(
            f"signing.master_file: {path} is readable by group or others (chmod 600 it)",
            [{"field": "signing.master_file", "reason": "permissions wider than 0600"}],
        )
    try:
        master = bytes.fromhex(text)
    except ValueError:
        master = b""
    if len(master) != MASTER_BYTES:
        raise InvalidInput(
            f"signing.master_file: {path} must hold {MASTER_BYTES * 2} hex digits",
            [{"field": "signing.master_file", "reason": "not a 32-byte hex secret"}],
        )
    return master


def _cert_message(tenant: str, kid: str, agent: str, public: bytes) -> bytes:
    return b"\0".join([b"membus-key/v1", tenant.encode(), kid.encode(), agent.encode(), public])


@dataclass(frozen=True, slots=True)
class SigningKey:
    """A key to sign with. The private key never appears in repr/str (and so not in logs)."""

    tenant: str
    agent: str
    kid: str
    private: Ed25519PrivateKey = field(repr=False)

    def sign_bytes(self, raw: bytes) -> str:
        return self.private.sign(raw).hex()

    @property
    def public(self) -> bytes:
        return public_bytes(self.private)


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """One stored key with its lifecycle; ``state`` decides whether it still verifies."""

    kid: str
    agent: str
    public: bytes
    created_at: float
    expires_at: float | None = None
    revoked_at: float | None = None
    cert: bytes = b""
    # not stored: False when the verifying registry pins an authority that did not certify it
    trusted: bool = field(default=True, compare=False)

    def state(self, now: float) -> Literal["valid", "expired", "revoked"]:
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and now >= self.expires_at:
            return "expired"
        return "valid"

    def to_json(self) -> str:
        rec = {
            "a": self.agent,
            "p": self.public.hex(),
            "g": self.cert.hex(),
            "c": self.created_at,
            "x": self.expires_at,
            "r": self.revoked_at,
        }
        return orjson.dumps(rec).decode()

    @classmethod
    def from_json(cls, kid: str, raw: str) -> KeyRecord:
        """Parse a stored record; ``LegacyKeyRecord`` for an HMAC-era one, ``InvalidInput`` for
        anything else that is not a record (the hash is writable by whoever holds a credential).
        """
        try:
            d = orjson.loads(raw)
            if isinstance(d, dict) and "s" in d and "p" not in d:
                raise LegacyKeyRecord(kid)
            public, cert = bytes.fromhex(d["p"]), bytes.fromhex(d.get("g") or "")
            if len(public) != 32:
                raise ValueError("public key is not 32 bytes")
            return cls(kid, str(d["a"]), public, d["c"], d.get("x"), d.get("r"), cert)
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise InvalidInput(f"key record {kid!r} is malformed: {exc}") from None

    def certified(self, tenant: str, authority: bytes) -> bool:
        """Whether the authority with public key ``authority`` issued this record."""
        try:
            Ed25519PublicKey.from_public_bytes(authority).verify(
                self.cert, _cert_message(tenant, self.kid, self.agent, self.public)
            )
        except (InvalidSignature, ValueError):
            return False
        return True


class KeyInfo(BaseModel):
    """A stored signing key as an operator sees it (``KeyRegistry.list``)."""

    model_config = ConfigDict(frozen=True)
    kid: str
    agent: str
    state: Literal["valid", "expired", "revoked"]
    current: bool  # what the agent's new events are signed with
    created_at: float  # wall-clock seconds
    expires_at: float | None = None
    revoked_at: float | None = None
    certified: bool | None = None  # by the pinned authority; None: this registry pins none


class KeyRegistry:
    """Per-tenant agent public keys in Redis, with a short in-process cache.

    ``master``: the secret the door derives private keys from, or the file holding it (read, or
    created, only when this process first signs: a process that never publishes never makes
    one); without one, a random master lives and dies with this object, which suits a lone
    process. ``authority``: the public key that must certify every record this registry verifies
    with; ``"own"``: the master's own authority; None: trust the records in Redis as they are.

    ``cache_ttl_s`` bounds how long another process's rotation or revocation can go unseen here;
    this process's own rotate/revoke clear its cache at once.
    """

    def __init__(
        self,
        redis: Redis,
        *,
        master: bytes | Path | None = None,
        authority: bytes | Literal["own"] | None = None,
        cache_ttl_s: float = 1.0,
        retain_s: float = 7 * 24 * 3600.0,
        clock: Clock = time.time,
    ) -> None:
        self.redis = redis
        if isinstance(master, bytes) and len(master) != MASTER_BYTES:
            raise InvalidInput(f"signing master must be {MASTER_BYTES} bytes")
        self._master_source = master if master is not None else secrets.token_bytes(MASTER_BYTES)
        self._secret: bytes | None = None
        self._pin = authority
        self.cache_ttl_s = cache_ttl_s
        self.retain_s = retain_s  # how long expired/revoked tombstones stay, for forensics
        self._clock = clock
        self._records: dict[tuple[str, str], tuple[float, KeyRecord | None]] = {}
        self._current: dict[tuple[str, str], tuple[float, SigningKey]] = {}
        # batch signatures checked here, oldest first (``verify``): key state is still checked
        # on every entry, before this
        self._batches: dict[tuple[str, str, str, bytes], None] = {}
        self._log = get_logger("membus.signing")

    def checked_batch(self, tenant: str, kid: str, sig: str, message: bytes) -> bool:
        """Whether ``sig`` by ``kid`` over the batch ``message`` verified here already."""
        return (tenant, kid, sig, message) in self._batches

    def learn_batch(self, tenant: str, kid: str, sig: str, message: bytes) -> None:
        """Remember a batch signature that verified (``verify`` calls it after checking)."""
        self._batches[(tenant, kid, sig, message)] = None
        if len(self._batches) > _BATCHES_MAX:
            del self._batches[next(iter(self._batches))]

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

    async def list(self, tenant: str, agent: str | None = None) -> builtins.list[KeyInfo]:
        """Every stored key of ``tenant`` (of ``agent`` only, if given), newest first, with its
        state now; public parts only (the private keys are derived, never stored)."""
        validate_name(tenant, "tenant")
        if agent is not None:
            validate_name(agent, "agent")
        try:
            stored = cast("dict[str, str]", await self.redis.hgetall(keys_key(tenant)))
        except REDIS_DOWN as exc:
            raise unavailable(exc) from exc
        now, out = self._clock(), []
        for f, raw in stored.items():
            if not f.startswith("k:"):
                continue
            try:
                rec = KeyRecord.from_json(f[2:], raw)
            except MembusError:
                continue  # junk or HMAC-era: no key to show
            if agent is not None and rec.agent != agent:
                continue
            authority = self.authority
            out.append(
                KeyInfo(
                    kid=rec.kid,
                    agent=rec.agent,
                    state=rec.state(now),
                    current=stored.get(f"c:{rec.agent}") == rec.kid,
                    created_at=rec.created_at,
                    expires_at=rec.expires_at,
                    revoked_at=rec.revoked_at,
                    certified=None if authority is None else rec.certified(tenant, authority),
                )
            )
        return sorted(out, key=lambda k: k.created_at, reverse=True)

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
        if rec is not None and self.authority is not None:
            # checked once per cache fill; an uncertified record is kept, marked, for the reason
            rec = replace(rec, trusted=rec.certified(tenant, self.authority))
        if len(self._records) >= _CACHE_MAX:  # forged kids must not grow the cache unbounded
            self._records.clear()
        # misses are cached too, so a flood of forged kids costs one lookup per kid per TTL
        self._records[(tenant, kid)] = (time.monotonic(), rec)
        return rec

    async def lookup(self, tenant: str, agent: str, kid: str) -> bytes | None:
        """The public key of ``agent``'s key ``kid`` if it may verify now (not expired/revoked,
        certified when this registry pins an authority)."""
        try:
            rec = await self.record(tenant, kid)
        except (LegacyKeyRecord, InvalidInput):
            return None
        if rec is None or rec.agent != agent or rec.state(self._clock()) != "valid":
            return None
        if not rec.trusted:
            return None
        return rec.public

    def now(self) -> float:
        return self._clock()

    @property
    def authority(self) -> bytes | None:
        """The public key records must be certified by (None: records are trusted as stored)."""
        if self._pin == "own":
            self._pin = public_bytes(authority_private_key(self._master()))
        return self._pin

    def _master(self) -> bytes:
        if self._secret is None:
            source = self._master_source
            self._secret = load_master(source) if isinstance(source, Path) else source
        return self._secret

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

    def _derive(self, tenant: str, agent: str, kid: str) -> SigningKey:
        return SigningKey(tenant, agent, kid, agent_private_key(self._master(), tenant, agent, kid))

    def _new(self, tenant: str, agent: str) -> tuple[SigningKey, KeyRecord]:
        key = self._derive(tenant, agent, secrets.token_hex(8))
        public = key.public
        cert = authority_private_key(self._master()).sign(
            _cert_message(tenant, key.kid, agent, public)
        )
        return key, KeyRecord(key.kid, agent, public, self._clock(), cert=cert)

    async def _current_tx(self, pipe: Any, tenant: str, agent: str) -> SigningKey:
        hkey = keys_key(tenant)
        try:
            rec = await self._load(pipe, tenant, await pipe.hget(hkey, f"c:{agent}"))
        except LegacyKeyRecord:
            raise
        except InvalidInput:  # junk someone wrote over the record: replaced by a new key
            self._log.warning("keys.malformed_current", tenant=tenant, agent=agent)
            rec = None
        if rec is not None and rec.state(self._clock()) == "valid":
            key = self._derive(tenant, agent, rec.kid)
            if key.public == rec.public:
                await pipe.unwatch()
                return key
            # made by a door with another master (or one that restarted with a fresh one): this
            # door cannot sign with it, so it rotates; the old key verifies through the grace
            self._log.warning("keys.foreign_current", tenant=tenant, agent=agent, kid=rec.kid)
            return await self._rotate_tx(pipe, tenant, agent, DEFAULT_GRACE_S)
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
            try:
                rec = KeyRecord.from_json(f[2:], raw)
            except MembusError:  # junk or HMAC-era: verifies nothing, must not block rotation
                continue
            if rec.agent == agent:
                out.append(rec)
    return out


# -- sign / verify -----------------------------------------------------------------------------


def sign(event: Event, key: SigningKey) -> dict[str, str]:
    """The ``kid``/``sig`` stream fields to XADD beside ``"e": event.to_json()``."""
    return sign_raw(event, event.to_json(), key)


def _own(key: SigningKey, event: Event) -> None:
    """Refuse to sign another agent's event with ``key``."""
    if key.tenant != event.tenant or key.agent != event.agent:
        raise InvalidInput(
            f"key of {key.tenant}/{key.agent} cannot sign an event of {event.tenant}/{event.agent}"
        )


def sign_raw(event: Event, raw: bytes, key: SigningKey) -> dict[str, str]:
    """As ``sign`` when the caller already holds ``raw = event.to_json()`` (saves a dump)."""
    _own(key, event)
    return {"kid": key.kid, "sig": key.sign_bytes(raw)}


def signed_fields(event: Event, key: SigningKey) -> dict[FieldT, EncodableT]:
    """The whole stream entry, typed for XADD: the bytes signed are the bytes stored."""
    raw = event.to_json()
    sig = sign_raw(event, raw, key)
    return {"e": raw, "kid": sig["kid"], "sig": sig["sig"]}


def signed_entries(events: Sequence[Event], key: SigningKey) -> list[dict[FieldT, EncodableT]]:
    """The stream entries of ``events`` (all ``key``'s agent's), one signature per
    ``merkle.BATCH_MAX`` of them: each entry carries the batch's signature and its own
    inclusion proof (``"mp"``), so it verifies alone. A lone event is signed as by
    ``signed_fields``.

    Example: ``signed_entries(events, await registry.current(tenant, agent))``
    """
    out: list[dict[FieldT, EncodableT]] = []
    for start in range(0, len(events), merkle.BATCH_MAX):
        chunk = events[start : start + merkle.BATCH_MAX]
        if len(chunk) == 1:
            out.append(signed_fields(chunk[0], key))
            continue
        for e in chunk:
            _own(key, e)
        raws = [e.to_json() for e in chunk]
        tree = merkle.batch(raws)
        sig = key.sign_bytes(tree.message)
        out += [
            {"e": raw, "kid": key.kid, "sig": sig, "mp": proof}
            for raw, proof in zip(raws, tree.proofs, strict=True)
        ]
    return out


async def verify(fields: dict[str, str], event: Event, registry: KeyRegistry) -> None:
    """Raise ``SignatureInvalid`` unless ``fields`` carry a valid signature of ``event.agent``.

    ``event`` must be the parse of ``fields["e"]``; the signature is checked over that stored
    string, re-encoded byte for byte (the client decodes with surrogateescape), never a
    re-serialisation.
    """
    kid, sig = fields.get("kid") or None, fields.get("sig")

    def fail(reason: Reason) -> SignatureInvalid:
        return SignatureInvalid(reason, event.tenant, event.agent, kid)

    if kid is None or not sig:
        raise fail("unsigned")
    try:
        rec = await registry.record(event.tenant, kid)
    except LegacyKeyRecord:
        raise fail("legacy_key") from None
    except InvalidInput:  # a record someone wrote into the hash by hand
        raise fail("uncertified_key") from None
    if rec is None:
        raise fail("unknown_key")
    if rec.agent != event.agent:
        raise fail("agent_mismatch")
    if not rec.trusted:
        raise fail("uncertified_key")
    state = rec.state(registry.now())
    if state == "revoked":
        raise fail("key_revoked")
    if state == "expired":
        raise fail("key_expired")
    raw = fields.get("e", "").encode("utf-8", "surrogateescape")
    proof = fields.get("mp")
    signed = raw if proof is None else merkle.signed_message(raw, proof)
    if signed is None:  # a proof that places the event in no tree
        raise fail("bad_signature")
    # a batch's signature, checked once per writer: the entries after the first cost hashes
    if proof is not None and registry.checked_batch(event.tenant, kid, sig, signed):
        return
    try:
        signature = bytes.fromhex(sig)
        Ed25519PublicKey.from_public_bytes(rec.public).verify(signature, signed)
    except (ValueError, InvalidSignature):
        raise fail("bad_signature") from None
    if proof is not None:
        registry.learn_batch(event.tenant, kid, sig, signed)


def door_keys(
    redis: Redis, config: SigningConfig, default_master: Path | None = None
) -> KeyRegistry:
    """The registry a door signs with: its master from ``config.master_file``, else
    ``default_master`` (created), else a random one. It certifies with that master's authority
    and verifies against ``config.authority`` when set, else against its own durable authority
    (a random master pins nothing: it would refuse every other process's keys)."""
    path = config.master_file or default_master
    pinned = parse_public_key(config.authority) if config.authority is not None else None
    if path is None:  # a throwaway master: nothing durable to pin it to
        return KeyRegistry(redis, authority=pinned)
    return KeyRegistry(redis, master=path, authority=pinned or "own")


def writer_keys(redis: Redis, config: SigningConfig) -> KeyRegistry:
    """The registry a writer verifies with: pinned to ``config.authority`` when set."""
    if config.authority is None:
        get_logger("membus.signing").warning(
            "keys.authority_unpinned",
            hint="set signing.authority (membus keys authority) so a Redis credential "
            "cannot register keys",
        )
        return KeyRegistry(redis)
    return KeyRegistry(redis, authority=parse_public_key(config.authority))

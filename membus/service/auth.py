"""API keys: each key is an agent identity in one tenant. Only SHA-256 digests are ever kept.

The keys file is JSON, written by an operator from ``hash_key`` output (the secret itself never
touches the disk of the service)::

    {"keys": [{"sha256": "<64 hex>", "agent": "alice", "tenant": "acme"},
              {"sha256": "<64 hex>", "agent": "ops", "tenant": "acme", "operator": true}]}

``operator`` keys may also call service-wide operations (policy reload, scraping ``/metrics``);
everything else an operator does still goes through the gate as its agent. ``metrics_only`` keys
(for a Prometheus scraper) may scrape ``/metrics`` and nothing else: the secret a monitoring
system holds can neither act as an agent nor reload the policy.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Annotated

import orjson
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)

from membus.access.gate import Identity
from membus.core.envelope import invalid_from
from membus.core.ids import encode_id
from membus.core.logs import get_logger
from membus.errors import InvalidInput
from membus.service.wire import Unauthenticated

KEY_PREFIX = "mbk_"
# how often a service looks whether its keys file changed: the bound on a revocation's delay
RELOAD_S = 1.0


def new_key() -> str:
    """A fresh secret (256 bits); hand it to the agent, store ``hash_key`` of it."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


class Principal(BaseModel):
    """Who a request acts as: derived from the key alone, never from the request body."""

    model_config = ConfigDict(frozen=True)
    identity: Identity
    operator: bool = False
    metrics_only: bool = False

    @property
    def agent(self) -> str:
        return self.identity.agent

    @property
    def tenant(self) -> str:
        return self.identity.tenant


def _id(value: str) -> str:
    try:
        encode_id(value)
    except InvalidInput as exc:
        raise ValueError(exc.problems[0]["reason"] if exc.problems else str(exc)) from None
    return value


# an id as users know it (e-mail, UUID, any case); the identity holds its ``encode_id``
UserId = Annotated[str, AfterValidator(_id)]


class KeyEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
    agent: UserId
    tenant: UserId
    operator: bool = False
    metrics_only: bool = False

    @model_validator(mode="after")
    def _one_role(self) -> KeyEntry:
        if self.operator and self.metrics_only:
            raise ValueError("a key is either operator or metrics_only, not both")
        return self

    def principal(self) -> Principal:
        """Who the key acts as: its ids encoded as every door encodes them (so the keys file
        names ``alice@example.com`` and the policy ``x--alice_40_example_2e_com``)."""
        return Principal(
            identity=Identity(tenant=encode_id(self.tenant), agent=encode_id(self.agent)),
            operator=self.operator,
            metrics_only=self.metrics_only,
        )


class KeysFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    keys: list[KeyEntry]


class ApiKeys:
    """Digest -> principal. Lookup is by the digest of the presented key, then a constant-time
    compare: an attacker can only learn timings about digests of their own guesses.

    Keys read ``from_file`` follow the file: at most every ``reload_s`` seconds an
    authentication looks whether the file changed (a ``stat``) and, if so, reads it again, so a
    key revoked with ``membus keys revoke`` is refused by a running service within ``reload_s``
    without a restart. A file that no longer parses keeps the keys last read (and says so in
    the log): a half-edited file must not lock everyone out, nor let anyone in.
    """

    def __init__(self, entries: Iterable[KeyEntry | tuple[str, Principal]] = ()) -> None:
        self._by_digest = self._index(entries)
        self._path: Path | None = None
        self._seen: tuple[int, int, int] | None = None  # inode, size, mtime_ns of what we read
        self._checked = 0.0
        self.reload_s = RELOAD_S

    @staticmethod
    def _index(
        entries: Iterable[KeyEntry | tuple[str, Principal]],
    ) -> dict[str, tuple[bytes, Principal]]:
        by_digest: dict[str, tuple[bytes, Principal]] = {}
        for e in entries:
            # a file entry holds ids as given: its principal holds them encoded (core.ids)
            digest, principal = (e.sha256, e.principal()) if isinstance(e, KeyEntry) else e
            if digest in by_digest:
                raise InvalidInput("the same API key is listed twice")
            by_digest[digest] = (bytes.fromhex(digest), principal)
        return by_digest

    def __len__(self) -> int:
        self._follow()
        return len(self._by_digest)

    @classmethod
    def from_keys(
        cls,
        keys: Mapping[str, Identity | tuple[str, str]],
        operators: Iterable[str] = (),
        scrapers: Iterable[str] = (),
    ) -> ApiKeys:
        """Keys given in code: ``{secret: Identity(...) or (tenant id, agent id)}``; hashed at
        once. An ``Identity`` holds names already; a tuple holds ids as users give them (encoded
        here). Secrets in ``operators`` are operator keys, in ``scrapers`` metrics-only keys."""
        ops, scrape = set(operators), set(scrapers)
        entries: list[tuple[str, Principal]] = []
        for secret, who in keys.items():
            if len(secret) < 16:
                raise InvalidInput("API keys must be at least 16 characters")
            try:
                entry = KeyEntry(
                    sha256=hash_key(secret),
                    agent="-" if isinstance(who, Identity) else who[1],
                    tenant="-" if isinstance(who, Identity) else who[0],
                    operator=secret in ops,
                    metrics_only=secret in scrape,
                )
            except ValidationError as exc:
                raise invalid_from(exc, "api key") from None
            principal = entry.principal()
            if isinstance(who, Identity):
                principal = principal.model_copy(update={"identity": who})
            entries.append((entry.sha256, principal))
        return cls(entries)

    @classmethod
    def from_file(cls, path: Path) -> ApiKeys:
        keys = cls()
        keys._path = path
        keys._load()
        return keys

    def _load(self) -> None:
        assert self._path is not None
        path = self._path
        try:
            st = path.stat()
            raw = path.read_bytes()
        except OSError as exc:
            raise InvalidInput(f"cannot read API keys file {path}: {exc}") from None
        self._by_digest = self._index(read_keys_file(raw, path).keys)
        self._seen = (st.st_ino, st.st_size, st.st_mtime_ns)
        self._checked = time.monotonic()

    def _follow(self) -> None:
        """Read the file again if it changed since it was last read (checked every reload_s)."""
        if self._path is None or time.monotonic() - self._checked < self.reload_s:
            return
        self._checked = time.monotonic()
        try:
            st = self._path.stat()
            if (st.st_ino, st.st_size, st.st_mtime_ns) == self._seen:
                return
            self._load()
        except InvalidInput as exc:
            get_logger("membus.service").warning("keys.reload_failed", error=str(exc))
            return
        except OSError as exc:  # deleted or unreadable: keep what we had, say so
            get_logger("membus.service").warning("keys.reload_failed", error=str(exc))
            return
        get_logger("membus.service").info("keys.reloaded", keys=len(self._by_digest))

    def entries(self) -> list[tuple[str, Principal]]:
        """(digest, principal) of every key, as last read."""
        self._follow()
        return [(digest, p) for digest, (_, p) in self._by_digest.items()]

    def authenticate(self, key: str | None) -> Principal:
        self._follow()
        if not key:
            raise Unauthenticated(
                "missing API key: send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'"
            )
        digest = hashlib.sha256(key.encode("utf-8", "surrogateescape")).digest()
        found = self._by_digest.get(digest.hex())
        if found is None or not hmac.compare_digest(found[0], digest):
            raise Unauthenticated("unknown API key")
        return found[1]


def read_keys_file(raw: bytes, path: Path) -> KeysFile:
    """Parse a keys file's bytes; ``InvalidInput`` names the file and what is wrong."""
    try:
        return KeysFile.model_validate(orjson.loads(raw))
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"API keys file {path} is not JSON: {exc}") from None
    except ValidationError as exc:
        raise invalid_from(exc, f"API keys file {path}") from None


def presented_key(authorization: str | None, x_api_key: str | None) -> str | None:
    """The key from ``Authorization: Bearer`` or ``X-API-Key`` (the former wins)."""
    if authorization:
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            raise Unauthenticated("Authorization header must be 'Bearer <key>'")
        return value.strip()
    return x_api_key.strip() if x_api_key else None

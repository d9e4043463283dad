"""Policy lines: what a line may say, where lines live, and how a change reaches every process.

Grammar (policies/README.md has the full story)::

    p, <subject>, <tenant>, <pattern>, <actions>[, allow|deny]   subject: agent, role:<name>, *
    g, <agent or role:x>, role:<name>, <tenant>                   membership / inheritance
    g2, <agent, role:x or *>, <label>, <tenant>                   clearance

A ``PolicySource`` stores the lines (a CSV file for one host, a Redis set shared by a fleet, or
memory) and a revision that changes with them. ``PolicyWatcher`` announces changes on a Redis
pub/sub channel and calls back on every announcement from another process; because pub/sub drops
messages while a subscriber is disconnected, it also re-checks the source revision after every
(re)connect and every ``resync_s`` seconds, so a missed message costs at most one resync period.

The bound a change keeps while its announcement gets through is ``PROPAGATION_BOUND_S``: a
recall that another process starts that long after ``add_policy``/``remove_policy`` was called
obeys the change. tests/test_permissions_e2e.py checks it with that process's writers flooded
(measured: 0.1-0.2 s typical, 0.67 s worst with the host's two cores also saturated).

We do not use the ``redis-watcher`` package: it connects by host/port only (our embedded Redis is
a unix socket), runs a thread per watcher, reports errors with ``print`` and ships unrelated
top-level packages (``node_modules``, ``examples``) in its wheel.
"""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Final, Protocol, runtime_checkable

import anyio
import orjson
import redis.asyncio as aioredis
from anyio.abc import TaskStatus
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from membus.core.envelope import validate_name, validate_scope
from membus.core.logs import get_logger
from membus.core.redis import Redis
from membus.errors import InvalidInput, Unavailable

ACTIONS: Final = ("publish", "recall", "subscribe", "forget", "erase", "admin")
LEVELS: Final = {"public": 0, "internal": 1, "confidential": 2, "restricted": 3}
SELF: Final = "{self}"
ROLE: Final = "role:"
ANY: Final = "*"
DEFAULT_CHANNEL = "membus:policy:changed"
# What README and policies/README.md promise, and what the cross-process tests assert.
PROPAGATION_BOUND_S: Final = 1.0
# hash tag: lines and revision share a cluster slot, so one MULTI can bump both
DEFAULT_KEY = "membus:{policy}"


def canonical_line(line: str) -> str:
    """One spelling per line (``p, a, b``) so sets, files and removals agree on identity."""
    return ", ".join(field.strip() for field in line.split(","))


def policy_lines(text: str) -> list[str]:
    """Non-blank, non-comment lines in canonical form."""
    out = []
    for raw in text.splitlines():
        stripped = raw.strip()
        if stripped and not stripped.startswith("#"):
            out.append(canonical_line(stripped))
    return out


# -- grammar --------------------------------------------------------------------------------------


def under(scope: str, root: str) -> bool:
    return scope == root or scope.startswith(root + "/")


@lru_cache(maxsize=65536)
def valid_scope(scope: str) -> bool:
    """Scopes the envelope accepts; anything else (``a/../b``, ``a*``, ``a/``) never matches."""
    try:
        validate_scope(scope)
    except InvalidInput:
        return False
    return True


# -- policy lines --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Pattern:
    root: str  # may contain a {self} segment
    subtree: bool
    has_self: bool

    def resolve(self, agent: str) -> str:
        return self.root.replace(SELF, agent) if self.has_self else self.root

    def matches(self, scope: str, agent: str) -> bool:
        if not valid_scope(scope):
            return False
        root = self.resolve(agent)
        return under(scope, root) if self.subtree else scope == root


@lru_cache(maxsize=4096)
def parse_pattern(text: str) -> Pattern:
    """``a/b`` (exact) or ``a/b/*`` (subtree); ``{self}`` only as a whole segment."""
    subtree = text.endswith("/*")
    body = text[:-2] if subtree else text
    probe = body.replace(SELF, "x")  # {self} stands for a valid name: check the rest
    if not valid_scope(probe) or any(SELF in seg and seg != SELF for seg in body.split("/")):
        raise ValueError(f"bad scope pattern {text!r}: use 'a/b', 'a/b/*' or '{SELF}' segments")
    return Pattern(body, subtree, SELF in body)


@dataclass(frozen=True, slots=True)
class Rule:
    sub: str
    tenant: str
    pattern: Pattern
    actions: frozenset[str] | None  # None: every action
    allow: bool
    text: str

    def acts(self, action: str) -> bool:
        return self.actions is None or action in self.actions


def _member(value: str, what: str, *, star: bool = False) -> str:
    if star and value == ANY:
        return value
    validate_name(value.removeprefix(ROLE), what)
    return value


def _actions(text: str) -> frozenset[str] | None:
    if text == ANY:
        return None
    acts = text.split("|")
    bad = [a for a in acts if a not in ACTIONS]
    if bad:
        raise ValueError(f"unknown action(s) {bad}; known: {', '.join(ACTIONS)} or *")
    return frozenset(acts)


@dataclass
class PolicySet:
    """Validated lines grouped by tenant."""

    rules: dict[str, list[Rule]] = field(default_factory=dict)
    links: dict[str, list[tuple[str, str]]] = field(default_factory=dict)
    clearances: dict[str, list[tuple[str, int]]] = field(default_factory=dict)
    lines: list[str] = field(default_factory=list)

    @classmethod
    def parse(cls, text: str | Iterable[str]) -> PolicySet:
        rows = policy_lines(text) if isinstance(text, str) else [*text]
        out, problems = cls(), []
        for n, line in enumerate(rows, 1):
            try:
                out._add(line)
            except (ValueError, InvalidInput) as exc:
                problems.append({"field": f"line {n}", "reason": f"{line!r}: {exc}"})
        if problems:
            summary = "; ".join(p["reason"] for p in problems[:5])
            raise InvalidInput(f"invalid policy ({len(problems)} bad lines): {summary}", problems)
        return out

    def _add(self, line: str) -> None:
        f = [x.strip() for x in line.split(",")]
        kind, args = f[0], f[1:]
        if kind == "p" and len(args) in (4, 5):
            sub, tenant, obj, act, eft = (*args, "allow") if len(args) == 4 else args
            if eft not in ("allow", "deny"):
                raise ValueError("effect must be 'allow' or 'deny'")
            rule = Rule(
                _member(sub, "subject", star=True),
                validate_name(tenant, "tenant"),
                parse_pattern(obj),
                _actions(act),
                eft == "allow",
                ", ".join(["p", sub, tenant, obj, act, eft]),
            )
            self.rules.setdefault(tenant, []).append(rule)
            line = rule.text
        elif kind == "g" and len(args) == 3:
            member, role, tenant = args
            if not role.startswith(ROLE):
                raise ValueError(f"the role must be named '{ROLE}<name>'")
            link = (_member(member, "member"), _member(role, "role"))
            self.links.setdefault(validate_name(tenant, "tenant"), []).append(link)
        elif kind == "g2" and len(args) == 3:
            member, label, tenant = args
            if label not in LEVELS:
                raise ValueError(f"unknown label {label!r}; known: {', '.join(LEVELS)}")
            grant = (_member(member, "member", star=True), LEVELS[label])
            self.clearances.setdefault(validate_name(tenant, "tenant"), []).append(grant)
        else:
            raise ValueError("expected 'p, sub, tenant, pattern, actions[, eft]', 'g, ...' or 'g2'")
        self.lines.append(line)

    def tenants(self) -> set[str]:
        return {*self.rules, *self.links, *self.clearances}


OWN_ACTIONS: Final = "publish|recall|subscribe|forget"


def own_scope_rule(tenant: str) -> Rule:
    """The built-in line that makes ``agent/<self>/…`` usable by its agent (not ``admin``)."""
    pattern = f"agent/{SELF}/*"
    text = f"p, {ANY}, {tenant}, {pattern}, {OWN_ACTIONS}, allow"
    return Rule(ANY, tenant, parse_pattern(pattern), _actions(OWN_ACTIONS), True, text)


# -- sources --------------------------------------------------------------------------------------


@runtime_checkable
class PolicySource(Protocol):
    async def load(self) -> str:
        """The policy as CSV text (one casbin line per row)."""
        ...

    async def revision(self) -> str:
        """Changes whenever the lines change; compared to decide whether to reload."""
        ...

    async def add(self, lines: Sequence[str]) -> None: ...

    async def remove(self, lines: Sequence[str]) -> None: ...


class FileSource:
    """A policy CSV on disk. Edits rewrite it atomically; comments of removed lines stay."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    async def load(self) -> str:
        try:
            return await anyio.Path(self.path).read_text(encoding="utf-8")
        except FileNotFoundError:
            raise Unavailable(f"policy file {self.path} does not exist") from None

    async def revision(self) -> str:
        try:
            st = await anyio.Path(self.path).stat()
        except FileNotFoundError:
            return "missing"
        return f"{st.st_mtime_ns}:{st.st_size}"

    async def add(self, lines: Sequence[str]) -> None:
        text = await self.load()
        have = set(policy_lines(text))
        new = [canonical_line(x) for x in lines if canonical_line(x) not in have]
        if new:
            sep = "" if text.endswith("\n") or not text else "\n"
            await anyio.to_thread.run_sync(self._write, text + sep + "\n".join(new) + "\n")

    async def remove(self, lines: Sequence[str]) -> None:
        drop = {canonical_line(x) for x in lines}
        text = await self.load()
        kept = [raw for raw in text.splitlines() if canonical_line(raw.strip()) not in drop]
        await anyio.to_thread.run_sync(self._write, "\n".join(kept) + "\n")

    def _write(self, text: str) -> None:
        # write-then-rename: a reader sees the old file or the new one, never half of one
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, self.path)


class MemorySource:
    """Lines held in this process only: tests, demos, or policy built by code."""

    def __init__(self, text: str = "") -> None:
        self._lines = dict.fromkeys(policy_lines(text))
        self._rev = 0

    async def load(self) -> str:
        return "\n".join(self._lines) + "\n"

    async def revision(self) -> str:
        return str(self._rev)

    async def add(self, lines: Sequence[str]) -> None:
        self._lines.update(dict.fromkeys(canonical_line(x) for x in lines))
        self._rev += 1

    async def remove(self, lines: Sequence[str]) -> None:
        for x in lines:
            self._lines.pop(canonical_line(x), None)
        self._rev += 1


class RedisSource:
    """Lines in a Redis set ``<key>:lines``, a counter ``<key>:rev`` bumped in the same MULTI."""

    def __init__(self, redis: Redis, key: str = DEFAULT_KEY) -> None:
        self.redis = redis
        self.lines_key, self.rev_key = f"{key}:lines", f"{key}:rev"

    async def load(self) -> str:
        members = await self.redis.smembers(self.lines_key)
        return "\n".join(sorted(_text(m) for m in members)) + "\n"

    async def revision(self) -> str:
        rev = await self.redis.get(self.rev_key)
        return _text(rev) if rev is not None else "0"

    async def add(self, lines: Sequence[str]) -> None:
        if lines:
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.sadd(self.lines_key, *[canonical_line(x) for x in lines])
                pipe.incr(self.rev_key)
                await pipe.execute()

    async def remove(self, lines: Sequence[str]) -> None:
        if lines:
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.srem(self.lines_key, *[canonical_line(x) for x in lines])
                pipe.incr(self.rev_key)
                await pipe.execute()

    async def seed(self, text: str) -> bool:
        """Load ``text`` only if the store is empty (first boot of a fleet); True if it did."""
        if await self.redis.scard(self.lines_key):
            return False
        await self.add(policy_lines(text))
        return True


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class PolicyWatcher:
    """Pub/sub change announcements between processes sharing one policy source."""

    def __init__(
        self,
        redis: Redis,
        channel: str = DEFAULT_CHANNEL,
        resync_s: float = 30.0,
    ) -> None:
        self.redis, self.channel, self.resync_s = redis, channel, resync_s
        self.origin = uuid.uuid4().hex  # our own announcements come back to us; skip them
        self._log = get_logger("membus.policy").bind(channel=channel)

    async def announce(self, revision: str) -> None:
        payload = orjson.dumps({"origin": self.origin, "revision": revision})
        try:
            await self.redis.publish(self.channel, payload)
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            # The change is stored; others pick it up at their next resync.
            self._log.warning("policy.announce_failed", error=str(exc))

    async def run(
        self,
        on_change: Callable[[], Awaitable[None]],
        *,
        task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Call ``on_change`` for foreign announcements and after reconnects; until cancelled."""
        started, backoff = False, 0.1
        while True:
            pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self.channel)
                if started:
                    await on_change()  # we may have missed announcements while away
                else:
                    started = True
                    task_status.started()
                backoff = 0.1
                await self._listen(pubsub, on_change)
            except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
                self._log.warning("policy.watch_disconnected", error=str(exc), retry_s=backoff)
                await anyio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
            finally:
                with anyio.CancelScope(shield=True):
                    await pubsub.aclose()

    async def _listen(
        self, pubsub: aioredis.client.PubSub, on_change: Callable[[], Awaitable[None]]
    ) -> None:
        while True:
            msg = await pubsub.get_message(timeout=self.resync_s)
            if msg is None:
                await on_change()  # periodic resync: cheap when the revision is unchanged
                continue
            try:
                origin = orjson.loads(msg["data"]).get("origin")
            except (orjson.JSONDecodeError, AttributeError):
                origin = None
            if origin != self.origin:
                await on_change()

"""What the CLI's commands do on a bus, one function each, wherever the bus is.

Each operation takes the bus and keyword arguments that travel as JSON. ``perform`` runs it on a
bus this process opens, or, when a running node holds the embedded directory
(``membus.cli.node``), asks the node to run the same function on its bus. The node validates
the arguments against the function's own annotations and only runs functions registered here.
"""

from __future__ import annotations

import typing
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from datetime import datetime
from typing import Any, Concatenate, Literal, ParamSpec, TypeVar

from pydantic import BaseModel, ConfigDict, TypeAdapter, validate_call
from pydantic_core import to_jsonable_python

from membus.access.audit import AuditRecord
from membus.access.gate import Action, Decision, Identity
from membus.access.signing import KeyInfo
from membus.bus.api import Bus
from membus.bus.draft import Receipt
from membus.bus.erasure import ErasureReport
from membus.bus.memories import ImportReport, MemoryPage
from membus.cli.context import State
from membus.cli.settings import Settings
from membus.core.envelope import Label, validate_scope
from membus.core.ids import encode_id
from membus.core.keys import TenantKeys
from membus.errors import Conflict, InvalidInput, Unavailable
from membus.store.port import Hit, Memory
from membus.stream.dlq import DeadLetter, Replayed
from membus.stream.feed import Change

P = ParamSpec("P")
T = TypeVar("T")

Op = Callable[..., Awaitable[Any]]
StreamOp = Callable[..., AsyncIterator[Any]]

OPS: dict[str, Op] = {}
STREAMS: dict[str, StreamOp] = {}
_NEEDS_STORE: dict[str, bool] = {}
# a writer blocks in XREADGROUP for block_ms (200 ms by default) and then reads again: one that
# has not touched the stream for this long is gone
_WRITER_SILENT_MS = 5_000


def operation(*, needs_store: bool) -> Callable[[Callable[P, T]], Callable[P, T]]:
    def register(fn: Callable[P, T]) -> Callable[P, T]:
        name = fn.__name__
        if typing.get_origin(typing.get_type_hints(fn)["return"]) is AsyncIterator:
            STREAMS[name] = fn  # type: ignore[assignment]
        else:
            OPS[name] = fn  # type: ignore[assignment]
        _NEEDS_STORE[name] = needs_store
        return fn

    return register


def who(agent: str, tenant: str) -> Identity:
    # ids as users give them, encoded as every door encodes them (membus.core.ids), once: the
    # CLI hands raw ids to these operations, here or at a running node
    return Identity(tenant=encode_id(tenant, "tenant"), agent=encode_id(agent, "agent"))


# -- running an operation here or at the node -------------------------------------------------


async def _open(stack: AsyncExitStack, state: State, name: str) -> Bus | Any:
    """A bus this process opens, or (the embedded directory held by a live node) that node."""
    from membus.cli import node
    from membus.cli.target import command_bus

    try:
        return await stack.enter_async_context(command_bus(state, needs_store=_NEEDS_STORE[name]))
    except Conflict as held:
        found = await stack.enter_async_context(node.connect(state.settings.data_dir))
        if found is None:
            raise held from None
        return found


def _result_type(fn: Callable[..., Any]) -> TypeAdapter[Any]:
    hint = typing.get_type_hints(fn)["return"]
    if typing.get_origin(hint) is AsyncIterator:
        hint = typing.get_args(hint)[0]
    return TypeAdapter(hint)


async def perform(
    state: State, fn: Callable[Concatenate[Bus, P], Awaitable[T]], *a: P.args, **kw: P.kwargs
) -> T:
    """``fn(bus, **kw)`` on this process's bus or at the node holding the directory."""
    from membus.cli.node import NodeClient

    assert not a, "operations take keyword arguments (they travel as JSON)"
    async with AsyncExitStack() as stack:
        bus = await _open(stack, state, fn.__name__)
        if isinstance(bus, NodeClient):
            raw = await bus.call(fn.__name__, to_jsonable_python(kw))
            result: T = _result_type(fn).validate_python(raw)
            return result
        return await fn(bus, *a, **kw)


async def perform_stream(
    state: State, fn: Callable[Concatenate[Bus, P], AsyncIterator[T]], *a: P.args, **kw: P.kwargs
) -> AsyncGenerator[T, None]:
    from membus.cli.node import NodeClient

    assert not a, "operations take keyword arguments (they travel as JSON)"
    async with AsyncExitStack() as stack:
        bus = await _open(stack, state, fn.__name__)
        if isinstance(bus, NodeClient):
            item = _result_type(fn)
            async for raw in bus.stream(fn.__name__, to_jsonable_python(kw)):
                yield item.validate_python(raw)
            return
        async for x in fn(bus, *a, **kw):
            yield x


# -- the node's side --------------------------------------------------------------------------

_CHECKED = ConfigDict(arbitrary_types_allowed=True)


def _lookup(table: dict[str, Any], name: str) -> Any:
    if name not in table:
        raise InvalidInput(f"no operation {name!r}")
    return table[name]


def node_handlers(
    bus: Bus,
) -> tuple[
    Callable[[str, dict[str, Any]], Awaitable[Any]],
    Callable[[str, dict[str, Any]], AsyncIterator[Any]],
]:
    """The node's ``call`` and ``stream`` over its open ``bus``: registered operations only,
    arguments validated against their annotations, results as JSON-ready values."""
    from pydantic import ValidationError

    from membus.core.envelope import invalid_from

    async def call(name: str, kwargs: dict[str, Any]) -> Any:
        fn = _lookup(OPS, name)
        try:
            # a coroutine function's arguments are validated when it is awaited
            result = await validate_call(config=_CHECKED)(fn)(bus, **kwargs)
        except ValidationError as exc:
            raise invalid_from(exc, name) from None
        return _result_type(fn).dump_python(result, mode="json")

    async def stream(name: str, kwargs: dict[str, Any]) -> AsyncIterator[Any]:
        fn = _lookup(STREAMS, name)
        item = _result_type(fn)
        try:
            items = validate_call(config=_CHECKED)(fn)(bus, **kwargs)
        except ValidationError as exc:
            raise invalid_from(exc, name) from None
        async for x in items:
            yield item.dump_python(x, mode="json")

    return call, stream


# -- operations -------------------------------------------------------------------------------


@operation(needs_store=True)
async def stats(bus: Bus) -> dict[str, Any]:
    return await bus.stats()


@operation(needs_store=False)
async def stream_stats(bus: Bus) -> dict[str, Any]:
    """Streams only, beside a worker holding an edge store: the memory count is unknown."""
    return {**await bus.stats(), "memories": None}


class Recalled(BaseModel):
    model_config = ConfigDict(frozen=True)
    hits: list[Hit]
    # events of the tenant that no running writer will read: recall cannot see them yet
    unconsumed: int = 0


async def unconsumed(bus: Bus, tenant: str) -> int:
    """Events of ``tenant`` waiting in its stream while no writer reads it (0: none, or a
    writer has read the stream within the last few seconds)."""
    from membus.stream.ops import group_stats

    events, group = TenantKeys(tenant).events, bus.config.worker.group
    if not await bus.redis.xlen(events):
        return 0
    mine = [g for g in await group_stats(bus.redis, events) if g.group == group]
    if not mine:  # no writer ever read this stream
        return int(await bus.redis.xlen(events))
    backlog = mine[0].pending + mine[0].lag
    if not backlog:
        return 0
    consumers: list[dict[str, Any]] = await bus.redis.xinfo_consumers(events, group)
    if any(int(c.get("idle", 0)) < _WRITER_SILENT_MS for c in consumers):
        return 0
    return backlog


@operation(needs_store=True)
async def recall(
    bus: Bus,
    *,
    agent: str,
    tenant: str,
    query: str,
    k: int,
    scopes: list[str] | None,
    kinds: list[str] | None,
    subjects: list[str] | None,
    since: datetime | None,
    until: datetime | None,
    wait: bool | None,
    min_score: float | None = None,
) -> Recalled:
    caller = who(agent, tenant)
    stuck = 0
    if bus.config.writers == 0:  # writers run elsewhere (`membus worker`), if anywhere
        stuck = await unconsumed(bus, caller.tenant)
        if stuck and wait:
            raise Unavailable(
                f"{stuck} event(s) of tenant {caller.tenant!r} wait for a writer and none is "
                f"running (no consumer of group {bus.config.worker.group!r} read in the last "
                f"{_WRITER_SILENT_MS // 1000} s): start `membus worker`, or recall without --wait"
            )
    # in-process writers (embedded default): commit what earlier commands published
    if wait if wait is not None else bus.config.writers > 0:
        await bus.drain()
    hits = await bus.recall(
        caller,
        query,
        k=k,
        scopes=scopes,
        kinds=kinds,
        subjects=subjects,
        since=since,
        until=until,
        min_score=min_score,
    )
    return Recalled(hits=hits, unconsumed=stuck)


@operation(needs_store=False)
async def subscribe(
    bus: Bus,
    *,
    agent: str,
    tenant: str,
    scopes: list[str] | None,
    start: str,
    group: str | None,
) -> AsyncIterator[Change]:
    async for change in bus.subscribe(who(agent, tenant), scopes, start=start, group=group):
        yield change


@operation(needs_store=False)
async def audit(
    bus: Bus,
    *,
    tenant: str,
    agent: str | None,
    scope: str | None,
    action: str | None,
    decision: Literal["allow", "deny"] | None,
    since: datetime | None,
    until: datetime | None,
    limit: int,
) -> list[AuditRecord]:
    named = encode_id(tenant, "tenant")
    by = encode_id(agent, "agent") if agent is not None else None
    if scope is not None:
        validate_scope(scope)
    return await bus.audit.query(
        named,
        agent=by,
        scope=scope,
        action=action,
        decision=decision,
        since=since,
        until=until,
        limit=limit,
    )


@operation(needs_store=False)
async def dlq_list(bus: Bus, *, tenant: str, count: int, start: str) -> list[DeadLetter]:
    from membus.stream.dlq import list_dead

    return await list_dead(bus.redis, encode_id(tenant, "tenant"), count, start)


@operation(needs_store=False)
async def dlq_replay(bus: Bus, *, tenant: str, ids: list[str] | None) -> list[Replayed]:
    from membus.stream.dlq import replay

    return await replay(bus.redis, encode_id(tenant, "tenant"), ids)


@operation(needs_store=False)
async def dlq_drop(bus: Bus, *, tenant: str, ids: list[str] | None) -> int:
    from membus.stream.dlq import drop

    return await drop(bus.redis, encode_id(tenant, "tenant"), ids)


@operation(needs_store=True)
async def forget(
    bus: Bus,
    *,
    agent: str,
    tenant: str,
    memory_ids: list[str] | None,
    subject: str | None,
    by_agent: str | None,
    scope: str | None,
) -> ErasureReport:
    return await bus.forget(
        who(agent, tenant), memory_ids=memory_ids, subject=subject, agent=by_agent, scope=scope
    )


@operation(needs_store=False)
async def policy_decision(
    bus: Bus, *, agent: str, tenant: str, action: Action, scope: str
) -> Decision:
    return await bus.gate.decision(who(agent, tenant), action, validate_scope(scope))


# -- memories ---------------------------------------------------------------------------------


async def _settled(bus: Bus, wait: bool | None) -> None:
    """Reads first commit what earlier commands published, where writers run in process."""
    if wait if wait is not None else bus.config.writers > 0:
        await bus.drain()


@operation(needs_store=True)
async def memories_list(
    bus: Bus,
    *,
    agent: str,
    tenant: str,
    scopes: list[str] | None,
    kinds: list[str] | None,
    subjects: list[str] | None,
    agents: list[str] | None,
    since: datetime | None,
    until: datetime | None,
    as_of: datetime | None,
    limit: int,
    cursor: str | None,
    wait: bool | None,
) -> MemoryPage:
    caller = who(agent, tenant)
    await _settled(bus, wait)
    return await bus.list(
        caller,
        scopes=scopes,
        kinds=kinds,
        subjects=subjects,
        agents=agents,
        since=since,
        until=until,
        as_of=as_of,
        limit=limit,
        cursor=cursor,
    )


@operation(needs_store=True)
async def memories_get(
    bus: Bus, *, agent: str, tenant: str, memory_id: str, wait: bool | None
) -> Memory:
    caller = who(agent, tenant)
    await _settled(bus, wait)
    return await bus.get(caller, memory_id)


@operation(needs_store=True)
async def memories_history(
    bus: Bus,
    *,
    agent: str,
    tenant: str,
    memory_id: str | None,
    scope: str | None,
    subject: str | None,
    key: str | None,
    limit: int,
    wait: bool | None,
) -> list[Memory]:
    caller = who(agent, tenant)
    await _settled(bus, wait)
    return await bus.history(caller, memory_id, scope=scope, subject=subject, key=key, limit=limit)


@operation(needs_store=True)
async def memories_update(
    bus: Bus,
    *,
    agent: str,
    tenant: str,
    memory_id: str,
    content: str,
    metadata: dict[str, Any] | None,
    label: Label | None,
) -> Receipt:
    caller = who(agent, tenant)
    await _settled(bus, None)
    return await bus.update(caller, memory_id, content, metadata=metadata, label=label)


@operation(needs_store=True)
async def memories_delete(bus: Bus, *, agent: str, tenant: str, memory_id: str) -> ErasureReport:
    caller = who(agent, tenant)
    await _settled(bus, None)
    return await bus.delete(caller, memory_id)


@operation(needs_store=True)
async def memories_export(
    bus: Bus,
    *,
    agent: str,
    tenant: str,
    scopes: list[str] | None,
    as_of: datetime | None,
    wait: bool | None,
) -> AsyncIterator[Memory]:
    caller = who(agent, tenant)
    await _settled(bus, wait)
    async for m in bus.export(caller, scopes=scopes, as_of=as_of):
        yield m


@operation(needs_store=True)
async def memories_import(
    bus: Bus, *, agent: str, tenant: str, records: list[Memory]
) -> ImportReport:
    return await bus.import_memories(who(agent, tenant), records)


# -- signing keys -----------------------------------------------------------------------------


@operation(needs_store=False)
async def signing_keys(bus: Bus, *, tenant: str, agent: str | None) -> list[KeyInfo]:
    return await bus.keys.list(tenant, agent)


@operation(needs_store=False)
async def signing_rotate(bus: Bus, *, tenant: str, agent: str, grace_s: float) -> list[KeyInfo]:
    await bus.keys.rotate(tenant, agent, grace_s)
    return await bus.keys.list(tenant, agent)


@operation(needs_store=False)
async def signing_revoke(bus: Bus, *, tenant: str, agent: str, kid: str) -> list[KeyInfo]:
    await bus.keys.revoke(tenant, agent, kid)
    return await bus.keys.list(tenant, agent)


def node_beside(settings: Settings) -> Callable[[Bus], AbstractAsyncContextManager[object]] | None:
    """What ``serve`` and ``mcp`` run beside their bus: the node endpoint for the CLI, when
    they hold the data directory (an embedded Redis or an Edge store lives there)."""
    if not (settings.embedded or settings.store_engine == "edge"):
        return None
    directory = settings.data_dir

    @asynccontextmanager
    async def beside(bus: Bus) -> AsyncIterator[object]:
        from membus.cli import node

        call, stream = node_handlers(bus)
        async with node.hosting(directory, call, stream) as info:
            yield info

    return beside

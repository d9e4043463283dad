"""A LangGraph ``BaseStore`` over membus: ``MembusStore.open(path_or_url, ...)`` or
``MembusStore(port)``.

Namespaces are scopes (``("team", "support")`` is ``team/support``, each label a scope segment),
so the permission policy on scopes governs what a graph may read and write. An item is a keyed
memory of kind ``item``: subject and key are the item key, the content is a text rendering of
the value (what gets embedded), and the value itself rides as JSON in the metadata. A value too
large for one event's metadata is compressed and split over keyed memories of kind
``item_part``, published before the item, which names them by event id; the item is read back
whole or not at all.

Keyed facts consolidate: (namespace, key) has one current memory, earlier values are kept as
history (recallable ``as_of`` a past time), so ``get`` and ``search`` see the current value;
``delete`` publishes a retraction of the key (and of its parts), which withdraws every version.
``put`` and ``delete`` return once the change is searchable (read-your-writes). ``get`` and a
search without a query page through ``list`` (no cap); a search with a query is a recall.

Sync and async: the store runs on the event loop that holds its port. ``MembusStore.open``
starts that loop in a thread of its own, so ``graph.invoke`` (sync) and ``graph.ainvoke`` (any
loop) both work; a store built with ``MembusStore(port)`` lives on the loop that built it, whose
sync methods work from other threads (where LangGraph runs sync nodes). Per-item TTLs are
refused as LangGraph's own stores refuse them (``NotImplementedError``): membus expires memories
by kind or scope (``consolidation.ttl_by_kind``/``ttl_by_scope``), not per item, and cannot
refresh a TTL on read. Needs ``pip install 'membus[langgraph]'``.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import threading
import time
import weakref
import zlib
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Callable,
    Coroutine,
    Iterable,
    Mapping,
    Sequence,
)
from concurrent.futures import Future
from contextlib import AbstractAsyncContextManager, aclosing, asynccontextmanager
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, Literal, TypeVar
from uuid import uuid4

import anyio
import orjson

from membus.bus.api import MAX_K
from membus.bus.draft import Draft
from membus.bus.memories import MAX_PAGE
from membus.core.config import DEFAULT_PATH, MembusConfig
from membus.core.envelope import MAX_CONTENT_BYTES, MAX_METADATA_BYTES, validate_scope
from membus.core.ids import display_id, encode_id
from membus.errors import InvalidInput, MembusError, PermissionDenied, Unavailable
from membus.integrations.port import DEFAULT_WAIT_S, AgentPort, ClientPort, MemoryPort
from membus.runtime.host import open as open_bus
from membus.service.client import Client
from membus.store.port import Memory
from membus.writer.consolidate import RETRACTION

try:
    from langgraph.store.base import (
        NOT_PROVIDED,
        GetOp,
        InvalidNamespaceError,
        Item,
        ListNamespacesOp,
        MatchCondition,
        NamespacePath,
        NotProvided,
        Op,
        PutOp,
        Result,
        SearchItem,
        SearchOp,
    )
    from langgraph.store.base.batch import AsyncBatchedBaseStore
    from langgraph.store.base.embed import get_text_at_path
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "membus.integrations.langgraph needs LangGraph: pip install 'membus[langgraph]'"
    ) from exc

if TYPE_CHECKING:
    from langchain_core.messages import SystemMessage

ITEM_KIND: Final = "item"
PART_KIND: Final = "item_part"
VALUE_FIELD: Final = "langgraph_value"  # metadata field holding the value as a JSON string
PARTS_FIELD: Final = "langgraph_parts"  # a large item's metadata: its parts' event ids, in order
PART_FIELD: Final = "langgraph_part"  # one part's metadata: a slice of the packed value
MAX_KEY_CHARS: Final = 128  # an event's key
# a part's slice, in base64 characters: its metadata stays under the event's limit
_PART_CHARS: Final = MAX_METADATA_BYTES - 1024
# a large item names each part by event id (a 26-character ULID, 29 bytes as JSON)
_MAX_PARTS: Final = (MAX_METADATA_BYTES - 256) // 29
# parts per publish: well under the service's default 1 MiB request body
_PARTS_PER_PUBLISH: Final = 64
_POLL_S: Final = 0.05

T = TypeVar("T")


class InvalidNamespace(InvalidInput, InvalidNamespaceError):
    """A namespace that is not a scope; catchable as membus ``InvalidInput`` or LangGraph's
    ``InvalidNamespaceError``."""


def scope_of(namespace: Sequence[str]) -> str:
    """``("team", "support")`` -> ``team/support``: each label is an id, encoded into one scope
    segment as the door encodes agent ids (``("users", "Alice@x.org")`` ->
    ``users/x--_41_lice_40_x_2e_org``, see membus.core.ids), so any label is safe and two
    labels never share a segment."""
    if not namespace:
        raise InvalidNamespace("namespace is empty", [{"field": "namespace", "reason": "empty"}])
    if any(not isinstance(label, str) for label in namespace):
        raise InvalidNamespace(
            f"namespace {tuple(namespace)!r}: labels are strings",
            [{"field": "namespace", "reason": "label is not a string"}],
        )
    try:
        segments = [encode_id(label, "namespace") for label in namespace]
        return validate_scope("/".join(segments), "namespace")
    except InvalidInput as exc:
        raise InvalidNamespace(f"namespace {tuple(namespace)!r}: {exc}", exc.problems) from None


def namespace_of(scope: str) -> tuple[str, ...]:
    """The namespace a scope shows as: each segment decoded (a hashed one stays as it is)."""
    return tuple(display_id(segment) for segment in scope.split("/"))


def render(value: Mapping[str, Any], fields: Sequence[str] | None) -> str:
    """The text embedded for a value: the chosen fields, or every top-level field."""
    if fields is not None:
        parts = [t for path in fields for t in get_text_at_path(dict(value), path)]
        return "\n".join(p for p in parts if p.strip())
    lines = []
    for k, v in value.items():
        text = v if isinstance(v, str) else orjson.dumps(v, default=str).decode()
        lines.append(f"{k}: {text}")
    return "\n".join(lines)


def check_key(namespace: Sequence[str], key: str) -> str:
    """An item key membus can hold: the key of a keyed memory."""
    problem = None
    if not isinstance(key, str) or not key.strip():
        problem = "is blank"
    elif len(key) > MAX_KEY_CHARS:
        problem = f"is longer than {MAX_KEY_CHARS} characters"
    elif any((ord(c) < 32 and c not in "\t\n") or ord(c) == 127 for c in key):
        problem = "contains control characters"
    if problem is not None:
        raise InvalidInput(
            f"item {tuple(namespace)!r} / {key!r}: the key {problem}",
            [{"field": "key", "problem": problem}],
        )
    return key


def item_name(namespace: Sequence[str], key: str | None = None) -> str:
    where = f"namespace {tuple(namespace)!r}"
    return where if key is None else f"item {tuple(namespace)!r} / {key!r}"


def _name_in(exc: MembusError, what: str) -> MembusError:
    """The same error (type, fields and all), its message leading with the item at fault: a
    LangGraph caller knows namespaces and keys, not scopes and events."""
    if exc.args and isinstance(exc.args[0], str) and not exc.args[0].startswith(what):
        exc.args = (f"{what}: {exc.args[0]}", *exc.args[1:])
    return exc


def _clip(text: str, limit: int = MAX_CONTENT_BYTES) -> str:
    """At most ``limit`` bytes of UTF-8: the embedded text of a large value is its start."""
    raw = text.encode("utf-8", "surrogatepass")
    return text if len(raw) <= limit else raw[:limit].decode("utf-8", "ignore")


def _part_subject(key: str) -> str:
    # a part's slot (subject "<key>#part", key its index) is never an item's: an item's
    # subject and key are equal
    return f"{key}#part"


def _refuse_ttl(store: MembusStore, ttl: float | None) -> None:
    if ttl is not None and not store.supports_ttl:  # LangGraph's own words and error
        raise NotImplementedError(
            f"TTL is not supported by {store.__class__.__name__}. "
            "Use a store implementation that supports TTL or set ttl=None."
        )


def _shared_value(m: Memory) -> dict[str, Any]:
    # a memory some other tool published: shown read-only, its provenance in the value
    return {
        "content": m.content,
        "kind": m.kind,
        "subject": m.subject,
        "agents": m.agents,
        "metadata": m.metadata,
    }


def matches(value: Any, flt: Any) -> bool:
    """LangGraph's filter semantics: equality, nested dicts, and $eq/$ne/$gt/$gte/$lt/$lte."""
    if isinstance(flt, dict):
        if any(k.startswith("$") for k in flt):
            return all(_compare(value, op, arg) for op, arg in flt.items())
        return isinstance(value, dict) and all(matches(value.get(k), v) for k, v in flt.items())
    return bool(value == flt)


def _compare(value: Any, op: str, arg: Any) -> bool:
    if op == "$eq":
        return bool(value == arg)
    if op == "$ne":
        return bool(value != arg)
    if op not in ("$gt", "$gte", "$lt", "$lte"):
        raise InvalidInput(f"unsupported filter operator {op!r}")
    try:
        a, b = float(value), float(arg)
    except (TypeError, ValueError):
        return False
    return {"$gt": a > b, "$gte": a >= b, "$lt": a < b, "$lte": a <= b}[op]


def _does_match(cond: MatchCondition, ns: tuple[str, ...]) -> bool:
    path = tuple(cond.path)
    if len(ns) < len(path):
        return False
    pairs = (
        zip(ns, path, strict=False)
        if cond.match_type == "prefix"
        else zip(reversed(ns), reversed(path), strict=False)
    )
    return all(p == "*" or n == p for n, p in pairs)


class MembusStore(AsyncBatchedBaseStore):
    """LangGraph store over a ``MemoryPort``. ``MembusStore.open(path_or_url, ...)`` builds one
    that works from sync and async code alike; ``MembusStore(port)`` must be created inside the
    event loop that runs the port.

    ``index``: value fields to embed (LangGraph path syntax), default the whole value.
    ``shared_memories``: let ``search`` also return memories other tools published into the
    searched scopes (read-only items keyed by memory id).
    """

    # membus expires memories by kind or scope, not per item, and cannot refresh on read
    supports_ttl: bool = False

    def __init__(
        self,
        port: MemoryPort,
        *,
        index: Sequence[str] | None = None,
        shared_memories: bool = False,
        wait_s: float = DEFAULT_WAIT_S,
    ) -> None:
        super().__init__()
        self.port, self.index_fields = port, list(index) if index is not None else None
        self.shared_memories, self.wait_s = shared_memories, wait_s
        self._owned: _LoopThread | None = None  # what ``open`` started, closed by ``close``

    # -- building one -------------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        target: str | Path = DEFAULT_PATH,
        *,
        agent: str | None = None,
        tenant: str = "default",
        api_key: str | None = None,
        config: MembusConfig | None = None,
        index: Sequence[str] | None = None,
        shared_memories: bool = False,
        wait_s: float = DEFAULT_WAIT_S,
    ) -> MembusStore:
        """A store on a bus directory (acting as ``agent`` of ``tenant``) or on a membus service
        URL (``http(s)://…``, acting as whoever ``api_key`` names), running on an event loop in
        a thread of its own: use it from ``graph.invoke`` and ``graph.ainvoke`` alike. Close it
        (``store.close()``, or ``with MembusStore.open(...) as store:``) to stop that loop and
        the bus; an embedded bus directory is held by one process at a time.

        Example::

            store = MembusStore.open("./.membus", agent="assistant")
            graph = builder.compile(store=store)
        """
        home = _LoopThread(
            _open_port(target, agent=agent, tenant=tenant, api_key=api_key, config=config)
        )
        try:
            port: MemoryPort = home.value
            store = home.call(
                lambda: cls(port, index=index, shared_memories=shared_memories, wait_s=wait_s)
            )
        except BaseException:
            home.close()
            raise
        store._owned = home
        # never closed: closed at exit, while the daemon thread still runs (a thread that is
        # not a daemon would hold up the interpreter's exit instead)
        weakref.finalize(store, home.close)
        return store

    def close(self) -> None:
        """Stop what ``open`` started (the bus or client, then its loop); a no-op otherwise."""
        owned, self._owned = self._owned, None
        if owned is not None:
            owned.close()

    def __enter__(self) -> MembusStore:
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- any loop, any thread -----------------------------------------------------------------

    async def _home(self, work: Coroutine[Any, Any, T]) -> T:
        """Run ``work`` on the store's loop: its port's connections belong to that loop."""
        try:
            here: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            here = None
        if here is self._loop:
            return await work
        if self._loop.is_closed():
            work.close()
            raise Unavailable(
                "this MembusStore's event loop has ended (it was built inside a loop that has "
                "since finished); build it with MembusStore.open(...) to use it across loops"
            )
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(work, self._loop))

    async def abatch(self, ops: Iterable[Op]) -> list[Result]:
        return await self._home(self._abatch(list(ops)))

    async def aget(
        self, namespace: tuple[str, ...], key: str, *, refresh_ttl: bool | None = None
    ) -> Item | None:
        return await self._home(super().aget(namespace, key, refresh_ttl=refresh_ttl))

    async def asearch(
        self,
        namespace_prefix: tuple[str, ...],
        /,
        *,
        query: str | None = None,
        filter: dict[str, Any] | None = None,
        limit: int = 10,
        offset: int = 0,
        refresh_ttl: bool | None = None,
    ) -> list[SearchItem]:
        return await self._home(
            super().asearch(
                namespace_prefix,
                query=query,
                filter=filter,
                limit=limit,
                offset=offset,
                refresh_ttl=refresh_ttl,
            )
        )

    async def aput(
        self,
        namespace: tuple[str, ...],
        key: str,
        value: Mapping[str, Any],
        index: Literal[False] | list[str] | None = None,
        *,
        ttl: float | NotProvided | None = NOT_PROVIDED,
    ) -> None:
        if not isinstance(ttl, NotProvided):
            _refuse_ttl(self, ttl)
        await self._home(super().aput(namespace, key, value, index, ttl=ttl))

    async def adelete(self, namespace: tuple[str, ...], key: str) -> None:
        await self._home(super().adelete(namespace, key))

    async def alist_namespaces(
        self,
        *,
        prefix: NamespacePath | None = None,
        suffix: NamespacePath | None = None,
        max_depth: int | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[tuple[str, ...]]:
        return await self._home(
            super().alist_namespaces(
                prefix=prefix, suffix=suffix, max_depth=max_depth, limit=limit, offset=offset
            )
        )

    # -- one batch, on the store's loop -------------------------------------------------------

    async def _abatch(self, ops: list[Op]) -> list[Result]:
        for op in ops:  # refuse a bad namespace, key or ttl before anything is written
            if isinstance(op, GetOp | PutOp):
                scope_of(op.namespace)
                check_key(op.namespace, op.key)
            elif isinstance(op, SearchOp) and op.namespace_prefix:
                scope_of(op.namespace_prefix)
            if isinstance(op, PutOp) and op.value is not None:
                _refuse_ttl(self, op.ttl)
        results: list[Result] = [None] * len(ops)
        # writes first, so reads batched with them see them (read-your-writes)
        await self._puts([op for op in ops if isinstance(op, PutOp)])
        failed: list[Exception] = []

        async def read(i: int, op: Op) -> None:
            try:
                if isinstance(op, GetOp):
                    results[i] = await self._get(op)
                elif isinstance(op, SearchOp):
                    results[i] = await self._search(op)
                elif isinstance(op, ListNamespacesOp):
                    results[i] = await self._list_namespaces(op)
                elif not isinstance(op, PutOp):
                    raise InvalidInput(f"unknown store operation {type(op).__name__}")
            except MembusError as exc:
                failed.append(_name_in(exc, _op_name(op)))
            except Exception as exc:  # re-raised below as itself, not as an ExceptionGroup
                failed.append(exc)

        async with anyio.create_task_group() as tg:
            for i, op in enumerate(ops):
                tg.start_soon(read, i, op)
        if failed:
            raise failed[0]
        return results

    # -- writes -------------------------------------------------------------------------------

    async def _puts(self, puts: list[PutOp]) -> None:
        drafts: list[Draft] = []
        owners: list[PutOp] = []  # the op each draft comes from, to name it in an error
        for op in puts:
            try:
                made = await self._drafts(op)
            except MembusError as exc:
                raise _name_in(exc, item_name(op.namespace, op.key)) from None
            drafts += made
            owners += [op] * len(made)
        if not drafts:
            return
        try:  # in put order: a delete after a put of the same key withdraws it
            await self.port.remember(drafts, wait_s=self.wait_s)
        except MembusError as exc:
            raise _name_in(exc, _culprits(exc, drafts, owners)) from None

    async def _drafts(self, op: PutOp) -> list[Draft]:
        scope = scope_of(op.namespace)
        if op.value is None:
            return await self._deletion(scope, op.key)
        try:
            raw = orjson.dumps(dict(op.value), default=str).decode()
        except TypeError as exc:  # orjson's error for a value JSON cannot carry
            raise InvalidInput(f"the value is not JSON: {exc}", [{"field": "value"}]) from None
        fields = self.index_fields if op.index is None else (op.index or None)
        text = render(op.value, fields) if op.index is not False else ""
        metadata: dict[str, Any] = {VALUE_FIELD: raw}
        if len(orjson.dumps(metadata)) > MAX_METADATA_BYTES:
            metadata = {PARTS_FIELD: await self._publish_parts(scope, op, raw)}
        return [
            Draft(
                content=_clip(text) if text.strip() else op.key,
                scope=scope,
                kind=ITEM_KIND,
                subject=op.key,
                key=op.key,
                metadata=metadata,
            )
        ]

    async def _publish_parts(self, scope: str, op: PutOp, raw: str) -> list[str]:
        """Publish a large value as parts (before the item that names them, so a reader of the
        item finds them); returns their event ids, in order."""
        packed = base64.b64encode(zlib.compress(raw.encode(), 6)).decode()
        slices = [packed[i : i + _PART_CHARS] for i in range(0, len(packed), _PART_CHARS)]
        if len(slices) > _MAX_PARTS:
            limit = _MAX_PARTS * _PART_CHARS * 3 // 4 // 1000
            raise InvalidInput(
                f"the value is {len(raw) // 1000} kB of JSON, {len(packed) * 3 // 4 // 1000} kB "
                f"compressed; an item holds up to {limit} kB compressed",
                [{"field": "value", "problem": "too large"}],
            )
        put = uuid4().hex[:12]  # each put's parts are new versions, never folded into old ones
        drafts = [
            Draft(
                content=f"part {i + 1} of {len(slices)} of item {op.key!r} ({put})",
                scope=scope,
                kind=PART_KIND,
                subject=_part_subject(op.key),
                key=str(i),
                metadata={PART_FIELD: chunk},
            )
            for i, chunk in enumerate(slices)
        ]
        ids: list[str] = []
        for start in range(0, len(drafts), _PARTS_PER_PUBLISH):
            receipts = await self.port.remember(drafts[start : start + _PARTS_PER_PUBLISH])
            ids += [r.event_id for r in receipts]
        return ids

    async def _deletion(self, scope: str, key: str) -> list[Draft]:
        """Retractions of the key and of its parts; none when there is no such item (deleting
        a missing key does nothing, as in LangGraph's own stores)."""
        if await self._find(scope, key) is None:
            return []
        out = [Draft(content=f"delete {key}", scope=scope, kind=RETRACTION, subject=key, key=key)]
        parts = self._memories(scopes=[scope], kinds=[PART_KIND], subjects=[_part_subject(key)])
        async with aclosing(parts):
            async for p in parts:
                if p.scope == scope and p.subject is not None and p.key is not None:
                    out.append(
                        Draft(
                            content=f"delete {key} part {p.key}",
                            scope=scope,
                            kind=RETRACTION,
                            subject=p.subject,
                            key=p.key,
                        )
                    )
        return out

    # -- reads --------------------------------------------------------------------------------

    async def _memories(
        self, *, page: int = MAX_PAGE, as_of: datetime | None = None, **filters: Any
    ) -> AsyncGenerator[Memory, None]:
        """Every memory of ``filters`` this identity may read, newest first, page by page."""
        cursor: str | None = None
        while True:
            got = await self.port.list_memories(limit=page, cursor=cursor, as_of=as_of, **filters)
            for m in got.memories:  # the cursor returns each memory once (bus.memories)
                yield m
            if got.cursor is None:
                return
            cursor = got.cursor

    async def _find(self, scope: str, key: str) -> Memory | None:
        """The current memory of item (scope, key): exactly that scope, not one below it."""
        found = self._memories(page=50, scopes=[scope], kinds=[ITEM_KIND], subjects=[key])
        async with aclosing(found):
            async for m in found:
                if m.scope == scope and m.key == key:
                    return m
        return None

    async def _value(self, m: Memory) -> dict[str, Any]:
        raw = m.metadata.get(VALUE_FIELD)
        if isinstance(raw, str):
            value: dict[str, Any] = orjson.loads(raw)
            return value
        parts = m.metadata.get(PARTS_FIELD)
        if m.kind == ITEM_KIND and m.key is not None and isinstance(parts, list):
            return await self._assemble(m, m.key, [str(p) for p in parts])
        return _shared_value(m)

    async def _assemble(self, m: Memory, key: str, events: list[str]) -> dict[str, Any]:
        """A large value from its parts, found by event id: among the current parts, else (a
        later put has replaced them, or is replacing them now) among those that held when this
        item's newest write was made; a part still committing is waited for."""
        wanted = set(events)
        deadline = time.monotonic() + self.wait_s
        found: dict[str, Memory] = {}
        for attempt in itertools.count():
            parts = self._memories(
                scopes=[m.scope],
                kinds=[PART_KIND],
                subjects=[_part_subject(key)],
                as_of=m.updated_at if attempt % 2 else None,
            )
            async with aclosing(parts):
                async for p in parts:
                    for e in wanted.intersection(p.source_events):
                        found[e] = p
            if len(found) == len(events):
                break
            if attempt % 2 and time.monotonic() > deadline:
                raise Unavailable(
                    f"{len(events) - len(found)} of the {len(events)} parts of this value are "
                    f"not readable after {self.wait_s}s (still committing, or replaced by a "
                    "concurrent put: read it again)"
                )
            if attempt % 2:
                await anyio.sleep(_POLL_S)
        packed = "".join(str(found[e].metadata.get(PART_FIELD, "")) for e in events)
        value: dict[str, Any] = orjson.loads(zlib.decompress(base64.b64decode(packed)))
        return value

    async def _item(self, m: Memory) -> Item:
        return Item(
            value=await self._value(m),
            key=m.key if m.kind == ITEM_KIND and m.key else m.id,
            namespace=namespace_of(m.scope),
            created_at=m.created_at,
            updated_at=m.updated_at,
        )

    async def _get(self, op: GetOp) -> Item | None:
        m = await self._find(scope_of(op.namespace), op.key)
        return await self._item(m) if m is not None else None

    async def _search(self, op: SearchOp) -> list[SearchItem]:
        scopes = [scope_of(op.namespace_prefix)] if op.namespace_prefix else None
        want = max(op.offset + op.limit, 1)
        kinds = None if self.shared_memories else [ITEM_KIND]
        out: list[SearchItem] = []
        if op.query is None:  # newest first, every memory: page on until enough match
            page = MAX_PAGE if op.filter else min(MAX_PAGE, max(2 * want, 20))
            found = self._memories(page=page, scopes=scopes, kinds=kinds)
            async with aclosing(found):
                async for m in found:
                    if m.kind in (PART_KIND, RETRACTION):
                        continue
                    item = await self._search_item(m, None)
                    if _passes(item, op.filter):
                        out.append(item)
                        if len(out) >= want:
                            break
            return out[op.offset :]
        # ranked: one recall (at most MAX_K); a filter is applied to what it returns
        k = MAX_K if op.filter else min(MAX_K, max(2 * want, 20))
        seen: set[tuple[str, str]] = set()
        for h in await self.port.recall(op.query, k=k, scopes=scopes, kinds=kinds):
            m = h.memory
            if m.kind in (PART_KIND, RETRACTION) or (m.scope, m.key or m.id) in seen:
                continue
            seen.add((m.scope, m.key or m.id))
            item = await self._search_item(m, h.score)
            if _passes(item, op.filter):
                out.append(item)
        return out[op.offset : op.offset + op.limit]

    async def _search_item(self, m: Memory, score: float | None) -> SearchItem:
        item = await self._item(m)
        return SearchItem(
            namespace=item.namespace,
            key=item.key,
            value=item.value,
            created_at=item.created_at,
            updated_at=item.updated_at,
            score=score,
        )

    async def _list_namespaces(self, op: ListNamespacesOp) -> list[tuple[str, ...]]:
        spaces = [namespace_of(s) for s in await self.port.list_scopes()]
        if op.match_conditions:
            spaces = [ns for ns in spaces if all(_does_match(c, ns) for c in op.match_conditions)]
        if op.max_depth is not None:
            spaces = [ns[: op.max_depth] for ns in spaces]
        return sorted(set(spaces))[op.offset : op.offset + op.limit]


def _passes(item: SearchItem, flt: dict[str, Any] | None) -> bool:
    return not flt or all(matches(item.value.get(f), v) for f, v in flt.items())


def _op_name(op: Op) -> str:
    if isinstance(op, GetOp | PutOp):
        return item_name(op.namespace, op.key)
    if isinstance(op, SearchOp):
        return f"search of {item_name(op.namespace_prefix)}"
    return "list of namespaces"


def _culprits(exc: MembusError, drafts: list[Draft], owners: list[PutOp]) -> str:
    """The items a failed publish is about: those in the refused scope, else every one."""
    ops = owners
    if isinstance(exc, PermissionDenied):
        ops = [o for d, o in zip(drafts, owners, strict=True) if d.scope == exc.scope] or owners
    names = list(dict.fromkeys(item_name(o.namespace, o.key) for o in ops))
    more = f" and {len(names) - 3} more" if len(names) > 3 else ""
    return ", ".join(names[:3]) + more


class _LoopThread:
    """An event loop in a daemon thread, holding one async context (the port) open in a task
    of its own, as anyio requires: the home of a store built outside any loop."""

    def __init__(self, cm: AbstractAsyncContextManager[Any]) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self.loop.run_forever, name="membus-langgraph-store", daemon=True
        )
        self._thread.start()
        self._entered: Future[Any] = Future()
        self._stop = asyncio.Event()
        self._held = asyncio.run_coroutine_threadsafe(self._hold(cm), self.loop)
        try:
            self.value: Any = self._entered.result()
        except BaseException:
            self._halt()
            raise

    async def _hold(self, cm: AbstractAsyncContextManager[Any]) -> None:
        try:
            async with cm as value:
                self._entered.set_result(value)
                await self._stop.wait()
        except BaseException as exc:
            if self._entered.done():
                raise
            self._entered.set_exception(exc)

    def call(self, fn: Callable[[], T]) -> T:
        """``fn()`` run on the loop (where it may create loop-bound objects)."""

        async def run() -> T:
            return fn()

        return asyncio.run_coroutine_threadsafe(run(), self.loop).result()

    def close(self) -> None:
        if self.loop.is_closed() or threading.current_thread() is self._thread:
            return
        self.loop.call_soon_threadsafe(self._stop.set)
        try:
            self._held.result()  # the port's context exits: the bus or client closes
        finally:
            self._halt()

    def _halt(self) -> None:
        async def cancel_the_rest() -> None:  # the store's batching task, and any stragglers
            rest = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in rest:
                t.cancel()
            if rest:
                await asyncio.wait(rest)

        asyncio.run_coroutine_threadsafe(cancel_the_rest(), self.loop).result()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join()
        self.loop.close()


@asynccontextmanager
async def _open_port(
    target: str | Path,
    *,
    agent: str | None,
    tenant: str,
    api_key: str | None,
    config: MembusConfig | None,
) -> AsyncIterator[MemoryPort]:
    text = str(target)
    if text.startswith(("http://", "https://")):
        if api_key is None:
            raise InvalidInput(
                "a membus service URL needs api_key= (the key is the identity the graph acts as)",
                [{"field": "api_key", "problem": "missing"}],
            )
        async with Client(text, api_key) as client:
            port = ClientPort(client)
            await port.whoami()  # a bad key or URL fails here, not on the first store call
            yield port
        return
    if agent is None:
        raise InvalidInput(
            "a bus directory needs agent= (the identity the graph acts as)",
            [{"field": "agent", "problem": "missing"}],
        )
    bus_cm: AbstractAsyncContextManager[Any] = open_bus(target, config)
    async with bus_cm as bus:
        yield AgentPort(bus.agent(agent, tenant))


# -- context for a node's prompt ------------------------------------------------------------------


async def context_message(
    store: MembusStore,
    query: str | None = None,
    *,
    budget_tokens: int,
    subjects: Sequence[str] | None = None,
    namespaces: Sequence[Sequence[str]] | None = None,
) -> SystemMessage:
    """The system message for a node: the context the store's identity would get for ``query``
    (``Agent.context``: pinned, each subject's profile, recent and relevant memories, packed
    into ``budget_tokens``, one line each with its provenance), drawn from ``namespaces`` (all
    readable when None). The ``Context`` itself is in ``additional_kwargs["membus_context"]``.

    Example::

        async def answer(state: MessagesState, *, store: MembusStore) -> dict[str, Any]:
            system = await context_message(store, state["messages"][-1].text, budget_tokens=1500)
            return {"messages": [await llm.ainvoke([system, *state["messages"]])]}
    """
    from langchain_core.messages import SystemMessage

    scopes = [scope_of(ns) for ns in namespaces] if namespaces is not None else None
    ctx = await store.port.context(
        query, budget_tokens=budget_tokens, subjects=subjects, scopes=scopes
    )
    return SystemMessage(
        content=ctx.render(), additional_kwargs={"membus_context": ctx.model_dump(mode="json")}
    )

"""A LangGraph ``BaseStore`` over membus: ``MembusStore(port)``.

Namespaces are scopes (``("team", "support")`` is ``team/support``, each label a scope segment),
so the permission policy on scopes governs what a graph may read and write. An item is a keyed
memory of kind ``item``: subject and key are the item key, the content is a text rendering of
the value (what gets embedded), and the value itself rides as JSON in the metadata.

Keyed facts consolidate: (namespace, key) has one current memory, earlier values are kept as
history (recallable ``as_of`` a past time), so ``get`` and ``search`` see the current value;
``delete`` publishes a retraction of the key, which withdraws every version. ``put`` and
``delete`` return once the change is searchable (read-your-writes). Needs
``pip install 'membus[langgraph]'``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, Final

import anyio
import orjson

from membus.bus.api import MAX_K
from membus.bus.draft import Draft
from membus.core.envelope import validate_scope
from membus.core.ids import display_id, encode_id
from membus.errors import InvalidInput
from membus.integrations.port import DEFAULT_WAIT_S, MemoryPort
from membus.store.port import Hit, Memory
from membus.writer.consolidate import RETRACTION

try:
    from langgraph.store.base import (
        GetOp,
        InvalidNamespaceError,
        Item,
        ListNamespacesOp,
        MatchCondition,
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
VALUE_FIELD: Final = "langgraph_value"  # metadata field holding the value as a JSON string
# a no-query search still goes through recall, which ranks by meaning: any fixed text will do
_LIST_QUERY: Final = "item"


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


def _order(m: Memory) -> tuple[datetime, str]:
    # created_at first; the event id (a ULID) breaks ties within one clock tick
    return m.created_at, m.source_events[0] if m.source_events else m.id


def _value(m: Memory) -> dict[str, Any]:
    raw = m.metadata.get(VALUE_FIELD)
    if isinstance(raw, str):
        value: dict[str, Any] = orjson.loads(raw)
        return value
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
    """LangGraph store over a ``MemoryPort``; create it inside the event loop that runs the bus.

    ``index``: value fields to embed (LangGraph path syntax), default the whole value.
    ``shared_memories``: let ``search`` also return memories other tools published into the
    searched scopes (read-only items keyed by memory id).
    """

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

    async def abatch(self, ops: Iterable[Op]) -> list[Result]:
        ops = list(ops)
        for op in ops:  # refuse a bad namespace before anything is written
            if isinstance(op, GetOp | PutOp):
                scope_of(op.namespace)
            elif isinstance(op, SearchOp) and op.namespace_prefix:
                scope_of(op.namespace_prefix)
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
        drafts, deletes = [], []
        for op in puts:
            scope = scope_of(op.namespace)
            if op.value is None:
                deletes.append((scope, op.key))
                continue
            fields = self.index_fields if op.index is None else (op.index or None)
            text = render(op.value, fields) if op.index is not False else ""
            drafts.append(
                Draft(
                    content=text if text.strip() else op.key,
                    scope=scope,
                    kind=ITEM_KIND,
                    subject=op.key,
                    key=op.key,
                    metadata={VALUE_FIELD: orjson.dumps(dict(op.value), default=str).decode()},
                )
            )
        for scope, key in deletes:
            if await self._versions(scope, key):
                drafts.append(
                    Draft(
                        content=f"delete {key}", scope=scope, kind=RETRACTION, subject=key, key=key
                    )
                )
        if drafts:  # in put order: a delete after a put of the same key withdraws it
            await self.port.remember(drafts, wait_s=self.wait_s)

    # -- reads --------------------------------------------------------------------------------

    async def _versions(self, scope: str, key: str) -> list[Memory]:
        """Every stored version of (scope, key), oldest first."""
        # a lookup, not a question: every version counts however its text matches the key
        hits = await self.port.recall(
            key, k=MAX_K, scopes=[scope], kinds=[ITEM_KIND], subjects=[key], min_score=0
        )
        found = [h.memory for h in hits if h.memory.scope == scope and h.memory.key == key]
        return sorted(found, key=_order)

    def _item(self, versions: list[Memory]) -> Item:
        first, last = versions[0], versions[-1]
        return Item(
            value=_value(last),
            key=last.key if last.kind == ITEM_KIND and last.key else last.id,
            namespace=namespace_of(last.scope),
            created_at=first.created_at,
            updated_at=last.updated_at,
        )

    async def _get(self, op: GetOp) -> Item | None:
        versions = await self._versions(scope_of(op.namespace), op.key)
        return self._item(versions) if versions else None

    async def _search(self, op: SearchOp) -> list[SearchItem]:
        scopes = [scope_of(op.namespace_prefix)] if op.namespace_prefix else None
        want = max(op.offset + op.limit, 1)
        k = MAX_K if op.query is None or op.filter else min(MAX_K, max(4 * want, 50))
        kinds = None if self.shared_memories else [ITEM_KIND]
        # a listing (no query) keeps every item; a query keeps what scores min_score or more
        listing = 0.0 if op.query is None else None
        hits = await self.port.recall(
            op.query or _LIST_QUERY, k=k, scopes=scopes, kinds=kinds, min_score=listing
        )
        out = [self._search_item(h, v) for h, v in await self._current(hits, op.query, scopes)]
        if op.filter:
            out = [
                it for it in out if all(matches(it.value.get(f), v) for f, v in op.filter.items())
            ]
        if op.query is None:
            out.sort(key=lambda it: it.updated_at, reverse=True)
        return out[op.offset : op.offset + op.limit]

    async def _current(
        self, hits: list[Hit], query: str | None, scopes: list[str] | None
    ) -> list[tuple[Hit, list[Memory]]]:
        """Keep, per item, only the hit on its newest version, in ranked order. A ranked search
        (``query``) may not have returned every version, so those are fetched in one recall."""
        groups: dict[tuple[str, str], list[Hit]] = {}
        out: list[tuple[Hit, list[Memory]] | None] = []
        slot: dict[tuple[str, str], int] = {}
        for h in hits:
            m = h.memory
            if m.kind != ITEM_KIND or m.key is None:
                out.append((h, [m]))
                continue
            g = (m.scope, m.key)
            if g not in groups:
                groups[g], slot[g] = [], len(out)
                out.append(None)
            groups[g].append(h)
        found = [h.memory for hs in groups.values() for h in hs]
        if query is not None and groups:
            more = await self.port.recall(
                query,
                k=MAX_K,
                scopes=scopes,
                kinds=[ITEM_KIND],
                subjects=sorted({key for _, key in groups}),
                min_score=0,  # the other versions of items already found, however they match
            )
            found += [h.memory for h in more]
        versions: dict[tuple[str, str], dict[str, Memory]] = {g: {} for g in groups}
        for m in found:
            if m.key is not None and (m.scope, m.key) in versions:
                versions[(m.scope, m.key)][m.id] = m
        for g, hs in groups.items():
            vs = sorted(versions[g].values(), key=_order)
            best = next((h for h in hs if h.memory.id == vs[-1].id), None)
            if best is not None:  # else only stale versions matched: the item does not
                out[slot[g]] = (best, vs)
        return [x for x in out if x is not None]

    def _search_item(self, hit: Hit, versions: list[Memory]) -> SearchItem:
        item = self._item(versions)
        return SearchItem(
            namespace=item.namespace,
            key=item.key,
            value=item.value,
            created_at=item.created_at,
            updated_at=item.updated_at,
            score=hit.score,
        )

    async def _list_namespaces(self, op: ListNamespacesOp) -> list[tuple[str, ...]]:
        spaces = [namespace_of(s) for s in await self.port.list_scopes()]
        if op.match_conditions:
            spaces = [ns for ns in spaces if all(_does_match(c, ns) for c in op.match_conditions)]
        if op.max_depth is not None:
            spaces = [ns[: op.max_depth] for ns in spaces]
        return sorted(set(spaces))[op.offset : op.offset + op.limit]


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

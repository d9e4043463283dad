"""A blocking facade for callers without an event loop: the async bus runs in a portal thread."""

from __future__ import annotations

import builtins
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import AbstractAsyncContextManager, ExitStack, contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

from anyio.from_thread import BlockingPortal, start_blocking_portal

from membus.access.gate import Gate
from membus.bus.api import Agent, Bus
from membus.bus.context import Context
from membus.bus.draft import Draft, Receipt
from membus.bus.erasure import ErasureReport
from membus.bus.memories import ImportReport, MemoryPage
from membus.core.config import DEFAULT_PATH, MembusConfig
from membus.core.envelope import Label
from membus.embed.port import Embedder
from membus.recall.heat import Access
from membus.recall.tokens import TokenCounter
from membus.runtime.host import open as open_async
from membus.store.port import Hit, Memory
from membus.stream.committed import DEFAULT_WAIT_S
from membus.stream.feed import Change

T = TypeVar("T")


class SyncAgent:
    """The blocking twin of ``Agent``: the same operations and parameters, each call run on the
    bus's event loop in the portal thread.

    Example: ``with membus.open_sync() as bus: bus.agent("alice", "acme").recall("tier")``"""

    def __init__(self, portal: BlockingPortal, agent: Agent) -> None:
        self._portal, self._agent = portal, agent

    @property
    def name(self) -> str:
        return self._agent.name

    @property
    def tenant(self) -> str:
        return self._agent.tenant

    @property
    def id(self) -> str:
        return self._agent.id

    def publish(
        self,
        content: str,
        scope: str | None = None,
        *,
        kind: str = "observation",
        subject: str | None = None,
        key: str | None = None,
        metadata: dict[str, Any] | None = None,
        label: Label = "public",
        created_at: datetime | None = None,
        causation_id: str | None = None,
        correlation_id: str | None = None,
        wait: bool = True,
        timeout_s: float = DEFAULT_WAIT_S,
    ) -> Receipt:
        """Publish one observation (``scope`` default ``agent/<name>``; see ``Agent.publish``)
        and, unless ``wait=False``, return once it is searchable: a blocking caller reads its
        writes. Raises ``NotCommitted`` (no writer, or behind) or ``Parked`` (dead-lettered).

        Example: ``agent.publish("Ana prefers SMS", "team/support", subject="ana")``"""
        return self._portal.call(
            lambda: self._agent.publish(
                content,
                scope,
                kind=kind,
                subject=subject,
                key=key,
                metadata=metadata,
                label=label,
                created_at=created_at,
                causation_id=causation_id,
                correlation_id=correlation_id,
                wait=wait,
                timeout_s=timeout_s,
            )
        )

    def publish_many(
        self, drafts: Sequence[Draft], *, wait: bool = True, timeout_s: float = DEFAULT_WAIT_S
    ) -> builtins.list[Receipt]:
        """Publish several drafts, all or nothing; waits for every one like ``publish``.

        Example: ``agent.publish_many([Draft(content="a", scope="team/x")])``"""
        return self._portal.call(
            lambda: self._agent.publish_many(drafts, wait=wait, timeout_s=timeout_s)
        )

    def recall(
        self,
        query: str,
        *,
        k: int = 5,
        scopes: Sequence[str] | None = None,
        kinds: Sequence[str] | None = None,
        subjects: Sequence[str] | None = None,
        agents: Sequence[str] | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        as_of: datetime | None = None,
        working: bool = False,
        min_score: float | None = None,
    ) -> builtins.list[Hit]:
        """Top-``k`` memories by meaning within what this agent may read (see ``Agent.recall``).

        Example: ``hits = agent.recall("how does Ana like to be contacted", k=3)``"""
        return self._portal.call(
            lambda: self._agent.recall(
                query,
                k=k,
                scopes=scopes,
                kinds=kinds,
                subjects=subjects,
                agents=agents,
                since=since,
                until=until,
                as_of=as_of,
                working=working,
                min_score=min_score,
            )
        )

    def access(self, memory_ids: Sequence[str]) -> dict[str, Access]:
        """Recall statistics of memories this agent may recall (see ``Agent.access``).

        Example: ``stats = agent.access([hit.memory.id for hit in hits])``"""
        return self._portal.call(self._agent.access, memory_ids)

    def subscribe(
        self,
        scopes: Sequence[str] | None = None,
        *,
        start: str = "$",
        group: str | None = None,
        consumer: str | None = None,
        until_now: bool = False,
    ) -> Iterator[Change]:
        """Blocking iterator over the change feed (see ``Agent.subscribe``); close it (or
        break) to stop following.

        Example: ``for change in agent.subscribe(["team/support"], until_now=True): ...``"""
        agen = self._agent.subscribe(
            scopes, start=start, group=group, consumer=consumer, until_now=until_now
        )
        return self._iterate(agen)

    def forget(
        self,
        *,
        memory_ids: Sequence[str] | None = None,
        subject: str | None = None,
        agent: str | None = None,
        scope: str | None = None,
    ) -> ErasureReport:
        """Erase what matches every criterion given (see ``Agent.forget``).

        Example: ``agent.forget(subject="customer:42", scope="team/support")``"""
        return self._portal.call(
            lambda: self._agent.forget(
                memory_ids=memory_ids, subject=subject, agent=agent, scope=scope
            )
        )

    def retract(
        self,
        *,
        memory_id: str | None = None,
        scope: str | None = None,
        subject: str | None = None,
        key: str | None = None,
        reason: str | None = None,
    ) -> Receipt:
        """Withdraw a memory or a key through the event log (see ``Agent.retract``).

        Example: ``agent.retract(scope="team/crm", subject="customer:42", key="tier")``"""
        return self._portal.call(
            lambda: self._agent.retract(
                memory_id=memory_id, scope=scope, subject=subject, key=key, reason=reason
            )
        )

    def scopes(self) -> builtins.list[str]:
        """The scopes holding at least one memory this agent may read, sorted.

        Example: ``agent.scopes()`` -> ``["agent/alice", "team/support"]``"""
        return self._portal.call(self._agent.scopes)

    def get(self, memory_id: str) -> Memory:
        """One memory by id; ``NotFound`` when absent or not readable (see ``Agent.get``).

        Example: ``memory = agent.get(hit.memory.id)``"""
        return self._portal.call(self._agent.get, memory_id)

    def list(
        self,
        *,
        scopes: Sequence[str] | None = None,
        kinds: Sequence[str] | None = None,
        subjects: Sequence[str] | None = None,
        agents: Sequence[str] | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        as_of: datetime | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> MemoryPage:
        """Memories this agent may read, newest first, a page at a time (see ``Agent.list``).

        Example: ``page = agent.list(scopes=["team/support"], limit=20)``"""
        return self._portal.call(
            lambda: self._agent.list(
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
        )

    def history(
        self,
        memory_id: str | None = None,
        *,
        scope: str | None = None,
        subject: str | None = None,
        key: str | None = None,
        limit: int = 100,
    ) -> builtins.list[Memory]:
        """Every version of a memory's fact, or of ``subject`` + ``key``, newest first (see
        ``Agent.history``).

        Example: ``versions = agent.history(subject="customer:42", key="tier")``"""
        return self._portal.call(
            lambda: self._agent.history(
                memory_id, scope=scope, subject=subject, key=key, limit=limit
            )
        )

    def update(
        self,
        memory_id: str,
        content: str,
        *,
        metadata: dict[str, Any] | None = None,
        label: Label | None = None,
    ) -> Receipt:
        """Publish a new version of a memory (see ``Agent.update``).

        Example: ``agent.update(memory.id, "The customer prefers SMS.")``"""
        return self._portal.call(
            lambda: self._agent.update(memory_id, content, metadata=metadata, label=label)
        )

    def delete(self, memory_id: str) -> ErasureReport:
        """Erase one memory by id (see ``Agent.delete``).

        Example: ``agent.delete(memory.id)``"""
        return self._portal.call(self._agent.delete, memory_id)

    def export(
        self, *, scopes: Sequence[str] | None = None, as_of: datetime | None = None
    ) -> Iterator[Memory]:
        """Every memory this agent may read, newest first (see ``Agent.export``).

        Example: ``for m in agent.export(): f.write(membus.to_jsonl(m))``"""
        return self._iterate(self._agent.export(scopes=scopes, as_of=as_of))

    def import_memories(self, records: Sequence[Memory]) -> ImportReport:
        """Publish exported memories as this agent's events, idempotently (see
        ``Agent.import_memories``).

        Example: ``agent.import_memories(membus.parse_jsonl(open("export.jsonl")))``"""
        return self._portal.call(self._agent.import_memories, records)

    def _iterate(self, agen: AsyncIterator[T]) -> Iterator[T]:
        """An async iterator stepped from this thread; closed on the loop when left early."""
        try:
            while True:
                try:
                    yield self._portal.call(agen.__anext__)
                except StopAsyncIteration:
                    return
        finally:
            aclose = getattr(agen, "aclose", None)
            if aclose is not None:
                self._portal.call(aclose)

    # -- context for the prompt ---------------------------------------------------------------

    def context(
        self,
        query: str | None = None,
        *,
        budget_tokens: int,
        subjects: Sequence[str] | None = None,
        scopes: Sequence[str] | None = None,
        kinds: Sequence[str] | None = None,
        agents: Sequence[str] | None = None,
        working: bool = True,
        counter: TokenCounter | None = None,
    ) -> Context:
        """``Agent.context``, blocking: the memories for this agent's prompt within
        ``budget_tokens``, each with why it was chosen; ``render()`` for the system prompt.

        Example: ``system = agent.context("refund?", budget_tokens=800).render()``"""
        return self._portal.call(
            lambda: self._agent.context(
                query,
                budget_tokens=budget_tokens,
                subjects=subjects,
                scopes=scopes,
                kinds=kinds,
                agents=agents,
                working=working,
                counter=counter,
            )
        )

    def pin(self, memory_id: str) -> Receipt:
        """``Agent.pin``, blocking: the memory heads every context that may read it.

        Example: ``agent.pin(hit.memory.id)``"""
        return self._portal.call(self._agent.pin, memory_id)

    def unpin(self, memory_id: str) -> Receipt:
        """``Agent.unpin``, blocking.

        Example: ``agent.unpin(hit.memory.id)``"""
        return self._portal.call(self._agent.unpin, memory_id)


class SyncBus:
    """The blocking twin of ``Bus`` for what a script needs: agents, drain and stats."""

    def __init__(self, portal: BlockingPortal, bus: Bus) -> None:
        self._portal, self.bus = portal, bus

    def agent(self, name: str, tenant: str) -> SyncAgent:
        """The bus bound to one identity.

        Example: ``alice = bus.agent("alice", tenant="acme")``"""
        return SyncAgent(self._portal, self.bus.agent(name, tenant))

    def drain(self, timeout_s: float = 60.0, poll_s: float = 0.01, merges: bool = True) -> None:
        """Wait until writers committed (or parked) all published; ``merges``: and until their
        near-duplicate pass has looked at it (see ``Bus.drain``).

        Example: ``bus.drain(timeout_s=10)``"""
        self._portal.call(lambda: self.bus.drain(timeout_s, poll_s, merges))

    def stats(self) -> dict[str, Any]:
        """Stream lengths, pending, lag and DLQ size per tenant and group.

        Example: ``bus.stats()["memories"]``"""
        return self._portal.call(self.bus.stats)


@contextmanager
def open_sync(
    path: str | Path = DEFAULT_PATH,
    config: MembusConfig | None = None,
    *,
    embedder: Embedder | None = None,
    gate: Gate | None = None,
) -> Iterator[SyncBus]:
    """``with membus.open_sync("./.membus") as bus: bus.agent(...).publish(...)``"""
    with ExitStack() as stack:
        portal = stack.enter_context(start_blocking_portal())
        cm: AbstractAsyncContextManager[Bus] = open_async(
            path, config, embedder=embedder, gate=gate
        )
        bus = stack.enter_context(portal.wrap_async_context_manager(cm))
        yield SyncBus(portal, bus)

"""The one port framework adapters (MCP, LangGraph) talk to: a memory API bound to one identity.

Two implementations: ``AgentPort`` over an in-process ``membus.Agent`` (embedded bus) and
``ClientPort`` over ``membus.Client`` (a membus service). Adapters never see who they act as
beyond ``whoami()``: the identity is fixed when the port is built (an ``Agent`` or an API key),
so nothing an adapter's caller sends can change it.
"""

from __future__ import annotations

import builtins
from collections.abc import AsyncIterator, Sequence
from datetime import datetime
from typing import Protocol, runtime_checkable

from membus.access.gate import Identity
from membus.bus.api import MAX_K, Agent
from membus.bus.context import Context
from membus.bus.draft import Draft, Receipt
from membus.bus.erasure import ErasureReport
from membus.bus.memories import MemoryPage
from membus.service.client import Client
from membus.store.port import Hit, Memory
from membus.stream.feed import Change

DEFAULT_WAIT_S = 30.0
_POLL_S = 0.05


@runtime_checkable
class MemoryPort(Protocol):
    """Remember, recall, forget, follow and list, always as the identity the port was built for."""

    async def whoami(self) -> Identity: ...

    async def remember(
        self, drafts: Sequence[Draft], *, wait_s: float | None = None
    ) -> builtins.list[Receipt]:
        """Publish ``drafts`` (all or nothing). With ``wait_s``, return only once every one is
        committed by the writers (read-your-writes), raising ``NotCommitted`` (an ``Unavailable``)
        if that takes longer, ``Parked`` if writers dead-lettered one."""
        ...

    async def recall(
        self,
        query: str,
        *,
        k: int = 5,
        scopes: Sequence[str] | None = None,
        kinds: Sequence[str] | None = None,
        subjects: Sequence[str] | None = None,
        min_score: float | None = None,
        agents: Sequence[str] | None = None,
        since: datetime | None = None,
        as_of: datetime | None = None,
    ) -> builtins.list[Hit]: ...

    async def forget(
        self,
        *,
        memory_ids: Sequence[str] | None = None,
        subject: str | None = None,
        agent: str | None = None,
        scope: str | None = None,
    ) -> ErasureReport: ...

    async def list_memories(
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
        """Memories this identity may read, newest first, a page at a time."""
        ...

    async def get_memory(self, memory_id: str) -> Memory:
        """One memory (``NotFound``: absent or not readable)."""
        ...

    async def memory_history(
        self,
        memory_id: str | None = None,
        *,
        scope: str | None = None,
        subject: str | None = None,
        key: str | None = None,
        limit: int = 100,
    ) -> builtins.list[Memory]:
        """Every version of a fact, newest first."""
        ...

    def subscribe(
        self, scopes: Sequence[str] | None = None, *, start: str = "$", until_now: bool = False
    ) -> AsyncIterator[Change]:
        """Changes this identity may read now, from ``start``; ``until_now``: stop once caught
        up instead of following."""
        ...

    async def list_scopes(self) -> builtins.list[str]:
        """Scopes that hold at least one memory this identity may recall, sorted."""
        ...

    async def context(
        self,
        query: str | None = None,
        *,
        budget_tokens: int,
        subjects: Sequence[str] | None = None,
        scopes: Sequence[str] | None = None,
    ) -> Context:
        """The memories for this identity's prompt within ``budget_tokens`` (``Agent.context``)."""
        ...


class AgentPort:
    """The port over an in-process agent (``bus.agent(name, tenant)``)."""

    def __init__(self, agent: Agent) -> None:
        self.agent = agent

    async def whoami(self) -> Identity:
        return self.agent.identity

    async def remember(
        self, drafts: Sequence[Draft], *, wait_s: float | None = None
    ) -> builtins.list[Receipt]:
        # committed per the stream (membus/stream/committed.py): Parked if dead-lettered
        if wait_s is None:
            return await self.agent.publish_many(drafts)
        return await self.agent.publish_many(drafts, wait=True, timeout_s=wait_s)

    async def recall(
        self,
        query: str,
        *,
        k: int = 5,
        scopes: Sequence[str] | None = None,
        kinds: Sequence[str] | None = None,
        subjects: Sequence[str] | None = None,
        agents: Sequence[str] | None = None,
        since: datetime | None = None,
        as_of: datetime | None = None,
        min_score: float | None = None,
    ) -> builtins.list[Hit]:
        return await self.agent.recall(
            query,
            k=k,
            scopes=scopes,
            kinds=kinds,
            subjects=subjects,
            agents=agents,
            since=since,
            as_of=as_of,
            min_score=min_score,
        )

    async def forget(
        self,
        *,
        memory_ids: Sequence[str] | None = None,
        subject: str | None = None,
        agent: str | None = None,
        scope: str | None = None,
    ) -> ErasureReport:
        return await self.agent.forget(
            memory_ids=memory_ids, subject=subject, agent=agent, scope=scope
        )

    async def list_memories(
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
        return await self.agent.list(
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

    async def get_memory(self, memory_id: str) -> Memory:
        return await self.agent.get(memory_id)

    async def memory_history(
        self,
        memory_id: str | None = None,
        *,
        scope: str | None = None,
        subject: str | None = None,
        key: str | None = None,
        limit: int = 100,
    ) -> builtins.list[Memory]:
        return await self.agent.history(
            memory_id, scope=scope, subject=subject, key=key, limit=limit
        )

    def subscribe(
        self, scopes: Sequence[str] | None = None, *, start: str = "$", until_now: bool = False
    ) -> AsyncIterator[Change]:
        return self.agent.subscribe(scopes, start=start, until_now=until_now)

    async def list_scopes(self) -> builtins.list[str]:
        return await self.agent.scopes()

    async def context(
        self,
        query: str | None = None,
        *,
        budget_tokens: int,
        subjects: Sequence[str] | None = None,
        scopes: Sequence[str] | None = None,
    ) -> Context:
        return await self.agent.context(
            query, budget_tokens=budget_tokens, subjects=subjects, scopes=scopes
        )


class ClientPort:
    """The port over a membus service; the API key inside ``client`` is the identity."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self._who: Identity | None = None

    async def whoami(self) -> Identity:
        if self._who is None:
            me = await self.client.whoami()
            self._who = Identity(tenant=me.tenant, agent=me.agent)
        return self._who

    async def remember(
        self, drafts: Sequence[Draft], *, wait_s: float | None = None
    ) -> builtins.list[Receipt]:
        # the service waits on the same commit signal as the embedded bus: a retraction (a
        # LangGraph delete) counts once writers committed it, which no recall could tell
        if wait_s is None:
            return await self.client.publish_many(drafts)
        return await self.client.publish_many(drafts, wait=True, timeout_s=wait_s)

    async def recall(
        self,
        query: str,
        *,
        k: int = 5,
        scopes: Sequence[str] | None = None,
        kinds: Sequence[str] | None = None,
        subjects: Sequence[str] | None = None,
        min_score: float | None = None,
        agents: Sequence[str] | None = None,
        since: datetime | None = None,
        as_of: datetime | None = None,
    ) -> builtins.list[Hit]:
        return await self.client.recall(
            query,
            k=min(k, MAX_K),
            scopes=scopes,
            kinds=kinds,
            subjects=subjects,
            agents=agents,
            since=since,
            as_of=as_of,
            min_score=min_score,  # None is left out of the request: the server's default
        )

    async def forget(
        self,
        *,
        memory_ids: Sequence[str] | None = None,
        subject: str | None = None,
        agent: str | None = None,
        scope: str | None = None,
    ) -> ErasureReport:
        ids = list(memory_ids) if memory_ids is not None else None
        return await self.client.forget(memory_ids=ids, subject=subject, agent=agent, scope=scope)

    async def list_memories(
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
        return await self.client.list(
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

    async def get_memory(self, memory_id: str) -> Memory:
        return await self.client.get(memory_id)

    async def memory_history(
        self,
        memory_id: str | None = None,
        *,
        scope: str | None = None,
        subject: str | None = None,
        key: str | None = None,
        limit: int = 100,
    ) -> builtins.list[Memory]:
        return await self.client.history(
            memory_id, scope=scope, subject=subject, key=key, limit=limit
        )

    def subscribe(
        self, scopes: Sequence[str] | None = None, *, start: str = "$", until_now: bool = False
    ) -> AsyncIterator[Change]:
        return self.client.subscribe(scopes, start=start, until_now=until_now)

    async def list_scopes(self) -> builtins.list[str]:
        return await self.client.scopes()

    async def context(
        self,
        query: str | None = None,
        *,
        budget_tokens: int,
        subjects: Sequence[str] | None = None,
        scopes: Sequence[str] | None = None,
    ) -> Context:
        return await self.client.context(
            query, budget_tokens=budget_tokens, subjects=subjects, scopes=scopes
        )

"""The one port framework adapters (MCP, LangGraph) talk to: a memory API bound to one identity.

Two implementations: ``AgentPort`` over an in-process ``membus.Agent`` (embedded bus) and
``ClientPort`` over ``membus.Client`` (a membus service). Adapters never see who they act as
beyond ``whoami()``: the identity is fixed when the port is built (an ``Agent`` or an API key),
so nothing an adapter's caller sends can change it.
"""

from __future__ import annotations

import builtins
import time
from collections.abc import AsyncIterator, Sequence
from datetime import datetime
from typing import Any, Protocol, runtime_checkable

import anyio

from membus.access.gate import Identity
from membus.bus.api import MAX_K, Agent
from membus.bus.draft import Draft, Receipt
from membus.bus.erasure import ErasureReport
from membus.bus.memories import MemoryPage
from membus.core.keys import TenantKeys
from membus.errors import Unavailable
from membus.service.client import Client
from membus.store.port import Hit
from membus.stream.feed import Change
from membus.writer.consolidate import RETRACTION

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
        searchable (read-your-writes), raising ``Unavailable`` if that takes longer."""
        ...

    async def recall(
        self,
        query: str,
        *,
        k: int = 5,
        scopes: Sequence[str] | None = None,
        kinds: Sequence[str] | None = None,
        subjects: Sequence[str] | None = None,
    ) -> builtins.list[Hit]: ...

    async def forget(
        self,
        *,
        memory_ids: Sequence[str] | None = None,
        subject: str | None = None,
        scope: str | None = None,
    ) -> ErasureReport: ...

    def subscribe(
        self, scopes: Sequence[str] | None = None, *, start: str = "$", until_now: bool = False
    ) -> AsyncIterator[Change]:
        """Changes this identity may read now, from ``start``; ``until_now``: stop once caught
        up instead of following."""
        ...

    async def list_scopes(self) -> builtins.list[str]:
        """Scopes that hold at least one memory this identity may recall, sorted."""
        ...

    async def list(
        self,
        *,
        scopes: Sequence[str] | None = None,
        kinds: Sequence[str] | None = None,
        subjects: Sequence[str] | None = None,
        as_of: datetime | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> MemoryPage:
        """Memories this identity may read, newest first, a page at a time (``Agent.list``)."""
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
        receipts = await self.agent.publish_many(drafts)
        if wait_s is not None and receipts:
            await self._committed(receipts, wait_s)
        return receipts

    async def _committed(self, receipts: Sequence[Receipt], wait_s: float) -> None:
        bus = self.agent.bus
        await bus.drain(timeout_s=wait_s)
        # drained also means "parked": a write the writers refused (see `membus dlq`) is not
        # there, and the caller asked to read it back, so say so rather than return silently
        # a parked entry names its stream position: look only at what was parked since publish
        since = min(r.position for r in receipts)
        raw: Any = await bus.redis.xrange(TenantKeys(self.agent.tenant).dlq, min=since)
        positions = {r.position: r.event_id for r in receipts}
        missing = [positions[f["origin_id"]] for _, f in raw if f.get("origin_id") in positions]
        if missing:
            raise Unavailable(
                f"{len(missing)} write(s) were not committed (dead-lettered? see `membus dlq`): "
                + ", ".join(missing[:5])
            )

    async def recall(
        self,
        query: str,
        *,
        k: int = 5,
        scopes: Sequence[str] | None = None,
        kinds: Sequence[str] | None = None,
        subjects: Sequence[str] | None = None,
    ) -> builtins.list[Hit]:
        return await self.agent.recall(query, k=k, scopes=scopes, kinds=kinds, subjects=subjects)

    async def forget(
        self,
        *,
        memory_ids: Sequence[str] | None = None,
        subject: str | None = None,
        scope: str | None = None,
    ) -> ErasureReport:
        # Agent has no forget of its own yet; the bus call with its identity is the same door
        return await self.agent.bus.forget(
            self.agent.identity, memory_ids=memory_ids, subject=subject, scope=scope
        )

    def subscribe(
        self, scopes: Sequence[str] | None = None, *, start: str = "$", until_now: bool = False
    ) -> AsyncIterator[Change]:
        return self.agent.subscribe(scopes, start=start, until_now=until_now)

    async def list_scopes(self) -> builtins.list[str]:
        # A scan of the tenant's memories: fine for the embedded bus this port serves; a store
        # facet query belongs in Bus once scopes number in the thousands.
        bus, who = self.agent.bus, self.agent.identity
        grant = await bus.gate.grant(who, "recall", None)
        if grant.empty:
            return []
        seen: set[str] = set()
        offset: str | None = None
        while True:
            page, offset = await bus.store.scroll(who.tenant, limit=512, offset=offset)
            seen.update(m.scope for m in page if grant.admits(m.scope, m.sensitivity))
            if offset is None:
                return sorted(seen)

    async def list(
        self,
        *,
        scopes: Sequence[str] | None = None,
        kinds: Sequence[str] | None = None,
        subjects: Sequence[str] | None = None,
        as_of: datetime | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> MemoryPage:
        return await self.agent.list(
            scopes=scopes, kinds=kinds, subjects=subjects, as_of=as_of, limit=limit, cursor=cursor
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
        receipts = await self.client.publish_many(drafts)
        if wait_s is not None and receipts:
            await self._committed(drafts, receipts, wait_s)
        return receipts

    async def _committed(
        self, drafts: Sequence[Draft], receipts: Sequence[Receipt], wait_s: float
    ) -> None:
        """Poll recall until each memory is found: a memory's id is derived from its event id,
        and recalling its own content within its scope and subject ranks it first."""
        deadline = time.monotonic() + wait_s
        todo = list(zip(drafts, receipts, strict=True))
        while todo:
            left = []
            for draft, r in todo:
                hits = await self.client.recall(
                    draft.content,
                    k=10,
                    scopes=[draft.scope],
                    kinds=[draft.kind],
                    subjects=[draft.subject] if draft.subject is not None else None,
                )
                if draft.kind == RETRACTION:  # done when the withdrawn key is gone
                    done = not any(h.memory.key == draft.key for h in hits)
                else:  # a repeat folds into an earlier memory: look for it in provenance
                    done = any(r.event_id in h.memory.source_events for h in hits)
                if not done:
                    left.append((draft, r))
            todo = left
            if todo and time.monotonic() > deadline:
                raise Unavailable(f"{len(todo)} write(s) not searchable within {wait_s}s")
            if todo:
                await anyio.sleep(_POLL_S)

    async def recall(
        self,
        query: str,
        *,
        k: int = 5,
        scopes: Sequence[str] | None = None,
        kinds: Sequence[str] | None = None,
        subjects: Sequence[str] | None = None,
    ) -> builtins.list[Hit]:
        return await self.client.recall(
            query, k=min(k, MAX_K), scopes=scopes, kinds=kinds, subjects=subjects
        )

    async def forget(
        self,
        *,
        memory_ids: Sequence[str] | None = None,
        subject: str | None = None,
        scope: str | None = None,
    ) -> ErasureReport:
        ids = list(memory_ids) if memory_ids is not None else None
        return await self.client.forget(memory_ids=ids, subject=subject, scope=scope)

    def subscribe(
        self, scopes: Sequence[str] | None = None, *, start: str = "$", until_now: bool = False
    ) -> AsyncIterator[Change]:
        return self.client.subscribe(scopes, start=start, until_now=until_now)

    async def list_scopes(self) -> builtins.list[str]:
        raise Unavailable(
            "listing scopes is not available over the membus service yet (no /v1/scopes "
            "endpoint); use an embedded bus or pass scopes explicitly"
        )

    async def list(
        self,
        *,
        scopes: Sequence[str] | None = None,
        kinds: Sequence[str] | None = None,
        subjects: Sequence[str] | None = None,
        as_of: datetime | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> MemoryPage:
        listing = getattr(self.client, "list", None)
        if listing is not None:  # GET /v1/memories: paged, no cap
            page: MemoryPage = await listing(
                scopes=scopes,
                kinds=kinds,
                subjects=subjects,
                as_of=as_of,
                limit=limit,
                cursor=cursor,
            )
            return page
        # A client from before GET /v1/memories: one recall, newest first, so at most MAX_K
        # memories (no next page). Any query will do: only the filters and the order matter.
        hits = await self.client.recall(
            "memory", k=MAX_K, scopes=scopes, kinds=kinds, subjects=subjects, as_of=as_of
        )
        found = sorted(
            (h.memory for h in hits),
            key=lambda m: (m.valid_from or m.created_at, m.id),
            reverse=True,
        )
        return MemoryPage(memories=found[:limit])

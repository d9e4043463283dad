"""A blocking facade for callers without an event loop: the async bus runs in a portal thread."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import AbstractAsyncContextManager, ExitStack, contextmanager
from pathlib import Path
from typing import Any

from anyio.from_thread import BlockingPortal, start_blocking_portal

from membus.access.gate import Gate
from membus.bus.api import Agent, Bus
from membus.bus.context import Context
from membus.bus.draft import Draft, Receipt
from membus.bus.erasure import ErasureReport
from membus.core.config import DEFAULT_PATH, MembusConfig
from membus.embed.port import Embedder
from membus.recall.tokens import TokenCounter
from membus.runtime.host import open as open_async
from membus.store.port import Hit
from membus.stream.feed import Change


class SyncAgent:
    def __init__(self, portal: BlockingPortal, agent: Agent) -> None:
        self._portal, self._agent = portal, agent

    @property
    def name(self) -> str:
        return self._agent.name

    def publish(self, content: str, scope: str, **fields: Any) -> Receipt:
        return self._portal.call(lambda: self._agent.publish(content, scope, **fields))

    def publish_many(self, drafts: Sequence[Draft]) -> list[Receipt]:
        return self._portal.call(self._agent.publish_many, drafts)

    def recall(self, query: str, **kwargs: Any) -> list[Hit]:
        return self._portal.call(lambda: self._agent.recall(query, **kwargs))

    def forget(self, **criteria: Any) -> ErasureReport:
        return self._portal.call(lambda: self._agent.forget(**criteria))

    def subscribe(self, scopes: Sequence[str] | None = None, **kwargs: Any) -> Iterator[Change]:
        """Blocking iterator over the change feed; close it (or break) to stop following."""
        agen = self._agent.subscribe(scopes, **kwargs)
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
    def __init__(self, portal: BlockingPortal, bus: Bus) -> None:
        self._portal, self.bus = portal, bus

    def agent(self, name: str, tenant: str) -> SyncAgent:
        return SyncAgent(self._portal, self.bus.agent(name, tenant))

    def drain(self, timeout_s: float = 60.0) -> None:
        self._portal.call(lambda: self.bus.drain(timeout_s))

    def stats(self) -> dict[str, Any]:
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

"""Which bus a command gets: the whole embedded bus, or Redis alone when the store is not needed.

On the embedded default a command owns the data directory (the store's lock says so); with a Redis
URL, commands that only touch streams skip the store and so run beside ``membus worker``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from typing import NoReturn, TypeVar

from membus.access.signing import MASTER_FILE, door_keys
from membus.bus.api import Bus
from membus.cli.context import State
from membus.cli.settings import Settings
from membus.core.redis import REDIS_DOWN, redis_client, unavailable
from membus.embed.hashing import HashingEmbedder
from membus.embed.port import Vectors
from membus.errors import Conflict, StoreLocked, Unavailable
from membus.runtime.host import make_gate
from membus.runtime.host import open as open_bus
from membus.store.formula import Boost
from membus.store.port import Hit, Memory, RecallFilter, StoreMeta

T = TypeVar("T")

_SHARED_HINT = (
    "the data directory {path} is owned by another membus process (e.g. `membus worker`); to "
    "share a bus between processes, point them all at one Redis (--redis-url / MEMBUS_REDIS_URL)"
)


class _NoStore:
    """Stands in for the store where a command needs Redis only; touching it is a bug.

    ``count`` answers 0 so ``Bus.stats`` works; the caller reports the count as unknown.
    """

    def _no(self) -> NoReturn:
        raise Unavailable("this command runs without the memory store")

    async def open(self, meta: StoreMeta) -> None:
        self._no()

    async def upsert(self, memories: Sequence[Memory], vectors: Vectors) -> None:
        self._no()

    async def search(
        self,
        vector: Vectors,
        flt: RecallFilter,
        k: int,
        *,
        text: str | None = None,
        boost: Boost | None = None,
    ) -> list[Hit]:
        self._no()

    async def browse(self, flt: RecallFilter, limit: int) -> list[Memory]:
        self._no()

    async def get(self, tenant: str, ids: Sequence[str]) -> list[Memory]:
        self._no()

    async def delete(self, tenant: str, ids: Sequence[str]) -> int:
        self._no()

    async def count(self, tenant: str | None = None) -> int:
        return 0

    async def scroll(
        self, tenant: str, limit: int = 256, offset: str | None = None
    ) -> tuple[list[Memory], str | None]:
        self._no()

    async def maintain(self, *, busy: bool = False) -> None:
        return None

    async def close(self) -> None:
        return None


def _with_hint(exc: Conflict, settings: Settings) -> Conflict:
    """The edge store's lock is how a second process learns the embedded directory is taken."""
    if settings.embedded and isinstance(exc, StoreLocked):
        return Conflict(_SHARED_HINT.format(path=settings.data_dir))
    return exc


async def claim(
    stack: AsyncExitStack, owner: AbstractAsyncContextManager[T], settings: Settings
) -> T:
    """Enter something that opens the store; a lock held elsewhere comes back with the remedy."""
    try:
        return await stack.enter_async_context(owner)
    except Conflict as exc:
        raise _with_hint(exc, settings) from None


@asynccontextmanager
async def _redis_only(state: State) -> AsyncIterator[Bus]:
    """A bus over Redis alone, for commands that never touch the store."""
    config = state.settings.to_config()
    assert config.redis.url is not None
    # the shared client: a non-UTF-8 dead letter must list and replay, not crash the decoder
    client = redis_client(config.redis.url, config.redis.socket_timeout_s)
    try:
        try:
            await client.ping()
        except REDIS_DOWN as exc:
            raise unavailable(exc) from exc
        # the configured policy applies here too: a Redis-only door is still a door
        gate = await make_gate(config.policy, client)
        # the data directory's master, as membus.open uses: events published here verify at
        # writers pinned to it (read or created only if this command publishes)
        keys = door_keys(client, config.signing, state.settings.data_dir / MASTER_FILE)
        yield Bus(client, _NoStore(), HashingEmbedder(config.embedder.dim), config, gate, keys=keys)
    finally:
        await client.aclose()


@asynccontextmanager
async def command_bus(state: State, *, needs_store: bool) -> AsyncIterator[Bus]:
    settings = state.settings
    async with AsyncExitStack() as stack:
        if settings.embedded or needs_store:
            bus = await claim(stack, open_bus(settings.data_dir, settings.to_config()), settings)
        else:
            bus = await stack.enter_async_context(_redis_only(state))
        yield bus

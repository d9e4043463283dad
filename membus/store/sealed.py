"""``SealedStore``: any store engine, with what it persists sealed under per-memory data keys.

The keys live in one place, a ``KeyStore`` (``membus.stream.datakeys.RedisKeyStore`` in a bus),
and ``shred`` destroys them: a memory whose key is gone can no longer be opened from any copy of
its payload (engine WAL, segment files, snapshots, backups). Reads drop such memories. Payloads
written before sealing existed are read as they are.

A key is created on a memory's first write and never for an id the key store refuses (an erased
one: ``forget`` tombstones ids before it shreds, so a writer racing it cannot mint a fresh key and
bring readable text back).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

from membus.core.logs import get_logger
from membus.embed.port import Vectors
from membus.store.formula import Boost
from membus.store.port import Hit, Memory, RecallFilter, Store, StoreMeta
from membus.store.seal import Blind, Seal, new_key


@runtime_checkable
class KeyStore(Protocol):
    """Where data keys live; destroying one is what erases its memory from every copy."""

    async def data_keys(self, tenant: str, ids: Sequence[str], *, create: bool) -> dict[str, bytes]:
        """The keys of ``ids`` that exist (``create``: mint the missing ones, except for ids the
        store refuses, i.e. erased ones)."""
        ...

    async def destroy(self, tenant: str, ids: Sequence[str]) -> int:
        """Destroy the keys of ``ids``; returns how many existed."""
        ...

    async def index_key(self, tenant: str) -> bytes:
        """The tenant's blind-index key (created on first use, never destroyed)."""
        ...


class MemoryKeyStore:
    """A ``KeyStore`` in a dict: for tests and single-process tools, not for a bus."""

    def __init__(self) -> None:
        self.keys: dict[tuple[str, str], bytes] = {}
        self.refused: set[tuple[str, str]] = set()
        self._index: dict[str, bytes] = {}

    async def data_keys(self, tenant: str, ids: Sequence[str], *, create: bool) -> dict[str, bytes]:
        out: dict[str, bytes] = {}
        for i in ids:
            if create and (tenant, i) not in self.keys and (tenant, i) not in self.refused:
                self.keys[(tenant, i)] = new_key()
            if (tenant, i) in self.keys:
                out[i] = self.keys[(tenant, i)]
        return out

    async def destroy(self, tenant: str, ids: Sequence[str]) -> int:
        gone = [self.keys.pop((tenant, i), None) for i in ids]
        self.refused.update((tenant, i) for i in ids)
        return sum(g is not None for g in gone)

    async def index_key(self, tenant: str) -> bytes:
        return self._index.setdefault(tenant, new_key())


@runtime_checkable
class Shredder(Protocol):
    async def shred(self, tenant: str, ids: Sequence[str]) -> int: ...


class SealedStore:
    """A ``Store`` that seals on the way in and opens on the way out; the rest is the engine's."""

    def __init__(self, inner: Store, keys: KeyStore) -> None:
        self.inner = inner
        self.keys = keys
        self._log = get_logger("membus.store.sealed")

    def __getattr__(self, name: str) -> Any:
        # engine extras (flush, optimize, unindexed, writes, search_batch...) pass through
        return getattr(self.inner, name)

    async def _blind(self, tenant: str) -> Blind:
        return Blind(await self.keys.index_key(tenant))

    async def open(self, meta: StoreMeta) -> None:
        await self.inner.open(meta)

    async def upsert(self, memories: Sequence[Memory], vectors: Vectors) -> None:
        if not memories:
            await self.inner.upsert(memories, vectors)
            return
        keep: list[int] = []
        sealed: list[Memory] = []
        for tenant in dict.fromkeys(m.tenant for m in memories):
            blind = await self._blind(tenant)
            ids = [m.id for m in memories if m.tenant == tenant]
            keys = await self.keys.data_keys(tenant, ids, create=True)
            for n, m in enumerate(memories):
                if m.tenant != tenant:
                    continue
                key = keys.get(m.id)
                if key is None:  # erased: no key may be minted for it again
                    self._log.debug("sealed.refused", tenant=tenant, memory_id=m.id)
                    continue
                keep.append(n)
                sealed.append(m.sealing(Seal(key, blind)))
        if len(keep) == len(memories):
            await self.inner.upsert(sealed, vectors)
        elif sealed:
            order = np.argsort(keep, kind="stable")
            await self.inner.upsert(
                [sealed[i] for i in order], np.asarray(vectors)[[keep[i] for i in order]]
            )

    async def _open(self, tenant: str, memories: Sequence[Memory]) -> list[Memory | None]:
        ids = [m.id for m in memories if m.sealed]
        keys = await self.keys.data_keys(tenant, ids, create=False) if ids else {}
        out: list[Memory | None] = []
        for m in memories:
            if not m.sealed:
                out.append(m)
                continue
            key = keys.get(m.id)
            out.append(m.opened(key) if key is not None else None)
        return out

    async def _open_hits(self, flt: RecallFilter, hits: Sequence[Hit]) -> list[Hit]:
        opened = await self._open(flt.tenant, [h.memory for h in hits])
        return [
            # the opened document holds the full-clearance validity: project it again
            h.model_copy(update={"memory": m.seen_by(flt.grant.clearance)})
            for h, m in zip(hits, opened, strict=True)
            if m is not None
        ]

    async def _filter(self, flt: RecallFilter) -> RecallFilter:
        """Filters on sealed fields compare blind tokens (a payload written before sealing is
        not found by them)."""
        lists = {
            "subjects": flt.subjects,
            "keys": flt.keys,
            "slots": flt.slots,
            "exclude_slots": flt.exclude_slots,
        }
        if all(v is None for v in lists.values()) and flt.numbers is None:
            return flt
        blind = await self._blind(flt.tenant)
        update: dict[str, Any] = {
            name: [blind(v) for v in values] for name, values in lists.items() if values is not None
        }
        if flt.numbers is not None:
            update["numbers"] = blind(flt.numbers)
        return flt.model_copy(update=update)

    async def search(
        self,
        vector: Vectors,
        flt: RecallFilter,
        k: int,
        *,
        text: str | None = None,
        boost: Boost | None = None,
    ) -> list[Hit]:
        hits = await self.inner.search(vector, await self._filter(flt), k, text=text, boost=boost)
        return await self._open_hits(flt, hits)

    async def search_batch(
        self, queries: Sequence[tuple[Vectors, RecallFilter]], k: int, min_score: float
    ) -> list[list[Hit]]:
        inner: Any = self.inner
        if not hasattr(inner, "search_batch"):  # an engine that does not batch: one at a time
            return [
                [h for h in await self.search(v, f, k) if h.score >= min_score] for v, f in queries
            ]
        found: list[list[Hit]] = await inner.search_batch(
            [(v, await self._filter(f)) for v, f in queries], k, min_score
        )
        # the keys of every hit of a tenant in one fetch: a sweep asks one query per queued
        # slot, and a key round trip each cost the near-duplicate pass more than its searches
        by_tenant: dict[str, list[Memory]] = {}
        for (_, f), hits in zip(queries, found, strict=True):
            by_tenant.setdefault(f.tenant, []).extend(h.memory for h in hits)
        opened = {t: iter(await self._open(t, ms)) for t, ms in by_tenant.items()}
        out: list[list[Hit]] = []
        for (_, f), hits in zip(queries, found, strict=True):
            mine = opened[f.tenant]
            out.append(
                [
                    # the opened document holds the full-clearance validity: project it again
                    h.model_copy(update={"memory": m.seen_by(f.grant.clearance)})
                    for h in hits
                    if (m := next(mine)) is not None
                ]
            )
        return out

    async def get(self, tenant: str, ids: Sequence[str]) -> list[Memory]:
        return [m for m in await self._open(tenant, await self.inner.get(tenant, ids)) if m]

    async def browse(self, flt: RecallFilter, limit: int) -> list[Memory]:
        found = await self.inner.browse(await self._filter(flt), limit)
        seen = flt.grant.clearance
        # the opened document holds the full-clearance validity: project it again
        return [m.seen_by(seen) for m in await self._open(flt.tenant, found) if m is not None]

    async def vectors(self, tenant: str, ids: Sequence[str]) -> dict[str, Vectors]:
        """The inner engine's stored vectors (not sealed: the engine searches them), or none
        when it cannot say: the caller embeds again."""
        inner: Any = self.inner
        if not hasattr(inner, "vectors"):
            return {}
        found: dict[str, Vectors] = await inner.vectors(tenant, ids)
        return found

    async def delete(self, tenant: str, ids: Sequence[str]) -> int:
        return await self.inner.delete(tenant, ids)

    async def shred(self, tenant: str, ids: Sequence[str]) -> int:
        """Destroy the data keys of ``ids``: whatever copy of their payloads remains, anywhere,
        can no longer be read. Call after the ids are tombstoned (see the module docstring)."""
        return await self.keys.destroy(tenant, ids)

    async def count(self, tenant: str | None = None) -> int:
        return await self.inner.count(tenant)

    async def scroll(
        self, tenant: str, limit: int = 256, offset: str | None = None
    ) -> tuple[list[Memory], str | None]:
        page, nxt = await self.inner.scroll(tenant, limit, offset)
        return [m for m in await self._open(tenant, page) if m], nxt

    async def maintain(self, *, busy: bool = False) -> None:
        await self.inner.maintain(busy=busy)

    async def close(self) -> None:
        await self.inner.close()

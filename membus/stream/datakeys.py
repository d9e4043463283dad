"""Data keys in Redis: the one place ``SealedStore`` keys live (``membus.store.sealed``).

``membus:{tenant}:datakeys`` maps a memory id to its AES key (hex), ``membus:{tenant}:indexkey``
holds the tenant's blind-index key (field ``k``). Same tenant hash tag as the tombstones, so the
minting script (it refuses tombstoned ids) stays in one cluster slot. ``forget`` HDELs the keys
and then asks for an AOF rewrite, after which no copy of them is left in Redis's memory or files
(tested by ``tests/test_erasure_bytes.py``); a Redis backup taken before the forget still holds
them, and with them opens a store backup of the same age.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from membus.core.keys import PREFIX
from membus.core.redis import REDIS_DOWN, Redis, unavailable
from membus.store.seal import decode_key, encode_key, new_key
from membus.stream.tombstones import tombstones_key

# KEYS: datakeys, tombstones; ARGV: n ids, then n fresh keys. The existing key of each id, else
# the fresh one (stored), unless the id is tombstoned: then false (no key, ever again).
_MINT = """
local n = #ARGV / 2
local out = {}
for i = 1, n do
  local k = redis.call('HGET', KEYS[1], ARGV[i])
  if not k then
    if redis.call('HGET', KEYS[2], ARGV[i]) then
      k = false
    else
      k = ARGV[n + i]
      redis.call('HSET', KEYS[1], ARGV[i], k)
    end
  end
  out[i] = k
end
return out
"""


def datakeys_key(tenant: str) -> str:
    return f"{PREFIX}:{{{tenant}}}:datakeys"


def indexkey_key(tenant: str) -> str:
    return f"{PREFIX}:{{{tenant}}}:indexkey"


class RedisKeyStore:
    """The ``KeyStore`` of a bus: every process that reaches the Redis reaches the keys."""

    def __init__(self, redis: Redis) -> None:
        self._redis = redis
        self._index: dict[str, bytes] = {}  # never destroyed, so safe to keep

    async def data_keys(self, tenant: str, ids: Sequence[str], *, create: bool) -> dict[str, bytes]:
        ids = list(dict.fromkeys(ids))
        if not ids:
            return {}
        try:
            if create:
                fresh = [encode_key(new_key()) for _ in ids]
                # plain EVAL: the ACL users get no SCRIPT command (see ``writer.ledger``)
                got: Any = await self._redis.eval(
                    _MINT, 2, datakeys_key(tenant), tombstones_key(tenant), *ids, *fresh
                )
            else:
                got = await self._redis.hmget(datakeys_key(tenant), ids)
        except REDIS_DOWN as exc:
            raise unavailable(exc) from exc
        return {i: decode_key(str(k)) for i, k in zip(ids, got, strict=False) if k}

    async def destroy(self, tenant: str, ids: Sequence[str]) -> int:
        if not ids:
            return 0
        try:
            return int(await self._redis.hdel(datakeys_key(tenant), *ids))
        except REDIS_DOWN as exc:
            raise unavailable(exc) from exc

    async def index_key(self, tenant: str) -> bytes:
        if tenant not in self._index:
            key = indexkey_key(tenant)
            try:
                # a hash field, not SET NX: the ACL users share HSETNX/HGET, not SET
                await self._redis.hsetnx(key, "k", encode_key(new_key()))
                got: Any = await self._redis.hget(key, "k")
            except REDIS_DOWN as exc:
                raise unavailable(exc) from exc
            self._index[tenant] = decode_key(str(got))
        return self._index[tenant]

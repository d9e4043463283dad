"""membus: an event-driven, permission-scoped shared-memory bus for teams of AI agents.

The public API is re-exported here, and imported on first use (PEP 562): ``import membus`` costs
the error tree and nothing else, so the CLI, a worker or a hook that needs one name does not pay
for Redis, Qdrant, numpy and FastAPI up front. The packages below follow one event's path:
``core`` (envelope, config, key layout) -> ``access`` (the gate, signing, audit, redaction) ->
``stream`` (the durable log, change feed, DLQ) -> ``writer`` (verify, consolidate, commit) ->
``store`` (the store port and its Qdrant engines) -> ``recall`` (ranking) and ``bus`` (the
API an agent holds), with ``embed``, ``runtime``, ``service``, ``integrations``, ``cli``,
``bench`` and ``evaluation`` beside them. The README's Architecture section has the map.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from membus.errors import (
    Conflict,
    InvalidInput,
    MembusError,
    NotCommitted,
    NotFound,
    Parked,
    PermissionDenied,
    Unavailable,
)

if TYPE_CHECKING:
    from membus.access.gate import Gate, Identity, OpenGate, PrivateGate, ReadGrant
    from membus.bus.api import Agent, Bus
    from membus.bus.context import Context, ContextItem
    from membus.bus.draft import Draft, Receipt
    from membus.bus.erasure import ErasureReport
    from membus.bus.memories import ImportReport, MemoryPage, parse_jsonl, to_jsonl
    from membus.core.config import (
        EmbedderConfig,
        MembusConfig,
        PolicyConfig,
        RedisConfig,
        StoreConfig,
        WorkerConfig,
    )
    from membus.core.envelope import Event
    from membus.core.ids import decode_id, encode_id
    from membus.embed.hashing import HashingEmbedder
    from membus.embed.port import Embedder
    from membus.recall.tokens import estimate_tokens
    from membus.runtime.host import open
    from membus.runtime.sync import SyncAgent, SyncBus, open_sync
    from membus.service.client import Client, SyncClient
    from membus.store.port import Hit, Memory, RecallFilter, Store
    from membus.stream.feed import Change

# public name -> the module that defines it
_LAZY = {
    "Agent": "membus.bus.api",
    "Bus": "membus.bus.api",
    "Change": "membus.stream.feed",
    "Client": "membus.service.client",
    "Context": "membus.bus.context",
    "ContextItem": "membus.bus.context",
    "Draft": "membus.bus.draft",
    "Embedder": "membus.embed.port",
    "EmbedderConfig": "membus.core.config",
    "ErasureReport": "membus.bus.erasure",
    "Event": "membus.core.envelope",
    "Gate": "membus.access.gate",
    "HashingEmbedder": "membus.embed.hashing",
    "Hit": "membus.store.port",
    "Identity": "membus.access.gate",
    "ImportReport": "membus.bus.memories",
    "MembusConfig": "membus.core.config",
    "Memory": "membus.store.port",
    "MemoryPage": "membus.bus.memories",
    "OpenGate": "membus.access.gate",
    "PrivateGate": "membus.access.gate",
    "PolicyConfig": "membus.core.config",
    "ReadGrant": "membus.access.gate",
    "RecallFilter": "membus.store.port",
    "Receipt": "membus.bus.draft",
    "RedisConfig": "membus.core.config",
    "Store": "membus.store.port",
    "StoreConfig": "membus.core.config",
    "SyncAgent": "membus.runtime.sync",
    "SyncBus": "membus.runtime.sync",
    "SyncClient": "membus.service.client",
    "WorkerConfig": "membus.core.config",
    "decode_id": "membus.core.ids",
    "encode_id": "membus.core.ids",
    "open": "membus.runtime.host",
    "open_sync": "membus.runtime.sync",
    "estimate_tokens": "membus.recall.tokens",
    "parse_jsonl": "membus.bus.memories",
    "to_jsonl": "membus.bus.memories",
}

__all__ = [
    "Agent",
    "Bus",
    "Change",
    "Client",
    "Conflict",
    "Context",
    "ContextItem",
    "Draft",
    "Embedder",
    "EmbedderConfig",
    "ErasureReport",
    "Event",
    "Gate",
    "HashingEmbedder",
    "Hit",
    "Identity",
    "ImportReport",
    "InvalidInput",
    "MembusConfig",
    "MembusError",
    "Memory",
    "MemoryPage",
    "NotCommitted",
    "NotFound",
    "OpenGate",
    "Parked",
    "PermissionDenied",
    "PolicyConfig",
    "PrivateGate",
    "ReadGrant",
    "RecallFilter",
    "Receipt",
    "RedisConfig",
    "Store",
    "StoreConfig",
    "SyncAgent",
    "SyncBus",
    "SyncClient",
    "Unavailable",
    "WorkerConfig",
    "decode_id",
    "encode_id",
    "estimate_tokens",
    "open",
    "open_sync",
    "parse_jsonl",
    "to_jsonl",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'membus' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # the next access is a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})

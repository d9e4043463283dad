"""membus: an event-driven, permission-scoped shared-memory bus for teams of AI agents."""

from membus.bus import Agent, Bus, Draft, Receipt
from membus.client import Client, SyncClient
from membus.config import MembusConfig, PolicyConfig, RedisConfig, StoreConfig, WorkerConfig
from membus.embedder import Embedder, HashingEmbedder
from membus.envelope import Event
from membus.erasure import ErasureReport
from membus.errors import Conflict, InvalidInput, MembusError, PermissionDenied, Unavailable
from membus.feed import Change
from membus.gate import Gate, Identity, OpenGate, ReadGrant
from membus.runtime import open
from membus.store import Hit, Memory, RecallFilter, Store
from membus.sync import SyncAgent, SyncBus, open_sync

__all__ = [
    "Agent",
    "Bus",
    "Change",
    "Client",
    "Conflict",
    "Draft",
    "Embedder",
    "ErasureReport",
    "Event",
    "Gate",
    "HashingEmbedder",
    "Hit",
    "Identity",
    "InvalidInput",
    "MembusConfig",
    "MembusError",
    "Memory",
    "OpenGate",
    "PermissionDenied",
    "PolicyConfig",
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
    "open",
    "open_sync",
]

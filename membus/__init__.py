"""membus: an event-driven, permission-scoped shared-memory bus for teams of AI agents."""

from membus.bus import Agent, Bus, Draft, Receipt
from membus.config import MembusConfig
from membus.embedder import Embedder, HashingEmbedder
from membus.envelope import Event
from membus.errors import Conflict, InvalidInput, MembusError, PermissionDenied, Unavailable
from membus.feed import Change
from membus.gate import Gate, Identity, OpenGate
from membus.runtime import open
from membus.store import Hit, Memory, RecallFilter, Store
from membus.sync import SyncAgent, SyncBus, open_sync

__all__ = [
    "Agent",
    "Bus",
    "Change",
    "Conflict",
    "Draft",
    "Embedder",
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
    "RecallFilter",
    "Receipt",
    "Store",
    "SyncAgent",
    "SyncBus",
    "Unavailable",
    "open",
    "open_sync",
]

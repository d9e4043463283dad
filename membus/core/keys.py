"""Redis key layout.

Every per-tenant key carries the tenant as a hash tag (``membus:{acme}:…``) so all of one tenant's
streams live in one Redis Cluster slot: a worker can XACK an event and XADD its change event in one
MULTI, and the layout needs no change when moving from one Redis to a cluster.
"""

from __future__ import annotations

from dataclasses import dataclass

PREFIX = "membus"


@dataclass(frozen=True, slots=True)
class TenantKeys:
    tenant: str

    @property
    def _base(self) -> str:
        return f"{PREFIX}:{{{self.tenant}}}"

    @property
    def events(self) -> str:
        """The write path: observations published by agents, consumed by writer groups."""
        return f"{self._base}:events"

    @property
    def changes(self) -> str:
        """The change feed: one entry per committed memory change."""
        return f"{self._base}:changes"

    @property
    def dlq(self) -> str:
        """Dead letters: events a writer could not process, with the reason."""
        return f"{self._base}:dlq"

    @property
    def dlq_errors(self) -> str:
        """Last error per pending entry id, so a poison entry is parked with its cause."""
        return f"{self._base}:dlq:errors"

    @property
    def access(self) -> str:
        """A hash of recall statistics per memory: ``n:<id>`` times returned by recall,
        ``t:<id>`` when last (epoch ms). One key per tenant, so one pipelined round trip bumps a
        whole result and erasure drops a memory's fields with one HDEL."""
        return f"{self._base}:access"

    @property
    def imports(self) -> str:
        """A hash of exported memory id -> the event that imported it into this tenant: what
        makes importing one export twice a no-op (ids only, never content)."""
        return f"{self._base}:imports"


def tenants_key() -> str:
    """A set of every tenant that ever published, so workers know which streams to read."""
    return f"{PREFIX}:tenants"


def tenants_added_key() -> str:
    """A stream of tenants just added to ``tenants_key``: writers block on it with their events
    streams, so a new tenant's first event is read at once instead of on the next refresh."""
    return f"{PREFIX}:tenants:added"


def writers_alive_key(group: str) -> str:
    """Set, with a short expiry, by every running writer of ``group``: a waiting publisher tells
    "no writer runs" from "writers are behind" by it (consumer idle times cannot: Redis before
    7.2 does not refresh them on reads that find nothing)."""
    return f"{PREFIX}:alive:{group}"


def tenant_of(stream_key: str) -> str:
    """Inverse of the layout: ``membus:{acme}:events`` -> ``acme``."""
    start, end = stream_key.find("{"), stream_key.find("}")
    if start < 0 or end < start:
        raise ValueError(f"not a membus tenant key: {stream_key!r}")
    return stream_key[start + 1 : end]

"""Typed configuration. Only the CLI layer (settings.py) reads ``MEMBUS_*`` variables."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Config(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RedisConfig(_Config):
    """Where the streams live. ``url=None`` means: start an embedded redis-server."""

    url: str | None = None
    socket_timeout_s: float = 10.0
    # url names one node of a Redis Cluster (the client discovers the others); needs url
    cluster: bool = False

    @model_validator(mode="after")
    def _cluster_needs_url(self) -> RedisConfig:
        if self.cluster and self.url is None:
            raise ValueError("cluster=True needs url (the embedded redis-server is not a cluster)")
        return self


class StoreConfig(_Config):
    """Where memories live: Qdrant Edge in process (default) or a Qdrant server."""

    engine: Literal["edge", "qdrant"] = "edge"
    path: Path | None = None  # edge: the shard directory
    url: str | None = None  # qdrant: server URL, or ":memory:" for tests
    api_key: str | None = None
    collection: str = "membus_memories"
    # HNSW is built off the request path once this many points arrived unindexed (edge only).
    optimize_every: int = 20_000


class EmbedderConfig(_Config):
    name: Literal["hashing", "minilm"] = "hashing"
    dim: int = Field(default=384, ge=16, le=4096)


class WorkerConfig(_Config):
    group: str = "writers"
    batch_size: int = Field(default=256, ge=1, le=10_000)
    block_ms: int = Field(default=200, ge=1)
    # After a short read, wait this long once for more before committing (0: never).
    linger_ms: int = Field(default=3, ge=0, le=1000)
    # An entry pending this long on a consumer is presumed orphaned by a dead worker.
    min_idle_ms: int = Field(default=30_000, ge=100)
    reclaim_every_s: float = Field(default=5.0, gt=0)
    # After this many deliveries an entry is parked in the dead-letter stream.
    max_deliveries: int = Field(default=5, ge=1)
    tenants_refresh_s: float = Field(default=1.0, gt=0)
    # The stream is not trusted: each event's HMAC is checked against its agent's key.
    verify_signatures: bool = True
    # An event id seen within this window under another stream entry is a replay; older ones
    # are stale. Keep it >= the longest writer outage you ride out (stale events are parked).
    replay_window_s: float = Field(default=7 * 24 * 3600, gt=0)


class RetentionConfig(_Config):
    """Trimming never removes an entry some group has not acknowledged; these bound the rest."""

    events_max_age_s: float = 7 * 24 * 3600
    changes_max_age_s: float = 7 * 24 * 3600
    dlq_max_age_s: float = 30 * 24 * 3600
    every_s: float = 60.0


class PolicyConfig(_Config):
    """Casbin policy. None of it set: the open gate (everything within one's own tenant)."""

    file: Path | None = None  # a policy csv (see policies/README.md)
    # shared: lines live in Redis (seeded from ``file`` on first boot) so every process, API or
    # worker, follows one policy; changes announced over pub/sub reach them within a second
    shared: bool = False
    resync_s: float = Field(default=30.0, gt=0)
    # Redaction: events published into these scope subtrees (when wider than the author's own
    # agent/<self> scope) have e-mails, phone and card numbers masked before they enter the
    # stream. Empty: off.
    redact_scopes: list[str] = Field(default_factory=list)


class ConsolidationConfig(_Config):
    """How writers fold observations into memories; every rule stays within one scope."""

    # exact repeats and keyed facts go through the ledger; off: one memory per event
    enabled: bool = True
    # near-duplicates (same scope and kind, cosine >= this) merge in a background pass; None: off
    near_duplicate: float | None = Field(default=0.9, gt=0, le=1)
    # two agents asserting different values for one key this close in time: a conflict event
    conflict_window_s: float = Field(default=5.0, ge=0)
    # expiry: seconds a memory lives, by kind and by scope subtree (the shortest applies)
    ttl_by_kind: dict[str, float] = Field(default_factory=dict)
    ttl_by_scope: dict[str, float] = Field(default_factory=dict)


class RankingConfig(_Config):
    """How recall orders hits beyond similarity (see membus/ranking.py)."""


class MembusConfig(_Config):
    redis: RedisConfig = RedisConfig()
    store: StoreConfig = StoreConfig()
    embedder: EmbedderConfig = EmbedderConfig()
    worker: WorkerConfig = WorkerConfig()
    retention: RetentionConfig = RetentionConfig()
    policy: PolicyConfig = PolicyConfig()
    consolidation: ConsolidationConfig = ConsolidationConfig()
    ranking: RankingConfig = RankingConfig()
    # In-process writer tasks (embedded default); 0 when separate worker processes run.
    writers: int = Field(default=1, ge=0, le=64)

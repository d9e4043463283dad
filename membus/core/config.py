"""Typed configuration. Only the CLI layer (settings.py) reads ``MEMBUS_*`` variables."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, Self

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

    engine: Literal["edge", "qdrant", "remote"] = "edge"
    # edge: the shard directory; remote: the socket of a bus serving its shard to its writer
    # processes (set by the runtime, see ``MembusConfig.writer_processes``)
    path: Path | None = None
    url: str | None = None  # qdrant: server URL, or ":memory:" for tests
    api_key: str | None = None
    collection: str = "membus_memories"
    # HNSW is built off the request path once this many points arrived unindexed (edge only),
    # when the writers pause for a few seconds, or after this long of writing without a pause,
    # or once twice as many wait: unindexed points are searched exactly, so recall slows as
    # they pile up
    optimize_every: int = 20_000
    build_under_load_s: float = Field(default=300.0, gt=0)


class EmbedderConfig(_Config):
    name: Literal["hashing", "minilm"] = "hashing"
    dim: int = Field(default=384, ge=16, le=4096)
    # minilm only: what computes it. Both give the same vectors (one store serves either);
    # onnx embeds one query in about a third of torch's time and needs no torch once its graph
    # is exported (on first use, into cache_dir, from the bundled weights)
    runtime: Literal["onnx", "torch"] = "onnx"
    # minilm only: intra-op threads of the embedder; None: one per usable core (1 to 4)
    threads: int | None = Field(default=None, ge=1, le=64)
    # minilm on onnx: where the exported graph is cached; None: ~/.cache/membus
    cache_dir: Path | None = None


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
    """Who may do what. With a casbin policy (``file`` or ``shared``), its lines decide. Without
    one, ``mode`` does: ``private`` (the default) lets each agent reach only its own
    ``agent/<self>`` scopes; ``open`` lets every agent do everything inside its tenant, for demos
    and single-agent use only (every agent reads every other agent's memories)."""

    mode: Literal["private", "open"] = "private"
    file: Path | None = None  # a policy csv (see policies/README.md)
    # shared: lines live in Redis (seeded from ``file`` on first boot) so every process, API or
    # worker, follows one policy; changes announced over pub/sub reach them within a second
    shared: bool = False
    resync_s: float = Field(default=30.0, gt=0)
    # Redaction: events published into these scope subtrees (when wider than the author's own
    # agent/<self> scope) have e-mails, phone and card numbers masked before they enter the
    # stream. Empty: off.
    redact_scopes: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _open_means_no_policy(self) -> PolicyConfig:
        # both would leave a reader guessing which one governs
        if self.mode == "open" and (self.file is not None or self.shared):
            raise ValueError("mode='open' cannot be combined with a policy (file or shared)")
        return self


class LlmConsolidatorConfig(_Config):
    """An OpenAI-compatible chat-completions endpoint; ``base_url`` None: off."""

    base_url: str | None = None  # e.g. https://api.openai.com/v1 or http://127.0.0.1:8000/v1
    model: str = "gpt-4o-mini"
    api_key: str | None = Field(default=None, repr=False)
    timeout_s: float = Field(default=10.0, gt=0)
    neighbours: int = Field(default=5, ge=1, le=20)  # how many nearest memories to offer
    # below this search score a memory is not offered (scores lie in [0, 1], see
    # membus/store/relevance.py: 0 offers every hit)
    min_score: float = 0.0
    json_mode: bool = True  # send response_format json_object (some servers reject it)


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
    # an LLM proposing add/update/delete/none per unkeyed fact (writer/llm.py); off by default
    llm: LlmConsolidatorConfig = LlmConsolidatorConfig()


class RankingConfig(_Config):
    """How recall orders hits beyond similarity, and how far back working memory reads.

    The rerank (membus/recall/ranking.py) multiplies a positive similarity by a factor in
    ``[1 - sum(weights), 1]``::

        final = sim * (1 - wr - wi - wh + wr*R + wi*I + wh*H)      (sim <= 0: left as is)
        R = 0.5 ** (age / recency_half_life_s)   age: created_at to now (or to as_of)
        I = metadata["importance"] clamped to [0, 1], else importance_default
        H = n / (n + heat_saturation)            n: times the memory was returned by recall
        sim: the engine's score in [0, 1] (membus/store/relevance.py)

    Multiplicative on purpose: a signal can only reorder memories whose similarities are close
    (within a factor of ``1 - sum(weights)``), never lift an unrelated one above a relevant one,
    and a final score stays in [0, 1], on the scale the engine's scores have.
    A weight of 0 turns its signal off; ``enabled=False`` turns the rerank off entirely.

    Defaults are gentle: recency can cost a memory at most 10 %, importance 10 % (only when
    events carry it: without ``importance`` in metadata every memory gets the same I, which
    reorders nothing). On a benchmark whose memories are all old (LoCoMo) every R is ~0 and on
    one ingested all at once every R is ~1: a uniform factor, so similarity order stands. Heat is
    off: it feeds recall's own output back into recall (rich get richer) and would make a
    benchmark's answers depend on the order its questions were asked.

    ``min_score``: recall drops hits scoring below it, after the rerank. Scores are evidence on
    one scale for every query (membus/store/relevance.py), so a threshold means the same on
    every query: at the default, questions about what the memories never mention return nothing
    (LoCoMo's no-answer set, ``membus eval locomo``), at the cost of some weakly matched answers.
    0 keeps every hit.
    """

    enabled: bool = True
    recency_weight: float = Field(default=0.1, ge=0, le=1)
    recency_half_life_s: float = Field(default=30 * 24 * 3600, gt=0)
    importance_weight: float = Field(default=0.1, ge=0, le=1)
    importance_default: float = Field(default=0.5, ge=0, le=1)
    heat_weight: float = Field(default=0.0, ge=0, le=1)
    heat_saturation: float = Field(default=10.0, gt=0)
    min_score: float = Field(default=0.23, ge=0, le=1)
    # the rerank looks at factor * k candidates from the store (at most max_candidates, never
    # fewer than k): enough for a boosted memory just below the top k to move up
    candidate_factor: int = Field(default=3, ge=1, le=10)
    max_candidates: int = Field(default=300, ge=1, le=10_000)
    # working memory (recall(working=True)): how many of the newest events stream entries are
    # read, and how old an uncommitted entry may be; bounds the cost of one recall
    working_tail: int = Field(default=256, ge=1, le=10_000)
    working_max_age_s: float = Field(default=3600.0, gt=0)

    @model_validator(mode="after")
    def _weights_leave_similarity_a_share(self) -> RankingConfig:
        # at 1 a stale, unimportant memory would score 0 whatever its similarity
        if self.recency_weight + self.importance_weight + self.heat_weight >= 1:
            raise ValueError("recency_weight + importance_weight + heat_weight must be < 1")
        return self


class SigningConfig(_Config):
    """Event signing keys (membus/access/signing.py).

    ``master_file``: the door's master secret (64 hex digits, mode 0600), which every door
    sharing a Redis must hold; None: ``<data dir>/signing.key`` under ``membus.open`` (created),
    a random per-process secret elsewhere. ``authority``: hex Ed25519 public key writers require
    on every key record (``membus keys authority`` prints it); None: writers in the door's own
    process pin the door's authority, a lone ``membus worker`` trusts the registry as stored.
    """

    master_file: Path | None = None
    authority: str | None = Field(default=None, pattern=r"^[0-9a-fA-F]{64}$")


class MembusConfig(_Config):
    redis: RedisConfig = RedisConfig()
    signing: SigningConfig = SigningConfig()
    store: StoreConfig = StoreConfig()
    embedder: EmbedderConfig = EmbedderConfig()
    worker: WorkerConfig = WorkerConfig()
    retention: RetentionConfig = RetentionConfig()
    policy: PolicyConfig = PolicyConfig()
    consolidation: ConsolidationConfig = ConsolidationConfig()
    ranking: RankingConfig = RankingConfig()
    # In-process writer tasks (embedded default); 0 when separate worker processes run. Not
    # given: ``default_writers(embedder.name)``, 1 with hashing and 2 with a model
    writers: int = Field(default=1, ge=0, le=64)
    # Edge store: run the writers in this many child processes instead (each with ``writers``
    # tasks), reaching the shard this process keeps through a socket (membus/store/remote.py),
    # so ingest uses more than one core; recall stays in process
    writer_processes: int = Field(default=0, ge=0, le=16)

    @model_validator(mode="before")
    @classmethod
    def _writers_none(cls, data: object) -> object:
        """``writers=None`` is ``writers`` not given."""
        if isinstance(data, dict) and "writers" in data and data["writers"] is None:
            return {k: v for k, v in data.items() if k != "writers"}
        return data

    @model_validator(mode="after")
    def _writers_default(self) -> MembusConfig:
        """``writers`` not given: ``default_writers`` for the embedder, left out of
        ``model_fields_set`` so that a copy with another embedder derives it again."""
        if "writers" not in self.model_fields_set:
            self.__dict__["writers"] = default_writers(self.embedder.name)  # frozen: set once
        return self

    def model_copy(self, *, update: Mapping[str, Any] | None = None, deep: bool = False) -> Self:
        """pydantic's copy (no validation), with ``writers``, when it was never given, derived
        again from the copy's embedder: a copy that swaps hashing for a model runs two writer
        tasks, as the same configuration built directly would.

        Example: ``MembusConfig().model_copy(update={"embedder": EmbedderConfig(name="minilm")})``
        has ``writers == 2``"""
        copy = super().model_copy(update=update, deep=deep)
        if "writers" not in copy.model_fields_set:
            copy.__dict__["writers"] = default_writers(copy.embedder.name)
        return copy


# writer tasks when the embedder is a model and ``MembusConfig.writers`` is not given
MODEL_WRITERS = 2


def default_writers(embedder: str) -> int:
    """In-process writer tasks when none are asked for: one with the hashing embedder, two with
    a model. One writer leaves the model idle while it verifies, merges and commits each batch;
    a second embeds its own batch meanwhile (the README's Numbers: ``membus bench --workload
    semantic`` with and without ``--writers 1``).

    Example: ``default_writers("minilm")`` is 2"""
    return 1 if embedder == "hashing" else MODEL_WRITERS


# where ``membus.open()`` and the CLI keep an embedded bus unless told otherwise
DEFAULT_PATH = Path(".membus")
# In the embedded default every writer lives in this process, so an entry pending longer than a
# couple of seconds is a failed attempt, not a busy peer: retry and park poison quickly.
EMBEDDED_WORKER = WorkerConfig(min_idle_ms=1000, reclaim_every_s=1.0, max_deliveries=3)

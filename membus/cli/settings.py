"""Environment settings: the only place ``MEMBUS_*`` variables are read.

Flat names for what operators set most (``MEMBUS_REDIS_URL``, ``MEMBUS_STORE_ENGINE``, …) and
``__``-nested ones for tuning (``MEMBUS_WORKER__BATCH_SIZE``, ``MEMBUS_RETENTION__EVERY_S``).
CLI flags are passed as init arguments, which pydantic-settings ranks above the environment.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from membus.core.config import (
    DEFAULT_PATH,
    EMBEDDED_WORKER,
    ConsolidationConfig,
    EmbedderConfig,
    MembusConfig,
    PolicyConfig,
    RankingConfig,
    RedisConfig,
    RetentionConfig,
    SigningConfig,
    StoreConfig,
    WorkerConfig,
    default_writers,
)
from membus.core.envelope import invalid_from, validate_scope
from membus.errors import InvalidInput

LogLevel = Literal["debug", "info", "warning", "error", "critical"]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="MEMBUS_",
        env_nested_delimiter="__",
        # an exported-but-empty variable means "unset", not "the empty string"
        env_ignore_empty=True,
        extra="forbid",
    )

    path: Path | None = None  # the data directory; None: ./.membus (demo: a temp dir)
    redis_url: str | None = None  # None: an embedded redis-server under the data directory
    redis_socket_timeout_s: float = 10.0
    redis_cluster: bool = False  # the URL names one node of a Redis Cluster
    store_engine: Literal["edge", "qdrant"] = "edge"
    store_path: Path | None = None
    store_url: str | None = None
    store_api_key: str | None = None
    store_collection: str = "membus_memories"
    store_optimize_every: int = 20_000
    store_build_under_load_s: float = 300.0  # edge: build after this long of unpaused writing
    embedder: Literal["hashing", "minilm"] = "hashing"
    embedder_dim: int = 384
    embedder_runtime: Literal["onnx", "torch"] = "onnx"  # minilm: what computes it
    embedder_threads: int | None = None  # minilm: intra-op threads (None: usable cores, 1 to 4)
    embedder_cache_dir: Path | None = None  # minilm on onnx: the exported graph's cache
    worker: WorkerConfig = WorkerConfig()
    retention: RetentionConfig = RetentionConfig()
    consolidation: ConsolidationConfig = ConsolidationConfig()
    ranking: RankingConfig = RankingConfig()
    # In-process writers for CLI commands; None: on embedded Redis 1, 2 with a model
    # (``default_writers``); 0 when workers run apart.
    writers: int | None = None
    # embedded Edge store: run the writers in this many child processes (see MembusConfig)
    writer_processes: int = 0
    log_level: LogLevel = "warning"
    log_json: bool = False
    # permissions without a policy: private (agent/<self> only) or open (demos, one agent)
    policy_mode: Literal["private", "open"] = "private"
    # permissions: a casbin policy csv, and/or lines shared through Redis (seeded from the file)
    policy_file: Path | None = None
    policy_shared: bool = False
    policy_resync_s: float = 30.0
    # NoDecode: a comma-separated list ("team,org"), not the JSON pydantic-settings expects
    policy_redact_scopes: Annotated[list[str], NoDecode] = Field(default_factory=list)
    # `membus serve`: where to listen and the API keys file (`membus keys new` writes it)
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    api_keys: Path | None = None
    # event signing: the door's master secret file, and the authority writers pin (hex public key)
    signing_master_file: Path | None = None
    signing_authority: str | None = None

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must start with redis://, rediss:// or unix://")
        return v

    @field_validator("policy_redact_scopes", mode="before")
    @classmethod
    def _comma_list(cls, v: Any) -> Any:
        if isinstance(v, str):
            return [part.strip() for part in v.split(",") if part.strip()]
        return v

    @field_validator("log_level", "policy_mode", mode="before")
    @classmethod
    def _lower(cls, v: Any) -> Any:
        return v.lower() if isinstance(v, str) else v

    @classmethod
    def load(cls, **overrides: Any) -> Settings:
        """Environment plus ``overrides`` (CLI flags; ``None`` means "not given")."""
        given = {k: v for k, v in overrides.items() if v is not None}
        try:
            return cls(**given)
        except ValidationError as exc:
            raise invalid_from(exc, "settings") from None

    @property
    def data_dir(self) -> Path:
        return self.path if self.path is not None else DEFAULT_PATH

    @property
    def embedded(self) -> bool:
        return self.redis_url is None

    def _checked_policy(self) -> None:
        # caught here, not at the first request: a typo must not look like an outage (exit 4)
        if self.policy_file is not None and not self.policy_file.is_file():
            raise InvalidInput(f"policy file {self.policy_file} does not exist")
        for scope in self.policy_redact_scopes:
            validate_scope(scope)

    def _writers(self) -> int:
        """In-process writers when ``writers`` is not set: none when workers run apart."""
        return default_writers(self.embedder) if self.embedded else 0

    def to_config(self) -> MembusConfig:
        self._checked_policy()
        # With embedded Redis every writer lives in one process, so start from the embedded
        # runtime's quick-retry defaults; explicitly set MEMBUS_WORKER__* fields still win.
        base = EMBEDDED_WORKER if self.embedded else WorkerConfig()
        worker = base.model_copy(
            update={f: getattr(self.worker, f) for f in self.worker.model_fields_set}
        )
        try:
            return MembusConfig(
                signing=SigningConfig(
                    master_file=self.signing_master_file, authority=self.signing_authority
                ),
                redis=RedisConfig(
                    url=self.redis_url,
                    socket_timeout_s=self.redis_socket_timeout_s,
                    cluster=self.redis_cluster,
                ),
                store=StoreConfig(
                    engine=self.store_engine,
                    path=self.store_path,
                    url=self.store_url,
                    api_key=self.store_api_key,
                    collection=self.store_collection,
                    optimize_every=self.store_optimize_every,
                    build_under_load_s=self.store_build_under_load_s,
                ),
                embedder=EmbedderConfig(
                    name=self.embedder,
                    dim=self.embedder_dim,
                    runtime=self.embedder_runtime,
                    threads=self.embedder_threads,
                    cache_dir=self.embedder_cache_dir,
                ),
                worker=worker,
                retention=self.retention,
                consolidation=self.consolidation,
                ranking=self.ranking,
                policy=PolicyConfig(
                    mode=self.policy_mode,
                    file=self.policy_file,
                    shared=self.policy_shared,
                    resync_s=self.policy_resync_s,
                    redact_scopes=self.policy_redact_scopes,
                ),
                writers=self.writers if self.writers is not None else self._writers(),
                writer_processes=self.writer_processes,
            )
        except ValidationError as exc:
            raise invalid_from(exc, "settings") from None

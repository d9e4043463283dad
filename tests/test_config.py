"""Typed configuration: defaults that depend on other settings."""

from __future__ import annotations

import pytest

from membus.cli.settings import Settings
from membus.core.config import MODEL_WRITERS, EmbedderConfig, MembusConfig, default_writers


def test_writers_default_to_two_with_a_model_and_one_with_hashing() -> None:
    """One writer leaves a model idle while it commits a batch: with a model and no ``writers``
    given, the bus runs two; an explicit count (0: writers run apart) always wins."""
    assert MODEL_WRITERS == 2 and default_writers("minilm") == 2 and default_writers("hashing") == 1
    assert MembusConfig().writers == 1
    assert MembusConfig(embedder=EmbedderConfig(name="minilm")).writers == 2
    assert MembusConfig.model_validate({"embedder": {"name": "minilm"}}).writers == 2
    assert MembusConfig.model_validate_json('{"embedder": {"name": "minilm"}}').writers == 2
    assert MembusConfig(embedder=EmbedderConfig(name="minilm"), writers=1).writers == 1
    assert MembusConfig(embedder=EmbedderConfig(name="minilm"), writers=0).writers == 0
    assert MembusConfig.model_validate({"writers": None}).writers == 1


def test_a_copy_with_another_embedder_derives_writers_again() -> None:
    """pydantic's ``model_copy`` validates nothing: a copy that swapped hashing for a model kept
    the one writer derived for hashing. Never given, ``writers`` follows the copy's embedder;
    given, on the original or in the update, it stays."""
    minilm = {"embedder": EmbedderConfig(name="minilm")}
    assert MembusConfig().model_copy(update=minilm).writers == 2
    assert MembusConfig(**minilm).model_copy(update={"embedder": EmbedderConfig()}).writers == 1
    assert MembusConfig(writers=1).model_copy(update=minilm).writers == 1
    assert MembusConfig().model_copy(update={**minilm, "writers": 3}).writers == 3
    assert MembusConfig().model_copy(update={"writers": 0}).model_copy(update=minilm).writers == 0


def test_cli_settings_follow_the_same_default(monkeypatch: pytest.MonkeyPatch) -> None:
    """Embedded: the embedder's default; a Redis of its own (workers run apart): none."""
    assert Settings.load().to_config().writers == 1
    assert Settings.load(embedder="minilm").to_config().writers == 2
    assert Settings.load(embedder="minilm", writers=1).to_config().writers == 1
    monkeypatch.setenv("MEMBUS_REDIS_URL", "redis://127.0.0.1:6379/0")
    assert Settings.load(embedder="minilm").to_config().writers == 0

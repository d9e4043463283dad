"""The default embedder defines the vector space every stored memory lives in: it must give the
same vector for the same text in every process, forever, and a store must refuse any other space."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import membus
from membus.core.config import MembusConfig, PolicyConfig, RedisConfig
from membus.embed.hashing import HashingEmbedder
from membus.errors import Conflict
from membus.store.edge import EdgeStore
from membus.store.port import StoreMeta

REPO = Path(__file__).resolve().parent.parent
TEXTS = [
    "The customer's invoice was paid late",
    "ticket 4411: printer on fire, again",
    "Ünïcödé façade naïve café 東京 😀",
    "repeat repeat repeat repeat",
    "a",
]

_CHILD = """
import json, sys
from membus.embed.hashing import HashingEmbedder
texts = json.loads(sys.stdin.read())
print(HashingEmbedder(int(sys.argv[1])).embed(texts).tobytes().hex())
"""


@pytest.mark.slow
@pytest.mark.parametrize("dim", [384, 64])
def test_vectors_are_identical_in_another_process(dim: int) -> None:
    """Writers in different processes must agree bit for bit, whatever the hash seed."""
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, str(dim)],
        input=json.dumps(TEXTS).encode(),
        cwd=REPO,
        env=env,
        capture_output=True,
        timeout=60,
        check=True,
    )
    theirs = np.frombuffer(bytes.fromhex(out.stdout.decode().strip()), dtype=np.float32)
    ours = HashingEmbedder(dim).embed(TEXTS)
    assert np.array_equal(theirs.reshape(len(TEXTS), dim), ours)


def test_shape_dtype_unit_norm_and_name_record_the_space() -> None:
    e = HashingEmbedder(128)
    v = e.embed(TEXTS)
    assert (e.dim, v.shape) == (128, (len(TEXTS), 128))
    assert v.dtype == np.float32
    assert np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    assert e.name != HashingEmbedder(384).name and "128" in e.name


@pytest.mark.parametrize("text", ["", "   ", "!!! ??? ...", "\n\t"])
def test_text_without_words_gives_a_zero_vector_not_nan(text: str) -> None:
    v = HashingEmbedder().embed([text, "real words"])
    assert np.isfinite(v).all()
    assert not v[0].any()
    assert np.isclose(np.linalg.norm(v[1]), 1.0)


def test_no_texts_gives_an_empty_matrix() -> None:
    assert HashingEmbedder(32).embed([]).shape == (0, 32)


def test_a_text_embeds_the_same_alone_in_a_batch_and_after_cache_eviction() -> None:
    """Batching and the feature caches are optimisations: they must not change a vector."""
    warm = HashingEmbedder()
    batch = warm.embed(TEXTS)
    for i, t in enumerate(TEXTS):
        assert np.array_equal(warm.embed([t])[0], batch[i])
    tiny_cache = HashingEmbedder(cache_size=2)
    assert np.array_equal(tiny_cache.embed(TEXTS), batch)
    assert np.array_equal(tiny_cache.embed(TEXTS[::-1]), batch[::-1])


def test_related_texts_are_closer_than_unrelated() -> None:
    v = HashingEmbedder().embed(
        ["invoice paid late by customer", "the customer paid the invoice late", "printer on fire"]
    )
    assert v[0] @ v[1] > v[0] @ v[2] + 0.2


@pytest.mark.slow
@settings(max_examples=150, deadline=None)
@given(st.lists(st.text(max_size=200), min_size=1, max_size=5))
def test_any_text_gives_a_finite_unit_or_zero_vector(texts: list[str]) -> None:
    v = HashingEmbedder(64).embed(texts)
    assert v.shape == (len(texts), 64) and np.isfinite(v).all()
    norms = np.linalg.norm(v, axis=1)
    assert np.all(np.isclose(norms, 1.0, atol=1e-5) | (norms == 0))


# -- the store remembers its space -------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.anyio
@pytest.mark.parametrize(
    "other", [StoreMeta(embedder="hashing-v1-128", dim=128), StoreMeta(embedder="minilm", dim=384)]
)
async def test_store_refuses_another_embedder_and_stays_openable(
    tmp_path: Path, other: StoreMeta
) -> None:
    e = HashingEmbedder()
    mine = StoreMeta(embedder=e.name, dim=e.dim)
    store = EdgeStore(tmp_path / "store")
    await store.open(mine)
    await store.close()

    with pytest.raises(Conflict):
        await EdgeStore(tmp_path / "store").open(other)
    again = EdgeStore(tmp_path / "store")  # the refusal released its lock
    await again.open(mine)
    await again.close()


@pytest.mark.anyio
async def test_bus_refuses_to_reopen_with_another_embedder(redis_url: str, tmp_path: Path) -> None:
    cfg = MembusConfig(
        policy=PolicyConfig(mode="open"), redis=RedisConfig(url=redis_url), writers=0
    )
    async with membus.open(tmp_path, cfg, embedder=HashingEmbedder(384)):
        pass
    with pytest.raises(Conflict):
        async with membus.open(tmp_path, cfg, embedder=HashingEmbedder(256)):
            pass

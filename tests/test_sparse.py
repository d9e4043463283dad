"""The lexical encoder behind hybrid recall (membus/store/sparse.py) and what a store records of
it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from qdrant_client import AsyncQdrantClient

from membus.store import sparse
from membus.store.bm25 import tokenize
from membus.store.edge import EdgeStore
from membus.store.port import Store, StoreMeta
from membus.store.qdrant import QdrantStore
from tests.conformance import DIM, flt, mem, ray, rows, unit


def test_the_store_default_is_this_encoder() -> None:
    # store.py cannot import this module (it would pull the analyser into every import)
    assert StoreMeta(embedder="e", dim=8).sparse == sparse.NAME


def test_documents_carry_saturated_tf_and_no_stop_words() -> None:
    one = sparse.document("refund")
    assert len(one.indices) == 1
    three = sparse.document("refund refund refund")
    assert three.indices == one.indices
    # tf saturates: three mentions weigh more than one, but far less than three times as much
    assert one.values[0] < three.values[0] < 2 * one.values[0]
    assert three.values[0] < sparse.K1 + 1  # BM25's ceiling
    assert not sparse.document("the of and is it")  # stop words only: nothing to match


def test_stemming_and_case_match_across_document_and_query() -> None:
    doc = sparse.document("Caroline went RUNNING with the support groups")
    for q in ("caroline run", "Support group?", "groups"):
        terms = sparse.query(q)
        assert terms
        assert set(terms.indices) <= set(doc.indices), q
        assert all(v == 1.0 for v in terms.values)  # IDF comes from the engine


def test_tokens_split_as_the_bm25_baseline_splits_them() -> None:
    # the same \\w+ boundaries: punctuation never glues two words into one term
    text = "Pickle's corgi-sitter (from e-mail) said: ok"
    assert sparse.document(text) == sparse.document(" ".join(tokenize(text)))


def test_ids_are_stable_hashes_not_a_learnt_vocabulary() -> None:
    # another process, another order of first sight: the same term gets the same id
    (term,) = sparse.query("zanzibar").indices
    assert term in sparse.document("gateway zanzibar").indices
    assert term in sparse.document("zanzibar first, gateway second").indices
    assert sparse.query("zanzibar") == sparse.query("ZANZIBAR!")


def test_prefetch_is_never_below_the_floor_and_grows_with_k() -> None:
    assert sparse.prefetch_limit(1) == sparse.PREFETCH_MIN
    assert sparse.prefetch_limit(100) == 100 * sparse.PREFETCH_FACTOR


def test_the_fusion_is_the_embedders() -> None:
    assert sparse.fusion_for("hashing-v1-384") is sparse.HASHING
    for name in ("minilm-l6-v2", "some-other-model"):  # any model but the hashing one
        assert sparse.fusion_for(name) is sparse.SEMANTIC
    assert sparse.HASHING.dense_weight < sparse.SEMANTIC.dense_weight
    assert sparse.HASHING.weights == [0.1, 2.0]  # dense first: the order both engines prefetch
    assert sparse.SEMANTIC.rrf_k == sparse.HASHING.rrf_k == sparse.RRF_K


@pytest.mark.parametrize(
    ("dense", "lexical", "k"), [(-1.0, 2.0, 2), (1.0, -0.5, 2), (0.0, 0.0, 2), (1.0, 2.0, 0)]
)
def test_a_fusion_that_cannot_rank_is_refused(dense: float, lexical: float, k: int) -> None:
    with pytest.raises(ValueError):
        sparse.Fusion(dense_weight=dense, lexical_weight=lexical, rrf_k=k)


@pytest.mark.slow
@pytest.mark.anyio
@pytest.mark.parametrize("engine", ["edge", "qdrant-local"])
@pytest.mark.parametrize(
    ("embedder", "first"), [("hashing-v1-8", "both terms"), ("a-semantic-model", "dense best")]
)
async def test_the_stores_fuse_with_the_embedders_weights(
    tmp_path: Path, engine: str, embedder: str, first: str
) -> None:
    """The dense branch's best match holds one query term, another memory holds both and is
    the dense branch's worst: a semantic model's ranking (weight 1) lifts its best match over
    the lexical winner, the hashing embedder's (weight 0.1) only breaks ties below it."""
    client = AsyncQdrantClient(location=":memory:")
    make: dict[str, Callable[[], Store]] = {
        "edge": lambda: EdgeStore(tmp_path / "store"),
        "qdrant-local": lambda: QdrantStore(":memory:", client=client),
    }
    store = make[engine]()
    await store.open(StoreMeta(embedder=embedder, dim=DIM))
    try:
        found = {
            "dense best": mem(0, content="zanzibar ledger"),
            "both terms": mem(1, content="zanzibar gateway outage"),
        }
        notes = [mem(i, content=f"routine note {i}") for i in range(2, 6)]
        vectors = [unit(0), unit(5), *(ray(i) for i in range(1, 5))]  # "both terms" is last
        await store.upsert([*found.values(), *notes], rows(vectors))
        hits = await store.search(unit(0), flt(), 2, text="zanzibar gateway")
        (second,) = (m for name, m in found.items() if name != first)
        assert [h.memory.id for h in hits] == [found[first].id, second.id]
    finally:
        await store.close()
        await client.close()


def test_a_record_without_the_field_predates_lexical_vectors() -> None:
    old = sparse.recorded_meta({"embedder": "e", "dim": 8, "layout": 2})
    assert old.sparse is None
    assert sparse.recorded_meta({"embedder": "e", "dim": 8, "sparse": "x"}).sparse == "x"


@pytest.mark.parametrize(
    ("found", "match"),
    [
        (StoreMeta(embedder="other", dim=8), "refusing embedder"),
        (StoreMeta(embedder="e", dim=8, sparse=None), "lexical vectors"),
        (StoreMeta(embedder="e", dim=8, layout=1), "layout 1"),
    ],
)
def test_a_mismatch_is_explained(found: StoreMeta, match: str) -> None:
    why = sparse.meta_conflict("store x", found, StoreMeta(embedder="e", dim=8))
    assert why is not None and match in why
    assert sparse.meta_conflict("store x", found, found) is None

"""The lexical encoder behind hybrid recall (membus/store/sparse.py) and what a store records of
it."""

from __future__ import annotations

import pytest

from membus.store import sparse
from membus.store.bm25 import tokenize
from membus.store.port import StoreMeta


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

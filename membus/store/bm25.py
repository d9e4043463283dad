"""A plain Okapi BM25 ranker in numpy: the sparse baseline ``membus eval locomo`` reports.

Deliberately textbook, so its figures are comparable with published "BM25 over turns" numbers:
lowercase ``\\w+`` tokens, no stemming, no stop words, k1=1.5, b=0.75 (the ``rank_bm25``
defaults), and the Lucene idf ``log(1 + (N - n + 0.5) / (n + 0.5))``, which is never negative,
so a term in most turns still adds a little instead of pushing those turns down. Repeated query
terms count once per occurrence, as in ``rank_bm25``.

On LoCoMo this lands below the commonly quoted BM25 figures (51.3@5, 58.3@10): those drop stop
words, stem, and use Lucene's k1=0.9, b=0.4; each of those adds 2-5 points. This baseline indexes
exactly the texts membus publishes (``speaker (date): text (in reply to ...)``, see
``membus.evaluation.locomo``), and ``tokenize`` is also where the store's lexical vectors
(``membus.store.sparse``) take their token boundaries from, before their stop words and stemming.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from membus.errors import InvalidInput

_TOKEN = re.compile(r"\w+")

K1 = 1.5
B = 0.75


def tokenize(text: str) -> list[str]:
    return _TOKEN.findall(text.lower())


class BM25:
    """Index a fixed list of documents once; ``rank`` returns document indices, best first."""

    def __init__(self, docs: Sequence[str], k1: float = K1, b: float = B) -> None:
        if not docs:
            raise InvalidInput("BM25 needs at least one document")
        tokenized = [tokenize(d) for d in docs]
        self._vocab: dict[str, int] = {}
        rows: list[int] = []
        cols: list[int] = []
        for row, toks in enumerate(tokenized):
            for t in toks:
                rows.append(row)
                cols.append(self._vocab.setdefault(t, len(self._vocab)))
        n_docs, n_terms = len(docs), len(self._vocab)
        tf = np.zeros((n_docs, max(n_terms, 1)), dtype=np.float64)
        np.add.at(tf, (np.asarray(rows, np.int64), np.asarray(cols, np.int64)), 1.0)
        lengths = np.asarray([len(t) for t in tokenized], dtype=np.float64)
        avg = float(lengths.mean()) or 1.0  # all-empty corpus: every score is 0 anyway
        df = (tf > 0).sum(axis=0)
        idf = np.log1p((n_docs - df + 0.5) / (df + 0.5))
        norm = k1 * (1.0 - b + b * lengths / avg)
        # each (turn, term) weight precomputed: a query is then a column sum
        self._weights: npt.NDArray[np.float64] = idf * tf * (k1 + 1.0) / (tf + norm[:, None])
        self.size = n_docs

    def scores(self, query: str) -> npt.NDArray[np.float64]:
        cols = [self._vocab[t] for t in tokenize(query) if t in self._vocab]
        if not cols:
            return np.zeros(self.size)
        out: npt.NDArray[np.float64] = self._weights[:, cols].sum(axis=1)
        return out

    def rank(self, query: str, k: int) -> list[int]:
        """Top ``k`` document indices; ties keep document order, so runs are reproducible."""
        order = np.argsort(-self.scores(query), kind="stable")[:k]
        return [int(i) for i in order]

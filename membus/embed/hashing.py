"""The default embedder: model-free, deterministic, fast.

The default hashes word unigrams, word bigrams and character trigrams into a fixed number of
signed buckets (the "hashing trick"), with sublinear term frequency and L2 normalisation. It needs
no model, is deterministic across processes (crc32, not Python's randomised ``hash``) and is fast
because each distinct word's features are computed once and cached.
"""

from __future__ import annotations

import itertools
import re
import zlib
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from membus.embed.port import Vectors

_WORD = re.compile(r"[\w']+", re.UNICODE)


class HashingEmbedder:
    """Hashed word/bigram/char-trigram features. No model, no downloads, ~tens of µs a text.

    Each distinct word's features are computed once into a flat table (word id -> a run of
    bucket indices and values), so embedding a batch costs one dict lookup per word and per
    bigram in Python; numpy gathers the runs and one bincount sums them.
    """

    def __init__(self, dim: int = 384, cache_size: int = 200_000) -> None:
        self._dim = dim
        self._cache_size = cache_size
        self._reset()

    def _reset(self) -> None:
        """Forget every cached word and bigram (crude but bounded: a working set refills)."""
        self._words: dict[str, int] = {}  # word -> its id in the feature table
        self._bigrams: dict[str, int] = {}  # "a b" -> its signed bucket code (see _bigram)
        self._start = np.zeros(1024, np.int64)  # per word id: where its run begins
        self._len = np.zeros(1024, np.int64)
        self._idx = np.zeros(8192, np.int64)  # the runs: bucket, value
        self._val = np.zeros(8192, np.float32)
        self._used = 0
        self._pending: list[tuple[list[int], list[float]]] = []  # new words' runs, not yet in

    @property
    def name(self) -> str:
        return f"hashing-v1-{self._dim}"

    @property
    def dim(self) -> int:
        return self._dim

    def _bucket(self, feature: str) -> tuple[int, float]:
        h = zlib.crc32(feature.encode("utf-8", "surrogatepass"))
        return h % self._dim, (1.0 if (h >> 31) & 1 else -1.0)

    def _bigram(self, key: str) -> int:
        """The bucket of bigram ``key`` ("a b"), signed and shifted by one: ``±(bucket + 1)``."""
        i, s = self._bucket("b:" + key)
        code = self._bigrams[key] = (i + 1) if s > 0 else -(i + 1)
        return code

    def _word(self, word: str) -> int:
        """Compute a new word's features (pending until ``_flush``); returns its id."""
        i, s = self._bucket("w:" + word)
        idx, val = [i], [2.0 * s]  # whole words carry more signal than their trigrams
        padded = f"<{word}>"
        for j in range(len(padded) - 2):
            i, s = self._bucket("c:" + padded[j : j + 3])
            idx.append(i)
            val.append(0.5 * s)
        wid = self._words[word] = len(self._words)
        self._pending.append((idx, val))
        return wid

    def _flush(self) -> None:
        """Append the pending words' runs to the table: one numpy copy per batch, not per word."""
        if not self._pending:
            return
        n_words, first = len(self._words), len(self._words) - len(self._pending)
        runs = [len(idx) for idx, _ in self._pending]
        at, n = self._used, sum(runs)
        if n_words > len(self._start):
            self._start = np.resize(self._start, 2 * n_words)
            self._len = np.resize(self._len, 2 * n_words)
        if at + n > len(self._idx):
            self._idx = np.resize(self._idx, 2 * (at + n))
            self._val = np.resize(self._val, 2 * (at + n))
        self._idx[at : at + n] = [i for idx, _ in self._pending for i in idx]
        self._val[at : at + n] = [v for _, val in self._pending for v in val]
        lens = np.asarray(runs, np.int64)
        self._len[first:n_words] = lens
        self._start[first:n_words] = at + np.cumsum(lens) - lens
        self._used = at + n
        self._pending = []

    def embed(self, texts: Sequence[str]) -> Vectors:
        dim, n_texts = self._dim, len(texts)
        rows = [_WORD.findall(text.lower()) for text in texts]
        flat = [w for words in rows for w in words]
        pairs = [f"{a} {b}" for words in rows for a, b in itertools.pairwise(words)]
        full = len(self._words) + len(flat) > self._cache_size
        if full or len(self._bigrams) + len(pairs) > self._cache_size:
            self._reset()  # before the lookups, so the ids taken below stay valid
        words, bigrams = self._words, self._bigrams
        ids = [words.get(w, -1) for w in flat]
        for j in [j for j, wid in enumerate(ids) if wid < 0]:  # new words (a repeat: once)
            ids[j] = words[flat[j]] if flat[j] in words else self._word(flat[j])
        self._flush()
        codes = [bigrams.get(k, 0) for k in pairs]  # 0 is no code: codes are ±(bucket + 1)
        for j in [j for j, code in enumerate(codes) if not code]:
            codes[j] = bigrams.get(pairs[j], 0) or self._bigram(pairs[j])
        bases = np.arange(n_texts, dtype=np.int64) * dim
        wids = np.asarray(ids, np.int64)
        lens: npt.NDArray[np.int64] = self._len[wids]
        ends = np.cumsum(lens)
        total = int(ends[-1]) if len(ends) else 0  # features of all words
        # where each word's run sits in the table, runs laid end to end in word order
        pos = np.arange(total, dtype=np.int64) + np.repeat(self._start[wids] - ends + lens, lens)
        word_base = np.repeat(bases, np.asarray([len(r) for r in rows], np.int64))
        code = np.asarray(codes, np.int64)
        pair_base = np.repeat(bases, np.asarray([max(len(r) - 1, 0) for r in rows], np.int64))
        # word features first, then bigrams, each in text order: bincount sums in this order
        summed: npt.NDArray[np.float64] = np.bincount(
            np.concatenate(
                [self._idx[pos] + np.repeat(word_base, lens), np.abs(code) - 1 + pair_base]
            ),
            weights=np.concatenate([self._val[pos], np.sign(code).astype(np.float32)]),
            minlength=n_texts * dim,
        ).astype(np.float64, copy=False)
        out = summed.reshape(n_texts, dim).astype(np.float32)
        # sublinear tf keeps one repeated word from dominating
        out = np.sign(out) * np.log1p(np.abs(out))
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        np.divide(out, norms, out=out, where=norms > 0)
        return out

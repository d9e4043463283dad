"""Embedder port and the default, model-free embedder.

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
from typing import Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

Vectors = npt.NDArray[np.float32]

_WORD = re.compile(r"[\w']+", re.UNICODE)


@runtime_checkable
class Embedder(Protocol):
    """Turns texts into unit vectors. ``name`` + ``dim`` identify the vector space."""

    @property
    def name(self) -> str: ...

    @property
    def dim(self) -> int: ...

    def embed(self, texts: Sequence[str]) -> Vectors:
        """One row per text, L2-normalised, dtype float32."""
        ...


class HashingEmbedder:
    """Hashed word/bigram/char-trigram features. No model, no downloads, ~tens of µs a text."""

    def __init__(self, dim: int = 384, cache_size: int = 200_000) -> None:
        self._dim = dim
        self._cache: dict[str, tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]] = {}
        self._bigrams: dict[str, tuple[int, float]] = {}
        self._cache_size = cache_size

    @property
    def name(self) -> str:
        return f"hashing-v1-{self._dim}"

    @property
    def dim(self) -> int:
        return self._dim

    def _bucket(self, feature: str) -> tuple[int, float]:
        h = zlib.crc32(feature.encode("utf-8", "surrogatepass"))
        return h % self._dim, (1.0 if (h >> 31) & 1 else -1.0)

    def _bigram(self, a: str, b: str) -> tuple[int, float]:
        key = f"{a} {b}"
        hit = self._bigrams.get(key)
        if hit is None:
            if len(self._bigrams) >= self._cache_size:
                self._bigrams.clear()
            hit = self._bigrams[key] = self._bucket("b:" + key)
        return hit

    def _word_features(self, word: str) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
        hit = self._cache.get(word)
        if hit is not None:
            return hit
        idx: list[int] = []
        val: list[float] = []
        i, s = self._bucket("w:" + word)
        idx.append(i)
        val.append(2.0 * s)  # whole words carry more signal than their trigrams
        padded = f"<{word}>"
        for j in range(len(padded) - 2):
            i, s = self._bucket("c:" + padded[j : j + 3])
            idx.append(i)
            val.append(0.5 * s)
        feats = (np.asarray(idx, dtype=np.int64), np.asarray(val, dtype=np.float32))
        if len(self._cache) >= self._cache_size:
            self._cache.clear()  # crude but bounded; a working set refills quickly
        self._cache[word] = feats
        return feats

    def embed(self, texts: Sequence[str]) -> Vectors:
        # Collect cached per-word feature arrays and bigram buckets for the whole batch, then one
        # concatenate + one bincount builds the matrix (per-word numpy ops would dominate).
        dim = self._dim
        parts_idx: list[npt.NDArray[np.int64]] = []
        parts_val: list[npt.NDArray[np.float32]] = []
        parts_base: list[int] = []
        parts_len: list[int] = []
        bi_idx: list[int] = []
        bi_val: list[float] = []
        for row, text in enumerate(texts):
            words = _WORD.findall(text.lower())
            base = row * dim
            for w in words:
                idx, val = self._word_features(w)
                parts_idx.append(idx)
                parts_val.append(val)
                parts_base.append(base)
                parts_len.append(len(idx))
            for a, b in itertools.pairwise(words):
                i, sign = self._bigram(a, b)
                bi_idx.append(i + base)
                bi_val.append(sign)
        size = len(texts) * dim
        summed: npt.NDArray[np.float64] = np.zeros(size)
        if parts_idx or bi_idx:
            offsets = np.repeat(np.asarray(parts_base, np.int64), np.asarray(parts_len, np.int64))
            idx_all = np.concatenate([*parts_idx, np.zeros(0, np.int64)]) + offsets
            summed = np.bincount(
                np.concatenate([idx_all, np.asarray(bi_idx, np.int64)]),
                weights=np.concatenate([*parts_val, np.asarray(bi_val, np.float32)]),
                minlength=size,
            ).astype(np.float64, copy=False)
        out = summed.reshape(len(texts), dim).astype(np.float32)
        # sublinear tf keeps one repeated word from dominating
        out = np.sign(out) * np.log1p(np.abs(out))
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        np.divide(out, norms, out=out, where=norms > 0)
        return out


def make_embedder(name: str, dim: int = 384) -> Embedder:
    if name == "hashing":
        return HashingEmbedder(dim)
    if name == "minilm":
        from membus.semantic import MiniLMEmbedder

        if dim != 384:
            from membus.errors import InvalidInput

            raise InvalidInput(f"minilm embeds 384-d vectors; got embedder dim {dim}")

        embedder: Embedder = MiniLMEmbedder()
        return embedder
    from membus.errors import InvalidInput

    raise InvalidInput(f"unknown embedder {name!r}; choose 'hashing' or 'minilm'")

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
        # Gather every (row, bucket, weight) of the batch, then one bincount builds the matrix.
        dim = self._dim
        flat_idx: list[npt.NDArray[np.int64]] = []
        flat_val: list[npt.NDArray[np.float32]] = []
        for row, text in enumerate(texts):
            words = _WORD.findall(text.lower())
            base = row * dim
            for w in words:
                idx, val = self._word_features(w)
                flat_idx.append(idx + base)
                flat_val.append(val)
            if len(words) > 1:
                pairs = [self._bucket(f"b:{a} {b}") for a, b in itertools.pairwise(words)]
                flat_idx.append(np.fromiter((i + base for i, _ in pairs), np.int64, len(pairs)))
                flat_val.append(np.fromiter((s for _, s in pairs), np.float32, len(pairs)))
        size = len(texts) * dim
        summed: npt.NDArray[np.float64] = np.zeros(size)
        if flat_idx:
            summed = np.bincount(
                np.concatenate(flat_idx), weights=np.concatenate(flat_val), minlength=size
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

        embedder: Embedder = MiniLMEmbedder()
        return embedder
    from membus.errors import InvalidInput

    raise InvalidInput(f"unknown embedder {name!r}; choose 'hashing' or 'minilm'")

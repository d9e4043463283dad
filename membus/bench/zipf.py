"""The one-scope workload of ``membus bench --workload one-scope``: a team's notes in one scope.

Every memory and every query is drawn from one fixed vocabulary whose word frequencies follow
Zipf's law (rank r drawn with probability proportional to ``1 / r ** EXPONENT``), as words in
natural text do. Unlike the varied workload (templates over several scopes), the frequent words
then sit in a large share of the memories and every recall filters to the same single scope:
the lexical branch walks long posting lists under a filter that excludes nothing, the shape a
team that keeps its notes together gives the store.

The vocabulary is synthetic (syllables, so no word is an English stop word the analyser would
drop) and fixed by a seed: runs are comparable across machines and versions.
"""

from __future__ import annotations

import functools

import numpy as np

from membus.bus.draft import Draft

SCOPE = "team/notes"
VOCABULARY = 20_000
EXPONENT = 1.07  # Zipf's exponent for English word frequencies is close to 1
WORDS = (6, 18)  # words per memory, uniform in this range (inclusive)
QUERY_WORDS = (2, 6)

_ONSETS = ("b", "k", "d", "f", "g", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "st")
_VOWELS = ("a", "e", "i", "o", "u", "ai", "ou")
_CODAS = ("", "n", "r", "s", "l", "k", "nd", "st")


@functools.cache
def vocabulary(size: int = VOCABULARY) -> tuple[str, ...]:
    """``size`` distinct pronounceable words, the same ones on every run (built once)."""
    rng = np.random.default_rng(17)
    seen: dict[str, None] = {}
    while len(seen) < size:
        syllables = int(rng.integers(2, 4))
        word = "".join(
            _ONSETS[rng.integers(len(_ONSETS))]
            + _VOWELS[rng.integers(len(_VOWELS))]
            + _CODAS[rng.integers(len(_CODAS))]
            for _ in range(syllables)
        )
        seen.setdefault(word, None)
    return tuple(seen)


def _probabilities(size: int) -> np.ndarray:
    weights = 1.0 / np.arange(1, size + 1, dtype=np.float64) ** EXPONENT
    out: np.ndarray = weights / weights.sum()
    return out


def _texts(n: int, lengths: tuple[int, int], seed: int) -> list[str]:
    words = vocabulary()
    rng = np.random.default_rng(seed)
    sizes = rng.integers(lengths[0], lengths[1] + 1, size=n)
    drawn = rng.choice(len(words), size=int(sizes.sum()), p=_probabilities(len(words)))
    out, at = [], 0
    for size in sizes:
        out.append(" ".join(words[int(i)] for i in drawn[at : at + size]))
        at += int(size)
    return out


def drafts(n: int, seed: int = 1) -> list[Draft]:
    """``n`` notes in ``SCOPE``, each ending in its own number so that none is an exact repeat
    of another (each makes one memory) and, numbers being facts, none merges as a near-duplicate
    (the bench sizes the store by memories)."""
    return [
        Draft(content=f"{text} note {seed}-{i}", scope=SCOPE, metadata={"source": "bench"})
        for i, text in enumerate(_texts(n, WORDS, seed))
    ]


def queries(n: int, seed: int = 7) -> list[str]:
    """``n`` queries of a few words from the same vocabulary and distribution."""
    return _texts(n, QUERY_WORDS, seed + 1_000)

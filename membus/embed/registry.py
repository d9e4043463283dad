"""Which embedder a configured name means: ``hashing`` (the default) or ``minilm``."""

from __future__ import annotations

from membus.embed.hashing import HashingEmbedder
from membus.embed.port import Embedder
from membus.errors import InvalidInput


def make_embedder(name: str, dim: int = 384) -> Embedder:
    if name == "hashing":
        return HashingEmbedder(dim)
    if name == "minilm":
        from membus.embed.semantic import MiniLMEmbedder  # torch only when asked for

        if dim != 384:
            raise InvalidInput(f"minilm embeds 384-d vectors; got embedder dim {dim}")

        embedder: Embedder = MiniLMEmbedder()
        return embedder
    raise InvalidInput(f"unknown embedder {name!r}; choose 'hashing' or 'minilm'")

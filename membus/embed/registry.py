"""Which embedder a configured name means: ``hashing`` (the default) or ``minilm`` (on ONNX
Runtime by default, or torch)."""

from __future__ import annotations

from pathlib import Path

from membus.core.config import EmbedderConfig
from membus.embed.hashing import HashingEmbedder
from membus.embed.port import Embedder
from membus.errors import InvalidInput


def make_embedder(
    name: str,
    dim: int = 384,
    *,
    runtime: str = "onnx",
    threads: int | None = None,
    cache_dir: Path | None = None,
) -> Embedder:
    if name == "hashing":
        return HashingEmbedder(dim)
    if name == "minilm":
        if dim != 384:
            raise InvalidInput(f"minilm embeds 384-d vectors; got embedder dim {dim}")
        embedder: Embedder
        # imported here: torch and onnxruntime only when asked for
        if runtime == "onnx":
            from membus.embed.onnx import OnnxMiniLMEmbedder

            embedder = OnnxMiniLMEmbedder(threads=threads, cache_dir=cache_dir)
        elif runtime == "torch":
            from membus.embed.semantic import MiniLMEmbedder

            embedder = MiniLMEmbedder(threads=threads)
        else:
            raise InvalidInput(f"unknown minilm runtime {runtime!r}; choose 'onnx' or 'torch'")
        return embedder
    raise InvalidInput(f"unknown embedder {name!r}; choose 'hashing' or 'minilm'")


def embedder_for(config: EmbedderConfig) -> Embedder:
    """The embedder ``config`` describes."""
    return make_embedder(
        config.name,
        config.dim,
        runtime=config.runtime,
        threads=config.threads,
        cache_dir=config.cache_dir,
    )

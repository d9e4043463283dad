"""Turning texts into vectors: the embedder port, the default model-free hashing embedder, and
MiniLM behind the optional ``semantic`` extra (torch is imported only when it is used).

Owns: ``port`` (``Embedder``, ``Vectors``), ``hashing``, ``semantic``, ``registry`` (which
embedder a configured name means).
May import: ``membus.core``, ``membus.errors``.
"""

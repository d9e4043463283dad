"""Where consolidated memories live: the store port and its engines, and what a search may see.

Owns: ``port`` (``Store``, ``Memory``, ``Hit``), ``filters`` (the engine-neutral filter spec
built from a ``ReadGrant``), ``sparse``, ``bm25`` and ``idf`` (the lexical side of hybrid
recall), ``formula`` (the rerank as a Qdrant formula), the engines ``edge`` (Qdrant Edge in
process), ``qdrant`` (a Qdrant server) and ``remote`` (the Edge shard served to writer
processes), and ``edge_query``; ``seal`` and ``sealed`` (crypto-shredding: ``SealedStore`` wraps
any engine so that what it persists is sealed under per-memory keys held by a ``KeyStore``).
Every engine passes ``tests/conformance.py``.
May import: ``membus.access``, ``membus.embed``, ``membus.core``, ``membus.errors``.
"""

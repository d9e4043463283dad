"""Memory writers: consumer groups over every tenant's events stream that verify each event
again (the stream is not trusted), consolidate it with its slot's ledger and commit memory,
change and ack together.

Owns: ``worker`` (the loop), ``admission`` (signature, replay, tombstone and scope checks),
``consolidate`` (the rules, pure functions), ``ledger`` (their Redis state), ``commit`` (ledger,
store, change feed, ack), ``neardup``, ``llm`` and ``advice`` (the optional LLM consolidator),
``expiry`` (TTL sweep), ``relevel`` (the one-time rewrite of keys stored before per-clearance
validity).
May import: ``membus.stream``, ``membus.recall`` and the layers below them.
"""

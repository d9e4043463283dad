"""Reading memories back by meaning: the rerank of recall (similarity tempered by recency,
importance and heat) and the access statistics that make up heat.

Owns: ``ranking``, ``heat`` (how often and when recall returned each memory).
May import: ``membus.store`` and the layers below it.
"""

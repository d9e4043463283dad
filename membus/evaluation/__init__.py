"""``membus eval locomo``: retrieval quality on the LoCoMo benchmark beside a plain BM25 baseline.

Owns: ``locomo`` (load, publish, recall, score), ``report`` (recall@k per category and its table).
May import: ``membus.integrations`` and the layers below it; never the CLI.
"""

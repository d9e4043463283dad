"""``membus bench``: end-to-end figures beside their raw-engine counterparts, from one run.

Owns: ``run`` (the bench), ``raw`` (the workload and raw-engine baselines), ``gates`` (recall
through several doors), ``service`` (the HTTP row), ``table`` (the human-readable report).
May import: ``membus.integrations`` and the layers below it; never the CLI.
"""

"""The ground every layer stands on: the event envelope, typed configuration, the Redis key
layout, the Redis connection type, and small helpers (logging for measured runs, a flusher).

Owns: ``envelope`` (what an agent publishes, validated at the door), ``config`` (the typed
``MembusConfig``), ``keys`` (``membus:{tenant}:…``), ``redis`` (one server or a cluster, and what
an outage raises), ``flusher``, ``logs``, ``children`` (children that die with their parent),
``heap`` (freed memory handed back to the system).
May import: ``membus.errors`` only.
"""

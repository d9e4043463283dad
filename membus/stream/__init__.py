"""The durable event log and the streams around it, all Redis streams of one tenant: publishing
(signed) events, consumer groups and safe trimming, the writer's batch reads, the change feed,
the dead-letter stream, replay detection and erasure tombstones.

Owns: ``ops`` (publish, groups, trim, retention, stats), ``reading``, ``feed``, ``dlq``,
``replay``, ``tombstones``, ``datakeys`` (the store's data keys in Redis, which erasure destroys).
May import: ``membus.store``, ``membus.access`` and the layers below them.
"""
